"""The audit: compute estimate + policy decision -> a signed in-toto statement.

``assess`` is the one plan -> estimate -> decision sequence (``flopgate policy`` stops there).
``run_audit`` is the main job of flopgate, shared by ``flopgate check`` and the tests. It
assesses the plan, signs, and writes three files atomically:

* ``audit.intoto.json`` - the DSSE envelope (what auditors and the training gate verify),
* ``audit.json``        - the signed payload, readable,
* ``audit.html``        - the report for a compliance officer, rendered from the payload.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from audit.attest import PREDICATE_AUDIT
from audit.attest.dsse import write_envelope
from audit.attest.statement import InputFile, build_subjects, make_statement, sign_statement, utc_timestamp
from audit.clock import utc_now, utc_today
from audit.compute.estimate import estimate_plan
from audit.compute.tables import ReferenceTables, load_reference_tables
from audit.compute.types import ComputeEstimate
from audit.errors import InputError
from audit.fsutil import read_input, sha256_bytes, write_atomic
from audit.limits import MAX_DATA_BYTES, MAX_MANIFEST_BYTES
from audit.plan import LoadedPlan, Plan, load_plan
from audit.predicate import AuditPredicate
from audit.policy.engine import decide, gate_would_open
from audit.policy.conditions import PlanFacts
from audit.policy.facts import LICENSE_FILES, read_plan_facts, resolve_plan_facts
from audit.policy.decision import Decision
from audit.policy.packs import PolicySet, load_packs
from audit.versions import tool_versions
from audit.weights import hash_model_folder, model_folders

ENVELOPE_NAME, PAYLOAD_NAME, HTML_NAME = "audit.intoto.json", "audit.json", "audit.html"


@dataclass
class AuditResult:
    predicate: dict[str, Any]
    decision: Decision
    envelope_path: Path
    payload_path: Path
    html_path: Path
    signer_keyid: str
    envelope_sha256: str


@dataclass(frozen=True)
class Assessment:
    """A plan judged: the plan with its facts resolved, its compute estimate, the decision, the
    date the rules were applied as of (and whether that date is in the past, for history), and
    the packs and tables that were used."""

    plan: Plan
    estimate: ComputeEstimate
    decision: Decision
    as_of: dt.date
    historical: bool
    packs: PolicySet
    tables: ReferenceTables
    facts: PlanFacts


def rules_date(plan_start: dt.date, today: dt.date) -> dt.date:
    """The date an audit applies the rules as of: the later of the plan's start and the signing
    day. A start in the past cannot make a rule that is in force today "not yet in force"."""
    return max(plan_start, today)


def assess(loaded: LoadedPlan, policy_dirs: Sequence[Path] = (), as_of: dt.date | None = None, *,
           use_cache: bool = True, today: dt.date | None = None) -> Assessment:
    """Plan -> estimate -> decision as of :func:`rules_date`, or as of an explicit ``as_of``;
    an explicit date before that makes the assessment historical (the gate refuses it).
    ``today`` (default: the UTC date) is the audit date, from which deadlines such as the EU
    notification run; the signed predicate's ``created`` is the same day."""
    packs = load_packs(policy_dirs)
    tables = load_reference_tables()
    facts = read_plan_facts(loaded, packs)
    plan = resolve_plan_facts(loaded, packs, facts)  # the teacher card is not read again
    estimate = estimate_plan(loaded, tables, use_cache=use_cache, facts=facts)
    today = today or utc_today()  # the audit date: the pre-run estimate is made (and signed) today
    due = rules_date(plan.schedule.start, today)
    when = as_of or due
    decision = decide(plan, estimate, packs, when, facts, audit_date=today)
    return Assessment(plan, estimate, decision, when, when < due, packs, tables, facts)


