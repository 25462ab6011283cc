"""A student with its own tokenizer: ``student.tokenizer`` is a folder check signs and the gate
re-hashes, like ``data.tokenizer``; a file of it changed after check shuts the gate, and the
attested layer hands the trainer that tokenizer from the verified bytes only."""

from __future__ import annotations

import shutil

import pytest

from distill.gate.attested import InputsRefused
from distill.gate.gated_run import GateRefused, verify_audit
from distill_testkit import TOKENIZER_DIR
from gate_fixtures import make_audit

pytestmark = pytest.mark.usefixtures("test_pack_installed")

ROLES = ("plan", "student_config", "teacher_config", "dataset_manifest", "policy_pack", "teacher_weights",
         "student_tokenizer")


@pytest.fixture()
def cross_project(project):
    shutil.copytree(TOKENIZER_DIR, project.root / "student-tokenizer")
    plan = project.plan.read_text()
    project.plan.write_text(plan.replace("init: scratch}", "init: scratch, tokenizer: ./student-tokenizer}"))
    return project


def test_the_student_tokenizer_is_audited_and_read_from_its_verified_bytes(cross_project, signer):
    envelope = make_audit(cross_project, signer, roles=ROLES)
    inputs = verify_audit(cross_project.plan, envelope, pubkey=str(signer.public_path)).inputs
    student = inputs.tokenizer(role="student_tokenizer")
    assert student.role == "student_tokenizer" and student.folder == cross_project.root / "student-tokenizer"
    assert len(student.tokenizer) > 0


def test_a_student_tokenizer_edited_after_check_is_refused(cross_project, signer):
    envelope = make_audit(cross_project, signer, roles=ROLES)
    tokenizer_json = cross_project.root / "student-tokenizer" / "tokenizer.json"
    tokenizer_json.write_bytes(tokenizer_json.read_bytes().replace(b'"[UNK]"', b'"[UNX]"'))
    with pytest.raises(GateRefused) as refused:
        verify_audit(cross_project.plan, envelope, pubkey=str(signer.public_path))
    assert any(r.startswith("tokenizer: student_tokenizer ") and "not the audited one" in r
               for r in refused.value.reasons)


def test_a_student_tokenizer_the_audit_does_not_cover_is_refused(cross_project, signer):
    envelope = make_audit(cross_project, signer, roles=ROLES[:-1])
    with pytest.raises(GateRefused) as refused:
        verify_audit(cross_project.plan, envelope, pubkey=str(signer.public_path))
    assert any("the audit covers no student_tokenizer" in r for r in refused.value.reasons)


def test_a_copy_that_differs_from_the_audited_student_tokenizer_is_refused(cross_project, signer, tmp_path):
    envelope = make_audit(cross_project, signer, roles=ROLES)
    inputs = verify_audit(cross_project.plan, envelope, pubkey=str(signer.public_path)).inputs
    changed = shutil.copytree(TOKENIZER_DIR, tmp_path / "changed")
    (changed / "tokenizer.json").write_bytes((changed / "tokenizer.json").read_bytes().replace(b'"[UNK]"', b'"[UNX]"'))
    with pytest.raises(InputsRefused, match="tokenizer.json has sha256"):
        inputs.tokenizer(changed, role="student_tokenizer")


def test_the_default_tokenizer_is_the_students_own(cross_project, signer):
    """What a sequence run renders its samples with, and an HF trainer reads: the student's
    tokenizer, not the teacher's (a logit run asks for each by role)."""
    envelope = make_audit(cross_project, signer, roles=ROLES)
    inputs = verify_audit(cross_project.plan, envelope, pubkey=str(signer.public_path)).inputs
    assert inputs.tokenizer_role() == "student_tokenizer"
    assert inputs.tokenizer(role="teacher_weights").role == "teacher_weights"
