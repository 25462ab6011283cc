"""Hashing a local Hugging Face model folder: the files that define a model, bound to the audit.

Which files: EVERY regular file under the folder, at any depth, except hidden ones (a name that
starts with ``"."``, and everything under a hidden folder, such as the ``.cache/`` that
``huggingface-cli download --local-dir`` leaves). That covers config.json,
generation_config.json, the tokenizer files, the weights (``*.safetensors``, ``*.bin``, ``*.pt``,
``*.gguf``, ...) and their index JSONs, and whatever else a loader might read; nothing is left
out by guessing names. Files are sorted by relative POSIX path (Python string order). Refused
with a one-line :class:`~audit.errors.InputError` naming the path: a symlink whose target lies
outside the folder (a Hugging Face cache snapshot links to ``../../blobs``: download with
``--local-dir`` or copy the files), a symlink to a folder, a dangling symlink, anything that is
not a regular file (a FIFO, socket or device), a name that is not UTF-8 or holds a line
break (it could not be written in the digest's line format), and sub-folders nested deeper than
``audit.limits.MAX_FOLDER_DEPTH`` (64) levels.

Root digest (:func:`folder_digest`): sha256 over the lines ``"<sha256>  <relative path>\\n"``
(the ``sha256sum`` format) of every file, sorted by path; the same scheme as
:func:`distill.runtime.checkpoint.checkpoint_digest`, so both agree on a folder with no hidden files.
Files are streamed in ``BLOCK_BYTES`` blocks; no file is held in memory.

Each file is re-stat'ed after it is read: a file that changed while it was hashed is refused.
:func:`verify_unchanged` re-lists and re-stats the folder later (after the model is loaded), so
a file added, removed or rewritten between hashing and loading is caught.

Digest record (``record=``, optional): a JSON file that lets a re-hash skip files that did not
change. An entry maps a file's absolute path to its stat tuple (st_dev, st_ino, size, mtime_ns,
ctime_ns) and its sha256; a file whose current stat tuple equals the entry's is not read again.
Why this is safe against a swapped or rewritten file: any write, truncate, rename or chmod sets
the file's ctime to the current time, and no system call lets a user set ctime (``utime`` sets
atime and mtime only). A file put in place by rename has another inode; one rewritten in place
has a new ctime. An entry is stored only when the file's ctime is at least
``RACY_MARGIN_NS`` older than the start of the hash, so a write in the same clock tick as the
hash (ctime granularity is a kernel tick) cannot leave a matching ctime behind ("racy git").
Limits: root can change the system clock, or write the block device, to forge a ctime; a
filesystem without a real ctime (FAT, some FUSE or network filesystems; a server clock behind
ours by more than the margin) weakens the guarantee; on Linux, writes through a shared memory
mapping that is already dirty may not update ctime until the page is written back. Do not pass
a record for folders on such filesystems.

The record is an optimisation, never trusted across machines or homes: it names the host it was
written on, and carries an HMAC-SHA256 keyed by the flopgate home's random secret (the count
cache's key, :func:`audit.attest.keys.ensure_cache_mac_key`). A record from another host or
home, tampered, unreadable or garbage is ignored (every file is hashed) and rewritten. It is
written atomically, mode 0600; when it cannot be written the digest is still returned.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import stat
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, NamedTuple, Optional

from audit.attest.seal import hmac_hex, hmac_verifies
from audit.errors import InputError
from audit.fsutil import file_kind, open_no_block
from audit.limits import MAX_FOLDER_DEPTH

BLOCK_BYTES = 4 << 20                   # bytes per read (4 MiB)
RACY_MARGIN_NS = 2_000_000_000          # a recorded file's ctime must be this much older than the hash (ns)
RECORD_FORMAT = "flopgate-digest-record/1"
RECORD_MAX_BYTES = 64 << 20             # a larger record is ignored (bytes)
_MAC_DOMAIN = b"flopgate digest record v1\0"

Progress = Callable[[int, int], None]   # (bytes_done, bytes_total)


class FileStat(NamedTuple):
    """What identifies a file's bytes without reading them (see the module docstring)."""

    dev: int
    ino: int
    size: int        # bytes
    mtime_ns: int    # ns since the epoch
    ctime_ns: int    # ns since the epoch

    @classmethod
    def of(cls, st: os.stat_result) -> "FileStat":
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class FileEntry(NamedTuple):
    """One file of a folder digest: relative POSIX path, size in bytes, hex sha256."""

    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class FolderDigest:
    """A model folder's digest. ``stats`` lines up with ``files`` (for :func:`verify_unchanged`);
    ``bytes_read`` is how many bytes were actually read (the rest came from the record)."""

    folder: Path
    root_sha256: str
    files: tuple[FileEntry, ...]
    stats: tuple[FileStat, ...]
    total_bytes: int
    bytes_read: int


