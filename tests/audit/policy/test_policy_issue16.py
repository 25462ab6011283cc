"""Issue 16, the parts the scenario corpus cannot express: plans that must be rejected rather than
defaulted, and a local teacher folder's card read from disk (the scenarios are in
scenarios/issue16.yaml)."""

from __future__ import annotations

import pytest

from audit.errors import InputError
from audit.plan import load_plan
from audit.policy.engine import decide, gate_would_open
from audit.policy.facts import read_plan_facts, resolve_plan_facts
from policy_factories import make_compute

GEMINI_PLAN = """\
plan_version: 1
name: gemini-defaults
organization: {name: Acme, jurisdictions: [EU], domicile: EU}
teacher: {model: gemini-2.5-pro, access: api%s}
student: {name: Acme-1B, config: llama-3.2-1b, init: scratch}
data: {tokens: 1.0e9}
use: {purpose: support%s}
schedule: {start: 2026-12-01}
"""


def _write(tmp_path, text: str):
    path = tmp_path / "plan.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("use,fields", [("", ["use.distribution", "use.scope"]), (", scope: general", ["use.distribution"]),
                                        (", distribution: open_weights", ["use.scope"])])
def test_a_gemini_plan_that_omits_scope_or_distribution_is_rejected(tmp_path, use, fields):
    """Was ALLOW: scope defaulted to narrow and distribution to internal, the permissive answers.
    Each missing field is named on its own line (one error: one line)."""
    path = _write(tmp_path, GEMINI_PLAN % ("", use))
    with pytest.raises(InputError) as err:
        load_plan(path)
    message = str(err.value)
    assert str(path) in message
    lines = message.splitlines()
    assert len(lines) == (1 if len(fields) == 1 else len(fields) + 1)
    for line, field in zip(lines[-len(fields):], fields):
        assert field in line and "required" in line


def test_a_gemini_plan_that_states_both_facts_is_judged(tmp_path, builtin_packs):
    path = _write(tmp_path, GEMINI_PLAN % (", host: google", ", scope: narrow, distribution: internal"))
    plan = load_plan(path).plan
    decision = decide(plan, make_compute(), builtin_packs, plan.schedule.start)
    assert decision.outcome == "ALLOW" and decision.teacher.host == "google"


@pytest.mark.parametrize("edit,field,expected", [
    (("access: api", "access: weights, host: aws-bedrock"), "teacher", "host is set but access is 'weights'"),
    (("domicile: EU", "domicile: Europe"), "organization.domicile", "expected one code"),
    (("domicile: EU", "domicile: EU, monthly_active_users: -5"), "organization.monthly_active_users",
     "greater than or equal to 0"),
])
def test_new_plan_fields_are_validated_with_one_line(tmp_path, edit, field, expected):
    text = (GEMINI_PLAN % ("", ", scope: narrow, distribution: internal")).replace(*edit)
    path = _write(tmp_path, text)
    with pytest.raises(InputError) as err:
        load_plan(path)
    message = str(err.value)
    assert str(path) in message and field in message and expected in message and "\n" not in message


LOCAL_PLAN = """\
plan_version: 1
name: local-card
organization: {name: Acme, jurisdictions: [EU], domicile: EU, monthly_active_users: 1.0e5}
teacher: {%s}
student: {name: Acme-1B, config: llama-3.2-1b, init: scratch}
data: {tokens: 1.0e9}
use: {purpose: support, scope: narrow, distribution: internal}
schedule: {start: 2026-12-01}
"""


def _folder(tmp_path, license_id: str):
    folder = tmp_path / "teacher"
    folder.mkdir()
    (folder / "README.md").write_text(f"---\nlicense: {license_id}\n---\n# weights\n")
    return folder