def plan_inputs(loaded: LoadedPlan, *, manifest_sha256: str | None = None) -> tuple[list[InputFile], dict]:
    """The files the plan names, with their roles and the sha256 of the bytes read: the one list
    that check signs and the gate checks again. Model folders are hashed here (their digests
    are returned too, by role, for a check after loading); the manifest's digest is the one
    given (check read it for the decision), else that of the bytes read now."""
    plan, base = loaded.plan, loaded.path.parent
    files = [InputFile("plan", loaded.path, base, None, loaded.sha256)]
    files.append(InputFile("student_config", loaded.student_config.path, base, None, loaded.student_config.sha256))
    if loaded.teacher_config is not None:
        files.append(InputFile("teacher_config", loaded.teacher_config.path, base, None,
                               loaded.teacher_config.sha256))
    if plan.data.manifest:
        digest = manifest_sha256 or sha256_bytes(read_input(plan.data.manifest, "the dataset manifest",
                                                            max_bytes=MAX_MANIFEST_BYTES))
        files.append(InputFile("dataset_manifest", plan.data.manifest, base, None, digest))
    if plan.data.prompts:  # what an API teacher is asked (flopgate generate reads them against this digest)
        files.append(InputFile("prompts", plan.data.prompts, base, None,
                               sha256_bytes(read_input(plan.data.prompts, "the prompts file",
                                                       source=str(loaded.path), field="data.prompts",
                                                       max_bytes=MAX_DATA_BYTES))))
    if plan.teacher.authorization:  # check_authorization read it and found this digest
        files.append(InputFile("authorization", plan.teacher.authorization.document, base, None,
                               plan.teacher.authorization.sha256))
    folders = {}
    for role, folder in model_folders(plan):  # config, tokenizer and weights: a root over every file
        folders[role] = hash_model_folder(folder, role.replace("_", " "))
        files.append(InputFile(role, folder, base, {"files": len(folders[role].files),
                                                    "bytes": folders[role].total_bytes}, folders[role].root_sha256))
    return files, folders


def input_files(loaded: LoadedPlan, facts: PlanFacts, pack_files: list[dict],
                tables: ReferenceTables) -> list[InputFile]:
    """Every file the audit depends on, with its role and the sha256 of the bytes that were
    read and used (each file is read once; nothing is hashed again here): what the signature
    covers."""
    base = loaded.path.parent
    files, folders = plan_inputs(loaded, manifest_sha256=facts.manifest_sha256)
    files += card_inputs(facts, folders.values(), base)
    for pack in pack_files:
        files.append(InputFile("policy_pack", pack["path"], base,
                               {"pack_id": pack["id"], "pack_version": pack["version"]}, pack["sha256"]))
    for (path, digest), table in zip(tables.files, (tables.hardware, tables.published)):
        files.append(InputFile("reference_table", path, base,
                               {"pack_id": table.id, "pack_version": table.version}, digest))
    return files


def card_inputs(facts: PlanFacts, folders, base: Path) -> list[InputFile]:
    """The model card files (README.md, LICENSE, NOTICE) whose bytes decided the teacher's or the
    base model's lineage. A card inside a hashed model folder must have the digest that folder's
    hash found for it (else the card changed between reading and hashing: ``InputError``); a card
    in no hashed folder (a local base_model further up the chain) is signed as ``model_card``."""
    hashed = {str(Path(d.folder) / entry.path): entry.sha256 for d in folders for entry in d.files}
    card_names = {name.casefold() for name in ("README.md", *LICENSE_FILES)}
    out, seen = [], set()
    for card in facts.teacher_lineage + facts.base_lineage:
        read = {item.path for item in card.files}
        unread = [path for path in hashed if Path(path).parent == Path(card.folder)
                  and Path(path).name.casefold() in card_names and path not in read]
        if unread:  # a card file that appeared after the card was read: the decision did not see it
            raise InputError("appeared between reading the model card and hashing the folder; run check again "
                             "when nothing writes to it", source=unread[0])
        for item in card.files:
            if item.path in seen:
                continue
            seen.add(item.path)
            if item.path in hashed:
                if hashed[item.path] != item.sha256:
                    raise InputError("changed between reading the model card and hashing the folder; run check "
                                     "again when nothing writes to it", source=item.path)
                continue
            out.append(InputFile("model_card", item.path, base, {"folder": card.folder}, item.sha256))
    return out


