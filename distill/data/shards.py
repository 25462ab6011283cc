"""Pre-tokenized training shards: the format ``flopgate data prepare`` writes, and its reader.

A prepared folder holds ``manifest.json`` and, per shard ``n`` (five digits from 00000):

* ``shard-NNNNN.bin``: token ids, one per token, little-endian unsigned integers of the
  manifest's ``dtype`` (``uint16`` or ``uint32``), read with ``numpy.memmap``;
* ``shard-NNNNN.idx``: document offsets, little-endian int64, ``documents + 1`` entries:
  document ``d`` of the shard is tokens ``[idx[d], idx[d + 1])``; ``idx[0] = 0`` and
  ``idx[-1]`` is the shard's token count. A document never spans two shards;
* ``shard-NNNNN.mask`` (only when the manifest's ``loss_mask`` is true): one uint8 per token;
  1 when the token is a training target (the loss counts its prediction from the position
  before it), 0 when not. Text documents are all 1; chat documents are 1 on the assistant
  turns' tokens only (see :mod:`distill.data.prepare`).

Every document's tokens are followed by the tokenizer's EOS token (when it has one and the
document does not already end with it); that EOS is part of the document (mask 1 for text, 0
for chat).

Stream and packing (as for raw files in :mod:`distill.data.training_data`): the shards concatenated in
manifest order form one token stream; packed sequence ``i`` is stream positions
``[i L, i L + L]`` (L = seq_len, so L + 1 tokens): inputs are its first L tokens, labels its
last L; the tail shorter than L + 1 is dropped. A label whose mask is 0 is replaced by
``distill.data.training_data.IGNORE_INDEX``. Sequences cross document (and shard) boundaries;
:meth:`ShardData.sequence` reports where documents start inside one.

The manifest (JSON, sorted keys; the audit signs its sha256): ``format`` = ``flopgate.shards``
(:data:`FORMAT`) and ``format_version`` = 1 tell it from a raw-file manifest; ``dtype``;
``eos_token_id``; ``loss_mask``; ``tokenizer`` {``sha256`` over its files, ``files`` [{name,
sha256, bytes}], ``vocab_sha256`` (:func:`distill.data.training_data.vocabulary_digest`), ``size``};
``chat_template`` (null, or {``sha256`` of its UTF-8 text, ``source``: ``tokenizer`` or
``file``}); ``inputs`` [{path (relative to the manifest's folder), kind, sha256, bytes,
documents, tokens}]; ``shards`` [{tokens, documents, ``bin``/``idx``/``mask`` as {name,
sha256, bytes} (``mask`` null without a loss mask)}]; ``total_tokens``; ``total_documents``;
``versions`` (flopgate, tokenizers, transformers). Token counts include the EOS tokens.

Verification: :func:`open_shards` maps each file read-only, checks its size and hashes the
mapped bytes (the very mapping it then reads) against the manifest before any use.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from audit.errors import InputError

FORMAT = "flopgate.shards"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
DTYPES = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}
OFFSET_DTYPE = np.dtype("<i8")
MASK_DTYPE = np.dtype("u1")


def shard_names(number: int) -> dict[str, str]:
    """File names of shard ``number``: {"bin", "idx", "mask"}."""
    stem = f"shard-{number:05d}"
    return {"bin": f"{stem}.bin", "idx": f"{stem}.idx", "mask": f"{stem}.mask"}


def is_shard_manifest(manifest) -> bool:
    """Whether a parsed manifest is a shard manifest (by its ``format`` field)."""
    return isinstance(manifest, dict) and manifest.get("format") == FORMAT


@dataclass(frozen=True)
class ShardFile:
    name: str
    sha256: str
    bytes: int


@dataclass(frozen=True)
class Shard:
    tokens: int
    documents: int
    bin: ShardFile
    idx: ShardFile
    mask: Optional[ShardFile]


def _need(ok: bool, message: str, source: str, field: str) -> None:
    if not ok:
        raise InputError(message, source=source, field=field)


def _count(value, source: str, field: str, minimum: int = 0) -> int:
    _need(isinstance(value, int) and not isinstance(value, bool) and value >= minimum,
          f"expected a whole number >= {minimum}, got {value!r}", source, field)
    return value


def _file(entry, source: str, field: str) -> ShardFile:
    _need(isinstance(entry, dict), "expected an object {name, sha256, bytes}", source, field)
    name, digest = entry.get("name"), entry.get("sha256")
    _need(isinstance(name, str) and name != "" and "/" not in name and "\\" not in name and name not in (".", ".."),
          f"expected a plain file name, got {name!r}", source, f"{field}.name")
    _need(isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest),
          "expected 64 lowercase hex digits", source, f"{field}.sha256")
    return ShardFile(name, digest, _count(entry.get("bytes"), source, f"{field}.bytes"))


def parse_shards(manifest: dict, source: str) -> tuple[str, bool, list[Shard]]:
    """(dtype, loss_mask, shards) of a shard manifest; ``InputError`` naming the field that is
    missing or malformed, or whose sizes disagree with the token and document counts."""
    _need(manifest.get("format_version") == FORMAT_VERSION, f"expected {FORMAT_VERSION}", source, "format_version")
    dtype = manifest.get("dtype")
    _need(dtype in DTYPES, f"expected one of {sorted(DTYPES)}, got {dtype!r}", source, "dtype")
    loss_mask = manifest.get("loss_mask")
    _need(isinstance(loss_mask, bool), "expected true or false", source, "loss_mask")
    entries = manifest.get("shards")
    _need(isinstance(entries, list) and bool(entries), "expected a non-empty list of shards", source, "shards")
    shards = []
    for index, entry in enumerate(entries):
        where = f"shards[{index}]"
        _need(isinstance(entry, dict), "expected an object", source, where)
        tokens = _count(entry.get("tokens"), source, f"{where}.tokens", 1)
        documents = _count(entry.get("documents"), source, f"{where}.documents", 1)
        bin_file = _file(entry.get("bin"), source, f"{where}.bin")
        idx_file = _file(entry.get("idx"), source, f"{where}.idx")
        mask_file = _file(entry.get("mask"), source, f"{where}.mask") if loss_mask else None
        _need(loss_mask or entry.get("mask") is None, "expected null: the manifest has no loss mask",
              source, f"{where}.mask")
        _need(bin_file.bytes == tokens * DTYPES[dtype].itemsize, f"expected {tokens} x {DTYPES[dtype].itemsize} "
              f"bytes, got {bin_file.bytes}", source, f"{where}.bin.bytes")
        _need(idx_file.bytes == (documents + 1) * 8, f"expected ({documents} + 1) x 8 bytes, got {idx_file.bytes}",
              source, f"{where}.idx.bytes")
        _need(mask_file is None or mask_file.bytes == tokens, f"expected {tokens} bytes", source,
              f"{where}.mask.bytes")
        shards.append(Shard(tokens, documents, bin_file, idx_file, mask_file))
    total = _count(manifest.get("total_tokens"), source, "total_tokens", 1)
    _need(total == sum(s.tokens for s in shards), f"says {total}, its shards hold {sum(s.tokens for s in shards)}",
          source, "total_tokens")
    return dtype, loss_mask, shards


HASH_CHUNK = 64 << 20
"""Bytes hashed per step while a shard is verified (rounded down to whole pages, at least one);
each step's pages then leave the process's resident set (``MADV_DONTNEED``), so verifying a
corpus costs constant memory whatever its size."""


def _map_verified(path: Path, expected: ShardFile, dtype: np.dtype, source: str, field: str) -> np.ndarray:
    """``path`` mapped read-only as ``dtype``, after its size and the sha256 of the mapped bytes
    matched ``expected``. ``InputError`` naming the file otherwise. The bytes hashed are the
    mapping's own, chunk by chunk; the pages are released from the process as they are hashed
    (the page cache may keep them; a batch maps back in only the rows it reads)."""
    import mmap

    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise InputError(f"shard file not found: {path}", source=source, field=field) from None
    if size != expected.bytes:
        raise InputError(f"{path} has {size} bytes, the manifest says {expected.bytes}", source=source,
                         field=f"{field}.bytes")
    if size == 0:
        actual, mapped = hashlib.sha256(b"").hexdigest(), np.zeros(0, dtype=np.uint8)
    else:
        with open(path, "rb") as handle:
            mapped_file = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        digest, view = hashlib.sha256(), memoryview(mapped_file)
        chunk = max(1, HASH_CHUNK // mmap.PAGESIZE) * mmap.PAGESIZE  # madvise takes page-aligned ranges
        for start in range(0, size, chunk):
            digest.update(view[start:start + chunk])
            if hasattr(mapped_file, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
                mapped_file.madvise(mmap.MADV_DONTNEED, start, min(chunk, size - start))
        view.release()
        actual, mapped = digest.hexdigest(), np.frombuffer(mapped_file, dtype=np.uint8)
    if actual != expected.sha256:
        raise InputError(f"{path} has sha256 {actual[:12]}..., the manifest says {expected.sha256[:12]}...",
                         source=source, field=f"{field}.sha256")
    return mapped.view(dtype)


def verify_files(manifest: dict, bins: Sequence[Path], source: str) -> list[str]:
    """Hash every shard file (``bins[i]`` and the index and mask next to it) against the
    manifest; the bins' sha256 in order. ``InputError`` on the first that differs."""
    dtype, _, shards = parse_shards(manifest, source)
    _need(len(bins) == len(shards), f"lists {len(shards)} shards, the run has {len(bins)} files", source, "shards")
    for index, (shard, path) in enumerate(zip(shards, bins)):
        for kind, expected in (("bin", shard.bin), ("idx", shard.idx), ("mask", shard.mask)):
            if expected is not None:
                target = Path(path) if kind == "bin" else Path(path).parent / expected.name
                _map_verified(target, expected, np.dtype(np.uint8), source, f"shards[{index}].{kind}")
    return [shard.bin.sha256 for shard in shards]