def test_weights_folder_card_disagreeing_with_the_entry_names_all_three(tmp_path, builtin_packs):
    """Was ALLOW_WITH_OBLIGATIONS: the card of teacher.weights was never read."""
    _folder(tmp_path, "apache-2.0")
    loaded = load_plan(_write(tmp_path, LOCAL_PLAN % (
        "model: meta-llama/Llama-3.1-8B-Instruct, access: weights, weights: ./teacher, license: mit")))
    plan, facts = resolve_plan_facts(loaded, builtin_packs), read_plan_facts(loaded, builtin_packs)
    assert facts.teacher_card_licenses == ["apache-2.0"] and facts.teacher_declared_license == "mit"
    decision = decide(plan, make_compute(), builtin_packs, plan.schedule.start, facts)
    assert decision.outcome == "REVIEW" and not gate_would_open(decision)
    assert "engine.teacher-license-conflict" in decision.rule_ids
    finding = next(f for f in decision.findings if f.rule_id == "engine.teacher-license-conflict")
    for named in ("'mit'", "llama-3.1-license", "'apache-2.0'", str(tmp_path / "teacher")):
        assert named in finding.explanation


def test_local_teacher_card_disagreeing_with_the_declared_licence(tmp_path, builtin_packs):
    """Was ALLOW_WITH_OBLIGATIONS: apache-2.0 (declared) and llama3.1 (card) were both applied."""
    _folder(tmp_path, "llama3.1")
    loaded = load_plan(_write(tmp_path, LOCAL_PLAN % "model: ./teacher, access: weights, license: apache-2.0"))
    plan, facts = resolve_plan_facts(loaded, builtin_packs), read_plan_facts(loaded, builtin_packs)
    decision = decide(plan, make_compute(), builtin_packs, plan.schedule.start, facts)
    assert decision.outcome == "REVIEW"
    assert decision.rule_ids == ["engine.teacher-license-conflict"]


def test_agreeing_card_adds_nothing(tmp_path, builtin_packs):
    _folder(tmp_path, "llama3.1")
    loaded = load_plan(_write(tmp_path, LOCAL_PLAN % (
        "model: meta-llama/Llama-3.1-8B-Instruct, access: weights, weights: ./teacher")))
    facts = read_plan_facts(loaded)  # the built-in packs' LICENSE markers when none are given
    plan = resolve_plan_facts(loaded, builtin_packs)
    decision = decide(plan, make_compute(), builtin_packs, plan.schedule.start, facts)
    assert decision.outcome == "ALLOW_WITH_OBLIGATIONS"
    assert "engine.teacher-license-conflict" not in decision.rule_ids


def test_example_plans_state_every_use_fact():
    from pathlib import Path

    import yaml

    for path in sorted((Path(__file__).resolve().parents[3] / "examples").glob("*.yaml")):
        use = yaml.safe_load(path.read_text())["use"]
        assert {"scope", "distribution", "commercial"} <= set(use), path.name


HOST_PACK = """\
id: acme-hosts
version: "1"
last_reviewed: 2026-11-30
kind: organization
title: Acme's hosts
hosts:
  - id: acme.host-together
    name: Together AI
    provider: Together
    hosts: [%s]
    terms: [%s]
    citation: {url: "https://example.org", section: "1", date: 2026-11-30, quote: "Terms.", evidence: unverified}
"""


@pytest.mark.parametrize("names,terms,field,expected", [
    ("together-ai", "no-such-terms", "rule acme.host-together: terms", "unknown terms id"),
    ("Bedrock", "aws-bedrock-terms", "rule acme.host-together: hosts", "already names host"),
])
def test_a_host_entry_must_name_known_terms_and_a_new_host(tmp_path, names, terms, field, expected):
    from audit.policy.packs import load_packs

    (tmp_path / "hosts.yaml").write_text(HOST_PACK % (names, terms))
    with pytest.raises(InputError) as err:
        load_packs([tmp_path])
    assert field in str(err.value) and expected in str(err.value)


def test_an_organisation_can_describe_another_host(tmp_path):
    from audit.policy.packs import load_packs
    from policy_factories import make_plan

    (tmp_path / "hosts.yaml").write_text(HOST_PACK % ("together-ai", "aws-bedrock-terms"))
    packs = load_packs([tmp_path])
    plan = make_plan({"teacher": {"model": "meta-llama/Llama-3.1-70B-Instruct", "access": "api", "host": "Together-AI"}})
    decision = decide(plan, make_compute(), packs, plan.schedule.start)
    assert decision.teacher.host_entry_id == "acme.host-together"
    assert "engine.unknown-host" not in decision.rule_ids
    assert decision.outcome == "REVIEW" and decision.rule_ids == ["aws-bedrock-terms.competitor-ban"]
