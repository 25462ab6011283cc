"""Helpers for the gate, run-record and ``flopgate distill`` tests: key pairs, a tiny project
folder (plan, teacher model folder, student config, data, manifest, a policy pack) and signed
audit envelopes in the shape ``flopgate check`` writes.

The audit predicates are built here by hand with the ``audit.attest`` API, so these tests do not
depend on the policy engine. Figures are made up but consistent: FLOP per token = student
training + teacher forward, total = FLOP per token x tokens.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from audit.attest import PREDICATE_APPROVAL, PREDICATE_AUDIT
from audit.attest.dsse import write_envelope
from audit.attest.statement import InputFile, build_subjects, make_statement, sign_statement
from keypairs import KeyFiles

STUDENT_TRAIN_FPT = 6.0e5     # made-up audited FLOP per token of the student's training step
TEACHER_FORWARD_FPT = 4.0e5   # ... and of the teacher's forward pass
FPT = STUDENT_TRAIN_FPT + TEACHER_FORWARD_FPT
PLAN_TOKENS = 4096
SEQ_LEN = 32
PACK_ID, PACK_VERSION = "test-pack", "2026.1"

PLAN_YAML = f"""\
plan_version: 1
name: tiny-gate-test
organization: {{name: Test Org, jurisdictions: [EU]}}
teacher: {{model: ./teacher, access: weights, config: ./teacher}}
student: {{name: Tiny-Student, config: ./student.json, init: scratch}}
data: {{tokens: {PLAN_TOKENS}, seq_len: {SEQ_LEN}, manifest: ./shards/manifest.json}}
method: {{kind: logits, loss: forward_kl, temperature: 1.0}}
use: {{purpose: gate test, scope: narrow, distribution: internal}}
schedule: {{start: 2026-12-01}}
"""


@dataclass
class Project:
    root: Path

    @property
    def plan(self) -> Path:
        return self.root / "plan.yaml"

    @property
    def teacher_config(self) -> Path:
        return self.root / "teacher" / "config.json"

    @property
    def student_config(self) -> Path:
        return self.root / "student.json"

    @property
    def manifest(self) -> Path:
        return self.root / "shards" / "manifest.json"

    @property
    def data(self) -> Path:
        """The text the shards were prepared from (not read by the trainer)."""
        return self.root / "data.txt"

    @property
    def shard(self) -> Path:
        """The token file the trainer reads."""
        return self.root / "shards" / "shard-00000.bin"

    def prepare(self) -> Path:
        """(Re)make the shards from ``data`` with the teacher's tokenizer; returns the manifest."""
        from distill.data.prepare import prepare

        return prepare([self.data], tokenizer_dir=self.root / "teacher", out=self.root / "shards", workers=1,
                       replace=True).manifest_path

    @property
    def pack(self) -> Path:
        return self.root / "packs" / "test-pack.yaml"


def build_template(folder: Path) -> Path:
    """The project folder: a tiny teacher model folder (seeded weights + shipped tokenizer), a
    smaller student config, the first ~20 kB of the shipped training text and its shards
    (``flopgate data prepare``: the manifest the plan names)."""
    from distill_testkit import TRAIN_TEXT, make_model_dir, write_config

    folder.mkdir(parents=True)
    make_model_dir(folder / "teacher")
    write_config(folder / "student.json")
    text = TRAIN_TEXT.read_text(encoding="utf-8")
    (folder / "data.txt").write_text(text[:text.index("\n\n", 20_000)] + "\n", encoding="utf-8")
    Project(folder).prepare()
    (folder / "packs").mkdir()
    (folder / "packs" / "test-pack.yaml").write_text(f"id: {PACK_ID}\nversion: '{PACK_VERSION}'\n")
    (folder / "plan.yaml").write_text(PLAN_YAML, encoding="utf-8")
    return folder


def copy_project(template: Path, dest: Path) -> Project:
    shutil.copytree(template, dest)
    return Project(dest)


def iso(when: dt.datetime) -> str:
    return when.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def obligation(id_: str, text: str, *, status: str = "todo", checkable: bool = False) -> dict:
    return {"id": id_, "rule_id": id_, "text": text, "deadline": None, "checkable": checkable,
            "status": status, "authorized": False}


def _summary(ref: str, train_fpt: float) -> dict:
    """A model summary as the counter writes it (audit.flops.summary.ModelSummary)."""
    return {"ref": ref, "architecture": "LlamaForCausalLM", "params_total": 1e6, "params_active": 1e6,
            "params_embedding": 1e5, "train_flops_per_token": train_fpt, "train_flops_per_token_noncausal": train_fpt,
            "forward_flops_per_token": train_fpt / 3, "forward_flops_per_token_noncausal": train_fpt / 3,
            "non_matmul_train_flops_per_token": 0.0, "attention_share": 0.0, "coverage": 1.0, "method": "counted"}


def compute_block(*, total_flops: Optional[float] = FPT * PLAN_TOKENS, tokens: float = PLAN_TOKENS) -> dict:
    """An audit's compute estimate (audit.compute.types.ComputeEstimate) with made-up figures."""
    return {"seq_len": SEQ_LEN, "tokens": tokens,
            "components": [
                {"id": "student_training", "label": "student training", "flops": STUDENT_TRAIN_FPT * tokens,
                 "method": "counted", "counts_toward": ["cumulative", "parameter_update"]},
                {"id": "teacher_forward", "label": "teacher forward", "flops": TEACHER_FORWARD_FPT * tokens,
                 "method": "counted", "counts_toward": ["cumulative"]}],
            "total_flops": total_flops, "update_flops": STUDENT_TRAIN_FPT * tokens,
            "six_nd_flops": 6e6 * tokens, "params_total": 1e6, "params_active": 1e6, "coverage": 1.0,
            "student": _summary("./student.json", STUDENT_TRAIN_FPT),
            "teacher": _summary("./teacher", TEACHER_FORWARD_FPT * 3)}


