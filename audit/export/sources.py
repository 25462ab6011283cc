"""The signed inputs of an export, each verified before anything is read from it.

The audit envelope is verified as ``flopgate verify`` and ``report`` do it (a signature by a
trusted key, the statement, the sha256 of every file it covers). Run and generation records are
verified the same way and must belong to that audit: their ``audit.sha256`` is the sha256 of the
audit envelope's bytes. Nothing unverified reaches an export.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from audit.errors import InputError


@dataclass(frozen=True)
class Signed:
    """One verified envelope: its file name, the sha256 of its bytes, and its predicate."""

    path: Path
    sha256: str
    predicate: dict

    @property
    def name(self) -> str:
        return self.path.name


@dataclass(frozen=True)
class Sources:
    audit: Signed
    run_records: tuple[Signed, ...] = ()
    generation_records: tuple[Signed, ...] = ()


def load_sources(audit_path: str | os.PathLike, trusted_keys, *,
                 run_records: Sequence[str | os.PathLike] = (),
                 generation_records: Sequence[str | os.PathLike] = (),
                 plan_path: str | os.PathLike | None = None) -> Sources:
    """Verify the audit and every record; raise ``VerificationFailed`` (exit 5) when one does
    not verify, ``InputError`` (exit 2) when a record belongs to another audit."""
    from audit.attest import (
        PREDICATE_AUDIT,
        PREDICATE_GENERATION_RECORD,
        PREDICATE_RUN_RECORD,
    )
    from audit.predicate import parse_audit_predicate

    audit = _verified(audit_path, trusted_keys, PREDICATE_AUDIT, "audit", plan_path=plan_path)
    typed, problem = parse_audit_predicate(audit.predicate)   # the shape the gate requires, or no export
    if typed is None:
        raise InputError(f"predicate.{problem}", source=str(audit_path))
    runs = tuple(_verified(p, trusted_keys, PREDICATE_RUN_RECORD, "run record") for p in run_records)
    jobs = tuple(_verified(p, trusted_keys, PREDICATE_GENERATION_RECORD, "generation record")
                 for p in generation_records)
    for record in runs + jobs:
        of = as_dict(record.predicate.get("audit")).get("sha256")
        if of != audit.sha256:
            raise InputError(f"audit.sha256: expected {audit.sha256} (the audit being exported), "
                             f"got {str(of)[:64]}: this record belongs to another audit", source=str(record.path))
    return Sources(audit, runs, jobs)


def as_dict(value) -> dict:
    """A predicate field that should be an object: itself, or empty when it is anything else (a
    signed record of an older or newer shape is read for what it has, never guessed at)."""
    return value if isinstance(value, dict) else {}


def _verified(path, trusted_keys, predicate_type: str, what: str, *, plan_path=None) -> Signed:
    """``path`` verified, or ``VerificationFailed`` naming the file and ``what`` it is: with
    several envelopes on the line, the user must see which one failed."""
    from audit.attest import VerificationFailed
    from audit.attest.verify import verify_envelope_file
    from audit.policy.packs import installed_versions

    try:
        verified = verify_envelope_file(path, trusted_keys, plan_path=plan_path, predicate_types=(predicate_type,),
                                        installed_pack_versions=installed_versions)
    except VerificationFailed as exc:
        message = exc.message
        if exc.reason == "signature" and what != "audit":
            message += (f"; a {what} is signed by the run's or job's key (its --key, else that machine's "
                        "local key): trust it too, e.g. --trust DIR holding the auditor's and that key")
        raise VerificationFailed(exc.reason, f"{path} ({what}): {message}", exc.details) from None
    return Signed(Path(path), verified.envelope_sha256, verified.predicate)
