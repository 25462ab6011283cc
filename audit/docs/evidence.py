"""What the EU documents are written from, each input read once and verified before use.

* the audit envelope: signature by a trusted auditor key, statement, and every input's digest
  (as ``flopgate report`` checks it); its plan (``predicate.plan.content``, signed) gives the
  person-only facts of the ``disclosure:`` block;
* run records and generation records (optional): signature by a trusted runner key, their
  files' digests, and their ``audit.sha256`` equal to the audit envelope's sha256;
* the ledger (optional): the whole chain verified with the keys by role; only this audit's rows
  are summarised;
* the dataset manifest the audit signed (when its file is at hand): its bytes must have the
  audited sha256.

Anything that does not verify stops the command (``VerificationFailed``, exit 5); nothing is
written from evidence that failed. FLOP use 1 multiply-add = 2 FLOP.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from audit.attest import (
    PREDICATE_AUDIT,
    PREDICATE_GENERATION_RECORD,
    PREDICATE_RUN_RECORD,
    VerificationFailed,
)
from audit.attest.statement import resolve_subject_name
from audit.attest.verify import verify_envelope_file
from audit.errors import InputError
from audit.fsutil import read_input, sha256_bytes
from audit.limits import MAX_MANIFEST_BYTES
from audit.plan import Plan
from audit.predicate import AuditPredicate, parse_audit_predicate
from audit.validation import validate_model


@dataclass(frozen=True)
class Source:
    """A signed file a value came from: ``kind`` is audit, run record, generation record,
    dataset manifest or ledger (for the ledger, ``sha256`` is its head row's hash)."""

    kind: str
    name: str
    sha256: str

    def as_json(self) -> dict:
        return {"kind": self.kind, "file": self.name, "sha256": self.sha256}


@dataclass(frozen=True)
class Record:
    """A verified run or generation record: its predicate and where it came from."""

    predicate: dict
    source: Source


@dataclass(frozen=True)
class LedgerSummary:
    """This audit's rows of a verified ledger: FLOP charged (all runs), the parameter-update
    part, the runs charged and the generation jobs' completion tokens."""

    source: Source
    charged_flops: float
    update_flops: float
    runs: int
    generation_jobs: int
    completion_tokens: int


@dataclass(frozen=True)
class Evidence:
    audit: AuditPredicate
    plan: Plan
    audit_source: Source
    runs: list[Record] = field(default_factory=list)
    generations: list[Record] = field(default_factory=list)
    ledger: LedgerSummary | None = None
    manifest: dict | None = None
    manifest_source: Source | None = None


def read_audit(path: str, trusted, *, plan_path: str | None = None,
               installed_pack_versions=None) -> tuple[AuditPredicate, Plan, Source]:
    """Verify the audit envelope (signature and every input digest) and parse its predicate and
    the plan it signed."""
    try:
        verified = verify_envelope_file(path, trusted, plan_path=plan_path, predicate_types=(PREDICATE_AUDIT,),
                                        installed_pack_versions=installed_pack_versions)
    except VerificationFailed as exc:
        raise VerificationFailed(exc.reason, f"{path}: {exc.message}", exc.details) from None
    audit, problem = parse_audit_predicate(verified.predicate)
    if audit is None:
        raise InputError(f"the audit predicate cannot be read ({problem})", source=path)
    plan = validate_model(Plan, audit.plan.content, f"{path} (predicate.plan.content)")
    return audit, plan, Source("audit", Path(path).name, verified.envelope_sha256)


def read_records(paths: Sequence[str], trusted, *, predicate_type: str, kind: str,
                 audit_sha256: str) -> list[Record]:
    """Verify each record (signature, statement, its files' digests) and require it to belong to
    the audit whose envelope has ``audit_sha256``."""
    records = []
    for path in paths:
        try:
            verified = verify_envelope_file(path, trusted, predicate_types=(predicate_type,))
        except VerificationFailed as exc:
            raise VerificationFailed(exc.reason, f"{path}: {exc.message}", exc.details) from None
        if any(r.source.sha256 == verified.envelope_sha256 for r in records):
            raise InputError(f"this {kind} was given twice; its figures would be counted twice", source=path)
        predicate = verified.predicate
        signed_audit = (predicate.get("audit") or {}).get("sha256")
        if signed_audit != audit_sha256:
            raise InputError(f"this {kind} belongs to another audit (audit.sha256 {str(signed_audit)[:12]}..., "
                             f"the audit given has {audit_sha256[:12]}...)", source=path, field="audit.sha256")
        records.append(Record(predicate, Source(kind, Path(path).name, verified.envelope_sha256)))
    return records


def read_ledger(where: str, trust, audit_sha256: str) -> LedgerSummary:
    """Verify the ledger with ``trust`` (a :class:`audit.ledger.chain.LedgerTrust`) as the gate
    does (every row's link and hash; the signers of this audit's charge and generation rows, the
    rows summed: other audits' rows on a shared ledger are signed by keys this filing need not
    know) and sum this audit's charge and generation rows."""
    from audit.ledger.engines import is_url
    from audit.ledger.store import Ledger, ledger_exists

    if not ledger_exists(where):
        raise InputError("no ledger here", source=str(where), field="--ledger")
    with Ledger(where, create=False) as ledger:
        stored = ledger.raw_rows()  # read once: what is summed is what was verified
        problems = ledger.verify(trust, stored, audit=audit_sha256)
        if problems:
            raise VerificationFailed("ledger", f"{ledger.path}: {problems[0]}", tuple(problems))
        rows = ledger.rows(stored=stored)
        location = str(ledger.path)
    flops, update, runs = [], [], set()
    completion_by_job: dict[str, int] = {}  # a job's last generation row holds its totals
    for row in rows:
        if row.get("audit_sha256") != audit_sha256:
            continue
        body = row.get("body") or {}
        if row.get("kind") == "charge":
            flops.append(float(body.get("flops") or 0))
            update.append(float(body.get("update_flops") or 0))
            runs.add(str(body.get("run_id")))
        elif row.get("kind") == "generation":
            completion_by_job[str(body.get("job_id"))] = int(body.get("completion_tokens") or 0)
    head = rows[-1] if rows else {}
    # a file by its name, a database by its kind: no local folder or URL credentials in a filing
    shown = "PostgreSQL ledger" if is_url(str(where)) else Path(location).name
    source = Source("ledger", f"{shown} (head seq {head.get('seq', 0)})", str(head.get("row_hash", "")))
    return LedgerSummary(source, math.fsum(flops), math.fsum(update), len(runs), len(completion_by_job),
                         sum(completion_by_job.values()))


def read_manifest(audit: AuditPredicate, plan_path: str | None) -> tuple[dict | None, Source | None]:
    """The dataset manifest the audit signed, when its file is at hand: its bytes must have the
    audited sha256 (else ``VerificationFailed``). ``(None, None)`` without one."""
    entries = audit.inputs_of("dataset_manifest")
    if not entries:
        return None, None
    entry = entries[0]
    base = Path(plan_path).expanduser().resolve().parent if plan_path else None
    path = resolve_subject_name(entry.name, base) if base else None
    path = path if path is not None and path.is_file() else Path(entry.path)
    if not path.is_file():
        return None, None
    raw = read_input(path, "the dataset manifest", max_bytes=MAX_MANIFEST_BYTES)
    digest = sha256_bytes(raw)
    if digest != entry.sha256:
        raise VerificationFailed("subjects", f"{path}: the dataset manifest changed since the audit "
                                 f"(sha256 {entry.sha256[:12]}... signed, {digest[:12]}... now)")
    try:
        manifest = json.loads(raw)
    except ValueError:
        raise InputError("expected JSON", source=str(path)) from None
    return (manifest if isinstance(manifest, dict) else None), Source("dataset manifest", entry.name, digest)


def gather(audit_path: str, auditors, *, runners=None, run_records: Sequence[str] = (),
           generation_records: Sequence[str] = (), ledger: str | None = None, ledger_trust=None,
           plan_path: str | None = None, installed_pack_versions=None) -> Evidence:
    """Read and verify everything ``flopgate docs eu`` was given (see the module docstring)."""
    audit, plan, audit_source = read_audit(audit_path, auditors, plan_path=plan_path,
                                           installed_pack_versions=installed_pack_versions)
    runners = list(runners or auditors)
    runs = read_records(run_records, runners, predicate_type=PREDICATE_RUN_RECORD, kind="run record",
                        audit_sha256=audit_source.sha256)
    generations = read_records(generation_records, runners, predicate_type=PREDICATE_GENERATION_RECORD,
                               kind="generation record", audit_sha256=audit_source.sha256)
    summary = read_ledger(ledger, ledger_trust, audit_source.sha256) if ledger else None
    manifest, manifest_source = read_manifest(audit, plan_path)
    return Evidence(audit, plan, audit_source, runs, generations, summary, manifest, manifest_source)


def as_number(value: Any) -> float | None:
    """A finite number from a signed predicate, else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)
