"""Two tokenizations of the same plain text, for cross-tokenizer logit distillation: the format
``flopgate data prepare --teacher-tokenizer`` adds to a shard folder, and its reader.

The shards (:mod:`distill.data.shards`) hold the STUDENT's tokens. Beside them:

* ``teacher-ids.bin``: the teacher's tokens of the same documents, in the same order (each
  document followed by the teacher's EOS), little-endian unsigned integers of ``dtype``;
* ``teacher-boundaries.bin`` and ``student-boundaries.bin``: little-endian int64, one per token
  of each stream: the token's *boundary*, the character of the packed text where the text it is
  predicted from ends (:func:`token_boundaries`). Documents are laid end to end,
  :data:`DOCUMENT_GAP` virtual character apart (what each EOS token spans).

The manifest's ``teacher_tokenization`` object (signed with the manifest): ``tokenizer`` {sha256,
files, vocab_sha256, size} of the teacher's tokenizer, ``eos_token_id``, ``dtype``,
``total_tokens`` (the teacher's count of the text: what the audit counts the teacher's forward
on), and ``files`` {teacher_ids, teacher_boundaries, student_boundaries: {name, sha256, bytes}}.
Plain text only: a chat template renders a conversation differently for each tokenizer, so
chat records are refused.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from audit.errors import InputError

DOCUMENT_GAP = 1
"""Virtual characters between two documents of the packed stream (what an EOS token spans)."""


def token_boundaries(offsets: np.ndarray, text: str, base: int = 0) -> np.ndarray:
    """The boundary of each token of ``text`` (see the module docstring): ``base`` + the end of the
    previous token's characters (0 for the first). ``offsets``: [n, 2] character (start, end)
    per token, as fast tokenizers return them. Whitespace between two tokens (offsets that leave
    out a leading space) belongs to the next token. A token is no boundary when it starts before
    its predecessor ends (a piece of a character split into bytes) or after text the tokenizer
    dropped (a character outside its vocabulary): it repeats the previous boundary, so the array
    stays non-decreasing and only the first token at a boundary counts."""
    offsets = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    n = len(offsets)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    ends = np.maximum.accumulate(offsets[:, 1])
    out = np.zeros(n, dtype=np.int64)
    out[1:] = ends[:-1]
    clean = np.ones(n, dtype=bool)
    clean[0] = offsets[0, 0] == 0 or text[:offsets[0, 0]].isspace()
    clean[1:] = offsets[1:, 0] >= ends[:-1]
    for k in np.flatnonzero(clean[1:] & (offsets[1:, 0] > ends[:-1])) + 1:  # a gap: only whitespace may be left out
        clean[k] = text[ends[k - 1]:offsets[k, 0]].isspace()
    out = np.where(clean, out, -1)
    return np.maximum.accumulate(out) + base  # a leading -1 stays below every boundary: never aligned




@dataclass(frozen=True)
class TokenStream:
    """One tokenization of the packed text: token ids and each token's boundary."""

    ids: np.ndarray
    boundaries: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)


def encode_documents(texts: Sequence[str], tokenizer, *, eos: int | None) -> TokenStream:
    """Plain-text documents -> the packed stream of one fast tokenizer, with boundaries: each
    document's tokens (no special tokens added), then ``eos`` (when given), documents
    :data:`DOCUMENT_GAP` characters apart."""
    ids, bounds, base = [], [], 0
    encoded = tokenizer(list(texts), add_special_tokens=False, return_offsets_mapping=True)
    for text, doc_ids, offsets in zip(texts, encoded["input_ids"], encoded["offset_mapping"]):
        offsets = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
        if eos is not None:
            doc_ids = list(doc_ids) + [eos]
            offsets = np.vstack([offsets, [[len(text), len(text) + DOCUMENT_GAP]]])
        ids.append(np.asarray(doc_ids, dtype=np.int64))
        bounds.append(token_boundaries(offsets, text, base))
        base += len(text) + DOCUMENT_GAP
    cat = (lambda parts: np.concatenate(parts) if parts else np.zeros(0, np.int64))
    return TokenStream(cat(ids), cat(bounds))




FILES = {"teacher_ids": "teacher-ids.bin", "teacher_boundaries": "teacher-boundaries.bin",
         "student_boundaries": "student-boundaries.bin"}
BOUNDARY_DTYPE = np.dtype("<i8")


