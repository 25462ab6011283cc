"""Peak memory and time of the fused distillation loss against the full-logit reference, on CPU.

    python bench/loss_memory.py            # prints a table; each case runs in a fresh process

JSD loss, forward plus backward, vocabulary 32,000, hidden 256 for both models. Peak RSS growth
is measured inside a fresh process (VmHWM after minus VmRSS before), so cases do not mix.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

VOCAB, HIDDEN = 32_000, 256


def _vm(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(field)


def child(kind: str, tokens: int) -> None:
    import torch

    from distill.losses import LossSpec, fused_distill_loss, reference_distill_loss

    torch.manual_seed(0)
    h_s = torch.randn(tokens, HIDDEN, requires_grad=True)
    w_s = (torch.randn(VOCAB, HIDDEN) * 0.02).requires_grad_()
    h_t, w_t = torch.randn(tokens, HIDDEN), torch.randn(VOCAB, HIDDEN) * 0.02
    labels = torch.randint(0, VOCAB, (tokens,))
    spec = LossSpec(kind="jsd")
    before, start = _vm("VmRSS"), time.perf_counter()
    if kind == "fused":
        loss = fused_distill_loss(h_s, w_s, h_t, w_t, labels, spec, tokens)
    else:
        loss = reference_distill_loss(h_s @ w_s.T, h_t @ w_t.T, labels, spec, tokens)
    loss.backward()
    print(json.dumps({"seconds": time.perf_counter() - start, "mib": _vm("VmHWM") - before}))


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        child(sys.argv[2], int(sys.argv[3]))
        return
    print(f"| tokens | loss | peak RSS growth (MiB) | time (s) |")
    print("|---|---|---|---|")
    for tokens, kinds in ((4096, ("fused", "reference")), (16384, ("fused",))):
        for kind in kinds:
            out = subprocess.run([sys.executable, __file__, "--child", kind, str(tokens)],
                                 capture_output=True, text=True, check=True).stdout
            result = json.loads(out.strip().splitlines()[-1])
            print(f"| {tokens} | {kind} | {result['mib']:.0f} | {result['seconds']:.1f} |")


if __name__ == "__main__":
    main()
