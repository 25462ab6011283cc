"""Training data: local files -> documents -> teacher-tokenizer ids -> packed sequences.

Two ways to the trainer:

* prepared shards (``flopgate data prepare``, :mod:`distill.data.prepare`, format in
  :mod:`distill.data.shards`): the plan's ``data.manifest`` is a shard manifest (its ``format`` field
  says so) and the trainer maps the token files; :func:`load_training_data` picks this path;
* raw files (this module, kept for existing plans): tokenized here at the start of every run
  and checked against a raw-file manifest (below).

Sources, by file name (read by both ways; chat records by ``prepare`` only):
* ``*.jsonl``: one JSON object per line: its ``text`` field (a string) is a document, or its
  ``messages`` field (a list of ``{role, content}`` strings) is a chat document;
* a folder: a dataset saved with ``datasets.save_to_disk`` (its ``text`` or ``messages``
  column; the ``train`` split of a DatasetDict); needs the optional ``datasets`` package;
* any other file: UTF-8 text, documents separated by blank lines.

Packing: documents are tokenized without special tokens, each followed by the EOS token (when
the tokenizer has one), and concatenated in file order into one stream. Sequence i covers
stream positions [i L, i L + L] (L = seq_len): inputs are its first L tokens, labels its last L,
so every token but the first is predicted once. The tail shorter than L + 1 is dropped.

Order: epoch e visits the sequences in ``torch.randperm`` order seeded by (seed, e). The
cursor is one integer, the count of sequences consumed so far over all ranks; it fully fixes
what comes next, which makes resume exact.

Manifest (JSON): the files in order, each with its sha256 (a folder: the root digest of
:func:`distill.runtime.checkpoint.checkpoint_digest`), byte size and token count (its share of the
stream, EOS included), the total, and a sha256 of the tokenizer's vocabulary. File paths are
relative to the manifest's folder.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import numpy as np
import torch

from audit.errors import InputError
from audit.fsutil import decode_utf8, files_under, parse_json, read_input, sha256_file, write_atomic
from audit.limits import MAX_DATA_BYTES, MAX_MANIFEST_BYTES
from distill.runtime.checkpoint import checkpoint_digest

IGNORE_INDEX = -100

MANIFEST_VERSION = 1


Document = Union[str, list]
"""A text document (str) or a chat document (a list of ``{"role": str, "content": str}``)."""


@dataclass(frozen=True)
class Source:
    """One input as read: its documents, and the sha256 and size of exactly the bytes they came
    from (a folder: the root digest of :func:`distill.runtime.checkpoint.checkpoint_digest`, taken just
    before the dataset is loaded, and the summed size of its files)."""

    path: Path
    kind: str                 # "text", "jsonl" or "dataset"
    documents: list
    sha256: str
    bytes: int

    @property
    def chat(self) -> bool:
        return any(not isinstance(document, str) for document in self.documents)


def read_documents(path: str | Path) -> list[str]:
    """The text documents of one source (see the module docstring); chat records refused."""
    return read_source(path)[0]


def read_source(path: str | Path) -> tuple[list[str], str]:
    """The text documents of one source and the sha256 of the bytes they came from, read once.
    Chat records are an ``InputError``: their loss mask needs ``flopgate data prepare``."""
    source = read_input_source(path)
    if source.chat:
        raise InputError("holds chat records ('messages'); the raw-text loader reads 'text' only: "
                         "tokenize chat data with `flopgate data prepare`", source=str(source.path),
                         field="messages")
    return source.documents, source.sha256


def read_input_source(path: str | Path) -> Source:
    """One source with text and chat documents (see the module docstring)."""
    path = Path(path)
    if path.is_dir():
        digest = checkpoint_digest(path)
        return Source(path, "dataset", _dataset_documents(path), digest, _size(path))
    raw = read_input(path, "data file", max_bytes=MAX_DATA_BYTES)
    text = decode_utf8(raw, path, "data file")
    digest = hashlib.sha256(raw).hexdigest()
    if path.suffix == ".jsonl":
        return Source(path, "jsonl", _jsonl_documents(text, path), digest, len(raw))
    documents = [block.strip() for block in text.split("\n\n") if block.strip()]
    return Source(path, "text", documents, digest, len(raw))


def jsonl_records(text: str, source: str):
    """``(line number, parsed value)`` of each non-blank line of JSONL ``text``; a line that is
    not JSON is an ``InputError`` naming ``source`` and the line."""
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"invalid JSON ({exc.msg})", source=source, field=f"line {number}") from None
        except RecursionError:
            raise InputError("invalid JSON (nested deeper than the parser can follow)", source=source,
                             field=f"line {number}") from None
        yield number, record


def _jsonl_documents(text: str, path: Path) -> list:
    documents = []
    for number, record in jsonl_records(text, str(path)):
        if isinstance(record, dict) and isinstance(record.get("text"), str):
            documents.append(record["text"])
        elif isinstance(record, dict) and "messages" in record:
            documents.append(chat_messages(record["messages"], str(path), f"line {number}: messages"))
        else:
            raise InputError("expected an object with a string field 'text' or a list field 'messages'",
                             source=str(path), field=f"line {number}")
    return documents


def chat_messages(messages, source: str, field: str) -> list[dict]:
    """A chat document: a non-empty list of ``{role, content}`` strings (other keys dropped)."""
    if not isinstance(messages, list) or not messages:
        raise InputError("expected a non-empty list of {role, content} messages", source=source, field=field)
    chat = []
    for index, message in enumerate(messages):
        if not (isinstance(message, dict) and isinstance(message.get("role"), str)
                and isinstance(message.get("content"), str)):
            raise InputError("expected an object with string fields 'role' and 'content'", source=source,
                             field=f"{field}[{index}]")
        chat.append({"role": message["role"], "content": message["content"]})
    return chat


def _dataset_documents(path: Path) -> list:
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
    if "text" in loaded.column_names:
        return [str(text) for text in loaded["text"]]
    if "messages" in loaded.column_names:
        return [chat_messages(messages, str(path), f"messages[{row}]") for row, messages in enumerate(loaded["messages"])]
    raise InputError(f"expected a 'text' or 'messages' column, found {loaded.column_names}", source=str(path),
                     field="text")


def tokenize_documents(documents: Sequence[str], tokenizer, *, starts: Optional[list] = None,
                       offset: int = 0) -> list[int]:
    """Token ids of the documents, each followed by EOS when the tokenizer has one. ``starts``:
    a list each document's start is appended to (its position in the stream + ``offset``)."""
    if not documents:
        return []
    encoded = tokenizer(list(documents), add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    for ids in encoded:
        if starts is not None and (ids or eos is not None):
            starts.append(offset + len(stream))
        stream.extend(ids)
        if eos is not None:
            stream.append(eos)
    return stream


def epoch_order(count: int, seed: int, epoch: int) -> torch.Tensor:
    """The order epoch ``epoch`` reads ``count`` packed sequences in: a ``torch.randperm``
    seeded by (seed, epoch). Shared by raw-file and shard data, so both resume the same way."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(count, generator=generator)


class EpochOrder:
    """Reading packed rows in training order; shared by every data set a recipe trains on.

    A data set says how many rows it has (``total_rows``) and how to fetch rows by id
    (``rows(ids)``, a tuple of CPU tensors whose second item is the next-token labels). This
    gives it ``len`` (the rows trained on), ``order(epoch)`` (those rows in a ``torch.randperm``
    order seeded by (seed, epoch), the same for raw files, shards and samples, so resume is
    exact), ``row_ids(start, count)`` and ``batch(start, count)`` for global cursor positions,
    and :meth:`hold_out`, which sets rows aside for evaluation before training starts."""

    seed: int
    ROW_UNIT = "row"                          # what a row-drawn split holds out whole (eval_split["by"])
    _trained: Optional[torch.Tensor] = None   # row ids trained on; None: all of them
    _order_cache: Optional[tuple[int, torch.Tensor]] = None
    _documents = None                         # the DocumentIndex once built (documents())
    eval_split: Optional[dict] = None         # how :meth:`hold_out` chose the held-out rows
    mask_documents: bool = False              # rows() adds position ids and document segments

    def document_starts(self) -> Optional[np.ndarray]:
        """Stream positions where documents start, or None when the data does not know them."""
        return None

    def documents(self):
        """The :class:`distill.data.documents.DocumentIndex` of the packed rows, or None."""
        if self._documents is None:
            starts = self.document_starts()
            if starts is None:
                return None
            from distill.data.documents import DocumentIndex

            tokens = self.total_rows() * self.seq_len + 1   # the stream the rows read
            self._documents = DocumentIndex.build(starts[starts < tokens], tokens, self.seq_len, self.total_rows())
        return self._documents

    def _with_layout(self, ids: torch.Tensor, inputs: torch.Tensor, labels: torch.Tensor) -> tuple:
        """(inputs, labels) or, with ``mask_documents``, (inputs, labels, position ids, segments)."""
        if not self.mask_documents:
            return inputs, labels
        documents = self.documents()
        if documents is None:
            raise InputError("document masking needs the documents' starts, which this data does not record",
                             field="data.mean_document_tokens")
        return (inputs, labels, *documents.row_layout(torch.as_tensor(ids)))

    def eval_rows(self, ids: torch.Tensor) -> tuple:
        """Held-out rows ``ids`` as evaluation reads them: split by document, only the labels of
        documents wholly held out are scored (the others are ``IGNORE_INDEX``)."""
        batch = self.rows(ids)
        if (self.eval_split or {}).get("by") != "document":
            return batch
        return (batch[0], self.documents().scored_labels(torch.as_tensor(ids), batch[1]), *batch[2:])

    def total_rows(self) -> int:
        raise NotImplementedError

    def rows(self, ids: torch.Tensor) -> tuple:
        raise NotImplementedError

    def __len__(self) -> int:
        return self.total_rows() if self._trained is None else len(self._trained)

    def order(self, epoch: int) -> torch.Tensor:
        """Row ids in the order epoch ``epoch`` reads them."""
        if self._order_cache is None or self._order_cache[0] != epoch:
            order = epoch_order(len(self), self.seed, epoch)
            self._order_cache = (epoch, order if self._trained is None else self._trained[order])
        return self._order_cache[1]

    def row_ids(self, start: int, count: int) -> torch.Tensor:
        """Row ids read at global cursor positions [start, start + count)."""
        n = len(self)
        return torch.stack([self.order(p // n)[p % n] for p in range(start, start + count)])

    def batch(self, start: int, count: int) -> tuple:
        """The rows at global cursor positions [start, start + count)."""
        return self.rows(self.row_ids(start, count))

    def limit(self, count: int) -> None:
        """Train on the first ``count`` rows only (e.g. those a teacher cache covers). Before any
        batch is read, and before :meth:`hold_out`."""
        if not 0 < count <= self.total_rows():
            raise InputError(f"cannot train on {count} of {self.total_rows()} packed sequences", field="data")
        self._trained, self._order_cache = torch.arange(count), None

    def hold_out(self, count: int, *, by_document: Optional[bool] = None) -> torch.Tensor:
        """Set at most ``count`` of the rows trained on aside; they are never trained on. Returns
        their ids, sorted; :attr:`eval_split` says how they were chosen. Before any batch is read.

        By document (the default when the data records where documents start): whole documents
        with every row they touch (:meth:`distill.data.documents.DocumentIndex.split`), so no
        held-out document is trained on. Otherwise (``by_document=False``, or data whose rows
        hold whole samples, as sequence KD's) rows drawn by a permutation seeded apart from the
        epochs'."""
        rows = self._trained if self._trained is not None else torch.arange(self.total_rows())
        if not 0 < count < len(rows):
            raise InputError(f"cannot hold out {count} of {len(rows)} packed sequences for evaluation: keep at least "
                             "one to train on", field="eval_sequences")
        documents = self.documents() if by_document is not False else None
        if by_document and documents is None:
            raise InputError("cannot hold out by document: the data does not record where documents start",
                             field="eval_sequences")
        if documents is not None:
            held, self._trained, self.eval_split = documents.split(rows, count, self.seed)
            self._order_cache = None
            return held
        self.eval_split = {"by": self.ROW_UNIT, "seed": self.seed, "rows": count, "rows_total": len(rows),
                           "fraction": count / len(rows)}
        chosen = rows[torch.randperm(len(rows), generator=torch.Generator().manual_seed(self.seed * 1_000_003 - 1))]
        held = chosen[:count].sort().values
        self._trained, self._order_cache = chosen[count:].sort().values, None
        return held


@dataclass
class PackedData(EpochOrder):
    """Packed sequences [n, seq_len + 1] and the seeded order they are read in."""

    sequences: torch.Tensor
    seed: int
    file_tokens: list[int]
    file_sha256: list[str]      # of the bytes that were tokenized, file by file
    starts: Optional[np.ndarray] = None  # stream positions where documents start (None: not known)

    def total_rows(self) -> int:
        return self.sequences.shape[0]

    @property
    def seq_len(self) -> int:
        return self.sequences.shape[1] - 1

    def document_starts(self) -> Optional[np.ndarray]:
        return self.starts

    def rows(self, ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Inputs and labels [len(ids), seq_len] of packed rows ``ids`` (and, with
        ``mask_documents``, their position ids and document segments)."""
        block = self.sequences[ids]
        return self._with_layout(ids, block[:, :-1].contiguous(), block[:, 1:].contiguous())

    def first_sequences(self, count: int) -> torch.Tensor:
        """Packed rows [0, count) [count, seq_len + 1] (int64): what a teacher cache covers."""
        return self.sequences[:count]


@dataclass(frozen=True)
class PackedSequence:
    """One packed sequence: ``tokens`` [seq_len + 1] int64, ``mask`` [seq_len + 1] uint8 (None
    without a loss mask), ``document_starts``: indices into ``tokens`` where a document begins."""

    tokens: np.ndarray
    mask: Optional[np.ndarray]
    document_starts: np.ndarray


class ShardData(EpochOrder):
    """Packed sequences over verified shards, read in the seeded order of
    :func:`distill.data.training_data.epoch_order`; the interface of :class:`distill.data.training_data.PackedData`
    (``len``, ``seq_len``, ``order``, ``batch``, ``sequences``, ``file_tokens``, ``file_sha256``)."""

    def __init__(self, shards, seq_len: int, seed: int):
        """``shards``: a verified :class:`distill.data.shards.ShardSet`."""
        self.shards, self.seed, self._seq_len = shards, seed, seq_len
        self.count = (shards.total - 1) // seq_len
        if self.count < 1:
            raise InputError(f"the shards hold {shards.total} tokens, fewer than seq_len + 1 = {seq_len + 1}",
                             field="data.seq_len")
        self.file_tokens = [s.tokens for s in shards.shards]
        self.file_sha256 = [s.bin.sha256 for s in shards.shards]
        self._sequences = None        # torch.Tensor [n, seq_len + 1], built on first use

    def total_rows(self) -> int:
        return self.count

    @property
    def seq_len(self) -> int:
        return self._seq_len

    @property
    def loss_mask(self) -> bool:
        return self.shards.loss_mask

    def sequence(self, row: int) -> PackedSequence:
        """Packed sequence ``row`` (storage order, not epoch order)."""
        start = row * self._seq_len
        stop = start + self._seq_len + 1
        ids, mask = self.shards.read(start, stop)
        return PackedSequence(ids, mask, self.shards.document_starts(start, stop) - start)

    def __iter__(self):
        """Every packed sequence once, in storage order."""
        return (self.sequence(row) for row in range(self.count))

    def rows(self, ids):
        """Inputs and labels [len(ids), seq_len] (torch int64) of packed rows ``ids``; labels whose
        mask is 0 are ``IGNORE_INDEX``. Reads only those rows from the mapped shards."""
        read = [self.sequence(int(row)) for row in ids]
        block = torch.from_numpy(np.stack([s.tokens for s in read]))
        inputs, labels = block[:, :-1].contiguous(), block[:, 1:].contiguous()
        if self.loss_mask:
            keep = torch.from_numpy(np.stack([s.mask[1:] for s in read])).bool()
            labels = labels.masked_fill(~keep, IGNORE_INDEX)
        return self._with_layout(ids, inputs, labels)

    def document_starts(self) -> np.ndarray:
        """Every document's start in the stream (from the shards' verified offsets)."""
        shards = self.shards
        return np.concatenate([offsets[:-1] + shards.starts[n] for n, offsets in enumerate(shards.offsets)])

    def first_sequences(self, count: int):
        """Packed rows [0, count) [count, seq_len + 1] (torch int64), read from the shards: what a
        teacher cache covers, without the rest of the corpus in memory."""
        ids, _ = self.shards.read(0, count * self._seq_len + 1)
        return torch.from_numpy(ids).unfold(0, self._seq_len + 1, self._seq_len).contiguous()

    @property
    def sequences(self):
        """All packed sequences [n, seq_len + 1] (torch int64) in memory, built on first use."""
        if self._sequences is None:
            self._sequences = self.first_sequences(self.count)
        return self._sequences


def open_packed_shards(manifest: dict, bins: Sequence[Path], *, seq_len: int, seed: int, tokenizer=None,
                       source: str = "manifest") -> ShardData:
    """The training data of a shard manifest: every shard file verified and mapped; with
    ``tokenizer``, its vocabulary must be the one the shards were tokenized with."""
    if tokenizer is not None:
        recorded = (manifest.get("tokenizer") or {}).get("vocab_sha256") if isinstance(manifest.get("tokenizer"),
                                                                                      dict) else None
        if recorded != vocabulary_digest(tokenizer):
            raise InputError("the shards were tokenized with a different vocabulary than the teacher's tokenizer",
                             source=source, field="tokenizer.vocab_sha256")
    from distill.data.shards import ShardSet

    return ShardData(ShardSet(manifest, bins, source), seq_len, seed)


def load_packed(files: Sequence[str | Path], tokenizer, seq_len: int, seed: int) -> PackedData:
    """Read, tokenize and pack ``files`` (see the module docstring)."""
    if not files:
        raise InputError("no data files given", field="data")
    stream: list[int] = []
    file_tokens, file_sha256, starts = [], [], []
    for path in files:
        documents, digest = read_source(path)
        ids = tokenize_documents(documents, tokenizer, starts=starts, offset=len(stream))
        file_tokens.append(len(ids))
        file_sha256.append(digest)
        stream.extend(ids)
    count = (len(stream) - 1) // seq_len
    if count < 1:
        raise InputError(f"the data holds {len(stream)} tokens, fewer than seq_len + 1 = {seq_len + 1}",
                         field="data.seq_len")
    tokens = torch.tensor(stream[:count * seq_len + 1], dtype=torch.int64)
    sequences = tokens.unfold(0, seq_len + 1, seq_len).contiguous()
    return PackedData(sequences=sequences, seed=seed, file_tokens=file_tokens, file_sha256=file_sha256,
                      starts=np.asarray(starts, dtype=np.int64))


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
        return sum(f.stat().st_size for f in files_under(path, "dataset folder"))
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
    """A manifest and its files' absolute paths (a shard manifest's files: its ``.bin`` token
    files). ``InputError`` on a malformed manifest, or when the bytes read are not the ones with
    ``expected_sha256`` (the audited manifest)."""
    path = Path(path)
    if not path.exists():
        raise InputError("manifest not found", source=str(path))
    raw = read_input(path, "the manifest", max_bytes=MAX_MANIFEST_BYTES)
    if expected_sha256 is not None and hashlib.sha256(raw).hexdigest() != expected_sha256:
        raise InputError(f"is not the audited manifest (sha256 {hashlib.sha256(raw).hexdigest()[:12]}... read, "
                         f"{expected_sha256[:12]}... audited)", source=str(path))
    manifest = parse_json(raw, path, "the manifest")
    folder = path.resolve().parent
    from distill.data.shards import is_shard_manifest, parse_shards

    if is_shard_manifest(manifest):  # prepared shards: the files are the token files, in order
        shards = parse_shards(manifest, str(path))[2]
        return manifest, [folder / shard.bin.name for shard in shards]
    if not isinstance(manifest, dict) or manifest.get("manifest_version") != MANIFEST_VERSION:
        raise InputError(f"expected manifest_version {MANIFEST_VERSION}", source=str(path), field="manifest_version")
    entries = manifest.get("files")
    if not isinstance(entries, list) or not entries:
        raise InputError("expected a non-empty list of files", source=str(path), field="files")
    for index, entry in enumerate(entries):
        if not (isinstance(entry, dict) and isinstance(entry.get("path"), str)
                and isinstance(entry.get("sha256"), str) and isinstance(entry.get("tokens"), int)):
            raise InputError("expected {path, sha256, tokens}", source=str(path), field=f"files[{index}]")
    return manifest, [folder / entry["path"] for entry in entries]


def check_manifest(manifest: dict, files: Sequence[str | Path], *, tokenizer=None,
                   file_tokens: Optional[Iterable[int]] = None, file_sha256: Optional[Sequence[str]] = None,
                   source: str = "manifest") -> None:
    """Require ``files`` to be the manifest's files, in order, byte for byte.

    With ``file_sha256`` (from :func:`load_packed`: the digests of the bytes it tokenized) those
    digests are compared, so what trains is what was checked; without, each file is hashed.
    With ``tokenizer``, its vocabulary must be the one the manifest was built with; with
    ``file_tokens``, the per-file token counts must match too.

    A shard manifest: every shard file is hashed (``files`` are its ``.bin`` files, the index
    and mask next to each), and ``tokenizer`` must have the vocabulary the shards were made with.
    """
    from distill.data.shards import is_shard_manifest, verify_files

    if is_shard_manifest(manifest):
        recorded = manifest.get("tokenizer") if isinstance(manifest.get("tokenizer"), dict) else {}
        if tokenizer is not None and recorded.get("vocab_sha256") != vocabulary_digest(tokenizer):
            raise InputError("the shards were tokenized with a different vocabulary than the teacher's tokenizer",
                             source=source, field="tokenizer.vocab_sha256")
        verify_files(manifest, [Path(f) for f in files], source)
        return
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


def load_training_data(files: Sequence[str | Path], tokenizer, seq_len: int, seed: int, *,
                       manifest: str | Path | None = None, manifest_sha256: Optional[str] = None,
                       manifest_data: Optional[dict] = None):
    """The run's packed training data. With a shard manifest (its ``format`` field): the
    prepared shards, ``files`` being their ``.bin`` files, each verified against the manifest as
    it is mapped (:func:`distill.data.shards.open_packed_shards`). Otherwise the raw ``files``
    tokenized here and, with a manifest, checked against it byte for byte. ``manifest_sha256``:
    the manifest read must be the audited one. ``manifest_data``: the manifest as the attested
    layer already read it (not read again)."""
    if manifest is None:
        return load_packed(files, tokenizer, seq_len, seed)
    loaded = manifest_data if manifest_data is not None else read_manifest(manifest, expected_sha256=manifest_sha256)[0]
    from distill.data.shards import is_shard_manifest

    if is_shard_manifest(loaded):
        return open_packed_shards(loaded, [Path(f) for f in files], seq_len=seq_len, seed=seed,
                                  tokenizer=tokenizer, source=str(manifest))
    data = load_packed(files, tokenizer, seq_len, seed)  # the bytes tokenized must be the audited ones
    check_manifest(loaded, files, tokenizer=tokenizer, file_tokens=data.file_tokens, file_sha256=data.file_sha256,
                   source=str(manifest))
    return data