# ---------------------------------------------------------------------------------------------
# Listing


def model_folder_files(folder: str | os.PathLike) -> list[Path]:
    """The files that define the model in ``folder`` (see the module docstring for the rule),
    as ``folder / relative path``, sorted by relative POSIX path. ``InputError`` naming the path
    for a missing folder, an empty one, or an entry that is refused."""
    root = Path(folder)
    try:
        if not root.is_dir():
            what = "not found" if not root.exists() else "not a folder"
            raise InputError(f"expected a model folder, {what}", source=str(root))
    except OSError as exc:
        raise InputError(f"cannot read the model folder ({exc.strerror})", source=str(root)) from None
    found: list[str] = []
    _walk(root, os.path.realpath(root), found)
    if not found:
        raise InputError("the model folder holds no files", source=str(root))
    return [root / rel for rel in sorted(found)]


def _walk(root: Path, real_root: str, found: list[str]) -> None:
    """Append the relative paths of the files under ``root`` to ``found``, depth first in name
    order. Iterative (a stack of open listings, not recursion): a folder nested thousands of
    levels deep is refused at ``MAX_FOLDER_DEPTH`` levels, one line naming it."""
    stack = [("", iter(_listing(root, "")))]
    while stack:
        prefix, entries = stack[-1]
        entry = next(entries, None)
        if entry is None:
            stack.pop()
            continue
        if entry.name.startswith("."):
            continue
        rel = prefix + entry.name
        _check_name(root, rel)
        if entry.is_symlink():
            _check_symlink(root, rel, real_root)
            found.append(rel)
            continue
        try:
            mode = entry.stat(follow_symlinks=False).st_mode
        except OSError as exc:
            raise InputError(f"{rel}: cannot stat ({exc.strerror})", source=str(root)) from None
        if stat.S_ISDIR(mode):
            if len(stack) > MAX_FOLDER_DEPTH:  # the top folder is not a sub-folder
                raise InputError(f"{rel}: folders nested deeper than {MAX_FOLDER_DEPTH} levels; expected "
                                 f"a model folder with at most {MAX_FOLDER_DEPTH} levels of sub-folders",
                                 source=str(root))
            stack.append((rel + "/", iter(_listing(root, rel + "/"))))
        elif stat.S_ISREG(mode):
            found.append(rel)
        else:
            raise InputError(f"{rel}: expected a regular file, found {file_kind(mode)}", source=str(root))


def _listing(root: Path, prefix: str) -> list[os.DirEntry]:
    """The entries of the folder ``root / prefix``, sorted by name."""
    try:
        with os.scandir(root / prefix if prefix else root) as entries:
            return sorted(entries, key=lambda e: e.name)
    except OSError as exc:
        raise InputError(f"{prefix or '.'}: cannot list ({exc.strerror})", source=str(root)) from None


def _check_name(root: Path, rel: str) -> None:
    """Refuse a name the digest's line format cannot hold (not UTF-8, a line break)."""
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(f"{rel!r}: file name is not UTF-8", source=str(root)) from None
    if "\n" in rel or "\r" in rel:
        raise InputError(f"{rel!r}: file name holds a line break", source=str(root))


