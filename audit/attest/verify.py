"""The whole verification of an envelope file, as ``flopgate verify``, ``report`` and the gate
use it. Checks run in this order and the first failure is raised as ``VerificationFailed``:

1. the file is a DSSE envelope (strict JSON, shape, base64)    -> reason ``envelope``
2. its payloadType is ``application/vnd.in-toto+json``           -> ``payload_type``
3. a trusted key signed PAE(payloadType, payload)                -> ``signature``
4. the payload is an in-toto Statement v1                         -> ``statement``/``statement_type``
5. its predicateType is one we accept                             -> ``predicate_type``
6. every subject's sha256 matches the file on disk (optional)    -> ``subjects``

Envelope and payload are read strictly (``canonical.strict_json_loads``: no repeated keys, NaN
or nesting past 64 levels; canonical standard base64 only), so no other parser can read a
different envelope or statement out of the same bytes.

A file that cannot be read at all is an ``InputError`` (exit 2), not a failed verification.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from audit.attest import KNOWN_PREDICATE_TYPES, PREDICATE_APPROVAL, PREDICATE_EU_DOCUMENTS, VerificationFailed
from audit.attest.dsse import check_payload_type, parse_envelope, verify_signatures
from audit.attest.keys import TrustedKey
from audit.attest.statement import (audited_outcome, check_subjects, pack_version_changes,
                                    parse_statement)
from audit.fsutil import read_input, sha256_bytes
from audit.limits import MAX_ENVELOPE_BYTES

InstalledPackVersions = Callable[[], Mapping[str, str]]


@dataclass(frozen=True)
class Verified:
    """A verified attestation. ``warnings`` never make it fail (e.g. a newer policy pack)."""

    statement: dict
    signers: list[TrustedKey]
    envelope_sha256: str
    subjects_checked: int
    warnings: list[str] = field(default_factory=list)

    @property
    def predicate_type(self) -> str:
        return self.statement["predicateType"]

    @property
    def predicate(self) -> dict:
        return self.statement.get("predicate") or {}

    @property
    def outcome(self) -> str | None:
        """The audit outcome, for audit predicates (``None`` when absent or contradictory)."""
        return audited_outcome(self.predicate)


def read_envelope_file(path: str | os.PathLike) -> bytes:
    """The bytes of an envelope file; a missing or unreadable file is an ``InputError``."""
    return read_input(path, "envelope file", max_bytes=MAX_ENVELOPE_BYTES)


def verify_envelope_bytes(data: bytes, trusted_keys: Sequence[TrustedKey], *,
                          predicate_types: Iterable[str] = KNOWN_PREDICATE_TYPES,
                          check_files: bool = True,
                          plan_path: str | os.PathLike | None = None,
                          base_dir: str | os.PathLike | None = None,
                          installed_pack_versions: InstalledPackVersions | None = None) -> Verified:
    """Run checks 1-6 on an envelope's bytes (see the module docstring).

    ``installed_pack_versions`` returns ``{pack_id: version}`` of the installed policy packs;
    a pack whose version changed is a warning, and its digest is not compared. When the
    callable fails, the warning says so and every digest is compared (fail closed).
    """
    envelope = parse_envelope(data)
    check_payload_type(envelope)
    signers = verify_signatures(envelope, trusted_keys)
    statement = parse_statement(envelope.payload, predicate_types)
    warnings: list[str] = []
    installed: Mapping[str, str] | None = None
    if installed_pack_versions is not None and _uses_policy_packs(statement):
        try:
            installed = dict(installed_pack_versions())
        except Exception as exc:  # noqa: BLE001 - a broken pack install must not hide digests
            first = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
            warnings.append(f"could not read the installed policy packs ({first}); "
                            "pack versions not compared")
        else:
            warnings.extend(pack_version_changes(statement, installed))
    checked = 0
    if check_files:
        problems = check_subjects(statement, plan_path, base_dir=base_dir,
                                  installed_pack_versions=installed)
        if problems:
            raise VerificationFailed("subjects", f"{len(problems)} of {len(statement['subject'])} "
                                     f"file(s) changed or missing: " + "; ".join(problems),
                                     tuple(problems))
        checked = len(statement["subject"])
    return Verified(statement, signers, sha256_bytes(data), checked, warnings)


def _uses_policy_packs(statement: dict) -> bool:
    inputs = (statement.get("predicate") or {}).get("inputs")
    return isinstance(inputs, list) and any(
        isinstance(e, dict) and e.get("role") == "policy_pack" for e in inputs)


def verify_envelope_file(path: str | os.PathLike, trusted_keys: Sequence[TrustedKey], *,
                         predicate_types: Iterable[str] = KNOWN_PREDICATE_TYPES,
                         check_files: bool = True,
                         plan_path: str | os.PathLike | None = None,
                         installed_pack_versions: InstalledPackVersions | None = None) -> Verified:
    """Verify an envelope file. The subjects of an approval (the audit envelope) and of the EU
    documents (the files beside them) are looked up relative to the envelope's folder; other
    subjects relative to ``plan_path``'s folder."""
    data = read_envelope_file(path)
    # Relative names in an approval or the EU documents' statement are relative to the envelope.
    # This unverified peek only chooses that folder; the statement is verified before any file is read.
    base_dir = Path(path).resolve().parent if _subjects_beside_envelope(data) else None
    return verify_envelope_bytes(data, trusted_keys, predicate_types=predicate_types,
                                 check_files=check_files, plan_path=plan_path, base_dir=base_dir,
                                 installed_pack_versions=installed_pack_versions)


def _subjects_beside_envelope(data: bytes) -> bool:
    try:
        return unverified_statement(data).get("predicateType") in (PREDICATE_APPROVAL, PREDICATE_EU_DOCUMENTS)
    except VerificationFailed:
        return False


def unverified_statement(data: bytes) -> dict[str, Any]:
    """The Statement inside an envelope WITHOUT checking any signature: only for showing a
    report next to a prominent "verification failed" warning, never for a decision."""
    envelope = parse_envelope(data)
    return parse_statement(envelope.payload, predicate_types=None)
