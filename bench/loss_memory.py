"""Peak memory and time of the fused distillation loss against the full-logit reference, on CPU.

    python bench/loss_memory.py            # prints a table; each case runs in a fresh process
    python bench/loss_memory.py --small    # 32x fewer tokens: a smoke run in seconds

JSD loss, forward plus backward, vocabulary 32,000, hidden 256 for both models. Peak RSS growth
is measured inside a fresh process (VmHWM after minus VmRSS before), so cases do not mix.

After the table: how many times less memory the fused loss takes than the reference at the
smaller token count (ratio of the memory column), and how its memory grows from the smaller
token count to the larger one.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from typing import NamedTuple

VOCAB, HIDDEN = 32_000, 256
TOKENS = {"full": (4096, 16384), "small": (128, 512)}  # (fused and reference, fused only)


class Case(NamedTuple):
    """One loss at one token count: peak RSS growth in MiB, forward + backward wall seconds."""

    tokens: int
    kind: str
    mib: float
    seconds: float


def proc_status_mib(field: str) -> float:
    """A /proc/self/status memory field of this process, in MiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(field)


def child(kind: str, tokens: int) -> None:
    """Runs in a fresh process: one forward + backward of ``kind`` ("fused" or "reference");
    prints its wall seconds and peak RSS growth (MiB) as JSON."""
    import torch

    from distill.train.losses import LossSpec, fused_distill_loss, reference_distill_loss

    torch.manual_seed(0)
    h_s = torch.randn(tokens, HIDDEN, requires_grad=True)
    w_s = (torch.randn(VOCAB, HIDDEN) * 0.02).requires_grad_()
    h_t, w_t = torch.randn(tokens, HIDDEN), torch.randn(VOCAB, HIDDEN) * 0.02
    labels = torch.randint(0, VOCAB, (tokens,))
    spec = LossSpec(kind="jsd")
    before, start = proc_status_mib("VmRSS"), time.perf_counter()
    if kind == "fused":
        loss = fused_distill_loss(h_s, w_s, h_t, w_t, labels, spec, tokens)
    else:
        loss = reference_distill_loss(h_s @ w_s.T, h_t @ w_t.T, labels, spec, tokens)
    loss.backward()
    print(json.dumps({"seconds": time.perf_counter() - start, "mib": proc_status_mib("VmHWM") - before}))


def run_case(kind: str, tokens: int) -> Case:
    """``child(kind, tokens)`` in a fresh process."""
    out = subprocess.run([sys.executable, __file__, "--child", kind, str(tokens)],
                         capture_output=True, text=True, check=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    return Case(tokens, kind, result["mib"], result["seconds"])


def ratio(a: float, b: float) -> str:
    """a / b as "N.Nx", or "n/a" when b is not positive (too small to measure)."""
    return f"{a / b:.1f}x" if b > 0 else "n/a"


def summary_lines(cases: list[Case]) -> list[str]:
    """The reference's memory over the fused loss's at the smaller token count, and the fused
    loss's memory at the larger token count over the smaller one."""
    mib = {(case.kind, case.tokens): case.mib for case in cases}
    small, large = sorted({case.tokens for case in cases})
    fused_small, fused_large, reference = mib[("fused", small)], mib[("fused", large)], mib[("reference", small)]
    return [f"at {small} tokens the fused loss takes {ratio(reference, fused_small)} less memory than the "
            f"reference ({fused_small:.0f} vs {reference:.0f} MiB)",
            f"fused, {small} -> {large} tokens: peak RSS growth {fused_small:.0f} -> {fused_large:.0f} MiB "
            f"({ratio(fused_large, fused_small)})"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help=f"token counts {TOKENS['small']} instead of "
                        f"{TOKENS['full']}: a smoke run in seconds")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "TOKENS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]))
        return
    small, large = TOKENS["small" if args.small else "full"]
    print("| tokens | loss | peak RSS growth (MiB) | time (s) |")
    print("|---|---|---|---|")
    cases = []
    for tokens, kind in ((small, "fused"), (small, "reference"), (large, "fused")):
        case = run_case(kind, tokens)
        cases.append(case)
        print(f"| {case.tokens} | {case.kind} | {case.mib:.0f} | {case.seconds:.1f} |", flush=True)
    for line in summary_lines(cases):
        print(f"\n{line}")


if __name__ == "__main__":
    main()