def _check_symlink(root: Path, rel: str, real_root: str) -> None:
    """A symlink is followed only to a regular file inside the folder."""
    target = os.path.realpath(root / rel)
    if os.path.commonpath([real_root, target]) != real_root:
        raise InputError(f"{rel}: symlink points outside the folder (to {target}); copy the file "
                         "into the folder", source=str(root))
    try:
        mode = os.stat(target).st_mode
    except OSError:
        raise InputError(f"{rel}: dangling symlink", source=str(root)) from None
    if not stat.S_ISREG(mode):
        raise InputError(f"{rel}: symlink to {file_kind(mode)}, expected a regular file", source=str(root))


# ---------------------------------------------------------------------------------------------
# Hashing


def folder_digest(folder: str | os.PathLike, *, progress: Optional[Progress] = None,
                  record: str | os.PathLike | None = None) -> FolderDigest:
    """The digest of the model folder ``folder`` (see the module docstring).

    ``progress(bytes_done, bytes_total)`` is called as bytes are hashed (bytes of files taken
    from the record count as done at once). ``record``: the digest record file to use and
    update, or None to read every file.
    """
    root = Path(folder)
    paths = model_folder_files(root)
    rels = [p.relative_to(root).as_posix() for p in paths]
    listed = [FileStat.of(_stat(root, rel)) for rel in rels]
    total = sum(s.size for s in listed)
    from audit.attest.keys import cache_mac_key_or_none

    key = cache_mac_key_or_none() if record is not None else None
    known = _load_record(Path(record), key) if key is not None else {}
    started_ns = time.time_ns()
    done = [0]

    def advance(n: int) -> None:
        done[0] += n
        if progress is not None:
            progress(done[0], total)

    entries, stats, bytes_read = [], [], 0
    for path, rel, now in zip(paths, rels, listed):
        cached = known.get(os.path.abspath(path))
        if cached is not None and cached[0] == now:
            sha, file_stat = cached[1], now
            advance(now.size)
        else:
            sha, file_stat = _hash_file(root, rel, advance)
            bytes_read += file_stat.size
        entries.append(FileEntry(rel, file_stat.size, sha))
        stats.append(file_stat)
    digest = FolderDigest(folder=root, root_sha256=root_digest(entries), files=tuple(entries),
                          stats=tuple(stats), total_bytes=sum(s.size for s in stats), bytes_read=bytes_read)
    if key is not None:
        _save_record(Path(record), key, digest, started_ns)
    return digest


def root_digest(files) -> str:
    """Hex sha256 over ``"<sha256>  <path>\\n"`` of ``files`` ((path, size, sha256) tuples),
    in path order: the scheme of :func:`distill.runtime.checkpoint.checkpoint_digest`."""
    lines = "".join(f"{sha}  {rel}\n" for rel, _, sha in sorted(files, key=lambda f: f[0]))
    return hashlib.sha256(lines.encode("utf-8")).hexdigest()


def _stat(root: Path, rel: str) -> os.stat_result:
    """``os.stat`` (following a symlink) of ``root / rel``; ``InputError`` naming it on failure."""
    try:
        return os.stat(root / rel)
    except OSError as exc:
        raise InputError(f"{rel}: cannot stat ({exc.strerror})", source=str(root)) from None


def _read_block(handle, view: memoryview) -> int:
    """Read up to ``len(view)`` bytes into ``view``; the number read (0 at the end)."""
    return handle.readinto(view)


