"""decide(): purity, outcome precedence, the gate helper, fail-closed behaviour and the shape of
findings and obligations."""

from __future__ import annotations

import datetime as dt
import sys
import textwrap

import pytest

from audit.policy import engine
from audit.policy.engine import decide, exit_code, gate_would_open, outcome_of
from audit.policy.decision import Decision, Finding, Obligation
from audit.policy.packs import load_packs
from policy_factories import make_compute, make_plan

START = dt.date(2026, 12, 1)


def _finding(rule_id: str, effect: str) -> Finding:
    return Finding(rule_id=rule_id, pack_id="p", pack_version="1", kind="regime", effect=effect,
                   explanation="x")


def _obligation(rule_id: str, status: str, checkable: bool = True) -> Obligation:
    return Obligation(id=f"{rule_id}.o", rule_id=rule_id, text="t", checkable=checkable, status=status)


@pytest.mark.parametrize("effects, obligations, expected, reasons", [
    (["allow", "deny", "review", "obligation"], [], "DENY", ["r1"]),
    (["allow", "review", "info"], [], "REVIEW", ["r1"]),
    (["allow", "obligation"], [("r1", "unmet")], "REVIEW", ["r1"]),
    (["allow", "obligation"], [("r1", "met"), ("r1", "todo")], "ALLOW_WITH_OBLIGATIONS", ["r1"]),
    (["allow", "info"], [], "ALLOW", ["r0"]),
    (["info"], [], "ALLOW", []),
])
def test_outcome_precedence(effects, obligations, expected, reasons):
    findings = [_finding(f"r{i}", e) for i, e in enumerate(effects)]
    obs = [_obligation(rule, status) for rule, status in obligations]
    outcome, rule_ids = outcome_of(findings, obs)
    assert outcome == expected
    assert rule_ids == reasons


def _decision(outcome: str, obligations: list[Obligation]) -> Decision:
    return Decision(outcome=outcome, as_of=START, findings=[], obligations=obligations, regimes=[],
                    rule_ids=[], packs=[])


def test_gate_opens_only_for_allow_or_obligations_that_are_met_or_todo():
    assert gate_would_open(_decision("ALLOW", []))
    assert gate_would_open(_decision("ALLOW_WITH_OBLIGATIONS", [_obligation("a", "met"), _obligation("b", "todo", False)]))
    # a decision read back from elsewhere with an unmet checkable obligation must not open the gate
    assert not gate_would_open(_decision("ALLOW_WITH_OBLIGATIONS", [_obligation("a", "unmet")]))
    assert not gate_would_open(_decision("REVIEW", []))
    assert not gate_would_open(_decision("DENY", []))
    assert [exit_code(_decision(o, [])) for o in ("ALLOW", "ALLOW_WITH_OBLIGATIONS", "REVIEW", "DENY")] == [0, 0, 3, 4]
    assert exit_code(_decision("ALLOW_WITH_OBLIGATIONS", [_obligation("a", "unmet")])) == 3


def test_decide_is_deterministic_and_does_no_io(builtin_packs):
    plan = make_plan({"use": {"distribution": "open_weights"}, "organization": {"jurisdictions": ["EU", "US-CA"]}})
    compute = make_compute(total_flops=2e26, cost_usd=3e8)
    events: list[str] = []
    watching = {"on": False}
    watched = ("open", "os.listdir", "os.scandir", "socket.", "subprocess.", "urllib.", "os.system", "shutil.")

    def hook(event, args):
        if watching["on"] and event.startswith(watched):
            events.append(event)

    sys.addaudithook(hook)
    watching["on"] = True
    try:
        first = decide(plan, compute, builtin_packs, START)
        second = decide(plan, compute, builtin_packs, START)
    finally:
        watching["on"] = False
    assert events == []
    assert first == second
    assert first.model_dump(mode="json") == second.model_dump(mode="json")


def test_decide_does_not_read_the_clock(builtin_packs, monkeypatch):
    """The date that matters is the argument: any read of 'now' or 'today' raises here."""
    import time

    def clock(*args, **kwargs):
        raise AssertionError("decide() read the clock")

    class NoToday(dt.date):
        today = classmethod(clock)

    class NoNow(dt.datetime):
        now = utcnow = today = classmethod(clock)

    plan, compute = make_plan(), make_compute(total_flops=2e25)
    expected = decide(plan, compute, builtin_packs, START)
    with monkeypatch.context() as m:
        m.setattr(dt, "date", NoToday)
        m.setattr(dt, "datetime", NoNow)
        m.setattr(time, "time", clock)
        m.setattr(time, "time_ns", clock)
        again = decide(plan, compute, builtin_packs, START)
    assert again == expected


