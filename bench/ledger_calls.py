"""What one metered ledger write costs on SQLite: a FLOP charge and a generation job's token
hold, each through the locked read-verify-check-append (``Ledger.metered``), beside a plain
append (what a generation row was before issue 23), N calls each into a fresh file.

    python bench/ledger_calls.py [--calls 500] [--prefill 0]

``--prefill R`` first writes R rows of another audit, to show that a call's cost does not grow
with the ledger (a ``Ledger`` verifies only the rows written since it last looked). Prints
milliseconds per call. Run against older code (PYTHONPATH) it times what that code has.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

AUDIT, OTHER = "cd" * 32, "ef" * 32


def timed(calls: int, write) -> float:
    began = time.perf_counter()
    for i in range(calls):
        write(i)
    return (time.perf_counter() - began) / calls * 1000


def main() -> int:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from audit.ledger.store import Ledger

    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--prefill", type=int, default=0)
    args = parser.parse_args()
    key = Ed25519PrivateKey.generate()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        def fresh(name: str) -> Ledger:
            ledger = Ledger(Path(tmp) / f"{name}.sqlite")
            for i in range(args.prefill):
                ledger.append("run", OTHER, {"run_id": f"other-{i}"}, key)
            return ledger

        with fresh("append") as ledger:
            results["append (plain row)"] = timed(args.calls, lambda i: ledger.append(
                "run", AUDIT, {"run_id": "r", "i": i}, key))
        with fresh("charge") as ledger:
            results["charge (FLOP)"] = timed(args.calls, lambda i: ledger.charge(
                AUDIT, 1e30, "run-1", i, i + 1, 100, 1.0, key))
        if hasattr(Ledger, "hold_tokens"):
            with fresh("hold") as ledger:
                results["hold_tokens (generation)"] = timed(args.calls, lambda i: ledger.hold_tokens(
                    AUDIT, "job-1", held=(10 * (i + 1), 10 * (i + 1)), used=(10 * i, 10 * i),
                    limits=(1e12, 1e12), body={"status": "running"}, private_key=key))
            with fresh("fresh-reader") as ledger:  # each call a new Ledger: verifies the whole chain
                def fresh_reader(i: int) -> None:
                    with Ledger(ledger.path) as other:
                        other.charge(AUDIT, 1e30, "run-1", i, i + 1, 100, 1.0, key)
                results["charge, new Ledger each call"] = timed(min(args.calls, 100), fresh_reader)
    print(f"SQLite (WAL, synchronous=FULL), {args.calls} calls, {args.prefill} rows before; "
          f"{platform.python_version()} on {platform.machine()}")
    for name, ms in results.items():
        print(f"  {name:32s} {ms:7.3f} ms/call")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