def write_teacher_tokenization(folder: Path, documents: Sequence[str], *, student_tokenizer, teacher_tokenizer,
                               teacher_digest: dict, student_ids: np.ndarray) -> dict:
    """Write the teacher's tokens and both boundary files of ``documents`` (every input's, in
    order) into ``folder``; returns the manifest's ``teacher_tokenization`` object.
    ``student_ids``: the shards' token stream, which the student's offsets must reproduce
    exactly (``InputError`` otherwise: the two would not describe the same tokens)."""
    from distill.data.shards import DTYPES

    student = encode_documents(documents, student_tokenizer, eos=student_tokenizer.eos_token_id)
    if not np.array_equal(student.ids, np.asarray(student_ids, dtype=np.int64)):
        raise InputError("the student's tokens read with character offsets differ from the shards' tokens "
                         "(a tokenizer whose offsets change its ids?); cross-tokenizer data cannot be aligned",
                         field="--tokenizer")
    teacher = encode_documents(documents, teacher_tokenizer, eos=teacher_tokenizer.eos_token_id)
    size = len(teacher_tokenizer)
    dtype = "uint16" if size <= 1 << 16 else "uint32"
    entries = {}
    for key, array in (("teacher_ids", teacher.ids.astype(DTYPES[dtype])),
                       ("teacher_boundaries", teacher.boundaries.astype(BOUNDARY_DTYPE)),
                       ("student_boundaries", student.boundaries.astype(BOUNDARY_DTYPE))):
        raw = array.tobytes()
        with open(folder / FILES[key], "wb") as handle:  # in prepare's staging folder, renamed whole at the end
            handle.write(raw)
            handle.flush()
            os.fsync(handle.fileno())
        entries[key] = {"name": FILES[key], "sha256": hashlib.sha256(raw).hexdigest(), "bytes": len(raw)}
    from distill.data.training_data import vocabulary_digest

    return {"tokenizer": {**teacher_digest, "vocab_sha256": vocabulary_digest(teacher_tokenizer), "size": size},
            "eos_token_id": teacher_tokenizer.eos_token_id, "dtype": dtype, "total_tokens": len(teacher),
            "files": entries}


def read_teacher_tokenization(manifest: dict, folder: Path, student_ids: np.ndarray, *, teacher_tokenizer=None,
                              source: str = "manifest") -> tuple[TokenStream, TokenStream]:
    """(the student's stream, the teacher's stream) of a prepared folder whose manifest has
    ``teacher_tokenization``: every file mapped and checked against the manifest's size and
    sha256 before use (``InputError`` naming the field otherwise). ``student_ids``: the
    shards' stream; ``teacher_tokenizer``: its vocabulary must be the one recorded."""
    from distill.data.shards import DTYPES, _file, _map_verified

    cross = manifest.get("teacher_tokenization")
    field = "teacher_tokenization"
    if not isinstance(cross, dict) or not isinstance(cross.get("files"), dict):
        raise InputError("expected the teacher's tokenization (flopgate data prepare --teacher-tokenizer)",
                         source=source, field=field)
    dtype = cross.get("dtype")
    if dtype not in DTYPES:
        raise InputError(f"expected uint16 or uint32, got {dtype!r}", source=source, field=f"{field}.dtype")
    if teacher_tokenizer is not None:
        from distill.data.training_data import vocabulary_digest

        if (cross.get("tokenizer") or {}).get("vocab_sha256") != vocabulary_digest(teacher_tokenizer):
            raise InputError("was prepared with another teacher tokenizer than the audited one", source=source,
                             field=f"{field}.tokenizer.vocab_sha256")
    arrays = {}
    for key in FILES:
        entry = _file(cross["files"].get(key), source, f"{field}.files.{key}")
        kind = DTYPES[dtype] if key == "teacher_ids" else BOUNDARY_DTYPE
        arrays[key] = _map_verified(folder / entry.name, entry, kind, source, f"{field}.files.{key}")
    teacher = TokenStream(arrays["teacher_ids"].astype(np.int64), arrays["teacher_boundaries"])
    student = TokenStream(np.asarray(student_ids, dtype=np.int64), arrays["student_boundaries"])
    if len(student.boundaries) != len(student.ids) or len(teacher.boundaries) != len(teacher.ids):
        raise InputError("the boundary files do not have one entry per token", source=source, field=f"{field}.files")
    if cross.get("total_tokens") != len(teacher):
        raise InputError(f"says {cross.get('total_tokens')!r} teacher tokens, its file holds {len(teacher)}",
                         source=source, field=f"{field}.total_tokens")
    return student, teacher
