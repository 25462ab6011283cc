"""Side-by-side FLOP counters: flopgate's, fvcore's FlopCountAnalysis and torch's FlopCounterMode.

Prints a table: time, peak memory, FLOP counted and failures of each, on GPT-2 small and a
Llama-3-8B-shaped config, then flopgate alone on a Llama-3.1-405B-shaped config at 8k context
(in a fresh process, so its peak RSS is its own).

    python bench/flops_bench.py [--seq-len 512]    # --seq-len 32: a smoke run in seconds

After the table, per model where both counted: flopgate's speed-up over fvcore (ratio of the
time column) and fvcore's count over flopgate's (ratio of the FLOP column).

Conventions differ and are printed as counted: flopgate and FlopCounterMode count 2 FLOP per
multiply-add over forward + backward; fvcore counts 1 per multiply-add, forward only (its
column is shown x2 x3 to be comparable with a training step). fvcore needs real weights,
so it runs on CPU tensors; the others run on the meta device.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from typing import NamedTuple, Optional

import torch


def rss_mib() -> float:
    """Peak RSS of this process so far, in MiB (VmHWM: unlike ru_maxrss, it restarts at exec)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(fn) -> tuple[float, float, object, str]:
    """(wall seconds, peak RSS growth in MiB, fn's value or None, failure note or "") of ``fn()``."""
    before, start = rss_mib(), time.perf_counter()
    try:
        value, note = fn(), ""
    except Exception as exc:  # noqa: BLE001 - a failure is a result here
        value, note = None, f"{exc.__class__.__name__}: {str(exc).splitlines()[0][:70]}"
    return time.perf_counter() - start, rss_mib() - before, value, note


def hf_config(name: str):
    """The transformers config of the bundled model config ``name``."""
    from audit.flops.configs import resolve_config
    from audit.flops.hf_config import build_config

    return build_config(resolve_config(name).data, source=name)


def ours(name: str, seq_len: int):
    """flopgate's training-step FLOP (forward + backward, batch 1) on the meta device."""
    from audit.flops.model_step import count_step

    step = count_step(hf_config(name), seq_len)
    return step.forward.headline + step.backward.headline


def flop_counter_mode(name: str, seq_len: int):
    """torch FlopCounterMode's training-step FLOP (forward with loss + backward) on the meta device."""
    from transformers import AutoModelForCausalLM
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config(name), attn_implementation="sdpa")
    ids = torch.zeros(1, seq_len, dtype=torch.long, device="meta")
    with FlopCounterMode(display=False) as mode:
        model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
    return mode.get_total_flops()


def fvcore_count(name: str, seq_len: int):
    """fvcore's forward multiply-adds on real CPU weights, x2 (FLOP) x3 (training step)."""
    from fvcore.nn import FlopCountAnalysis
    from transformers import AutoModelForCausalLM

    config = hf_config(name)
    params = sum(getattr(config, k, 0) or 0 for k in ("n_embd", "hidden_size")) ** 2 * 12 * config.num_hidden_layers
    if params * 4 > 8 * 2**30:
        raise MemoryError(f"needs real weights: ~{params * 4 / 2**30:.0f} GiB in fp32")

    class Logits(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, ids):
            return self.m(input_ids=ids, use_cache=False).logits

    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    analysis = FlopCountAnalysis(Logits(model), (torch.zeros(1, seq_len, dtype=torch.long),))
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    return analysis.total() * 2 * 3  # MACs -> FLOP, forward -> training step


def big_model_child(name: str, seq_len: int) -> None:
    """Runs in a fresh process: a first (cold) count, then a warm one, and this process's peak RSS."""
    start = time.perf_counter()
    flops = ours(name, seq_len)
    cold = time.perf_counter() - start
    start = time.perf_counter()
    ours(name, seq_len)
    warm = time.perf_counter() - start
    print(json.dumps({"cold": cold, "warm": warm, "flops": flops, "peak_mib": rss_mib()}))


class Row(NamedTuple):
    """One counter on one model: wall seconds, peak RSS growth in MiB, training-step FLOP
    (None when it failed) and the failure, if any."""

    model: str
    tool: str
    seconds: float
    mib: float
    flops: Optional[float]
    note: str


FLOPGATE, FVCORE = "flopgate", "fvcore (x2 x3)"
COUNTERS = ((FLOPGATE, ours), ("FlopCounterMode", flop_counter_mode), (FVCORE, fvcore_count))
MODELS = ("gpt2", "llama-3.1-8b")
BIG_MODEL, BIG_SEQ_LEN = "llama-3.1-405b", 8192


def measure_all(seq_len: int) -> list[Row]:
    """Every counter on every model at ``seq_len`` tokens, batch 1."""
    ours("gpt2", 16)  # warm-up: first registrations and imports are not the counter's cost
    rows = []
    for model in MODELS:
        for tool, fn in COUNTERS:
            seconds, mib, flops, note = measure(lambda: fn(model, seq_len))
            rows.append(Row(model, tool, seconds, mib, flops, note))
    return rows


def print_table(rows: list[Row]) -> None:
    print("\n| model | counter | time (s) | peak RSS growth (MiB) | training-step FLOP | failure |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        shown = f"{row.flops:.4e}" if row.flops is not None else "-"
        print(f"| {row.model} | {row.tool} | {row.seconds:.3f} | {row.mib:.0f} | {shown} | {row.note or '-'} |")


def summary_lines(rows: list[Row]) -> list[str]:
    """Per model where both flopgate and fvcore counted: how many times faster flopgate was
    (ratio of wall seconds) and fvcore's FLOP over flopgate's (ratio of training-step FLOP)."""
    done = {(row.model, row.tool): row for row in rows if row.flops is not None}
    lines = []
    for model in dict.fromkeys(row.model for row in rows):
        ours_row, fvcore_row = done.get((model, FLOPGATE)), done.get((model, FVCORE))
        if ours_row is None or fvcore_row is None:
            continue
        speedup = fvcore_row.seconds / ours_row.seconds if ours_row.seconds > 0 else float("inf")
        lines.append(f"{model}: flopgate is {speedup:.1f}x faster than fvcore; fvcore counts "
                     f"{fvcore_row.flops / ours_row.flops:.4f}x flopgate's FLOP")
    return lines


def big_model_line(seq_len: int) -> str:
    """flopgate alone on the 405B-shaped config, counted in a fresh process (seconds, MiB, FLOP)."""
    child = subprocess.run([sys.executable, __file__, "--child", BIG_MODEL, str(seq_len)],
                           capture_output=True, text=True, check=True)
    result = json.loads(child.stdout.strip().splitlines()[-1])
    return (f"{BIG_MODEL}, one training step at {seq_len} tokens, in a fresh process: first count "
            f"{result['cold']:.2f} s (includes transformers' lazy model imports), second count "
            f"{result['warm']:.2f} s; peak RSS of the whole process {result['peak_mib']:.0f} MiB; "
            f"{result['flops']:.4e} FLOP")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seq-len", type=int, default=512,
                        help="tokens per sequence for the table (32: a smoke run in seconds)")
    parser.add_argument("--child", nargs=2)
    args = parser.parse_args()
    if args.child:
        big_model_child(args.child[0], int(args.child[1]))
        return
    import transformers

    print(f"torch {torch.__version__}, transformers {transformers.__version__}, seq_len {args.seq_len}, batch 1")
    rows = measure_all(args.seq_len)
    print_table(rows)
    for line in summary_lines(rows):
        print(f"\n{line}")
    print(f"\n{big_model_line(BIG_SEQ_LEN)}")


if __name__ == "__main__":
    main()