class ShardSet:
    """The verified, mapped shards of a manifest, as one token stream (module docstring)."""

    def __init__(self, manifest: dict, bins: Sequence[Path], source: str):
        dtype, self.loss_mask, self.shards = parse_shards(manifest, source)
        _need(len(bins) == len(self.shards), f"lists {len(self.shards)} shards, the run has {len(bins)} files",
              source, "shards")
        self.tokens, self.offsets, self.masks = [], [], []
        for index, (shard, path) in enumerate(zip(self.shards, map(Path, bins))):
            where = f"shards[{index}]"
            self.tokens.append(_map_verified(path, shard.bin, DTYPES[dtype], source, f"{where}.bin"))
            offsets = np.array(_map_verified(path.parent / shard.idx.name, shard.idx, OFFSET_DTYPE, source,
                                             f"{where}.idx"))
            _need(offsets[0] == 0 and offsets[-1] == shard.tokens and bool(np.all(np.diff(offsets) > 0)),
                  f"expected document offsets rising from 0 to {shard.tokens}", source, f"{where}.idx")
            self.offsets.append(offsets)
            self.masks.append(_map_verified(path.parent / shard.mask.name, shard.mask, MASK_DTYPE, source,
                                            f"{where}.mask") if shard.mask is not None else None)
        self.starts = np.cumsum([0] + [s.tokens for s in self.shards])  # stream position of each shard
        self.total = int(self.starts[-1])

    def read(self, start: int, stop: int) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """Token ids (int64) and mask (uint8, or None) of stream positions [start, stop)."""
        ids, masks = [], []
        first = int(np.searchsorted(self.starts, start, side="right")) - 1
        for number in range(first, len(self.shards)):
            lo, hi = self.starts[number], self.starts[number + 1]
            if lo >= stop:
                break
            a, b = max(start, lo) - lo, min(stop, hi) - lo
            ids.append(self.tokens[number][a:b])
            if self.loss_mask:
                masks.append(self.masks[number][a:b])
        return (np.concatenate(ids).astype(np.int64),
                np.concatenate(masks) if self.loss_mask else None)

    def document_starts(self, start: int, stop: int) -> np.ndarray:
        """Stream positions in [start, stop) where a document begins (int64, rising)."""
        found = [offsets[:-1] + self.starts[number] for number, offsets in enumerate(self.offsets)
                 if self.starts[number] < stop and self.starts[number + 1] > start]
        positions = np.concatenate(found) if found else np.zeros(0, dtype=np.int64)
        return positions[(positions >= start) & (positions < stop)]


def manifest_json(manifest: dict) -> str:
    """A manifest as written: sorted, indented JSON and a final newline."""
    return json.dumps(manifest, indent=2, sort_keys=True) + "\n"
