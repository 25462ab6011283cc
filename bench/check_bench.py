"""Wall time of `flopgate check` on every example plan: cold (empty count cache) and cached.

    python bench/check_bench.py                               # every examples/*.yaml
    python bench/check_bench.py examples/api-teacher.yaml     # some plans only (a smoke run)

Each run is a fresh process, so the times include Python start-up and imports, as a user
sees them. Cold runs count both models on the meta device (importing torch and
transformers); cached runs read per-token counts from the cache and import neither.

After the table: the median cold and cached times over the plans and their ratio. A check
that did not run to a verdict (exit code 1: unexpected error, 2: invalid input) makes its
times meaningless: such plans are named and the bench exits 1.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple, Optional

ROOT = Path(__file__).resolve().parents[1]
VERDICT_CODES = {0: "ALLOW", 3: "REVIEW", 4: "DENY"}  # `flopgate check` exit codes with a verdict


class Timing(NamedTuple):
    """One plan: the cold run's exit code and wall seconds, cold and cached."""

    plan: str
    code: int
    cold: float
    cached: float


def timed(args: list[str], env: dict) -> tuple[float, int]:
    """(wall seconds, exit code) of one process."""
    start = time.perf_counter()
    code = subprocess.run(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
    return time.perf_counter() - start, code


def time_plan(plan: Path, tmp: str, env: dict) -> Timing:
    """A cold run (its own empty count cache) then a cached run of `flopgate check` on ``plan``."""
    env = {**env, "FLOPGATE_CACHE_DIR": f"{tmp}/cache-{plan.stem}"}
    args = [sys.executable, "-m", "audit.cli.main", "check", str(plan), "--out"]
    cold, code = timed(args + [f"{tmp}/out-{plan.stem}-cold"], env)
    cached, _ = timed(args + [f"{tmp}/out-{plan.stem}-cached"], env)
    return Timing(plan.name, code, cold, cached)


def summary_lines(timings: list[Timing]) -> list[str]:
    """Median cold and cached seconds over the plans, their ratio, and the plans without a verdict."""
    cold = statistics.median(t.cold for t in timings)
    cached = statistics.median(t.cached for t in timings)
    plans = f"{len(timings)} plan{'' if len(timings) == 1 else 's'}"
    lines = [f"median over {plans}: cold {cold:.2f} s, cached {cached:.2f} s "
             f"(cached is {cold / cached:.1f}x faster)"]
    failed = [f"{t.plan} (exit code {t.code})" for t in timings if t.code not in VERDICT_CODES]
    if failed:
        lines.append(f"no verdict, times meaningless: {', '.join(failed)}")
    return lines


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("plans", nargs="*", type=Path, help="plan files (default: every examples/*.yaml)")
    args = parser.parse_args(argv)
    plans = args.plans or sorted((ROOT / "examples").glob("*.yaml"))
    print("| plan | exit code | cold (s) | cached (s) |")
    print("|---|---|---|---|")
    timings = []
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "FLOPGATE_HOME": f"{tmp}/home"}
        for plan in plans:
            timing = time_plan(plan.resolve(), tmp, env)
            timings.append(timing)
            print(f"| {timing.plan} | {timing.code} | {timing.cold:.2f} | {timing.cached:.2f} |", flush=True)
    for line in summary_lines(timings):
        print(f"\n{line}")
    return 1 if any(t.code not in VERDICT_CODES for t in timings) else 0


if __name__ == "__main__":
    sys.exit(main())