def test_notification_deadline_is_two_weeks_after_the_audit(builtin_packs):
    # before: schedule.start + 14 days; the two weeks run from the pre-run estimate (Art. 52(1))
    decision = decide(make_plan(), make_compute(total_flops=2e25), builtin_packs, START,
                      audit_date=dt.date(2026, 11, 20))
    notify = next(o for o in decision.obligations if o.id == "eu-ai-act.systemic-risk.notify-commission")
    assert notify.deadline.startswith("2026-12-04 (")  # 20 November + 14 days, before the 1 December start
    assert notify.status == "todo" and not notify.checkable


def test_findings_carry_citations_pack_versions_and_values(builtin_packs):
    decision = decide(make_plan({"teacher": {"model": "acme/unknown"}}), make_compute(total_flops=2e25),
                      builtin_packs, START)
    versions = {lp.pack.id: lp.pack.version for lp in builtin_packs.packs}
    for f in decision.findings:
        if f.kind == "engine":
            assert f.citation is None and f.effect == "review"
        else:
            assert f.citation is not None and f.citation.quote
            assert versions[f.pack_id] == f.pack_version
        assert f.explanation
    systemic = next(f for f in decision.findings if f.rule_id == "eu-ai-act.systemic-risk")
    assert systemic.observed.startswith("2e25 FLOP") and systemic.threshold == "1e25 FLOP"
    assert systemic.comparator == ">"
    regime = next(r for r in decision.regimes if r.id == "eu-ai-act.systemic-risk")
    assert regime.margin_ratio == pytest.approx(2.0)
    assert regime.observed_flops == 2e25 and regime.threshold_flops == 1e25
    assert {p["id"] for p in decision.packs} == set(versions)
    assert all(set(p) == {"id", "version", "last_reviewed", "sha256"} for p in decision.packs)


def test_not_in_force_regimes_never_give_obligations(builtin_packs):
    plan = make_plan({"organization": {"jurisdictions": ["US"]}})
    decision = decide(plan, make_compute(total_flops=5e26), builtin_packs, dt.date(2026, 6, 1))
    statuses = {r.id: r.status for r in decision.regimes}
    assert statuses == {"us-eo-14110.dual-use-foundation-model": "not_in_force",
                        "us-eccn-4e091.closed-weights": "not_in_force"}
    assert not any(o.rule_id.startswith("us-") for o in decision.obligations)
    assert not any(f.rule_id.startswith("us-") for f in decision.findings)
    assert all("rescinded" in r.status_note for r in decision.regimes)


# -- fail closed ----------------------------------------------------------------------------------

def test_a_clause_that_raises_gives_review_not_allow(builtin_packs, monkeypatch):
    from audit.policy import teachers

    def broken(clause, ctx):
        raise ZeroDivisionError("boom")

    monkeypatch.setitem(teachers._HANDLERS, "permission", broken)
    decision = decide(make_plan({"teacher": {"model": "openai/gpt-oss-20b"}}), make_compute(), builtin_packs, START)
    assert decision.outcome == "REVIEW"
    errors = [f for f in decision.findings if f.rule_id == "engine.rule-error"]
    assert {f.observed for f in errors} == {"apache-2.0.grant", "gpt-oss-usage-policy.applicable-law"}
    assert "ZeroDivisionError" in errors[0].explanation


def test_a_regime_that_raises_gives_review(builtin_packs, monkeypatch):
    from audit.policy import regimes

    def broken(ctx, loaded, regime):
        raise KeyError(regime.id)

    monkeypatch.setattr(regimes, "evaluate_regime", broken)
    decision = decide(make_plan({"teacher": {"model": "openai/gpt-oss-20b"}}), make_compute(), builtin_packs, START)
    assert decision.outcome == "REVIEW"
    assert {f.observed for f in decision.findings if f.rule_id == "engine.rule-error"} >= {"eu-ai-act.gpai"}