def make_audit(project: Project, signer: KeyFiles, *, outcome: Optional[str] = "ALLOW",
               obligations: Sequence[dict] = (), findings: Sequence[dict] = (),
               created: Optional[str] = None, gate_open: Optional[bool] = None,
               pack_version: str = PACK_VERSION, compute: Optional[dict] = None,
               roles: Sequence[str] = ("plan", "student_config", "teacher_config", "dataset_manifest", "policy_pack",
                                       "teacher_weights"),
               teacher_terms: Sequence[str] = (), name: str = "audit.intoto.json",
               as_of: Optional[str] = None, historical: Optional[bool] = False) -> Path:
    """Sign an audit of ``project`` and write its envelope into the project folder. The rules
    date defaults to the creation day; ``historical=None`` leaves the field out."""
    files = {"plan": project.plan, "student_config": project.student_config,
             "teacher_config": project.teacher_config, "dataset_manifest": project.manifest}
    wanted = [InputFile(role, files[role], project.root) for role in roles if role in files]
    if "policy_pack" in roles:
        wanted.append(InputFile("policy_pack", project.pack, project.root,
                                {"pack_id": PACK_ID, "pack_version": pack_version}))
    if "teacher_weights" in roles:
        from audit.weights import folder_digest

        digest = folder_digest(project.root / "teacher")
        wanted.append(InputFile("teacher_weights", project.root / "teacher", project.root,
                                {"files": len(digest.files), "bytes": digest.total_bytes}, digest.root_sha256))
    if "student_tokenizer" in roles:  # a plan with student.tokenizer: ./student-tokenizer
        from audit.weights import folder_digest

        digest = folder_digest(project.root / "student-tokenizer")
        wanted.append(InputFile("student_tokenizer", project.root / "student-tokenizer", project.root,
                                {"files": len(digest.files), "bytes": digest.total_bytes}, digest.root_sha256))
    subjects, inputs = build_subjects(wanted)
    if gate_open is None:
        gate_open = outcome == "ALLOW" or (outcome == "ALLOW_WITH_OBLIGATIONS" and not any(
            o["checkable"] and o["status"] != "met" for o in obligations))
    created = created or iso(dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=1))
    as_of = as_of or created[:10]
    decision = {"outcome": outcome, "as_of": as_of, "findings": list(findings),
                "obligations": list(obligations), "regimes": [], "rule_ids": [], "packs": [],
                "teacher": {"model": "./teacher", "access": "weights", "terms": list(teacher_terms),
                            "upstream": [], "licenses": []}}
    predicate = {
        "tool": {"name": "flopgate", "version": "0.1.0"},
        "conventions": {"flop": "1 multiply-add = 2 FLOP"},
        "as_of": as_of,
        **({} if historical is None else {"historical": historical}),
        "created": created,
        "plan": {"name": "tiny-gate-test", "path": str(project.plan),
                 "sha256": hashlib.sha256(project.plan.read_bytes()).hexdigest(),
                 "content": {"name": "tiny-gate-test"}},
        "compute": compute if compute is not None else compute_block(),
        "decision": decision,
        "outcome": outcome,
        "gate_open": gate_open,
        "inputs": inputs,
    }
    statement = make_statement(subjects, PREDICATE_AUDIT, predicate)
    return write_envelope(project.root / name, sign_statement(statement, signer.private_key))


def hand_approval(audit_envelope: Path, approver: KeyFiles, *, outcome: str, out: Path) -> Path:
    """An approval built without ``approve()`` (which refuses DENY): for testing that the gate
    does not accept what ``approve`` would never write."""
    data = audit_envelope.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    subjects = [{"name": audit_envelope.name, "digest": {"sha256": digest}}]
    predicate = {"note": "approved by hand", "approved_at": "2026-11-30T09:00:00Z",
                 "approver": {"keyid": approver.keyid},
                 "audit": {"name": audit_envelope.name, "sha256": digest, "outcome": outcome,
                           "signature_checked": True, "signers": []},
                 "tool": {"name": "flopgate", "version": "0.1.0"},
        "conventions": {"flop": "1 multiply-add = 2 FLOP"}, "inputs": []}
    statement = make_statement(subjects, PREDICATE_APPROVAL, predicate)
    return write_envelope(out, sign_statement(statement, approver.private_key))


def forbid_model_loads(monkeypatch) -> list[str]:
    """Make every entry that could load a model record the call and raise; returns the calls."""
    import distill.runtime.models
    import distill.train.trainer

    calls: list[str] = []

    def forbidden(name):
        def load(*args, **kwargs):
            calls.append(name)
            raise AssertionError(f"{name} was called")
        return load

    for module in (distill.runtime.models, distill.train.trainer):
        for name in ("load_teacher", "load_tokenizer", "build_student"):
            monkeypatch.setattr(module, name, forbidden(name))
    monkeypatch.setattr(distill.train.trainer, "train", forbidden("train"))
    return calls