def _hash_file(root: Path, rel: str, advance: Callable[[int], None]) -> tuple[str, FileStat]:
    """Hex sha256 of ``root / rel`` streamed in ``BLOCK_BYTES`` blocks, and its stat tuple.

    Refused when it is not a regular file once opened, or when its stat tuple (by handle, and by
    path after reading) differs from the one when it was opened: it changed while being read."""
    path = root / rel
    try:
        handle = open(path, "rb", buffering=0, opener=open_no_block)
    except OSError as exc:
        raise InputError(f"{rel}: cannot read ({exc.strerror})", source=str(root)) from None
    digest, read = hashlib.sha256(), 0
    view = memoryview(bytearray(BLOCK_BYTES))
    with handle:
        before = os.fstat(handle.fileno())
        if not stat.S_ISREG(before.st_mode):
            raise InputError(f"{rel}: expected a regular file, found {file_kind(before.st_mode)}",
                             source=str(root))
        _clear_nonblock(handle.fileno())
        try:
            while n := _read_block(handle, view):
                digest.update(view[:n])
                read += n
                advance(n)
        except OSError as exc:
            raise InputError(f"{rel}: cannot read ({exc.strerror})", source=str(root)) from None
        by_handle = FileStat.of(os.fstat(handle.fileno()))
    by_path = FileStat.of(_stat(root, rel))
    if not FileStat.of(before) == by_handle == by_path or read != by_path.size:
        raise InputError(f"{rel}: changed while it was hashed; hash again when nothing writes to it",
                         source=str(root))
    return digest.hexdigest(), by_path


def _clear_nonblock(fd: int) -> None:
    try:
        import fcntl
    except ImportError:  # not POSIX: O_NONBLOCK was not set either
        return
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)


def verify_unchanged(digest: FolderDigest) -> None:
    """Re-list and re-stat the folder of ``digest``: ``InputError`` (one line, naming the file)
    when a file was added, removed, replaced or rewritten since it was hashed. Call it after
    the model is loaded: what was loaded is then what was hashed."""
    root = digest.folder
    now = [p.relative_to(root).as_posix() for p in model_folder_files(root)]
    hashed = [entry.path for entry in digest.files]
    if now != hashed:
        added, removed = sorted(set(now) - set(hashed)), sorted(set(hashed) - set(now))
        what = ", ".join([f"added {p}" for p in added[:3]] + [f"removed {p}" for p in removed[:3]])
        raise InputError(f"the model folder changed after it was hashed ({what})", source=str(root))
    for entry, then in zip(digest.files, digest.stats):
        current = FileStat.of(_stat(root, entry.path))
        if current != then:
            fields = [name for name, a, b in zip(FileStat._fields, then, current) if a != b]
            raise InputError(f"{entry.path}: changed after it was hashed ({', '.join(fields)} "
                             "differ)", source=str(root))


# ---------------------------------------------------------------------------------------------
# Digest record


def _record_mac(key: bytes, host: str, entries_text: str) -> str:
    return hmac_hex(key, _MAC_DOMAIN, entries_text.encode("utf-8"), host)


def _load_record(path: Path, key: bytes) -> dict[str, tuple[FileStat, str]]:
    """The record's entries (absolute path -> (stat tuple, sha256)) when it was written on this
    host under this home's key; an empty dict for anything else."""
    try:
        with open(path, "rb", opener=open_no_block) as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                return {}
            raw = handle.read(RECORD_MAX_BYTES + 1)
        data = json.loads(raw)
        text, host = data["entries"], data["host"]
        if (len(raw) > RECORD_MAX_BYTES or data.get("format") != RECORD_FORMAT
                or host != socket.gethostname() or not isinstance(text, str)
                or not hmac_verifies(data["mac"], key, _MAC_DOMAIN, text.encode("utf-8"), host)):
            return {}
        return {name: (FileStat(*(int(v) for v in value[:5])), str(value[5]))
                for name, value in json.loads(text).items()}
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError, RecursionError):
        return {}


