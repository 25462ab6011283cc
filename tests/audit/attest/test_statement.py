"""Statements and subjects: names that travel, digests that catch edits, pack versions."""

import hashlib
import shutil
from pathlib import Path

import pytest

import audit
import policies
from audit.attest import PREDICATE_AUDIT, STATEMENT_TYPE
from audit.attest.statement import (InputFile, audited_outcome, build_subjects, check_subjects,
                                    make_statement, pack_version_changes, resolve_subject_name,
                                    subject_name)
from audit.errors import InputError

BUNDLED_FILE = policies.PACKAGE_DIR / "__init__.py"  # any file shipped inside the package


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_subject_names_relative_bundled_or_absolute(plan_dir, tmp_path):
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text("{}")
    assert subject_name(plan_dir / "configs" / "student.json", plan_dir) == "configs/student.json"
    assert subject_name(plan_dir / "plan.yaml", plan_dir) == "plan.yaml"
    assert subject_name(BUNDLED_FILE, plan_dir) == "flopgate:policies/__init__.py"
    assert subject_name(Path(audit.__file__), plan_dir) == "flopgate:audit/__init__.py"
    assert subject_name(elsewhere, plan_dir) == str(elsewhere.resolve())
    assert subject_name(elsewhere, None) == str(elsewhere.resolve())


def test_bundled_names_resolve_to_the_installed_package(plan_dir):
    assert resolve_subject_name("flopgate:policies/__init__.py", plan_dir) == BUNDLED_FILE
    assert resolve_subject_name("flopgate:../etc/passwd", plan_dir) is None
    assert resolve_subject_name("plan.yaml", plan_dir) == plan_dir / "plan.yaml"
    assert resolve_subject_name("plan.yaml", None) is None


def test_build_subjects_hashes_each_file_and_merges_duplicates(plan_dir):
    student = plan_dir / "configs" / "student.json"
    subjects, inputs = build_subjects([
        ("plan", plan_dir / "plan.yaml", plan_dir),
        ("student_config", student, plan_dir),
        ("teacher_config", student, plan_dir),  # same file in two roles
        InputFile("policy_pack", BUNDLED_FILE, plan_dir, {"pack_id": "p", "pack_version": "1"}),
    ])
    assert subjects == sorted([
        {"name": "plan.yaml", "digest": {"sha256": _sha(plan_dir / "plan.yaml")}},
        {"name": "configs/student.json", "digest": {"sha256": _sha(student)}},
        {"name": "flopgate:policies/__init__.py", "digest": {"sha256": _sha(BUNDLED_FILE)}},
    ], key=lambda s: s["name"])
    assert [(i["role"], i["name"]) for i in inputs] == [
        ("plan", "plan.yaml"), ("student_config", "configs/student.json"),
        ("teacher_config", "configs/student.json"), ("policy_pack", "flopgate:policies/__init__.py")]
    assert inputs[3]["pack_id"] == "p" and inputs[3]["pack_version"] == "1"
    assert inputs[0]["path"] == str((plan_dir / "plan.yaml").resolve())


def test_build_subjects_refuses_missing_files(plan_dir):
    with pytest.raises(InputError, match="student_config: expected a file"):
        build_subjects([("student_config", plan_dir / "nope.json", plan_dir)])


def test_statement_shape():
    statement = make_statement([{"name": "a", "digest": {"sha256": "0" * 64}}], PREDICATE_AUDIT, {"k": 1})
    assert statement == {"_type": STATEMENT_TYPE, "subject": [{"name": "a", "digest": {"sha256": "0" * 64}}],
                         "predicateType": PREDICATE_AUDIT, "predicate": {"k": 1}}
    with pytest.raises(ValueError):
        make_statement([], PREDICATE_AUDIT, {})


def test_unchanged_files_have_no_problems(plan_dir, audit_statement):
    assert check_subjects(audit_statement(), plan_dir / "plan.yaml") == []
    assert check_subjects(audit_statement()) == []  # via the recorded absolute paths


