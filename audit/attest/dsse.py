"""DSSE v1 envelopes: the pre-authentication encoding (PAE), signing and verification.

An envelope is ``{"payload": b64(body), "payloadType": str, "signatures": [{"keyid", "sig"}]}``.
Signatures are Ed25519 over ``PAE(payloadType, body)``, never over the JSON text, and the body
is verified exactly as received (never re-serialised). ``keyid`` is the sha256 hex of the raw
32-byte public key; it is only a hint: every trusted key is tried on every signature.

Parsing is strict, so that no other parser can read another envelope out of the same bytes:
repeated JSON keys, NaN/Infinity and nesting deeper than 64 levels are refused (see
``canonical.strict_json_loads``), and ``payload`` and ``sig`` must be canonical standard base64
(RFC 4648 section 4 alphabet, with padding, no whitespace, unused trailing bits zero). DSSE also
lets writers use URL-safe base64; we write standard base64 and read only that. An envelope with
more than ``audit.limits.MAX_SIGNATURES`` (16) signatures is refused before any is decoded or
verified (each is tried on every trusted key: 100,000 took over a minute).
"""

from __future__ import annotations

import base64
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audit.attest import PAYLOAD_TYPE, VerificationFailed
from audit.attest.canonical import StrictJSONError, strict_json_loads
from audit.attest.keys import TrustedKey, key_id
from audit.fsutil import write_atomic
from audit.limits import MAX_SIGNATURES


def pae(payload_type: str, payload: bytes) -> bytes:
    """``"DSSEv1" SP LEN(type) SP type SP LEN(body) SP body``; LEN is the decimal byte length."""
    type_bytes = payload_type.encode("utf-8")
    return b"DSSEv1 %d %b %d %b" % (len(type_bytes), type_bytes, len(payload), payload)


@dataclass(frozen=True)
class Signature:
    keyid: str
    sig: bytes


@dataclass(frozen=True)
class Envelope:
    """A decoded envelope: ``payload`` holds the body's bytes exactly as signed."""

    payload_type: str
    payload: bytes
    signatures: tuple[Signature, ...]

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "payload": base64.b64encode(self.payload).decode("ascii"),
            "payloadType": self.payload_type,
            "signatures": [{"keyid": s.keyid, "sig": base64.b64encode(s.sig).decode("ascii")}
                           for s in self.signatures],
        }

    def to_bytes(self) -> bytes:
        """The envelope file's contents: indented JSON and a final newline."""
        return (json.dumps(self.to_json_dict(), indent=2) + "\n").encode("utf-8")


def sign(payload: bytes, private_key: Ed25519PrivateKey, payload_type: str = PAYLOAD_TYPE) -> Envelope:
    """An envelope holding one Ed25519 signature by ``private_key``."""
    signature = private_key.sign(pae(payload_type, payload))
    return Envelope(payload_type, payload, (Signature(key_id(private_key.public_key()), signature),))


_STANDARD_B64 = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")


def _b64decode(text: Any, field: str) -> bytes:
    """Canonical standard base64 only (RFC 4648 section 4, padded): one text per byte string.

    URL-safe characters, missing padding, whitespace and non-zero unused trailing bits are
    refused, each with its reason: a lenient decoder maps many texts to one signature.
    """
    if not isinstance(text, str):
        raise VerificationFailed("envelope", f"{field}: expected a base64 string")
    if not _STANDARD_B64.fullmatch(text):
        raise VerificationFailed("envelope", f"{field}: not valid base64 ({_b64_problem(text)})")
    decoded = base64.b64decode(text, validate=True)
    if base64.b64encode(decoded).decode("ascii") != text:
        raise VerificationFailed("envelope", f"{field}: not canonical base64 (the unused "
                                             "trailing bits are not zero)")
    return decoded


