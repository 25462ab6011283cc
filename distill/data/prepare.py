"""``flopgate data prepare``: inputs -> documents -> token ids (+ loss mask) -> shards + manifest.

Inputs are read by :func:`distill.data.training_data.read_input_source` (plain text split at blank lines,
JSONL ``text`` or chat ``messages`` records, saved ``datasets`` folders); each input is read
once and its sha256 is that of the bytes read. The format written is :mod:`distill.data.shards`.

Tokenizing: fast tokenizers only, with ``add_special_tokens=False`` (a chat template adds what
it needs), in batches of :data:`BATCH_DOCUMENTS` documents over ``workers`` processes (spawned,
one tokenizer thread each; ``workers=1`` runs in this process). Batches are cut from the
documents in input order and their results written in that order, so the output is byte for
byte the same for any worker count.

Chat documents are rendered with the chat template (``--chat-template FILE`` or the
tokenizer's) and tokenized; the loss mask is 1 on the assistant turns' tokens:

* a template with ``{% generation %}`` blocks: the tokens transformers marks in them
  (``apply_chat_template(..., return_assistant_tokens_mask=True)``);
* any other template: for each assistant message ``i``, the characters that rendering
  ``messages[:i + 1]`` adds to rendering ``messages[:i]`` with the generation prompt (the
  message's content and the template's end-of-turn text after it); a token is masked when it
  starts inside such a span. A template whose renderings are not prefixes of one another
  (e.g. one that rewrites earlier turns) is refused for that document: add ``{% generation %}``
  blocks to it and pass it with ``--chat-template``.

Counts: ``inputs[].documents`` are the documents read; a document that gives no token (empty,
with a tokenizer without EOS) is left out of the shards, so every shard document has >= 1 token.

Worker processes are spawned: a script that calls :func:`prepare` with ``workers > 1`` needs
the ``if __name__ == "__main__":`` guard (Python's rule for spawned processes).

Output: everything is written in a temporary folder next to ``out``, the manifest last
(:func:`audit.fsutil.write_atomic`), and the folder renamed onto ``out`` at the end; a failure
removes it, so ``out`` is never half-written. An existing non-empty ``out`` is refused unless
``replace`` (and then only a folder that holds a shard manifest, or nothing).
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from audit.errors import InputError
from distill.data.shards import (DTYPES, FORMAT, FORMAT_VERSION, MANIFEST_NAME, MASK_DTYPE, OFFSET_DTYPE,
                                 shard_names)

BATCH_DOCUMENTS = 256
"""Documents per tokenizer batch (one task for a worker process)."""

DEFAULT_SHARD_TOKENS = 1 << 27
"""Tokens after which a shard is closed (at the next document end): 256 MiB of uint16 ids."""

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.json", "vocab.txt", "merges.txt", "tokenizer.model", "spiece.model",
                   "chat_template.jinja", "chat_template.json")
"""The files of a tokenizer folder its digest covers (those present; weights are not)."""

_GENERATION_BLOCK = re.compile(r"{%-?\s*generation\s*-?%}")


def default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


@dataclass(frozen=True)
class PrepareResult:
    out: Path
    manifest_path: Path
    manifest: dict


# -- tokenizer and template -------------------------------------------------------------------

def tokenizer_digest(folder: Path) -> dict:
    """{sha256, files}: ``files`` lists each tokenizer file of ``folder`` (:data:`TOKENIZER_FILES`)
    as {name, sha256, bytes}; ``sha256`` is over the lines ``"<sha256>  <name>\\n"`` in name order."""
    from audit.fsutil import read_input
    from audit.limits import MAX_DOCUMENT_BYTES

    files = []
    for name in sorted(TOKENIZER_FILES):
        path = folder / name
        if path.is_file():
            raw = read_input(path, "tokenizer file", max_bytes=MAX_DOCUMENT_BYTES)
            files.append({"name": name, "sha256": hashlib.sha256(raw).hexdigest(), "bytes": len(raw)})
    if not files:
        raise InputError(f"expected a tokenizer folder with one of {', '.join(TOKENIZER_FILES[:2])}",
                         source=str(folder))
    lines = "".join(f"{f['sha256']}  {f['name']}\n" for f in files)
    return {"sha256": hashlib.sha256(lines.encode("utf-8")).hexdigest(), "files": files}


def load_fast_tokenizer(folder: Path):
    from distill.runtime.models import load_tokenizer

    tokenizer = load_tokenizer(folder)
    if not getattr(tokenizer, "is_fast", False):
        raise InputError("expected a fast tokenizer (a tokenizer.json); got a slow one", source=str(folder))
    return tokenizer


def read_chat_template(path: Optional[str | Path]) -> Optional[str]:
    if path is None:
        return None
    from audit.fsutil import decode_utf8, read_input
    from audit.limits import MAX_DOCUMENT_BYTES

    text = decode_utf8(read_input(path, "chat template", max_bytes=MAX_DOCUMENT_BYTES), path, "chat template")
    if not text.strip():
        raise InputError("expected a Jinja chat template, found an empty file", source=str(path))
    return text


# -- encoding (runs in the worker processes) -----------------------------------------------------

class Encoder:
    """Token ids (uint32) and loss mask (uint8 or None) of documents, per the module docstring.

    Text is encoded by the tokenizer's Rust backend (``backend``: its JSON, as the transformers
    tokenizer holds it), which is all a fast tokenizer runs for ``add_special_tokens=False``;
    a worker imports ``tokenizers`` only. Chat documents load the transformers tokenizer (for
    its chat-template renderer) on first use."""

    def __init__(self, backend: str, eos: Optional[int], tokenizer_dir: str, chat_template: Optional[str]):
        from tokenizers import Tokenizer

        self.backend, self.eos = Tokenizer.from_str(backend), eos
        self.tokenizer_dir, self.template = tokenizer_dir, chat_template
        self.generation = bool(chat_template) and bool(_GENERATION_BLOCK.search(chat_template))
        self._hf = None

    @property
    def hf(self):
        if self._hf is None:
            self._hf = load_fast_tokenizer(Path(self.tokenizer_dir))
        return self._hf

    def encode(self, batch: Sequence[tuple[str, object]]) -> tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
        """``batch``: (where, document) pairs; ``where`` names the input and record for errors.
        Returns the documents' ids back to back (uint32), each document's length (int64, EOS
        included) and the mask back to back (uint8; None when no document of the batch is chat)."""
        ids: list = [None] * len(batch)
        masks: list = [None] * len(batch)
        texts = [i for i, (_, doc) in enumerate(batch) if isinstance(doc, str)]
        if texts:
            encoded = self.backend.encode_batch([batch[i][1] for i in texts], add_special_tokens=False)
            for i, encoding in zip(texts, encoded):
                ids[i] = self._with_eos(encoding.ids)
        for i, (where, doc) in enumerate(batch):
            if not isinstance(doc, str):
                chat_ids, mask = self._chat(doc, where)
                ids[i] = self._with_eos(chat_ids)
                masks[i] = np.concatenate([mask, np.zeros(len(ids[i]) - len(mask), dtype=MASK_DTYPE)])
        lengths = np.asarray([len(x) for x in ids], dtype=np.int64)
        mask = None
        if len(texts) < len(batch):
            mask = np.concatenate([m if m is not None else np.ones(len(x), dtype=MASK_DTYPE)
                                   for x, m in zip(ids, masks)])
        return np.concatenate(ids), lengths, mask

    def _with_eos(self, ids) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.uint32)
        if self.eos is not None and (len(ids) == 0 or ids[-1] != self.eos):
            ids = np.append(ids, np.uint32(self.eos))
        return ids

    def _render(self, messages, generation_prompt: bool) -> str:
        return self.hf.apply_chat_template(messages, chat_template=self.template, tokenize=False,
                                           add_generation_prompt=generation_prompt)

    def _chat(self, messages: list, where: str) -> tuple[list[int], np.ndarray]:
        if not self.template:
            raise InputError("chat document but no chat template", source=where)
        try:
            if self.generation:
                return self._chat_generation(messages, where)
            return self._chat_prefixes(messages, where)
        except InputError:
            raise
        except Exception as exc:  # a template error (jinja, raise_exception) names the record
            raise InputError(f"the chat template cannot render this conversation ({exc.__class__.__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''})", source=where,
                             field="messages") from None

    def _chat_generation(self, messages: list, where: str) -> tuple[list[int], np.ndarray]:
        rendered = self.hf.apply_chat_template(messages, chat_template=self.template, tokenize=True,
                                               return_dict=True, return_assistant_tokens_mask=True)
        ids, mask = list(rendered["input_ids"]), np.asarray(rendered["assistant_masks"], dtype=MASK_DTYPE)
        if any(m["role"] == "assistant" for m in messages) and not mask.any():
            raise InputError("the chat template's {% generation %} blocks mark no token of the assistant turns",
                             source=where, field="messages")
        return ids, mask

    def _chat_prefixes(self, messages: list, where: str) -> tuple[list[int], np.ndarray]:
        full = self._render(messages, False)
        spans = []
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            before, through = self._render(messages[:i], True), self._render(messages[:i + 1], False)
            if not (through.startswith(before) and full.startswith(through)):
                raise InputError(f"the chat template renders message {i} differently once later messages "
                                 "follow, so the assistant turns cannot be found by prefixes; add {% generation %} "
                                 "blocks to it and pass it with --chat-template", source=where, field="messages")
            spans.append((len(before), len(through)))
        encoding = self.backend.encode(full, add_special_tokens=False)
        starts = np.asarray([start for start, _ in encoding.offsets], dtype=np.int64)
        mask = np.zeros(len(starts), dtype=MASK_DTYPE)
        for lo, hi in spans:
            mask[(starts >= lo) & (starts < hi)] = 1
        return list(encoding.ids), mask


_WORKER: dict = {}


def _init_worker(encoder_args: tuple) -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread per process: --workers is the parallelism
    _WORKER["encoder"] = Encoder(*encoder_args)


def _encode_batch(batch):
    return _WORKER["encoder"].encode(batch)


# -- writing ---------------------------------------------------------------------------------

class _HashedFile:
    """A file written once, front to back, hashed as it is written."""

    def __init__(self, path: Path):
        self.path, self.handle, self.digest, self.size = path, open(path, "wb"), hashlib.sha256(), 0

    def write(self, data: bytes) -> None:
        self.handle.write(data)
        self.digest.update(data)
        self.size += len(data)

    def close(self) -> dict:
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.handle.close()
        return {"name": self.path.name, "sha256": self.digest.hexdigest(), "bytes": self.size}


class _ShardWriter:
    """One shard's files, opened at its first document."""

    def __init__(self, folder: Path, number: int, dtype: np.dtype, with_mask: bool):
        self.names = {kind: folder / name for kind, name in shard_names(number).items()}
        self.dtype, self.with_mask, self.tokens, self.offsets = dtype, with_mask, 0, [0]
        self.bin = self.mask = None

    def add(self, ids: np.ndarray, lengths: np.ndarray, mask: Optional[np.ndarray]) -> None:
        """Whole documents: ``ids`` back to back, ``lengths`` per document, ``mask`` (None: all 1)."""
        if self.bin is None:
            self.bin = _HashedFile(self.names["bin"])
            self.mask = _HashedFile(self.names["mask"]) if self.with_mask else None
        self.bin.write(ids.astype(self.dtype, copy=False).tobytes())
        if self.mask is not None:
            self.mask.write((mask if mask is not None else np.ones(len(ids), dtype=MASK_DTYPE)).tobytes())
        self.offsets.extend((self.tokens + np.cumsum(lengths)).tolist())
        self.tokens += len(ids)

    def close(self) -> dict:
        idx = _HashedFile(self.names["idx"])
        idx.write(np.asarray(self.offsets, dtype=OFFSET_DTYPE).tobytes())
        return {"tokens": self.tokens, "documents": len(self.offsets) - 1, "bin": self.bin.close(),
                "idx": idx.close(), "mask": self.mask.close() if self.mask is not None else None}


