"""A reviewer's signed approval of an audit, and its check by the training gate.

An approval is a DSSE envelope holding an in-toto Statement whose one subject is the audit
envelope file (by sha256 of its exact bytes) and whose predicate
(``https://flopgate.dev/attestations/approval/v1``) is::

    {"note": str, "approved_at": RFC 3339 UTC, "approver": {"keyid": hex},
     "audit": {"name", "sha256", "outcome", "signature_checked": bool, "signers": [keyid]},
     "tool": {"name": "flopgate", "version"}, "inputs": [...]}

A DENY audit can never be approved; an audit without a readable outcome neither (fail closed).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audit import __version__
from audit.attest import PREDICATE_APPROVAL, PREDICATE_AUDIT, VerificationFailed
from audit.attest.dsse import check_payload_type, parse_envelope, verify_signatures
from audit.attest.keys import TrustedKey, key_id, short_fingerprint
from audit.attest.statement import (InputFile, audited_outcome, build_subjects, make_statement,
                                    parse_statement, sign_statement, utc_timestamp)
from audit.attest.verify import read_envelope_file, verify_envelope_bytes
from audit.errors import FlopgateError, InputError
from audit.fsutil import sha256_bytes, write_atomic

APPROVABLE_OUTCOMES = ("REVIEW", "ALLOW_WITH_OBLIGATIONS", "ALLOW")
APPROVAL_REFUSED_EXIT = 4


class ApprovalRefused(FlopgateError):
    """The audit may not be approved (its outcome is DENY)."""

    exit_code = APPROVAL_REFUSED_EXIT


def default_approval_path(audit_envelope: str | os.PathLike) -> Path:
    return Path(str(audit_envelope) + ".approval.json")


@dataclass(frozen=True)
class Approved:
    """What ``approve`` wrote, plus notes to show the reviewer."""

    path: Path
    statement: dict
    audited_outcome: str
    notes: list[str]


def approve(audit_envelope: str | os.PathLike, approver_key: Ed25519PrivateKey, note: str, *,
            trusted_keys: Sequence[TrustedKey] | None = None,
            out_path: str | os.PathLike | None = None,
            approved_at: str | None = None) -> Approved:
    """Check the audit envelope, then write a signed approval of it (never overwriting one).

    With ``trusted_keys`` the audit must carry a signature by one of them; without, only its
    structure is checked (envelope, payloadType, Statement, audit predicate) and the notes say
    so. Subject files are not re-hashed here: the gate does that before training.
    Raises ``ApprovalRefused`` for DENY, ``VerificationFailed`` for a bad audit.
    """
    audit_envelope = Path(audit_envelope)
    data = read_envelope_file(audit_envelope)
    notes: list[str] = []
    if trusted_keys:
        verified = verify_envelope_bytes(data, trusted_keys, predicate_types=(PREDICATE_AUDIT,),
                                         check_files=False)
        statement, signers = verified.statement, [k.keyid for k in verified.signers]
    else:
        envelope = parse_envelope(data)
        check_payload_type(envelope)
        statement, signers = parse_statement(envelope.payload, (PREDICATE_AUDIT,)), []
        notes.append("the audit's signature was NOT checked (no --trust or --pubkey given)")
    outcome = audited_outcome(statement.get("predicate") or {})
    if outcome == "DENY":
        raise ApprovalRefused("the audit's outcome is DENY, which can never be approved")
    if outcome not in APPROVABLE_OUTCOMES:
        raise VerificationFailed("statement", f"the audit has no valid outcome (got {outcome!r})")
    note = (note or "").strip()
    if not note:
        raise InputError("expected a non-empty note saying what was reviewed", field="--note")

    out = Path(out_path) if out_path is not None else default_approval_path(audit_envelope)
    approver_id = key_id(approver_key.public_key())
    if approver_id in signers:
        notes.append("the approver's key also signed the audit (self-approval)")
    subjects, inputs = build_subjects([InputFile("audit_envelope", audit_envelope, out.resolve().parent)])
    predicate: dict[str, Any] = {
        "note": note,
        "approved_at": approved_at or utc_timestamp(),
        "approver": {"keyid": approver_id},
        "audit": {"name": subjects[0]["name"], "sha256": sha256_bytes(data), "outcome": outcome,
                  "signature_checked": bool(trusted_keys), "signers": signers},
        "tool": {"name": "flopgate", "version": __version__},
        "inputs": inputs,
    }
    statement_out = make_statement(subjects, PREDICATE_APPROVAL, predicate)
    envelope_bytes = sign_statement(statement_out, approver_key).to_bytes()
    try:
        write_atomic(out, envelope_bytes, overwrite=False)
    except FileExistsError:
        raise InputError("already exists; an approval is never overwritten (use --out)",
                         source=str(out)) from None
    return Approved(out, statement_out, outcome, notes)


@dataclass(frozen=True)
class ApprovalCheck:
    """The gate's answer: ``ok`` and a one-line ``reason`` (why it failed, or who approved)."""

    ok: bool
    reason: str
    approver: TrustedKey | None = None
    predicate: dict | None = None


def _approval_bytes(approval_env: bytes | dict | os.PathLike) -> bytes | dict:
    if isinstance(approval_env, os.PathLike):
        return read_envelope_file(approval_env)
    if isinstance(approval_env, (bytes, dict)):
        return approval_env
    raise TypeError("approval_env: expected bytes, a parsed dict or a path")


def verify_approval(approval_env: bytes | dict | os.PathLike, audit_env_bytes: bytes,
                    trusted_approver_keys: Sequence[TrustedKey]) -> ApprovalCheck:
    """Is ``approval_env`` a valid approval, by a trusted approver key, of exactly this audit
    envelope (its bytes), whose outcome is not DENY? Never raises: any error is ``ok=False``."""
    try:
        envelope = parse_envelope(_approval_bytes(approval_env))
        check_payload_type(envelope)
        signers = verify_signatures(envelope, trusted_approver_keys)
        statement = parse_statement(envelope.payload, (PREDICATE_APPROVAL,))
        digest = sha256_bytes(audit_env_bytes)
        if not any(s.get("digest", {}).get("sha256") == digest for s in statement["subject"]):
            return ApprovalCheck(False, f"approval: bound to a different audit envelope "
                                        f"(this one has sha256 {digest[:12]}...)")
        predicate = statement.get("predicate") or {}
        approved = (predicate.get("audit") or {}).get("outcome")
        audit_envelope = parse_envelope(audit_env_bytes)
        actual = audited_outcome(parse_statement(audit_envelope.payload, (PREDICATE_AUDIT,))
                                 .get("predicate") or {})
        if actual not in APPROVABLE_OUTCOMES:
            return ApprovalCheck(False, f"approval: the audit's outcome {actual!r} cannot be approved")
        if approved != actual:
            return ApprovalCheck(False, f"approval: it approves outcome {approved!r}, "
                                        f"the audit says {actual!r}")
        note = predicate.get("note")
        if not isinstance(note, str) or not note.strip():
            return ApprovalCheck(False, "approval: it has no note")
        when = predicate.get("approved_at", "an unknown time")
        return ApprovalCheck(True, f"approved by {short_fingerprint(signers[0].keyid)} "
                                   f"({signers[0].source}) at {when}: {json.dumps(note)}",
                             signers[0], predicate)
    except FlopgateError as exc:
        return ApprovalCheck(False, str(exc))
    except Exception as exc:  # noqa: BLE001 - fail closed on anything unexpected
        return ApprovalCheck(False, f"approval could not be checked ({exc.__class__.__name__})")
