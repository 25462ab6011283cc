"""Property tests over random plans and estimates: deny is never overridden, removing facts never
opens the gate, an unknown teacher never gets ALLOW, and decide() is deterministic."""

from __future__ import annotations

import datetime as dt

import hypothesis.strategies as st
from hypothesis import HealthCheck, assume, given, settings

from audit.policy.engine import decide, gate_would_open
from audit.policy.packs import LoadedPack, PolicySet, load_packs
from audit.policy.schema import Pack
from policy_factories import make_compute, make_plan

PACKS = load_packs()
STRICTNESS = {"ALLOW": 0, "ALLOW_WITH_OBLIGATIONS": 1, "REVIEW": 2, "DENY": 3}
SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])

TEACHERS = [
    ("meta-llama/Llama-3.1-8B-Instruct", "weights"), ("meta-llama/Meta-Llama-3-8B-Instruct", "weights"),
    ("meta-llama/Llama-4-Scout-17B-16E-Instruct", "weights"), ("google/gemma-3-4b-it", "weights"),
    ("gpt-4o", "api"), ("chatgpt", "consumer_app"), ("claude-sonnet-4-5", "api"), ("gemini-2.5-pro", "api"),
    ("Qwen/Qwen2.5-72B-Instruct", "weights"), ("Qwen/Qwen2.5-3B-Instruct", "weights"),
    ("deepseek-ai/DeepSeek-V3", "weights"), ("deepseek-chat", "api"), ("grok-4", "api"),
    ("stabilityai/sdxl-turbo", "weights"), ("openai/gpt-oss-20b", "weights"),
    ("allenai/OLMo-2-1124-7B-Instruct", "weights"), ("acme/unknown-model", "weights"),
    ("mistralai/Mistral-Large-Instruct-2411", "weights"), ("CohereForAI/aya-expanse-8b", "weights"),
]
flops = st.one_of(st.none(), st.floats(min_value=1e18, max_value=1e27, allow_nan=False))
money = st.one_of(st.none(), st.floats(min_value=1e3, max_value=1e10, allow_nan=False))


@st.composite
def plans_and_computes(draw):
    model, access = draw(st.sampled_from(TEACHERS))
    init = draw(st.sampled_from(["scratch", "base", "pruned_teacher"]))
    teacher = {"model": model, "access": access}
    if draw(st.booleans()):
        teacher["authorization"] = {"document": "/docs/a.pdf", "sha256": "ab" * 32}
    if draw(st.integers(0, 4)) == 0:
        teacher["license"] = draw(st.sampled_from(["apache-2.0", "llama3.1", "gemma", "other"]))
    overrides = {
        "teacher": teacher,
        "organization": {"jurisdictions": draw(st.lists(st.sampled_from(["EU", "DE", "US", "US-CA", "US-NY", "KR", "JP"]),
                                                        min_size=1, max_size=3, unique=True)),
                         "annual_revenue_usd": draw(money)},
        "student": {"name": draw(st.sampled_from(["Llama-Acme-1B", "Acme-1B", "Qwen-Mini", "llama-x"])),
                    "license": draw(st.sampled_from([None, "apache-2.0", "LicenseRef-Gemma", "deepseek", "mit"])),
                    "init": init, "base_model": "acme/base" if init == "base" else None},
        "use": {"scope": draw(st.sampled_from(["narrow", "general"])),
                "distribution": draw(st.sampled_from(["internal", "api", "open_weights"])),
                "commercial": draw(st.booleans()),
                "monthly_active_users": draw(st.one_of(st.none(), st.floats(min_value=0, max_value=2e9)))},
        "schedule": {"start": draw(st.dates(min_value=dt.date(2023, 6, 1), max_value=dt.date(2028, 1, 1)))},
    }
    compute = {"total_flops": draw(flops), "update_flops": draw(flops), "modification_flops": draw(flops),
               "original_model_flops": draw(flops), "teacher_training_flops": draw(flops), "cost_usd": draw(money)}
    return make_plan(overrides), make_compute(**compute)


def _deny_pack(when: dict) -> PolicySet:
    pack = Pack.model_validate({
        "id": "prop-deny", "version": "1", "last_reviewed": dt.date(2026, 1, 1), "kind": "organization",
        "title": "property test", "rules": [{
            "id": "prop.deny", "effect": "deny", "when": when, "explanation": "denied",
            "citation": {"url": "https://example.org", "section": "1", "date": dt.date(2026, 1, 1),
                         "quote": "No.", "evidence": "primary"}}]})
    from pathlib import Path

    return PolicySet(list(PACKS.packs) + [LoadedPack(pack, Path("/prop/deny.yaml"), "0" * 64, False)])


deny_conditions = st.sampled_from([
    {}, {"distribution": ["open_weights"]}, {"scope": ["general"]}, {"teacher_provider": ["Meta"]},
    {"facts": [{"fact": "total_flops", "comparator": ">", "value": 1e24}]}, {"commercial": False},
])


@SETTINGS
@given(plans_and_computes(), deny_conditions)
def test_adding_a_deny_rule_never_relaxes_the_outcome(case, when):
    plan, compute = case
    before = decide(plan, compute, PACKS, plan.schedule.start)
    after = decide(plan, compute, _deny_pack(when), plan.schedule.start)
    if before.outcome == "DENY":
        assert after.outcome == "DENY"
    assert STRICTNESS[after.outcome] >= STRICTNESS[before.outcome]


@SETTINGS
@given(plans_and_computes(), st.sets(st.sampled_from(
    ["total_flops", "update_flops", "modification_flops", "original_model_flops", "teacher_training_flops",
     "cost_usd", "annual_revenue_usd", "monthly_active_users", "student_license"]), min_size=1))
def test_removing_facts_never_turns_review_into_allow(case, removed):
    plan, compute = case
    before = decide(plan, compute, PACKS, plan.schedule.start)
    assume(before.outcome == "REVIEW")
    compute = compute.model_copy(update={k: None for k in removed if hasattr(compute, k)})
    if "annual_revenue_usd" in removed:
        plan = plan.model_copy(update={"organization": plan.organization.model_copy(update={"annual_revenue_usd": None})})
    if "monthly_active_users" in removed:
        plan = plan.model_copy(update={"use": plan.use.model_copy(update={"monthly_active_users": None})})
    if "student_license" in removed:
        plan = plan.model_copy(update={"student": plan.student.model_copy(update={"license": None})})
    after = decide(plan, compute, PACKS, plan.schedule.start)
    assert after.outcome in ("REVIEW", "DENY")
    assert not gate_would_open(after)


@SETTINGS
@given(plans_and_computes())
def test_unknown_teacher_never_opens_the_gate_and_decisions_are_consistent(case):
    plan, compute = case
    decision = decide(plan, compute, PACKS, plan.schedule.start)
    assert decision == decide(plan, compute, PACKS, plan.schedule.start)
    if decision.teacher.matched_by == "none":
        assert decision.outcome in ("REVIEW", "DENY")
    effects = {f.effect for f in decision.findings}
    unmet = any(o.status == "unmet" for o in decision.obligations)
    if gate_would_open(decision):
        assert not ({"deny", "review"} & effects) and not unmet
    else:
        assert ({"deny", "review"} & effects) or unmet
    assert set(decision.rule_ids) <= {f.rule_id for f in decision.findings} | {o.rule_id for o in decision.obligations}
    for regime in decision.regimes:
        if regime.status == "not_in_force":
            assert regime.id not in {o.rule_id for o in decision.obligations}
