"""Small file helpers: atomic writes, sha256 digests, reading a JSON file given as input."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path


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


def read_json(path: str | os.PathLike, what: str, *, missing: str | None = None):
    """The parsed JSON file ``path``. ``InputError`` naming the file when it is missing
    (``missing``, default "<what> not found") or unreadable: "cannot read <what> as JSON", with
    the parser's line and column for malformed JSON, else the kind of error."""
    from audit.errors import InputError

    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(missing or f"{what} not found", source=str(path)) from None
    except (OSError, ValueError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        detail = str(exc) if isinstance(exc, json.JSONDecodeError) else exc.__class__.__name__
        raise InputError(f"cannot read {what} as JSON ({detail})", source=str(path)) from None