class _Progress:
    """Documents done, on stderr only: tqdm when installed, else one counter line."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.done, self.bar = total, 0, None
        self.enabled = enabled
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:
                return
            self.bar = tqdm(total=total, unit="doc", desc="prepare", file=sys.stderr, mininterval=0.5)

    def update(self, count: int) -> None:
        self.done += count
        if self.bar is not None:
            self.bar.update(count)
        elif self.enabled:
            print(f"\rprepare: {self.done}/{self.total} documents", end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled:
            print(file=sys.stderr, flush=True)


def _check_out(out: Path, replace: bool) -> None:
    if out.exists() and not out.is_dir():
        raise InputError("expected an output folder, found a file", source=str(out))
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not replace:
        raise InputError("already exists and is not empty; choose another --out or pass --replace",
                         source=str(out))
    if not (out / MANIFEST_NAME).is_file():
        raise InputError(f"--replace replaces a prepared folder only (one with {MANIFEST_NAME}); this one has none",
                         source=str(out))


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("flopgate", "tokenizers", "transformers"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def _batches(sources):
    """(where, document) batches of at most :data:`BATCH_DOCUMENTS`, never across inputs."""
    for source in sources:
        docs = source.documents
        for lo in range(0, len(docs), BATCH_DOCUMENTS):
            chunk = docs[lo:lo + BATCH_DOCUMENTS]
            yield [(_where(source, lo + j), doc) for j, doc in enumerate(chunk)]


def _where(source, index: int) -> str:
    return f"{source.path} (document {index + 1})"


def prepare(inputs: Sequence[str | Path], *, tokenizer_dir: str | Path, out: str | Path,
            chat_template: Optional[str | Path] = None, workers: Optional[int] = None,
            dtype: Optional[str] = None, shard_tokens: int = DEFAULT_SHARD_TOKENS, replace: bool = False,
            progress: bool = False, teacher_tokenizer_dir: Optional[str | Path] = None) -> PrepareResult:
    """Tokenize ``inputs`` into shards in ``out`` (see the module docstring). ``dtype``: "uint16"
    or "uint32"; None picks the smallest that holds every id of the tokenizer. ``shard_tokens``:
    a shard is closed once it holds at least this many tokens (at a document end).
    ``teacher_tokenizer_dir``: cross-tokenizer logit distillation; ``tokenizer_dir`` is then the
    student's, and the teacher's tokenization of the same plain text is stored beside the shards
    (:mod:`distill.data.cross_tokenized`, in this process)."""
    from distill.data.training_data import read_input_source, vocabulary_digest

    out, tokenizer_dir = Path(out), Path(tokenizer_dir)
    workers = workers or default_workers()
    if not inputs:
        raise InputError("no inputs given", field="inputs")
    if shard_tokens < 1:
        raise InputError(f"expected a whole number > 0, got {shard_tokens}", field="--shard-tokens")
    _check_out(out, replace)
    tokenizer = load_fast_tokenizer(tokenizer_dir)
    tok_digest = tokenizer_digest(tokenizer_dir)
    template = read_chat_template(chat_template)
    template_source = "file" if template is not None else "tokenizer"
    if template is None:
        template = tokenizer.chat_template or None
        if isinstance(template, dict):  # named templates: the one transformers uses by default
            template = template.get("default")
    size = len(tokenizer)
    if dtype is None:
        dtype = "uint16" if size <= 1 << 16 else "uint32"
    if dtype not in DTYPES:
        raise InputError(f"expected uint16 or uint32, got {dtype!r}", field="--dtype")
    limit = 1 << (8 * DTYPES[dtype].itemsize)
    if size > limit:
        raise InputError(f"the tokenizer has {size} tokens; {dtype} holds ids below {limit}: use --dtype uint32",
                         field="--dtype")

    sources = [read_input_source(path) for path in inputs]
    chat = any(source.chat for source in sources)
    teacher_tokenizer = None
    if teacher_tokenizer_dir is not None:
        if chat:
            raise InputError("holds chat records; cross-tokenizer data is plain text (each tokenizer's chat "
                             "template renders a conversation differently, so the texts would not align)",
                             source=str(next(s.path for s in sources if s.chat)), field="messages")
        teacher_tokenizer = load_fast_tokenizer(Path(teacher_tokenizer_dir))
    for source in sources:
        if source.chat and not template:
            raise InputError(f"holds chat records ('messages'), expected a chat template: the tokenizer "
                             f"{tokenizer_dir} has none; pass --chat-template FILE", source=str(source.path),
                             field="messages")
        if not source.documents:
            raise InputError("expected at least one document, found none", source=str(source.path))
    template_used = template if chat else None  # a text-only run does not depend on the template

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.prepare-{secrets.token_hex(6)}"
    staging.mkdir()  # with the umask's permissions, unlike mkdtemp's 0700: it becomes ``out``
    try:
        encoder_args = (tokenizer.backend_tokenizer.to_str(), tokenizer.eos_token_id, str(tokenizer_dir),
                        template_used)
        shards, per_input = _tokenize_and_write(sources, staging, encoder_args=encoder_args, workers=workers,
                                                dtype=DTYPES[dtype], limit=limit, with_mask=chat,
                                                shard_tokens=shard_tokens, progress=progress)
        if not shards:
            raise InputError("the inputs give no tokens (every document is empty)", field="inputs")
        cross = None
        if teacher_tokenizer is not None:
            from distill.data.cross_tokenized import write_teacher_tokenization

            stream = np.concatenate([np.fromfile(staging / s["bin"]["name"], dtype=DTYPES[dtype]) for s in shards])
            cross = write_teacher_tokenization(
                staging, [doc for source in sources for doc in source.documents], student_tokenizer=tokenizer,
                teacher_tokenizer=teacher_tokenizer, teacher_digest=tokenizer_digest(Path(teacher_tokenizer_dir)),
                student_ids=stream)
        manifest = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "dtype": dtype,
            "eos_token_id": tokenizer.eos_token_id, "loss_mask": chat,
            "tokenizer": {**tok_digest, "vocab_sha256": vocabulary_digest(tokenizer), "size": size},
            "chat_template": ({"sha256": hashlib.sha256(template_used.encode("utf-8")).hexdigest(),
                               "source": template_source} if template_used is not None else None),
            "inputs": [{"path": Path(os.path.relpath(source.path.resolve(), out.resolve())).as_posix(),
                        "kind": source.kind, "sha256": source.sha256, "bytes": source.bytes,
                        "documents": len(source.documents), "tokens": tokens}
                       for source, tokens in zip(sources, per_input)],
            "shards": shards,
            "total_tokens": sum(s["tokens"] for s in shards),
            "total_documents": sum(s["documents"] for s in shards),
            "versions": _versions(),
            **({"teacher_tokenization": cross} if cross is not None else {}),
        }
        from audit.fsutil import fsync_dir, write_atomic
        from distill.data.shards import manifest_json

        write_atomic(staging / MANIFEST_NAME, manifest_json(manifest))
        _swap_in(staging, out)
        fsync_dir(out.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return PrepareResult(out, out / MANIFEST_NAME, manifest)


def _swap_in(staging: Path, out: Path) -> None:
    """Rename the finished ``staging`` folder onto ``out`` (replacing an old prepared folder)."""
    if out.is_dir() and any(out.iterdir()):
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.rename(out, old / out.name)
        try:
            os.rename(staging, out)
        except BaseException:
            os.rename(old / out.name, out)  # put the old folder back
            old.rmdir()
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        if out.is_dir():
            out.rmdir()
        os.rename(staging, out)


def _tokenize_and_write(sources, folder: Path, *, encoder_args: tuple, workers: int,
                        dtype: np.dtype, limit: int, with_mask: bool, shard_tokens: int, progress: bool):
    batches = _batches(sources)
    owner = [i for i, source in enumerate(sources) for _ in range(0, len(source.documents), BATCH_DOCUMENTS)]
    bar = _Progress(sum(len(s.documents) for s in sources), progress)
    shards, per_input = [], [0] * len(sources)
    writer = _ShardWriter(folder, 0, dtype, with_mask)
    pool = None
    try:
        if workers > 1:
            import multiprocessing

            pool = multiprocessing.get_context("spawn").Pool(workers, initializer=_init_worker,
                                                             initargs=(encoder_args,))
            results = pool.imap(_encode_batch, batches)
        else:
            encoder = Encoder(*encoder_args)
            results = (_single_threaded(encoder, batch) for batch in batches)
        for number, (ids, lengths, mask) in enumerate(results):
            if len(ids) and int(ids.max()) >= limit:
                raise InputError(f"token id {int(ids.max())} does not fit {dtype.name}; use --dtype uint32",
                                 field="--dtype")
            per_input[owner[number]] += len(ids)
            lengths = lengths[lengths > 0]  # a document with no token (no EOS either) is left out
            first, start = 0, 0  # document and token where the rest of the batch begins
            while first < len(lengths):
                # Documents up to the first whose end reaches shard_tokens go in this shard.
                ends = writer.tokens + np.cumsum(lengths[first:])
                full = int(np.searchsorted(ends, shard_tokens, side="left"))
                last = min(full, len(lengths) - first - 1) + first
                stop = start + int(lengths[first:last + 1].sum())
                writer.add(ids[start:stop], lengths[first:last + 1], mask[start:stop] if mask is not None else None)
                if writer.tokens >= shard_tokens:
                    shards.append(writer.close())
                    writer = _ShardWriter(folder, len(shards), dtype, with_mask)
                first, start = last + 1, stop
            bar.update(len(lengths))
        if writer.tokens:
            shards.append(writer.close())
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
            pool.join()
    return shards, per_input


def _single_threaded(encoder: Encoder, batch):
    """Encode in this process with the tokenizer's own threads off, as in a worker process."""
    before = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        return encoder.encode(batch)
    finally:
        if before is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = before