def _save_record(path: Path, key: bytes, digest: FolderDigest, started_ns: int) -> None:
    """Merge ``digest``'s files into the record (dropping entries of files no longer in this
    folder) and write it atomically. A file whose ctime is not ``RACY_MARGIN_NS`` older than
    ``started_ns`` (ns) is left out. Errors writing are ignored: the record is an optimisation."""
    from audit.fsutil import write_atomic

    entries = _load_record(path, key)
    prefix = os.path.join(os.path.abspath(digest.folder), "")
    entries = {name: value for name, value in entries.items() if not name.startswith(prefix)}
    for entry, file_stat in zip(digest.files, digest.stats):
        if file_stat.ctime_ns < started_ns - RACY_MARGIN_NS:
            entries[os.path.abspath(digest.folder / entry.path)] = (file_stat, entry.sha256)
    text = json.dumps({name: [*s, sha] for name, (s, sha) in sorted(entries.items())},
                      separators=(",", ":"))
    host = socket.gethostname()
    record = {"format": RECORD_FORMAT, "host": host, "mac": _record_mac(key, host, text), "entries": text}
    try:
        write_atomic(path, json.dumps(record, indent=1) + "\n", mode=0o600)
    except OSError:
        pass


# ---------------------------------------------------------------------------------------------
# Progress


@contextlib.contextmanager
def progress_bar(description: str, stream=None) -> Iterator[Optional[Progress]]:
    """A ``progress`` callable drawing a rich bar (bytes, speed, time left) on ``stream``
    (default stderr) while the block runs; None when ``stream`` is not a terminal."""
    stream = sys.stderr if stream is None else stream
    if not (hasattr(stream, "isatty") and stream.isatty()):
        yield None
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import (BarColumn, DownloadColumn, Progress as Bar, TextColumn,
                               TimeRemainingColumn, TransferSpeedColumn)

    columns = (TextColumn(escape(description)), BarColumn(), DownloadColumn(binary_units=True),
               TransferSpeedColumn(), TimeRemainingColumn())
    with Bar(*columns, console=Console(file=stream), transient=True) as bar:
        task = bar.add_task(description, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


def teacher_folder(plan) -> Optional[Path]:
    """The local folder whose weights the teacher runs from: ``teacher.weights``, or a
    ``teacher.model`` that is itself a local folder (``access: weights``); None for a hub id or
    an API teacher (auditable, but not trainable)."""
    if plan.teacher.weights:
        return Path(plan.teacher.weights)
    model = Path(plan.teacher.model)
    if plan.teacher.access == "weights" and model.is_absolute() and model.is_dir():
        return model
    return None


def model_folders(plan) -> list[tuple[str, Path]]:
    """``(role, folder)`` of every local folder whose files a run loads: the teacher's
    (``teacher_weights``), for ``student.init: base`` a base model given as a local folder
    (``student_base_weights``), and a tokenizer folder the plan names (``data.tokenizer``,
    role ``tokenizer``; ``student.tokenizer``, role ``student_tokenizer``). Each is signed by check
    and re-hashed by the gate."""
    folders = []
    teacher = teacher_folder(plan)
    if teacher is not None:
        folders.append(("teacher_weights", teacher))
    base = Path(plan.student.base_model) if plan.student.init == "base" and plan.student.base_model else None
    if base is not None and base.is_absolute() and base.is_dir():
        folders.append(("student_base_weights", base))
    if plan.data.tokenizer:
        folders.append(("tokenizer", Path(plan.data.tokenizer)))
    student_tokenizer = getattr(plan.student, "tokenizer", None)
    if student_tokenizer:  # cross-tokenizer distillation: the student's own tokenizer
        folders.append(("student_tokenizer", Path(student_tokenizer)))
    return folders


def digest_record_path() -> Path:
    """Where the re-hash fast path keeps its record: ``$FLOPGATE_HOME/cache/weight-digests.json``."""
    from audit.attest.keys import flopgate_home

    return flopgate_home() / "cache" / "weight-digests.json"


def hash_model_folder(folder: str | os.PathLike, what: str = "teacher weights") -> FolderDigest:
    """``folder_digest`` with a progress bar on a terminal and the home's digest record."""
    with progress_bar(f"hashing {what}") as progress:
        return folder_digest(folder, progress=progress, record=digest_record_path())