def test_an_org_rule_that_raises_gives_review(tmp_path, monkeypatch):
    from audit.policy import org_rules

    (tmp_path / "o.yaml").write_text(textwrap.dedent("""\
        id: org
        version: "1"
        last_reviewed: 2026-01-01
        kind: organization
        title: t
        rules:
          - id: org.any
            effect: info
            when: {}
            citation: {url: https://example.org, section: "1", date: 2026-01-01, quote: Q., evidence: primary}
            explanation: e
        """))
    packs = load_packs([tmp_path])

    def broken(when, ctx):
        raise RuntimeError("nope")

    monkeypatch.setattr(org_rules, "when_holds", broken)
    decision = decide(make_plan({"teacher": {"model": "openai/gpt-oss-20b"}}), make_compute(), packs, START)
    assert decision.outcome == "REVIEW"
    assert [f.observed for f in decision.findings if f.rule_id == "engine.rule-error"] == ["org.any"]


def _org_terms_pack(tmp_path, clauses: str, models: str = '["org/model-*"]', channel: str = "weights",
                    second_entry: bool = False):
    entry = textwrap.dedent(f"""\
          - id: {{eid}}
            name: Org model
            provider: Org
            channel: {channel}
            models: {models}
            terms: [org-terms]
            citation: {{{{url: https://example.org, section: "1", date: 2026-01-01, quote: Ours., evidence: primary}}}}
        """)
    entries = entry.format(eid="org-model") + (entry.format(eid="org-model-2") if second_entry else "")
    (tmp_path / "t.yaml").write_text(textwrap.dedent("""\
        id: org-teachers
        version: "1"
        last_reviewed: 2026-01-01
        kind: organization
        title: t
        terms:
          - id: org-terms
            title: Org terms
            provider: Org
            version: "1"
            url: https://example.org
            clauses:
        """) + clauses + "teachers:\n" + entries)
    return load_packs([tmp_path])


def _clauses(text: str) -> str:
    return textwrap.indent(textwrap.dedent(text), "      ")


PERMISSION = _clauses("""\
    - id: org-terms.ok
      type: permission
      citation: {url: https://example.org, section: "2", date: 2026-01-01, quote: Fine., evidence: primary}
      explanation: allowed
    """)


def test_terms_that_never_say_yes_fail_closed(tmp_path):
    packs = _org_terms_pack(tmp_path, _clauses("""\
        - id: org-terms.ban-on-release
          type: any_training_ban
          when: {distribution: [open_weights]}
          citation: {url: https://example.org, section: "2", date: 2026-01-01, quote: No releases., evidence: primary}
          explanation: releases are banned
        """))
    decision = decide(make_plan({"teacher": {"model": "org/model-1"}}), make_compute(), packs, START)
    assert decision.outcome == "REVIEW"
    assert decision.rule_ids == ["engine.no-permission"]


def test_an_org_entry_adds_terms_to_a_builtin_teacher_but_cannot_replace_them(tmp_path):
    # a more specific organisation entry granting permission does not lift OpenAI's ban
    packs = _org_terms_pack(tmp_path, PERMISSION, models='["gpt-4o"]', channel="api")
    plan = make_plan({"teacher": {"model": "gpt-4o", "access": "api"}, "use": {"scope": "general"}})
    decision = decide(plan, make_compute(), packs, START)
    assert decision.outcome == "DENY"
    assert decision.rule_ids == ["openai-services-agreement.competitor-ban"]
    assert decision.teacher.entry_id == "openai-api"
    assert set(decision.teacher.terms) == {"openai-services-agreement@updated 2025-12-01, effective 2026-01-01",
                                           "org-terms@1"}
    assert "engine.ambiguous-teacher" not in {f.rule_id for f in decision.findings}


def test_an_org_entry_can_make_a_builtin_teacher_stricter(tmp_path):
    packs = _org_terms_pack(tmp_path, _clauses("""\
        - id: org-terms.no-gpt-oss
          type: any_training_ban
          citation: {url: https://example.org, section: "3", date: 2026-01-01, quote: Not this one., evidence: primary}
          explanation: banned in-house
        """), models='["openai/gpt-oss-*"]')
    decision = decide(make_plan({"teacher": {"model": "openai/gpt-oss-20b"}}), make_compute(), packs, START)
    assert decision.outcome == "DENY" and decision.rule_ids == ["org-terms.no-gpt-oss"]


