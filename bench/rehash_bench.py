"""Time hashing a model folder with ``audit.weights.folder_digest``: cold, with the digest record
(fast path), and after touching one file.

Makes ``--gib`` GiB of random safetensors-like files (an 8-byte header length, a JSON header,
random bytes) in ``--files`` files under a temp folder, waits past the record's racy margin (a
fresh file is never recorded), then prints a markdown table. ``FLOPGATE_HOME`` is pointed at a
temp folder so the user's home (and its MAC secret) is not touched.

Page cache: the files were just written, so they are in the page cache unless it is dropped.
The script tries ``echo 3 > /proc/sys/vm/drop_caches`` (root only; refused in most containers)
before the cold run and prints whether it worked.

Usage: python bench/rehash_bench.py [--gib 3] [--files 4] [--dir /path/on/the/disk/to/test]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

CHUNK = 16 << 20  # bytes written per call (16 MiB)


def make_folder(folder: Path, gib: float, files: int) -> int:
    """Write ``files`` files totalling ``gib`` GiB of random bytes; the total in bytes."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    per_file = int(gib * (1 << 30)) // files
    for index in range(files):
        header = json.dumps({"__metadata__": {"format": "pt"}}).encode()
        with open(folder / f"model-{index + 1:05d}-of-{files:05d}.safetensors", "wb") as out:
            out.write(struct.pack("<Q", len(header)) + header)
            left = per_file - 8 - len(header)
            while left > 0:
                out.write(os.urandom(min(CHUNK, left)))
                left -= CHUNK
            out.flush()
            os.fsync(out.fileno())
    return sum(p.stat().st_size for p in folder.iterdir())


def drop_caches() -> str:
    """Sync, then ask the kernel to drop the page cache; what happened, in words."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as handle:
            handle.write("3\n")
        return "dropped"
    except OSError as exc:
        return f"not dropped ({exc.strerror})"


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=3.0, help="total size of the weights (GiB)")
    parser.add_argument("--files", type=int, default=4, help="number of weight files")
    parser.add_argument("--dir", default=None, help="parent folder for the temp folder (default: $TMPDIR)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="rehash-bench-", dir=args.dir))
    os.environ["FLOPGATE_HOME"] = str(work / "home")
    from audit import weights

    try:
        folder, record = work / "model", work / "home" / "cache" / "digests.json"
        write_s, total = timed(lambda: make_folder(folder, args.gib, args.files))
        time.sleep(weights.RACY_MARGIN_NS / 1e9 + 0.5)  # fresh files are never recorded
        cache = drop_caches()
        gib = total / (1 << 30)
        rows = []
        cold_s, cold = timed(lambda: weights.folder_digest(folder, record=record))
        rows.append((f"cold full hash, writes the record (page cache {cache})", cold_s, cold.bytes_read))
        warm_s, warm = timed(lambda: weights.folder_digest(folder))
        rows.append(("full hash again, no record (page cache warm)", warm_s, warm.bytes_read))
        fast_s, fast = timed(lambda: weights.folder_digest(folder, record=record))
        rows.append(("re-hash with the record (fast path)", fast_s, fast.bytes_read))
        verify_s, _ = timed(lambda: weights.verify_unchanged(fast))
        rows.append(("verify_unchanged (re-list, re-stat)", verify_s, 0))
        os.utime(folder / "model-00001-of-{:05d}.safetensors".format(args.files))
        touched_s, touched = timed(lambda: weights.folder_digest(folder, record=record))
        rows.append(("re-hash after touching one file", touched_s, touched.bytes_read))
        assert cold.root_sha256 == warm.root_sha256 == fast.root_sha256 == touched.root_sha256
        assert fast.bytes_read == 0

        print(f"{gib:.2f} GiB in {args.files} files + config.json under {work} "
              f"(written in {write_s:.1f} s); nproc {os.cpu_count()}; Python {sys.version.split()[0]}")
        print()
        print("| run | time (s) | GiB read | GiB/s |")
        print("|---|---|---|---|")
        for name, seconds, read in rows:
            read_gib = read / (1 << 30)
            rate = f"{read_gib / seconds:.2f}" if read else "-"
            print(f"| {name} | {seconds:.3f} | {read_gib:.2f} | {rate} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
