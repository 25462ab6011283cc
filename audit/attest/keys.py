"""Ed25519 key files: generation, loading, permission checks, fingerprints and trusted keys.

Files: the private key is PEM PKCS#8 (``BEGIN PRIVATE KEY``, or ``BEGIN ENCRYPTED PRIVATE KEY``
when ``FLOPGATE_KEY_PASSPHRASE`` is set at generation), created with mode 0600 and never
overwritten; the public key is ``<private>.pub`` in PEM SubjectPublicKeyInfo. Keys made by
``openssl genpkey -algorithm ed25519`` and ``ssh-keygen -t ed25519`` (unencrypted) load too.

A key's id (its fingerprint) is the sha256 hex of the raw 32-byte public key.
Default location: ``$FLOPGATE_HOME/keys/flopgate-ed25519``, ``FLOPGATE_HOME`` defaulting to
``~/.config/flopgate``. Private key bytes are never printed or put in a message.

Beside it, ``flopgate-cache-mac`` holds the secret that authenticates the FLOP count cache
(32 random bytes as 64 hex digits): made on first use with mode 0600, never overwritten,
refused when group or others may read or write it, and never printed.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization as ser
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from audit.errors import InputError
from audit.fsutil import read_input, write_atomic
from audit.limits import MAX_KEY_BYTES

PASSPHRASE_ENV = "FLOPGATE_KEY_PASSPHRASE"
HOME_ENV = "FLOPGATE_HOME"
DEFAULT_KEY_NAME = "flopgate-ed25519"
CACHE_MAC_KEY_NAME = "flopgate-cache-mac"
CACHE_MAC_KEY_BYTES = 32


def key_id(public_key: Ed25519PublicKey) -> str:
    """sha256 hex of the raw 32-byte public key: the envelope ``keyid`` and the fingerprint."""
    raw = public_key.public_bytes(ser.Encoding.Raw, ser.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def short_fingerprint(keyid: str) -> str:
    """``SHA256:`` and the first 16 hex digits of a key id, for display next to the full id."""
    return f"SHA256:{keyid[:16]}"


@dataclass(frozen=True)
class TrustedKey:
    """A public key the user named, with where it came from (shown in results)."""

    keyid: str
    public_key: Ed25519PublicKey
    source: str


def flopgate_home() -> Path:
    return Path(os.environ.get(HOME_ENV) or Path.home() / ".config" / "flopgate").expanduser()


def default_key_path() -> Path:
    return flopgate_home() / "keys" / DEFAULT_KEY_NAME


def public_key_path(private_path: str | os.PathLike) -> Path:
    private_path = Path(private_path)
    return private_path.with_name(private_path.name + ".pub")


def _passphrase() -> bytes | None:
    value = os.environ.get(PASSPHRASE_ENV)
    return value.encode("utf-8") if value else None


def public_pem(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(ser.Encoding.PEM, ser.PublicFormat.SubjectPublicKeyInfo)


def generate_key(path: str | os.PathLike) -> tuple[Ed25519PrivateKey, Path]:
    """Write a new key pair to ``path`` (mode 0600) and ``path.pub``; return the key and the
    public file. Encrypted when ``FLOPGATE_KEY_PASSPHRASE`` is set. Never overwrites either file
    (``InputError`` if one exists). A missing folder is created with mode 0700."""
    path = Path(path).expanduser()
    pub_path = public_key_path(path)
    for existing in (path, pub_path):
        if existing.exists() or existing.is_symlink():
            raise InputError("already exists; flopgate never overwrites a key file "
                             "(choose another --out or remove it yourself)", source=str(existing))
    if not path.parent.exists():
        path.parent.mkdir(parents=True, mode=0o700)
    passphrase = _passphrase()
    encryption = ser.BestAvailableEncryption(passphrase) if passphrase else ser.NoEncryption()
    private_key = Ed25519PrivateKey.generate()
    pem = private_key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, encryption)
    try:
        write_atomic(path, pem, mode=0o600, overwrite=False)
        write_atomic(pub_path, public_pem(private_key.public_key()), mode=0o644, overwrite=False)
    except FileExistsError as exc:
        raise InputError("already exists; flopgate never overwrites a key file",
                         source=str(exc.filename2 or path)) from None
    except OSError as exc:
        raise InputError(f"cannot write key ({exc.strerror or exc.__class__.__name__})",
                         source=str(path)) from None
    return private_key, pub_path


def check_private_key_mode(path: Path) -> None:
    """Refuse a private key file that group or others may read or write (as OpenSSH does)."""
    if os.name == "nt":  # modes are advisory on Windows
        return
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        raise InputError("private key not found", source=str(path)) from None
    if mode & 0o077:
        raise InputError(f"private key is accessible by group or others (mode {mode:04o}); "
                         f"run: chmod 600 {path}", source=str(path))


def load_private_key(path: str | os.PathLike) -> Ed25519PrivateKey:
    """Load an Ed25519 private key after checking its file mode.

    An encrypted key is decrypted with ``FLOPGATE_KEY_PASSPHRASE``.
    """
    path = Path(path).expanduser()
    data = read_input(path, "private key", max_bytes=MAX_KEY_BYTES)
    check_private_key_mode(path)
    if b"BEGIN OPENSSH PRIVATE KEY" in data:
        key = _load_openssh_private(data, path)
    else:
        key = _load_pem_private(data, path)
    if not isinstance(key, Ed25519PrivateKey):
        raise InputError(f"expected an Ed25519 key, got {key.__class__.__name__}", source=str(path))
    return key


def _load_pem_private(data: bytes, path: Path):
    encrypted = b"BEGIN ENCRYPTED PRIVATE KEY" in data
    passphrase = _passphrase() if encrypted else None
    if encrypted and passphrase is None:
        raise InputError(f"private key is encrypted; set {PASSPHRASE_ENV} to its passphrase",
                         source=str(path))
    try:
        return ser.load_pem_private_key(data, passphrase)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        if encrypted:
            raise InputError(f"cannot decrypt private key: wrong {PASSPHRASE_ENV}",
                             source=str(path)) from None
        raise InputError("not a PEM private key", source=str(path)) from None


def _load_openssh_private(data: bytes, path: Path):
    try:
        return ser.load_ssh_private_key(data, None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        if "password" in str(exc).lower() or isinstance(exc, UnsupportedAlgorithm):
            raise InputError("encrypted OpenSSH keys are not supported; convert with "
                             "ssh-keygen -p -m PKCS8 or make one with flopgate keygen",
                             source=str(path)) from None
        raise InputError("not a valid OpenSSH private key", source=str(path)) from None


def load_public_key(path: str | os.PathLike) -> Ed25519PublicKey:
    """Load an Ed25519 public key: PEM (``BEGIN PUBLIC KEY``) or OpenSSH (``ssh-ed25519 ...``)."""
    path = Path(path).expanduser()
    data = read_input(path, "public key", max_bytes=MAX_KEY_BYTES)
    try:
        if data.lstrip().startswith(b"ssh-"):
            key = ser.load_ssh_public_key(data.strip())
        else:
            key = ser.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        if b"PRIVATE KEY" in data:
            raise InputError("this is a private key; trust the .pub file instead",
                             source=str(path)) from None
        raise InputError("not a PEM or OpenSSH public key", source=str(path)) from None
    if not isinstance(key, Ed25519PublicKey):
        raise InputError(f"expected an Ed25519 public key, got {key.__class__.__name__}",
                         source=str(path))
    return key


def load_trusted_keys(pubkey: str | os.PathLike | None = None,
                      trust_dir: str | os.PathLike | None = None) -> list[TrustedKey]:
    """The keys the user named: one ``--pubkey`` file and/or every ``*.pub`` in ``--trust``.

    Keys found anywhere else (inside an envelope or report) are never trusted.
    """
    if pubkey is None and trust_dir is None:
        raise InputError("no trusted key named; give --pubkey FILE or --trust DIR")
    keys: dict[str, TrustedKey] = {}
    files: list[Path] = []
    if pubkey is not None:
        files.append(Path(pubkey).expanduser())
    if trust_dir is not None:
        folder = Path(trust_dir).expanduser()
        if not folder.is_dir():
            raise InputError("expected a folder of *.pub files", source=str(folder))
        found = sorted(p for p in folder.glob("*.pub") if p.is_file())
        if not found:
            raise InputError("no *.pub files in the trust folder", source=str(folder))
        files.extend(found)
    for file in files:
        public_key = load_public_key(file)
        kid = key_id(public_key)
        keys.setdefault(kid, TrustedKey(kid, public_key, str(file)))
    return list(keys.values())


def ensure_default_key() -> tuple[Ed25519PrivateKey, Path, bool]:
    """Load the default key, creating it (and its 0700 folder) first when missing.

    Returns ``(private_key, path, created)``; the caller says where and shows the fingerprint
    when ``created`` is true.
    """
    path = default_key_path()
    if path.exists():
        private_key = load_private_key(path)
        pub_path = public_key_path(path)
        if not pub_path.exists():
            write_atomic(pub_path, public_pem(private_key.public_key()), overwrite=False)
        return private_key, path, False
    private_key, _ = generate_key(path)
    return private_key, path, True


def cache_mac_key_path() -> Path:
    """``$FLOPGATE_HOME/keys/flopgate-cache-mac``: the home's MAC key, beside the default signing
    key: it seals the count cache, the weights' digest record and the generation journal, each
    under its own domain prefix."""
    return flopgate_home() / "keys" / CACHE_MAC_KEY_NAME


def check_secret_file_mode(path: Path, what: str) -> None:
    """Refuse a secret file (``what`` names it in the message) that group or others may read or
    write, like :func:`check_private_key_mode`."""
    if os.name == "nt":  # modes are advisory on Windows
        return
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        raise InputError(f"{what} not found", source=str(path)) from None
    if mode & 0o077:
        raise InputError(f"{what} is accessible by group or others (mode {mode:04o}); "
                         f"run: chmod 600 {path}", source=str(path))


def load_cache_mac_key(path: str | os.PathLike) -> bytes:
    """The 32-byte count-cache MAC key in ``path`` (64 hex digits), after checking the file's
    mode. ``InputError`` naming the file (never its contents) when it cannot be used."""
    path = Path(path).expanduser()
    what = "cache MAC key"
    data = read_input(path, what, max_bytes=MAX_KEY_BYTES)
    check_secret_file_mode(path, what)
    try:
        key = bytes.fromhex(data.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        key = b""
    if len(key) != CACHE_MAC_KEY_BYTES:
        raise InputError(f"not a {what} (expected {2 * CACHE_MAC_KEY_BYTES} hex digits); "
                         f"remove it and flopgate makes a new one", source=str(path))
    return key


def ensure_cache_mac_key() -> bytes:
    """The count cache's MAC key (:func:`cache_mac_key_path`), made on first use.

    A new key is 32 bytes from :mod:`secrets`, written atomically with mode 0600 and never over
    an existing file (its folder made with mode 0700); when another process makes it first, that
    one is used. ``OSError`` when it cannot be written (a read-only home); ``InputError`` when
    the file there cannot be used (see :func:`load_cache_mac_key`).
    """
    path = cache_mac_key_path()
    if not (path.exists() or path.is_symlink()):
        if not path.parent.exists():
            path.parent.mkdir(parents=True, mode=0o700, exist_ok=True)
        try:
            write_atomic(path, secrets.token_hex(CACHE_MAC_KEY_BYTES) + "\n", mode=0o600,
                         overwrite=False)
        except FileExistsError:
            pass  # another process made it between our check and our write: use theirs
    return load_cache_mac_key(path)


def cache_mac_key_or_none() -> bytes | None:
    """:func:`ensure_cache_mac_key`, or None when none can be made (a read-only home): the
    count cache and the weights' digest record then simply go unused."""
    try:
        return ensure_cache_mac_key()
    except OSError:
        return None
