"""Small file helpers: reading an input file (one place for its errors), atomic writes,
sha256 digests."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tempfile
from pathlib import Path

from audit.limits import MAX_JSON_DEPTH, MAX_SMALL_FILE_BYTES


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_atomic(path: str | os.PathLike, data: bytes | str, *, mode: int = 0o644,
                 overwrite: bool = True) -> Path:
    """Write ``data`` to ``path`` via a temp file in the same folder, fsync, then rename.

    A reader never sees a half-written file. With ``overwrite=False`` an existing file is
    never replaced (``FileExistsError``); the link is made atomically.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode("utf-8")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # fails with FileExistsError if path exists
            os.unlink(tmp)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)
    return path


def fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_input(path: str | os.PathLike, what: str = "file", *, source: str | None = None,
               field: str | None = None, max_bytes: int = MAX_SMALL_FILE_BYTES) -> bytes:
    """The bytes of the input file ``path``: the one reader for every file a user gives us.

    Only a regular file is read (a FIFO, device or socket could give other bytes to a second
    reader), and only when it holds at most ``max_bytes`` (checked by ``fstat`` before reading,
    and again on the bytes read; the limits are in ``audit.limits``). Every failure is an
    ``InputError`` naming the file (or ``source`` and ``field``, when the path came from a field
    of another file) and what was expected.
    """
    from audit.errors import InputError
    from audit.numbers import byte_size

    path = Path(path)

    def error(message: str) -> InputError:
        if source is None:
            return InputError(message, source=str(path), field=field)
        return InputError(f"{message}: {path}", source=source, field=field)

    try:
        with open(path, "rb", opener=open_no_block) as handle:
            info = os.fstat(handle.fileno())
            mode, size = info.st_mode, info.st_size
            if not stat.S_ISREG(mode):
                raise error(f"expected {what} to be a regular file, found {file_kind(mode)}")
            data = handle.read(max_bytes + 1) if size <= max_bytes else b""
            if size > max_bytes or len(data) > max_bytes:
                found = byte_size(max(size, len(data))) + ("" if size > max_bytes else " or more")
                raise error(f"expected {what} of at most {byte_size(max_bytes)}, found {found}")
            return data
    except FileNotFoundError:
        raise error(f"{what} not found") from None
    except IsADirectoryError:
        raise error(f"expected {what} to be a regular file, found a directory") from None
    except OSError as exc:
        raise error(f"cannot read {what} ({exc.strerror or exc.__class__.__name__})") from None


def files_under(folder: str | os.PathLike, what: str = "folder") -> list[Path]:
    """Every file under ``folder`` (as ``Path.rglob("*")`` then ``is_file()`` give them: folders
    are entered without following symlinks, a symlink to a file counts), without recursion:
    sub-folders nested deeper than ``MAX_FOLDER_DEPTH`` levels are an ``InputError`` naming the
    folder, never a ``RecursionError``. Unsorted."""
    from audit.errors import InputError
    from audit.limits import MAX_FOLDER_DEPTH

    root = Path(folder)
    found: list[Path] = []
    stack = [(root, 0)] if root.is_dir() else []  # rglob of a missing folder is empty too
    while stack:
        current, depth = stack.pop()
        try:
            with os.scandir(current) as listing:
                entries = list(listing)
        except PermissionError:
            continue  # as rglob does
        for entry in entries:
            path = current / entry.name
            if entry.is_dir(follow_symlinks=False):
                if depth + 1 > MAX_FOLDER_DEPTH:
                    raise InputError(f"expected a {what} with at most {MAX_FOLDER_DEPTH} levels of "
                                     f"sub-folders, found more: {path.relative_to(root)}", source=str(root))
                stack.append((path, depth + 1))
            elif path.is_file():
                found.append(path)
    return found


def file_kind(mode: int) -> str:
    """What a non-regular file is, in words, for an error: "a directory", "a FIFO", ..."""
    kinds = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
             (stat.S_ISLNK, "a symlink"))
    return next((name for test, name in kinds if test(mode)), "a device")


def open_no_block(path, flags):
    """An ``opener`` that does not block on a FIFO, so that the caller can refuse it."""
    return os.open(path, flags | getattr(os, "O_NONBLOCK", 0))


def decode_utf8(data: bytes, path: str | os.PathLike, what: str = "file") -> str:
    """``data`` as UTF-8 text; an ``InputError`` naming ``path`` when it is not."""
    from audit.errors import InputError

    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"cannot read {what}: expected UTF-8 text (invalid byte at offset {exc.start})",
                         source=str(path)) from None


def read_json(path: str | os.PathLike, what: str, *, missing: str | None = None,
              max_bytes: int = MAX_SMALL_FILE_BYTES):
    """The parsed JSON file ``path`` (at most ``max_bytes``). ``InputError`` naming the file
    when it is missing (``missing``, default "<what> not found") or unreadable: "cannot read
    <what> as JSON", with the parser's line and column for malformed JSON, else the kind of
    error."""
    from audit.errors import InputError

    if missing is not None and not Path(path).exists():
        raise InputError(missing, source=str(path))
    return parse_json(read_input(path, what, max_bytes=max_bytes), path, what)


def parse_json(raw: bytes, path: str | os.PathLike, what: str):
    """``raw`` (bytes already read from ``path``, e.g. after checking their digest) as JSON;
    ``InputError`` "cannot read <what> as JSON" naming the file, with the parser's line and
    column for malformed JSON, nesting deeper than ``MAX_JSON_DEPTH`` (checked before parsing),
    else the kind of error."""
    from audit.attest.canonical import json_depth
    from audit.errors import InputError

    try:
        text = raw.decode("utf-8")
        if json_depth(text, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
            raise InputError(f"cannot read {what} as JSON (nested deeper than {MAX_JSON_DEPTH} levels)",
                             source=str(path))
        return json.loads(text)
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        detail = str(exc) if isinstance(exc, json.JSONDecodeError) else exc.__class__.__name__
        raise InputError(f"cannot read {what} as JSON ({detail})", source=str(path)) from None
    except RecursionError:  # unreachable after the depth scan; kept as a last guard
        raise InputError(f"cannot read {what} as JSON (nested deeper than {MAX_JSON_DEPTH} levels)",
                         source=str(path)) from None
