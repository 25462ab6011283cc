"""Seals: HMAC-SHA256 under the flopgate home's MAC key, for files flopgate writes and reads back
on the same machine (the count cache, the weights' digest record, the generation journal, the
teacher-logit cache index).

A seal proves "flopgate wrote these bytes with this home's key", nothing more: a person who can
read the key (``$FLOPGATE_HOME/keys/flopgate-cache-mac``, mode 0600) can forge one. Signed
statements (:mod:`audit.attest.statement`) are what others verify; seals keep local
intermediate files from being edited or written by hand between two flopgate commands.

Every use has its own ``domain`` (a byte string ending in ``\\0``), so a seal made for one kind
of file never verifies as another kind's, and binds whatever ``context`` places the bytes (a
cache key, a host, a job) to the message.
"""

from __future__ import annotations

import hashlib
import hmac


def hmac_hex(key: bytes, domain: bytes, payload: bytes, *context: str) -> str:
    """The hex HMAC-SHA256 of ``domain + context_1 \\0 ... context_n \\0 + payload``."""
    head = b"".join(part.encode("utf-8") + b"\0" for part in context)
    return hmac.new(key, domain + head + payload, hashlib.sha256).hexdigest()


def hmac_verifies(mac: object, key: bytes, domain: bytes, payload: bytes, *context: str) -> bool:
    """Whether ``mac`` (anything read from a file) is the seal of ``payload``, in constant time."""
    if not isinstance(mac, str):
        return False
    expected = hmac_hex(key, domain, payload, *context)
    return hmac.compare_digest(mac.encode("ascii", "replace"), expected.encode("ascii"))


def home_key(what: str) -> bytes:
    """The home's MAC key (made on first use); ``InputError`` when it cannot be made or read,
    ``what`` naming what it was to seal: a job that cannot seal its files does not start."""
    from audit.attest.keys import cache_mac_key_path, ensure_cache_mac_key
    from audit.errors import InputError

    try:
        return ensure_cache_mac_key()
    except OSError as exc:
        raise InputError(f"cannot make the MAC key that seals {what} ({exc.strerror or exc})",
                         source=str(cache_mac_key_path())) from None
