"""Wall time of `flopgate check` on every example plan: cold (empty count cache) and cached.

    python bench/check_bench.py

Each run is a fresh process, so the times include Python start-up and imports, as a user
sees them. Cold runs count both models on the meta device (importing torch and
transformers); cached runs read per-token counts from the cache and import neither.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed(args: list[str], env: dict) -> tuple[float, int]:
    start = time.perf_counter()
    code = subprocess.run(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
    return time.perf_counter() - start, code


def main() -> None:
    print("| plan | exit code | cold (s) | cached (s) |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "FLOPGATE_HOME": f"{tmp}/home"}
        for plan in sorted((ROOT / "examples").glob("*.yaml")):
            env["FLOPGATE_CACHE_DIR"] = f"{tmp}/cache-{plan.stem}"
            args = [sys.executable, "-m", "audit.cli.main", "check", str(plan), "--out", f"{tmp}/out-{plan.stem}"]
            cold, code = timed(args, env)
            cached, _ = timed(args, env)
            print(f"| {plan.name} | {code} | {cold:.2f} | {cached:.2f} |")


if __name__ == "__main__":
    main()