def _b64_problem(text: str) -> str:
    if any(c.isspace() for c in text):
        return "it contains whitespace"
    if "-" in text or "_" in text:
        return "URL-safe characters '-' or '_'; expected standard base64, RFC 4648 section 4"
    stripped = text.rstrip("=")
    if re.fullmatch(r"[A-Za-z0-9+/]*", stripped) and len(text) % 4:
        return "missing padding; expected a length that is a multiple of 4"
    return "expected the RFC 4648 standard alphabet with '=' padding"


def parse_envelope(data: bytes | str | dict) -> Envelope:
    """Decode an envelope from its file bytes, text or parsed JSON; check only its shape.

    Raises ``VerificationFailed("envelope", ...)`` when it is not strict JSON (see the module
    docstring) or not a DSSE envelope.
    """
    if isinstance(data, (bytes, str)):
        try:
            data = strict_json_loads(data)
        except StrictJSONError as exc:
            raise VerificationFailed("envelope", str(exc)) from None
        except ValueError:  # JSONDecodeError, UnicodeDecodeError
            raise VerificationFailed("envelope", "not valid JSON") from None
    if not isinstance(data, dict):
        raise VerificationFailed("envelope", "expected a JSON object")
    for field in ("payload", "payloadType", "signatures"):
        if field not in data:
            raise VerificationFailed("envelope", f"{field}: required field is missing")
    payload_type = data["payloadType"]
    if not isinstance(payload_type, str):
        raise VerificationFailed("envelope", "payloadType: expected a string")
    payload = _b64decode(data["payload"], "payload")
    raw_signatures = data["signatures"]
    if not isinstance(raw_signatures, list) or not raw_signatures:
        raise VerificationFailed("envelope", "signatures: expected a non-empty list")
    if len(raw_signatures) > MAX_SIGNATURES:  # each is tried on every trusted key: refused unread
        raise VerificationFailed("envelope", f"signatures: expected at most {MAX_SIGNATURES} signatures, "
                                             f"found {len(raw_signatures)}")
    signatures = []
    for i, entry in enumerate(raw_signatures):
        if not isinstance(entry, dict) or "sig" not in entry:
            raise VerificationFailed("envelope", f"signatures[{i}]: expected an object with 'sig'")
        keyid = entry.get("keyid", "")
        if not isinstance(keyid, str):
            raise VerificationFailed("envelope", f"signatures[{i}].keyid: expected a string")
        signatures.append(Signature(keyid, _b64decode(entry["sig"], f"signatures[{i}].sig")))
    return Envelope(payload_type, payload, tuple(signatures))


def check_payload_type(envelope: Envelope, expected: str = PAYLOAD_TYPE) -> None:
    if envelope.payload_type != expected:
        raise VerificationFailed(
            "payload_type", f"expected {expected!r}, got {envelope.payload_type[:80]!r}")


def verify_signatures(envelope: Envelope, trusted_keys: Sequence[TrustedKey]) -> list[TrustedKey]:
    """The trusted keys that made a valid signature over the PAE (at least one, or it raises).

    Every trusted key is tried on every signature; the envelope's ``keyid`` is not trusted.
    """
    if not trusted_keys:
        raise VerificationFailed("signature", "no trusted keys were given")
    message = pae(envelope.payload_type, envelope.payload)
    signers: list[TrustedKey] = []
    for signature in envelope.signatures:
        for key in trusted_keys:
            if any(s.keyid == key.keyid for s in signers):
                continue
            try:
                key.public_key.verify(signature.sig, message)
            except InvalidSignature:
                continue
            signers.append(key)
            break
    if not signers:
        raise VerificationFailed(
            "signature", f"no valid signature by a trusted key ({len(envelope.signatures)} "
                         f"signature(s), {len(trusted_keys)} trusted key(s) tried)")
    return signers


def write_envelope(path: str | os.PathLike, envelope: Envelope) -> Path:
    """Write an envelope file atomically (readers never see half a file)."""
    return write_atomic(path, envelope.to_bytes())
