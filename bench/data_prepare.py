"""Throughput of ``flopgate data prepare`` (:func:`distill.data.prepare.prepare`) for 1 and 2 workers.

Generates ``--mib`` MiB of plain text (seeded pseudo-words with a Zipf-like frequency,
paragraphs separated by blank lines), trains a byte-level BPE tokenizer (``--vocab`` entries)
on it offline with the ``tokenizers`` library, then prepares the text ``--repeats`` times per
worker count and prints a markdown table with the best run: wall seconds for the whole call
(reading, worker start-up, tokenizing, writing, hashing), the main process's CPU seconds (all
of the work with 1 worker; reading, dispatching, writing and hashing with more), tokens per
second over the wall time, and the speed-up against 1 worker. The load average before and
after is printed too: on a shared machine other work competes for the same cores. It also checks that every run wrote the same bytes.

Usage: python bench/data_prepare.py [--mib 16] [--vocab 8000] [--repeats 2] [--workers 1 2]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SEED = 20261130


def make_text(path: Path, mib: float) -> int:
    """``mib`` MiB of seeded text; the number of paragraphs."""
    rng = random.Random(SEED)
    syllables = [a + b for a in "bdfgklmnprstvz" for b in ("a", "e", "i", "o", "u", "ai", "ou")]
    words = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(20000)]
    weights = [1.0 / (rank + 10) for rank in range(len(words))]
    target, size, paragraphs = int(mib * (1 << 20)), 0, 0
    with open(path, "w", encoding="utf-8") as out:
        while size < target:
            sentences = []
            for _ in range(rng.randint(2, 6)):
                chosen = rng.choices(words, weights=weights, k=rng.randint(5, 18))
                sentences.append(" ".join(chosen).capitalize() + rng.choice([".", ".", ".", "?", "!"]))
            block = " ".join(sentences) + "\n\n"
            out.write(block)
            size += len(block.encode("utf-8"))
            paragraphs += 1
    return paragraphs


def make_tokenizer(folder: Path, text: Path, vocab: int) -> None:
    """A byte-level BPE fast tokenizer trained on ``text``, saved for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.train([str(text)], trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<|endoftext|>"],
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|endoftext|>").save_pretrained(str(folder))


def versions() -> str:
    from importlib.metadata import version

    return (f"Python {platform.python_version()}, tokenizers {version('tokenizers')}, "
            f"transformers {version('transformers')}, numpy {version('numpy')}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=float, default=16.0)
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()

    from distill.data.prepare import prepare

    load_before = tuple(round(x, 2) for x in os.getloadavg())
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        text = root / "bench.txt"
        paragraphs = make_text(text, args.mib)
        make_tokenizer(root / "tokenizer", text, args.vocab)
        rows, digests = [], set()
        for workers in args.workers:
            best = None
            for repeat in range(args.repeats):
                out = root / f"out-{workers}-{repeat}"
                start, cpu = time.perf_counter(), time.process_time()
                result = prepare([text], tokenizer_dir=root / "tokenizer", out=out, workers=workers)
                wall, cpu = time.perf_counter() - start, time.process_time() - cpu
                digests.add((out / "manifest.json").read_bytes())
                if best is None or wall < best[0]:
                    best = (wall, cpu)
            rows.append((workers, *best, result.manifest["total_tokens"]))
    print(f"date: {dt.date.today().isoformat()}; machine: {platform.machine()}, {os.cpu_count()} CPU cores "
          f"({platform.platform()}); {versions()}")
    print(f"input: {args.mib:g} MiB of generated text, {paragraphs:,} documents; byte-level BPE, "
          f"vocab {args.vocab}; best of {args.repeats}\n")
    print("| workers | wall (s) | main-process CPU (s) | tokens | tokens/s | vs 1 worker |")
    print("|---|---|---|---|---|---|")
    base = rows[0][1]
    for workers, wall, cpu, tokens in rows:
        print(f"| {workers} | {wall:.2f} | {cpu:.2f} | {tokens:,} | {tokens / wall:,.0f} | {base / wall:.2f}x |")
    print(f"\nload average (1, 5, 15 min) before: {load_before}, after: {tuple(round(x, 2) for x in os.getloadavg())}")
    print(f"\nidentical manifests across all runs: {'yes' if len(digests) == 1 else 'NO'}")
    return 0 if len(digests) == 1 else 1


if __name__ == "__main__":
    sys.exit(main())
