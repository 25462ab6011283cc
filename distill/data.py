"""Training data: local files -> documents -> teacher-tokenizer ids -> packed sequences.

Sources, by file name:
* ``*.jsonl``: one JSON object per line, its ``text`` field is a document;
* a folder: a dataset saved with ``datasets.save_to_disk`` (its ``text`` column; the ``train``
  split of a DatasetDict); needs the optional ``datasets`` package;
* any other file: UTF-8 text, documents separated by blank lines.

Packing: documents are tokenized without special tokens, each followed by the EOS token (when
the tokenizer has one), and concatenated in file order into one stream. Sequence i covers
stream positions [i L, i L + L] (L = seq_len): inputs are its first L tokens, labels its last L,
so every token but the first is predicted once. The tail shorter than L + 1 is dropped.

Order: epoch e visits the sequences in ``torch.randperm`` order seeded by (seed, e). The
cursor is one integer, the count of sequences consumed so far over all ranks; it fully fixes
what comes next, which makes resume exact.

Manifest (JSON): the files in order, each with its sha256 (a folder: the root digest of
:func:`distill.checkpoint.checkpoint_digest`), byte size and token count (its share of the
stream, EOS included), the total, and a sha256 of the tokenizer's vocabulary. File paths are
relative to the manifest's folder.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

import torch

from audit.errors import InputError
from audit.fsutil import decode_utf8, parse_json, read_input, sha256_file, write_atomic
from distill.checkpoint import checkpoint_digest

MANIFEST_VERSION = 1


def read_documents(path: str | Path) -> list[str]:
    """The documents of one source (see the module docstring)."""
    return read_source(path)[0]


def read_source(path: str | Path) -> tuple[list[str], str]:
    """The documents of one source and the sha256 of exactly the bytes they came from, read
    once (a folder: its root digest, taken just before the dataset is loaded)."""
    path = Path(path)
    if path.is_dir():
        digest = checkpoint_digest(path)
        return _dataset_documents(path), digest
    raw = read_input(path, "data file")
    text = decode_utf8(raw, path, "data file")
    if path.suffix == ".jsonl":
        return _jsonl_documents(text, path), hashlib.sha256(raw).hexdigest()
    return [block.strip() for block in text.split("\n\n") if block.strip()], hashlib.sha256(raw).hexdigest()


def _jsonl_documents(text: str, path: Path) -> list[str]:
    documents = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"invalid JSON ({exc.msg})", source=str(path), field=f"line {number}") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise InputError("expected an object with a string field 'text'", source=str(path),
                             field=f"line {number}")
        documents.append(record["text"])
    return documents


def _dataset_documents(path: Path) -> list[str]:
    try:
        import datasets
    except ImportError:
        raise InputError("a data folder is read as a saved `datasets` dataset, which needs the "
                         "`datasets` package (pip install datasets)", source=str(path)) from None
    try:
        loaded = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError, OSError) as exc:
        raise InputError(f"not a saved `datasets` dataset ({exc.__class__.__name__})", source=str(path)) from None
    if isinstance(loaded, datasets.DatasetDict):
        if "train" not in loaded:
            raise InputError(f"expected a 'train' split, found {sorted(loaded)}", source=str(path))
        loaded = loaded["train"]
    if "text" not in loaded.column_names:
        raise InputError(f"expected a 'text' column, found {loaded.column_names}", source=str(path), field="text")
    return [str(text) for text in loaded["text"]]


def tokenize_documents(documents: Sequence[str], tokenizer) -> list[int]:
    """Token ids of the documents, each followed by EOS when the tokenizer has one."""
    if not documents:
        return []
    encoded = tokenizer(list(documents), add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    for ids in encoded:
        stream.extend(ids)
        if eos is not None:
            stream.append(eos)
    return stream


@dataclass
class PackedData:
    """Packed sequences [n, seq_len + 1] and the seeded order they are read in."""

    sequences: torch.Tensor
    seed: int
    file_tokens: list[int]
    file_sha256: list[str]      # of the bytes that were tokenized, file by file

    def __post_init__(self):
        self._order_cache: tuple[int, torch.Tensor] | None = None

    def __len__(self) -> int:
        return self.sequences.shape[0]

    @property
    def seq_len(self) -> int:
        return self.sequences.shape[1] - 1

    def order(self, epoch: int) -> torch.Tensor:
        """Sequence indices in the order epoch ``epoch`` reads them."""
        if self._order_cache is None or self._order_cache[0] != epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._order_cache = (epoch, torch.randperm(len(self), generator=generator))
        return self._order_cache[1]

    def batch(self, start: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and labels [count, seq_len] for global cursor positions [start, start + count)."""
        rows = [self.order(position // len(self))[position % len(self)] for position in range(start, start + count)]
        block = self.sequences[torch.stack(rows)]
        return block[:, :-1].contiguous(), block[:, 1:].contiguous()


def load_packed(files: Sequence[str | Path], tokenizer, seq_len: int, seed: int) -> PackedData:
    """Read, tokenize and pack ``files`` (see the module docstring)."""
    if not files:
        raise InputError("no data files given", field="data")
    stream: list[int] = []
    file_tokens, file_sha256 = [], []
    for path in files:
        documents, digest = read_source(path)
        ids = tokenize_documents(documents, tokenizer)
        file_tokens.append(len(ids))
        file_sha256.append(digest)
        stream.extend(ids)
    count = (len(stream) - 1) // seq_len
    if count < 1:
        raise InputError(f"the data holds {len(stream)} tokens, fewer than seq_len + 1 = {seq_len + 1}",
                         field="data.seq_len")
    tokens = torch.tensor(stream[:count * seq_len + 1], dtype=torch.int64)
    sequences = tokens.unfold(0, seq_len + 1, seq_len).contiguous()
    return PackedData(sequences=sequences, seed=seed, file_tokens=file_tokens, file_sha256=file_sha256)


def vocabulary_digest(tokenizer) -> str:
    """sha256 of the tokenizer's token -> id map (canonical JSON); changes with the vocabulary."""
    canonical = json.dumps(tokenizer.get_vocab(), sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def source_digest(path: str | Path) -> str:
    """sha256 of a data file, or the root digest of a saved dataset folder."""
    path = Path(path)
    if path.is_dir():
        return checkpoint_digest(path)
    try:
        return sha256_file(path)
    except FileNotFoundError:
        raise InputError("data file not found", source=str(path)) from None


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size


def build_manifest(files: Sequence[str | Path], tokenizer, base: str | Path | None = None) -> dict:
    """The manifest of ``files`` as tokenized by ``tokenizer``; paths relative to ``base``."""
    base = Path(base).resolve() if base is not None else None
    entries = []
    for path in map(Path, files):
        tokens = len(tokenize_documents(read_documents(path), tokenizer))
        shown = os.path.relpath(path.resolve(), base) if base is not None else str(path)
        entries.append({"path": Path(shown).as_posix(), "sha256": source_digest(path),
                        "bytes": _size(path), "tokens": tokens})
    return {"manifest_version": MANIFEST_VERSION, "tokenizer_vocab_sha256": vocabulary_digest(tokenizer),
            "tokenizer_size": len(tokenizer), "files": entries,
            "total_tokens": sum(entry["tokens"] for entry in entries)}


def write_manifest(path: str | Path, manifest: dict) -> Path:
    """Write a manifest atomically as sorted, indented JSON."""
    return write_atomic(path, json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def read_manifest(path: str | Path, *, expected_sha256: Optional[str] = None) -> tuple[dict, list[Path]]:
    """A manifest and its files' absolute paths. ``InputError`` on a malformed manifest, or
    when the bytes read are not the ones with ``expected_sha256`` (the audited manifest)."""
    path = Path(path)
    if not path.exists():
        raise InputError("manifest not found", source=str(path))
    raw = read_input(path, "the manifest")
    if expected_sha256 is not None and hashlib.sha256(raw).hexdigest() != expected_sha256:
        raise InputError(f"is not the audited manifest (sha256 {hashlib.sha256(raw).hexdigest()[:12]}... read, "
                         f"{expected_sha256[:12]}... audited)", source=str(path))
    manifest = parse_json(raw, path, "the manifest")
    if not isinstance(manifest, dict) or manifest.get("manifest_version") != MANIFEST_VERSION:
        raise InputError(f"expected manifest_version {MANIFEST_VERSION}", source=str(path), field="manifest_version")
    entries = manifest.get("files")
    if not isinstance(entries, list) or not entries:
        raise InputError("expected a non-empty list of files", source=str(path), field="files")
    for index, entry in enumerate(entries):
        if not (isinstance(entry, dict) and isinstance(entry.get("path"), str)
                and isinstance(entry.get("sha256"), str) and isinstance(entry.get("tokens"), int)):
            raise InputError("expected {path, sha256, tokens}", source=str(path), field=f"files[{index}]")
    folder = path.resolve().parent
    return manifest, [folder / entry["path"] for entry in entries]


def check_manifest(manifest: dict, files: Sequence[str | Path], *, tokenizer=None,
                   file_tokens: Optional[Iterable[int]] = None, file_sha256: Optional[Sequence[str]] = None,
                   source: str = "manifest") -> None:
    """Require ``files`` to be the manifest's files, in order, byte for byte.

    With ``file_sha256`` (from :func:`load_packed`: the digests of the bytes it tokenized) those
    digests are compared, so what trains is what was checked; without, each file is hashed.
    With ``tokenizer``, its vocabulary must be the one the manifest was built with; with
    ``file_tokens``, the per-file token counts must match too.
    """
    entries = manifest["files"]
    if len(entries) != len(files):
        raise InputError(f"lists {len(entries)} data files, the run has {len(files)}", source=source, field="files")
    for index, (entry, path) in enumerate(zip(entries, files)):
        actual = file_sha256[index] if file_sha256 is not None else source_digest(path)
        if actual != entry["sha256"]:
            raise InputError(f"{path} has sha256 {actual[:12]}..., the manifest says {entry['sha256'][:12]}...",
                             source=source, field=f"files[{index}].sha256")
    if tokenizer is not None and manifest.get("tokenizer_vocab_sha256") != vocabulary_digest(tokenizer):
        raise InputError("was built with a different tokenizer vocabulary than the teacher's",
                         source=source, field="tokenizer_vocab_sha256")
    if file_tokens is not None:
        for index, (entry, tokens) in enumerate(zip(entries, file_tokens)):
            if tokens != entry["tokens"]:
                raise InputError(f"{entry['path']} tokenizes to {tokens} tokens, the manifest says {entry['tokens']}",
                                 source=source, field=f"files[{index}].tokens")