def test_two_equally_specific_entries_are_ambiguous(tmp_path):
    packs = _org_terms_pack(tmp_path, PERMISSION, second_entry=True)
    decision = decide(make_plan({"teacher": {"model": "org/model-1"}}), make_compute(), packs, START)
    assert decision.outcome == "REVIEW"
    assert decision.rule_ids == ["engine.ambiguous-teacher"]


def test_engine_module_has_no_mutable_state():
    """No module-level caches or registries that a decision could write to."""
    names = [n for n, v in vars(engine).items() if isinstance(v, (dict, list, set)) and not n.startswith("__")]
    assert names == []


def test_unknown_compute_explains_what_the_estimate_lacks(builtin_packs):
    compute = make_compute(total_flops=None, missing_facts=["teacher.config or teacher.parameters (the teacher's size)"])
    decision = decide(make_plan(), compute, builtin_packs, START)
    systemic = next(f for f in decision.findings if f.rule_id == "eu-ai-act.systemic-risk")
    assert systemic.effect == "review" and systemic.observed == "unknown"
    assert "teacher.config or teacher.parameters" in systemic.explanation
    assert next(r for r in decision.regimes if r.id == "eu-ai-act.systemic-risk").status == "unknown"


def test_each_uncovered_jurisdiction_is_named_in_its_own_finding(builtin_packs):
    plan = make_plan({"teacher": {"model": "openai/gpt-oss-20b"},
                      "organization": {"jurisdictions": ["EU", "ZA", "US-TX"]}})
    decision = decide(plan, make_compute(), builtin_packs, START)
    assert decision.outcome == "REVIEW" and decision.rule_ids == ["engine.unknown-jurisdiction"]
    japan, texas = [f for f in decision.findings if f.rule_id == "engine.unknown-jurisdiction"]
    assert japan.observed == "organization.jurisdictions includes ZA" and japan.effect == "review"
    assert japan.kind == "engine" and japan.citation is None
    assert "No regime pack covers ZA" in japan.explanation
    assert texas.observed == "organization.jurisdictions includes US-TX"
    assert "the rules for US were applied" in texas.explanation and "US-TX's own law" in texas.explanation
    assert not gate_would_open(decision)
    # the covered jurisdictions are still judged
    assert {"eu-ai-act.gpai", "us-eo-14110.dual-use-foundation-model"} <= {r.id for r in decision.regimes}


def test_the_manifest_check_reads_facts_given_as_data_and_does_no_io(builtin_packs):
    from audit.policy.conditions import PlanFacts

    plan = make_plan({"teacher": {"model": "openai/gpt-oss-20b"},
                      "data": {"tokens": 2.5e9, "manifest": "/data/manifest.json"}})
    facts = PlanFacts(manifest="/data/manifest.json", manifest_tokens=2_000_000_000,
                      manifest_tokens_field="total_tokens")
    events: list[str] = []
    watching = {"on": False}
    sys.addaudithook(lambda event, args: events.append(event) if watching["on"] and event == "open" else None)
    watching["on"] = True
    try:
        decision = decide(plan, make_compute(), builtin_packs, START, facts)
    finally:
        watching["on"] = False
    assert events == []
    assert decision.outcome == "REVIEW" and decision.rule_ids == ["engine.data-tokens-exceed-manifest"]
    (finding,) = [f for f in decision.findings if f.rule_id == "engine.data-tokens-exceed-manifest"]
    assert "2,500,000,000 tokens" in finding.explanation and "2,000,000,000 tokens" in finding.explanation
    # the same plan without the facts read (a plain Plan) is not checked
    assert decide(plan, make_compute(), builtin_packs, START).outcome == "ALLOW"


def test_the_one_gate_rule_opens_only_on_met_checkable_obligations():
    from audit.policy.decision import Decision, Obligation

    def decision(*obligations):
        return Decision(outcome="ALLOW_WITH_OBLIGATIONS", as_of=START, findings=[], obligations=list(obligations),
                        regimes=[], rule_ids=[], packs=[])

    def ob(status, checkable):
        return Obligation(id="o", rule_id="o", text="t", checkable=checkable, status=status)

    assert gate_would_open(decision(ob("met", True), ob("todo", False)))
    assert not gate_would_open(decision(ob("unmet", True)))
    assert not gate_would_open(decision(ob("todo", True)))  # fail closed on a checkable to-do
