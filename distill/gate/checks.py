"""The training gate: a distillation starts only behind a verified, passing, current audit.

:func:`run_gate_checks` reads files and checks signatures; it never loads a model. It passes only
when every check below holds; a refusal lists each failed check on its own line, prefixed by
a stable code:

``signature``   the envelope is a DSSE envelope whose audit statement a trusted key signed
                (nothing else is checked when this fails: an unverified payload is not read);
``predicate``   the verified predicate parses into :class:`audit.predicate.AuditPredicate`, the
                model check signs (once; every check below reads its typed fields);
``subjects``    every file the audit covers still has its signed sha256 (one line per file);
``plan``        the plan given now is the audited plan, byte for byte;
``inputs``      the model configs and dataset manifest the plan names now are audited inputs
                with the same sha256 (the one list check signs, :func:`audit.check.plan_inputs`);
``weights``     every local model folder the plan names (the teacher's, a base student's) has the
                audited root digest, re-hashed now;
``tokenizer``   a tokenizer folder the plan names (``data.tokenizer``) has the audited root
                digest, re-hashed now (which tokenizer a run may use: :mod:`distill.gate.attested`);
``outcome``     ALLOW; ALLOW_WITH_OBLIGATIONS with every checkable obligation met; or REVIEW
                with an approval (below). DENY, or no readable outcome, never opens;
``approval``    for REVIEW: an approval of this very envelope signed by a trusted approver key;
``age``         the audit was created at most ``max_age_days`` ago (and not in the future);
``dates``       the audit is not historical and applied the rules as of a date at most
                ``max_age_days`` old;
``policy_pack`` every bundled policy pack the audit used has the installed version.

An installed policy pack whose version differs from the audited one in either direction
refuses: a newer pack means the audit is out of date, an older one cannot vouch for it.
No argument skips a check. The plan is read once: its bytes are compared with the audit, then
parsed, and the parsed plan (with its configs as read) is handed to the trainer in the result.
Every other input a run reads (manifest, prompts, tokenizer, generated samples) comes from the
open result's :attr:`GateResult.inputs`, the attested-input layer (:mod:`distill.gate.attested`).
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Mapping, Optional, Sequence

from audit.attest import PREDICATE_AUDIT, VerificationFailed
from audit.attest.approval import verify_approval
from audit.attest.keys import TrustedKey
from audit.attest.statement import check_subjects, pack_version_changes
from audit.attest.verify import read_envelope_file, verify_envelope_bytes
from audit.errors import InputError
from audit.fsutil import read_input, sha256_bytes
from audit.predicate import AuditPredicate, parse_audit_predicate

FUTURE_SKEW = dt.timedelta(minutes=5)
"""Clock difference tolerated for an audit whose creation time lies ahead of ``now``."""


@dataclass(frozen=True)
class GateResult:
    """``ok`` only when every check passed; ``reasons`` holds one line per failed check."""

    ok: bool
    reasons: list[str]
    predicate: Optional[dict]          # the verified audit predicate (None if the signature failed)
    envelope_sha256: Optional[str]     # sha256 of the envelope file's exact bytes
    outcome: Optional[str] = None
    notes: list[str] = field(default_factory=list)   # who approved, obligations left to do
    approval_sha256: Optional[str] = None
    loaded_plan: Optional[object] = None   # audit.plan.LoadedPlan parsed from the verified plan bytes
    model_folders: dict = field(default_factory=dict)  # role -> audit.weights.FolderDigest, verified
    audit: Optional[AuditPredicate] = None   # the verified predicate, typed (None when unreadable)
    trusted_keys: tuple = ()   # the auditor keys the envelope was verified with (they verify generated data too)
    approval: Optional[dict] = None   # a verified approval: {"approver" (key id), "approved_at", "note"}

    @cached_property
    def inputs(self):
        """Everything else the run reads, through the attested-input layer
        (:class:`distill.gate.attested.AttestedInputs`); an open gate only."""
        from distill.gate.attested import AttestedInputs

        return AttestedInputs(self)


def run_gate_checks(envelope_path: str | os.PathLike, plan_path: str | os.PathLike, *,
                    trusted_keys: Sequence[TrustedKey],
                    approval_path: str | os.PathLike | None = None,
                    trusted_approvers: Sequence[TrustedKey] | None = None,
                    max_age_days: float = 30, now: dt.datetime,
                    installed_pack_versions: Mapping[str, str]) -> GateResult:
    """Run every check of the module docstring. ``now`` is timezone-aware (UTC if naive);
    ``installed_pack_versions`` maps bundled pack id -> installed version.

    An unreadable envelope, plan or approval file is an ``InputError`` (exit 2); everything
    else that fails is a refusal in the result."""
    if not trusted_keys:
        return GateResult(False, ["signature: no trusted key was named"], None, None)
    data = read_envelope_file(envelope_path)
    try:
        verified = verify_envelope_bytes(data, trusted_keys, predicate_types=(PREDICATE_AUDIT,),
                                         check_files=False)
    except VerificationFailed as exc:  # its text starts with its own code; "signature: signature:" once
        text = str(exc).removeprefix("signature: ")
        return GateResult(False, [f"signature: {text}"], None, None)
    statement, predicate = verified.statement, verified.predicate
    plan_path = Path(plan_path)
    plan_raw = read_input(plan_path, "plan")  # read once: verified, then parsed, then handed on
    installed = dict(installed_pack_versions)

    audit, problem = parse_audit_predicate(predicate)  # once; every check below reads typed fields
    checks: list[str] = []
    loaded, weights, read = None, {}, {plan_path.resolve(): sha256_bytes(plan_raw)}
    if audit is None:
        checks.append(f"predicate: the audit cannot be read ({problem}); re-run flopgate check")
    else:
        checks += _plan_reasons(audit, plan_path, plan_raw)
        if not checks:  # the plan is the audited one, so its file references can be trusted
            loaded, input_reasons, weights, digests = _read_inputs(audit, plan_path, plan_raw)
            checks += input_reasons
            read.update(digests)
    # every other subject is hashed here; what was just read is compared by its digest, not read again
    reasons = [f"subjects: {line}" for line in check_subjects(
        statement, plan_path, installed_pack_versions=installed, known_digests=read)]
    reasons += [f"policy_pack: {line}" for line in pack_version_changes(statement, installed)]
    reasons += checks
    if audit is None:
        return GateResult(False, reasons, predicate, verified.envelope_sha256)
    outcome_reasons, notes, approval = _outcome_reasons(audit, data, approval_path, trusted_approvers)
    reasons += outcome_reasons
    reasons += _age_reasons(audit, now, max_age_days)
    reasons += _rules_date_reasons(audit, now, max_age_days)
    return GateResult(not reasons, reasons, predicate, verified.envelope_sha256, audit.outcome, notes,
                      approval and approval["sha256"], loaded if not reasons else None,
                      weights if not reasons else {}, audit, tuple(trusted_keys),
                      approval and {k: v for k, v in approval.items() if k != "sha256"})


def _plan_reasons(audit: AuditPredicate, plan_path: Path, plan_raw: bytes) -> list[str]:
    audited, plan_inputs = audit.plan.sha256, audit.inputs_of("plan")
    if not plan_inputs:
        return ["plan: the audit covers no plan input"]
    actual = sha256_bytes(plan_raw)
    if actual != audited or any(e.sha256 != audited for e in plan_inputs):
        return [f"plan: {plan_path} is not the audited plan (sha256 {actual[:12]}... now, "
                f"{str(audited)[:12]}... audited)"]
    return []


def _read_inputs(audit: AuditPredicate, plan_path: Path, plan_raw: bytes):
    """(the plan parsed from its verified bytes, reasons, {role: folder digest}, {path: sha256
    of what was read}): every file and model folder the plan names now
    (:func:`audit.check.plan_inputs`, the list check signed) has an audited input of its role
    with the same sha256. Model folders are re-hashed with the fast path (unchanged files by
    their stat record; anything touched is read again)."""
    from audit.check import plan_inputs
    from audit.plan import load_plan

    try:
        loaded = load_plan(plan_path, raw=plan_raw)
        files, folders = plan_inputs(loaded)
    except InputError as exc:
        return None, [f"inputs: {exc}"], {}, {}
    reasons = []
    for item in files:
        if item.role == "plan":
            continue  # checked byte for byte above
        audited = {e.sha256 for e in audit.inputs_of(item.role)}
        code = "tokenizer" if item.role in ("tokenizer", "student_tokenizer") else "weights" if item.role in folders else "inputs"
        if not audited:
            reasons.append(f"{code}: the audit covers no {item.role}, but the plan names {item.path}; "
                           "re-run flopgate check")
        elif item.sha256 not in audited:
            what = "root sha256" if item.role in folders else "sha256"
            reasons.append(f"{code}: {item.role} {item.path} has {what} {item.sha256[:12]}..., not the audited one")
    # the authorisation's digest here is the plan's declaration, not a read: check_subjects reads it
    digests = {Path(item.path).resolve(): item.sha256 for item in files if item.role != "authorization"}
    return loaded, reasons, folders, digests


def _outcome_reasons(audit: AuditPredicate, envelope_bytes: bytes, approval_path,
                     trusted_approvers) -> tuple[list[str], list[str], Optional[dict]]:
    """(reasons, notes, the verified approval: sha256, approver key id, time, note) for the audit's outcome. The verified decision (the
    engine's own :class:`Decision`) is judged by the engine's one rule,
    :func:`audit.policy.engine.gate_would_open`; the gate has no rule of its own."""
    from audit.policy.engine import gate_would_open

    outcome, decision = audit.outcome, audit.decision
    if outcome == "DENY" or decision.outcome == "DENY":
        return ["outcome: the audit's outcome is DENY; no approval or flag can open the gate"], [], None
    if decision.outcome != outcome:
        return [f"outcome: the audit says {outcome} but its decision says {decision.outcome}"], [], None
    open_items = [o for o in decision.obligations if not (o.checkable and o.status == "met")]
    notes = [f"obligation {o.id} ({o.status}): {o.text}" for o in open_items]
    if outcome in ("ALLOW", "ALLOW_WITH_OBLIGATIONS"):
        if not gate_would_open(decision):
            return [f"outcome: checkable obligation {o.id} is {o.status}: {o.text}"
                    for o in decision.obligations if o.checkable and o.status != "met"], notes, None
        return _gate_open_flag(audit), notes, None
    if outcome == "REVIEW":
        if approval_path is None:
            return ["approval: the audit's outcome is REVIEW; give --approval FILE signed by a "
                    "trusted reviewer"], notes, None
        if not trusted_approvers:
            return ["approval: no trusted approver key was named (--approver-trust DIR or "
                    "--approver-pubkey FILE)"], notes, None
        approval_bytes = read_envelope_file(approval_path)
        check = verify_approval(approval_bytes, envelope_bytes, trusted_approvers)
        if not check.ok:
            reason = check.reason if check.reason.startswith("approval") else f"approval: {check.reason}"
            return [reason], notes, None
        approval = {"sha256": sha256_bytes(approval_bytes), "approver": check.approver.keyid,
                    "approved_at": check.predicate.get("approved_at"), "note": check.predicate.get("note")}
        return [], [check.reason] + notes, approval


def _gate_open_flag(audit: AuditPredicate) -> list[str]:
    """The audit's own ``gate_open`` must not contradict an opening outcome (fail closed)."""
    if not audit.gate_open:
        return ["outcome: the audit itself records gate_open = false"]
    return []