def test_an_edited_plan_is_named(plan_dir, audit_statement):
    statement = audit_statement()
    with open(plan_dir / "plan.yaml", "a") as handle:
        handle.write("# edited\n")
    problems = check_subjects(statement, plan_dir / "plan.yaml")
    assert len(problems) == 1 and problems[0].startswith("plan.yaml (plan): changed")


def test_an_edited_config_is_named(plan_dir, audit_statement):
    statement = audit_statement()
    (plan_dir / "configs" / "student.json").write_text('{"hidden_size": 65}\n')
    problems = check_subjects(statement, plan_dir / "plan.yaml")
    assert len(problems) == 1
    assert problems[0].startswith("configs/student.json (student_config): changed")


def test_a_vanished_file_is_named(plan_dir, audit_statement):
    statement = audit_statement()
    (plan_dir / "configs" / "student.json").unlink()
    problems = check_subjects(statement)
    assert len(problems) == 1 and "configs/student.json (student_config): missing" in problems[0]


def test_a_moved_plan_folder_verifies_with_plan_given(plan_dir, audit_statement, tmp_path):
    statement = audit_statement()
    moved = tmp_path / "auditor-machine" / "checkout"
    shutil.copytree(plan_dir, moved)
    shutil.rmtree(plan_dir)
    assert check_subjects(statement, moved / "plan.yaml") == []
    assert any("missing" in p for p in check_subjects(statement))  # recorded paths are gone
    # The plan may be renamed: --plan names it directly.
    (moved / "plan.yaml").rename(moved / "renamed.yaml")
    assert check_subjects(statement, moved / "renamed.yaml") == []


def _pack_statement(plan_dir, version="2026.1"):
    subjects, inputs = build_subjects([
        ("plan", plan_dir / "plan.yaml", plan_dir),
        InputFile("policy_pack", BUNDLED_FILE, plan_dir, {"pack_id": "eu-ai-act", "pack_version": version}),
    ])
    statement = make_statement(subjects, PREDICATE_AUDIT, {"outcome": "ALLOW", "inputs": inputs})
    # Pretend the bundled pack had other bytes at audit time.
    for subject in statement["subject"]:
        if subject["name"].startswith("flopgate:"):
            subject["digest"]["sha256"] = "0" * 64
    return statement


def test_a_newer_installed_pack_is_a_warning_not_a_digest_failure(plan_dir):
    statement = _pack_statement(plan_dir, "2026.1")
    assert pack_version_changes(statement, {"eu-ai-act": "2026.10"}) == [
        "policy pack eu-ai-act was 2026.1 at audit time; the installed 2026.10 is newer: "
        "re-run flopgate check"]
    assert check_subjects(statement, plan_dir / "plan.yaml",
                          installed_pack_versions={"eu-ai-act": "2026.10"}) == []
    # Same version but different bytes: the pack was edited without a version bump.
    problems = check_subjects(statement, plan_dir / "plan.yaml",
                              installed_pack_versions={"eu-ai-act": "2026.1"})
    assert len(problems) == 1
    assert problems[0].startswith("flopgate:policies/__init__.py (policy_pack): changed")
    # Without installed versions every digest is compared (fail closed).
    assert len(check_subjects(statement, plan_dir / "plan.yaml")) == 1


def test_pack_version_wording_for_older_installed_and_unknown_packs(plan_dir):
    statement = _pack_statement(plan_dir, "1.10")
    assert "is older" in pack_version_changes(statement, {"eu-ai-act": "1.9"})[0]
    assert pack_version_changes(statement, {"eu-ai-act": "1.10"}) == []
    assert pack_version_changes(statement, {"some-other-pack": "9"}) == []


@pytest.mark.parametrize("predicate, expected", [
    ({"decision": {"outcome": "REVIEW"}}, "REVIEW"),
    ({"outcome": "DENY"}, "DENY"),
    ({"outcome": "ALLOW", "decision": {"outcome": "ALLOW"}}, "ALLOW"),
    ({"outcome": "ALLOW", "decision": {"outcome": "DENY"}}, None),  # contradictory: fail closed
    ({}, None),
    ({"outcome": 3}, None),
])
def test_audited_outcome(predicate, expected):
    assert audited_outcome(predicate) == expected
