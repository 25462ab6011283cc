"""What sealing the generation journal costs per sample: the HMAC of one ``samples.jsonl`` line
(canonical JSON + HMAC-SHA256), its check on ``--resume``, and for scale the durable append
(write, flush, fsync) every line already pays.

    python bench/journal_mac.py [--n 20000] [--answer-words 300]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    from distill.generation.journal import SAMPLES_FILE, JobSeal, Journal, read_jsonl

    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=20000, help="MACs timed (default 20000)")
    parser.add_argument("--answer-words", type=int, default=300, help="words in the sample's answer")
    args = parser.parse_args()
    seal = JobSeal(b"\x07" * 32, "0f8c2d1e-1111-2222-3333-444455556666", "a" * 64)
    row = {"id": "p123", "messages": [{"role": "system", "content": "be brief"},
                                      {"role": "user", "content": "q " * 200}],
           "completion": {"role": "assistant", "content": "answer words " * args.answer_words},
           "teacher_model": "teacher-model",
           "sampling": {"model": "m", "max_tokens": 1024, "temperature": 1.0, "top_p": None, "seed": None},
           "usage": {"prompt_tokens": 210, "completion_tokens": 600}, "finish_reason": "stop",
           "response_id": "x", "status": "kept", "time": time.time()}
    sealed = {**row, "mac": seal.mac(SAMPLES_FILE, 41, row)}
    mac_s = timeit.timeit(lambda: seal.mac(SAMPLES_FILE, 41, row), number=args.n) / args.n
    check_s = timeit.timeit(lambda: seal.verifies(SAMPLES_FILE, 41, sealed), number=args.n) / args.n
    with tempfile.TemporaryDirectory() as folder:
        journal, appends = Journal(Path(folder), 1, seal), 500
        start = time.perf_counter()
        for _ in range(appends):
            journal.sample(row)
        append_s = (time.perf_counter() - start) / appends
        journal.close()
        start = time.perf_counter()
        read_jsonl(Path(folder) / SAMPLES_FILE, "samples", seal)
        read_s = (time.perf_counter() - start) / appends
    print(f"sample line: {len(json.dumps(sealed))} bytes")
    print(f"MAC one sample (append):       {mac_s * 1e6:8.1f} us")
    print(f"check one sample (resume):     {check_s * 1e6:8.1f} us")
    print(f"sealed durable append (fsync): {append_s * 1e6:8.1f} us")
    print(f"resume read + check per line:  {read_s * 1e6:8.1f} us")


if __name__ == "__main__":
    main()