def build_predicate(loaded: LoadedPlan, *, policy_dirs: Sequence[Path] = (), as_of: dt.date | None = None,
                    use_cache: bool = True) -> tuple[dict[str, Any], Decision, list[dict]]:
    """Everything the audit states, before signing, and the subjects the signature covers."""
    found = assess(loaded, policy_dirs, as_of, use_cache=use_cache)
    plan, decision, as_of = found.plan, found.decision, found.as_of
    subjects, inputs = build_subjects(input_files(loaded, found.facts, found.packs.pack_files(), found.tables))
    predicate = {
        "tool": tool_versions(),
        "as_of": as_of.isoformat(),
        "historical": found.historical,
        "created": utc_timestamp(),
        "plan": {"name": plan.name, "path": str(loaded.path), "sha256": loaded.sha256,
                 "content": plan.model_dump(mode="json")},
        "conventions": {"flop": "1 multiply-add = 2 FLOP",
                        "training_step": "forward + backward, counted op by op on the meta device",
                        "attention": "headline over causal (and sliding-window) pairs; full-matrix figure beside it",
                        "totals": "cumulative (EU systemic-risk notion) and parameter-update only"},
        "compute": found.estimate.model_dump(mode="json"),
        "decision": decision.model_dump(mode="json"),
        "outcome": decision.outcome,
        "gate_open": gate_would_open(decision),
        "inputs": inputs,
    }
    # the typed model is the shape of what is signed: build it, then sign its JSON
    predicate = AuditPredicate.model_validate(predicate).model_dump(mode="json")
    return predicate, decision, subjects


def check_out_dir(out: Path, *, replace: bool) -> None:
    """Refuse an output folder that cannot be one (a file is in the way) or that holds an audit
    without ``replace``: before any work is done and before any key is made."""
    ancestor = out
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if ancestor.exists() and not ancestor.is_dir():
        raise InputError("Not a directory", source=str(out))
    if not replace:
        keep_previous_audit(out, replace=False)


def keep_previous_audit(out: Path, *, replace: bool, now: dt.datetime | None = None) -> list[Path]:
    """Make room in ``out`` for a new audit without destroying a signed one.

    Without ``replace``, a folder that holds an audit envelope is refused (``InputError``). With
    it, the old envelope, payload and report are kept under a dated name (``audit.replaced-
    20261130T220000Z.intoto.json``), never overwriting anything; the paths kept are returned.
    Approvals stay as they are: they name the envelope they approve by its digest.
    """
    if not (out / ENVELOPE_NAME).exists():
        return []
    if not replace:
        raise InputError("already holds a signed audit; flopgate never replaces one silently: pass "
                         "--replace (the old audit is kept under a dated name) or choose another --out",
                         source=str(out), field="--out")
    stamp = (now or utc_now()).strftime("%Y%m%dT%H%M%SZ")
    kept = []
    for name in (ENVELOPE_NAME, PAYLOAD_NAME, HTML_NAME):
        old = out / name
        if old.exists():
            stem, _, suffix = name.partition(".")
            new = out / f"{stem}.replaced-{stamp}.{suffix}"
            os.link(old, new)  # FileExistsError rather than overwrite
            os.unlink(old)
            kept.append(new)
    return kept


def run_audit(plan: str | Path | LoadedPlan, out_dir: str | Path, private_key, *,
              policy_dirs: Sequence[Path] = (), as_of: dt.date | None = None,
              use_cache: bool = True, replace: bool = False) -> AuditResult:
    """Audit a plan (a path, or a plan already loaded) and write the signed envelope, the payload
    and the HTML report; an audit already in ``out_dir`` is refused, or with ``replace`` kept
    under a dated name."""
    from audit.attest.keys import key_id
    from audit.report.render import render_audit_html

    out = Path(out_dir)
    check_out_dir(out, replace=replace)  # refuses before any work is done
    loaded = plan if isinstance(plan, LoadedPlan) else load_plan(plan)
    predicate, decision, subjects = build_predicate(loaded, policy_dirs=policy_dirs, as_of=as_of,
                                                    use_cache=use_cache)
    statement = make_statement(subjects, PREDICATE_AUDIT, predicate)
    envelope = sign_statement(statement, private_key)
    keyid = key_id(private_key.public_key())
    html = render_audit_html(predicate, signer_fingerprint=keyid)
    keep_previous_audit(out, replace=replace)
    # Each file is written atomically; the envelope goes last, so a run that stops part-way
    # never leaves a signed envelope beside an older report.
    payload_path = write_atomic(out / PAYLOAD_NAME, json.dumps(statement, indent=2) + "\n")
    html_path = write_atomic(out / HTML_NAME, html)
    envelope_path = write_envelope(out / ENVELOPE_NAME, envelope)
    return AuditResult(predicate, decision, envelope_path, payload_path, html_path, keyid,
                       sha256_bytes(envelope.to_bytes()))