def _age_reasons(audit: AuditPredicate, now: dt.datetime, max_age_days: float) -> list[str]:
    created = audit.created
    try:
        when = dt.datetime.fromisoformat(str(created).replace("Z", "+00:00"))
    except ValueError:
        return [f"age: the audit's creation time {created!r} is not an ISO 8601 time"]
    when = when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)
    now = now if now.tzinfo else now.replace(tzinfo=dt.timezone.utc)
    age = now - when
    if age < -FUTURE_SKEW:
        return [f"age: the audit claims to be created in the future ({created})"]
    if age > dt.timedelta(days=max_age_days):
        return [f"age: the audit was created {created}, {age.days} days ago; the limit is "
                f"{max_age_days:g} days: re-run flopgate check"]
    return []


def _rules_date_reasons(audit: AuditPredicate, now: dt.datetime, max_age_days: float) -> list[str]:
    """The rules must be applied as of a current date: never a historical audit (an explicit
    ``--as-of`` in the past), never rules older than the age limit."""
    as_of = audit.as_of
    if audit.historical:
        return [f"dates: a historical audit (rules as of {as_of}, before the plan's start and the signing "
                "day) records how the law stood then and cannot open the gate"]
    today = (now if now.tzinfo else now.replace(tzinfo=dt.timezone.utc)).astimezone(dt.timezone.utc).date()
    if (today - as_of).days > max_age_days:
        return [f"dates: the audit applied the rules as of {as_of}, {(today - as_of).days} days ago; the limit "
                f"is {max_age_days:g} days: re-run flopgate check"]
    return []
