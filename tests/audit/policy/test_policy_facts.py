"""The I/O step before decide(): licences of local model directories and the authorisation check."""

from __future__ import annotations

import hashlib

import pytest

from audit.errors import InputError
from audit.plan import load_plan
from audit.policy.engine import decide
from audit.policy.facts import license_ids_in_text, read_local_licenses, resolve_plan_facts
from policy_factories import make_compute

PLAN = """\
plan_version: 1
name: local-teacher
organization: {name: Acme, jurisdictions: [EU]}
teacher: {model: ./teacher, access: weights%s}
student: {name: %s, config: llama-3.2-1b, init: scratch}
data: {tokens: 1.0e9}
use: {purpose: support, scope: narrow, distribution: %s, monthly_active_users: 1.0e5}
schedule: {start: 2026-12-01}
"""


def _plan(tmp_path, *, teacher_extra="", student="Acme-1B", distribution="internal"):
    path = tmp_path / "plan.yaml"
    path.write_text(PLAN % (teacher_extra, student, distribution))
    return load_plan(path)


def _teacher_dir(tmp_path, readme: str | None = None, license_text: str | None = None):
    folder = tmp_path / "teacher"
    folder.mkdir()
    if readme is not None:
        (folder / "README.md").write_text(readme)
    if license_text is not None:
        (folder / "LICENSE").write_text(license_text)
    return folder


def test_licence_from_readme_front_matter(tmp_path, builtin_packs):
    _teacher_dir(tmp_path, readme="---\nlicense: llama3.1\nlanguage: [en]\n---\n# A fine-tune\n")
    loaded = _plan(tmp_path, distribution="open_weights")
    plan = resolve_plan_facts(loaded, builtin_packs)
    assert plan.teacher.license == "llama3.1"
    assert plan.teacher.model == str(tmp_path / "teacher")
    decision = decide(plan, make_compute(), builtin_packs, plan.schedule.start)
    assert decision.teacher.matched_by == "license"
    assert decision.outcome == "REVIEW" and decision.rule_ids == ["llama-3.1-license.naming"]


def test_licence_other_uses_license_name(tmp_path, builtin_packs):
    _teacher_dir(tmp_path, readme="---\nlicense: other\nlicense_name: gemma\n---\n")
    plan = resolve_plan_facts(_plan(tmp_path), builtin_packs)
    assert plan.teacher.license == "gemma"


def test_licence_from_license_file_text(tmp_path, builtin_packs):
    _teacher_dir(tmp_path, license_text="LLAMA 3.1 COMMUNITY LICENSE AGREEMENT\nLlama 3.1 Version Release Date: "
                                        "July 23, 2024\n...")
    assert read_local_licenses(tmp_path / "teacher", builtin_packs) == ["llama3.1"]


def test_readme_and_license_file_disagreeing_both_apply(tmp_path, builtin_packs):
    _teacher_dir(tmp_path, readme="---\nlicense: apache-2.0\n---\n",
                 license_text="Gemma Terms of Use\n\nLast modified: March 24, 2025\n")
    loaded = _plan(tmp_path, teacher_extra=", license: mit", distribution="api")
    plan = resolve_plan_facts(loaded, builtin_packs)
    assert plan.teacher.license == "mit AND apache-2.0 AND gemma"
    decision = decide(plan, make_compute(), builtin_packs, plan.schedule.start)
    # the Gemma terms travel with the student, whose licence is not declared
    assert decision.outcome == "REVIEW" and "gemma-terms-of-use.derivative" in decision.rule_ids


def test_directory_without_licence_stays_unknown(tmp_path, builtin_packs):
    _teacher_dir(tmp_path, readme="# no front matter\n")
    plan = resolve_plan_facts(_plan(tmp_path), builtin_packs)
    assert plan.teacher.license is None
    decision = decide(plan, make_compute(), builtin_packs, plan.schedule.start)
    assert decision.outcome == "REVIEW" and decision.rule_ids == ["engine.unknown-teacher"]


def test_broken_front_matter_is_an_input_error(tmp_path, builtin_packs):
    _teacher_dir(tmp_path, readme="---\nlicense: [unclosed\n---\n")
    with pytest.raises(InputError, match=r"README\.md \(front matter\): line 1"):
        resolve_plan_facts(_plan(tmp_path), builtin_packs)


def test_license_markers_ignore_case_and_line_breaks(builtin_packs):
    text = "Qwen RESEARCH\n   LICENSE AGREEMENT\nrelease date ..."
    assert license_ids_in_text(text, builtin_packs) == ["qwen-research"]
    assert license_ids_in_text("tongyi qianwen license agreement", builtin_packs) == ["tongyi-qianwen"]


def test_hub_id_is_left_alone(tmp_path, builtin_packs):
    path = tmp_path / "plan.yaml"
    path.write_text((PLAN % ("", "Acme-1B", "internal")).replace("./teacher", "meta-llama/Llama-3.1-8B-Instruct"))
    loaded = load_plan(path)
    assert resolve_plan_facts(loaded, builtin_packs) == loaded.plan


# -- authorisation documents -------------------------------------------------------------------

def test_authorisation_document_that_matches(tmp_path, builtin_packs):
    (tmp_path / "approval.pdf").write_bytes(b"signed approval")
    digest = hashlib.sha256(b"signed approval").hexdigest()
    (tmp_path / "teacher").mkdir()
    loaded = _plan(tmp_path, teacher_extra=f", authorization: {{document: approval.pdf, sha256: '{digest}'}}")
    plan = resolve_plan_facts(loaded, builtin_packs)
    assert plan.teacher.authorization.sha256 == digest


def test_authorisation_document_missing(tmp_path, builtin_packs):
    (tmp_path / "teacher").mkdir()
    loaded = _plan(tmp_path, teacher_extra=f", authorization: {{document: gone.pdf, sha256: '{'a' * 64}'}}")
    with pytest.raises(InputError) as info:
        resolve_plan_facts(loaded, builtin_packs)
    assert str(info.value).startswith(f"{tmp_path / 'plan.yaml'}: teacher.authorization.document: document not found")


def test_authorisation_document_changed(tmp_path, builtin_packs):
    (tmp_path / "approval.pdf").write_bytes(b"edited after signing")
    (tmp_path / "teacher").mkdir()
    loaded = _plan(tmp_path, teacher_extra=f", authorization: {{document: approval.pdf, sha256: '{'a' * 64}'}}")
    with pytest.raises(InputError) as info:
        resolve_plan_facts(loaded, builtin_packs)
    message = str(info.value)
    assert "teacher.authorization.sha256: does not match the document approval.pdf" in message
    assert hashlib.sha256(b"edited after signing").hexdigest() in message
