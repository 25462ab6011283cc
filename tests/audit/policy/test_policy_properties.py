"""Property tests over random plans and estimates: deny is never overridden, removing facts never
opens the gate, an unknown teacher never gets ALLOW, and decide() is deterministic."""

from __future__ import annotations

import copy
import datetime as dt
import itertools
import re

import hypothesis.strategies as st
from hypothesis import HealthCheck, assume, given, settings
from pydantic import ValidationError

from audit.plan import Plan, Use

from audit.policy.engine import decide, gate_would_open
from audit.policy.packs import LoadedPack, PolicySet, load_packs
from audit.policy.schema import Pack
from policy_factories import BASE_PLAN, make_compute, make_plan, merge

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


HOSTS = [None, None, "aws-bedrock", "google-vertex", "azure-foundry", "alibaba-model-studio", "meta", "openai",
         "together-ai"]
BASES = ["acme/base", "meta-llama/Llama-3.1-8B", "google/gemma-2-9b", "allenai/OLMo-2-1124-7B",
         "CohereForAI/aya-expanse-8b"]
CODES = ["EU", "DE", "FR", "US", "US-CA", "US-NY", "KR", "JP", "ZA"]


@st.composite
def plan_dicts_and_computes(draw):
    """A plan as the dict a YAML file would give (BASE_PLAN with random overrides), and compute."""
    overrides, compute = draw(_cases())
    return merge(BASE_PLAN, overrides), make_compute(**compute)


@st.composite
def plans_and_computes(draw):
    overrides, compute = draw(_cases())
    return make_plan(overrides), make_compute(**compute)


@st.composite
def _cases(draw):
    model, access = draw(st.sampled_from(TEACHERS))
    init = draw(st.sampled_from(["scratch", "base", "pruned_teacher"]))
    teacher = {"model": model, "access": access}
    if access == "api":
        teacher["host"] = draw(st.sampled_from(HOSTS))
    if draw(st.booleans()):
        teacher["authorization"] = {"document": "/docs/a.pdf", "sha256": "ab" * 32}
    if draw(st.integers(0, 4)) == 0:
        teacher["license"] = draw(st.sampled_from(["apache-2.0", "llama3.1", "gemma", "other"]))
    overrides = {
        "teacher": teacher,
        "organization": {"jurisdictions": draw(st.lists(st.sampled_from(CODES), min_size=1, max_size=3, unique=True)),
                         "domicile": draw(st.one_of(st.none(), st.sampled_from(CODES))),
                         "annual_revenue_usd": draw(money),
                         "monthly_active_users": draw(st.one_of(st.none(), st.floats(min_value=0, max_value=2e9)))},
        "student": {"name": draw(st.sampled_from(["Llama-Acme-1B", "Acme-1B", "Qwen-Mini", "llama-x"])),
                    "license": draw(st.sampled_from([None, "apache-2.0", "LicenseRef-Gemma", "deepseek", "mit"])),
                    "init": init, "base_model": draw(st.sampled_from(BASES)) if init == "base" else None},
        "use": {"scope": draw(st.sampled_from(["narrow", "general"])),
                "distribution": draw(st.sampled_from(["internal", "api", "open_weights"])),
                "commercial": draw(st.booleans()),
                "monthly_active_users": draw(st.one_of(st.none(), st.floats(min_value=0, max_value=2e9)))},
        "schedule": {"start": draw(st.dates(min_value=dt.date(2023, 6, 1), max_value=dt.date(2028, 1, 1)))},
    }
    compute = {"total_flops": draw(flops), "update_flops": draw(flops), "modification_flops": draw(flops),
               "original_model_flops": draw(flops), "teacher_training_flops": draw(flops), "cost_usd": draw(money)}
    return overrides, compute


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
     "cost_usd", "annual_revenue_usd", "monthly_active_users", "student_license", "organization_monthly_active_users",
     "domicile"]), min_size=1))
def test_removing_facts_never_turns_review_into_allow(case, removed):
    plan, compute = case
    before = decide(plan, compute, PACKS, plan.schedule.start)
    assume(before.outcome == "REVIEW")
    compute = compute.model_copy(update={k: None for k in removed if hasattr(compute, k)})
    if "annual_revenue_usd" in removed:
        plan = plan.model_copy(update={"organization": plan.organization.model_copy(update={"annual_revenue_usd": None})})
    if "organization_monthly_active_users" in removed:
        plan = plan.model_copy(update={"organization": plan.organization.model_copy(
            update={"monthly_active_users": None})})
    if "domicile" in removed:
        plan = plan.model_copy(update={"organization": plan.organization.model_copy(update={"domicile": None})})
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


# -- issue 16: missing or defaulted facts never open the gate ----------------------------------------

USE_FACTS = ["scope", "distribution", "commercial", "monthly_active_users"]
ORGANIZATION_FACTS = ["domicile", "monthly_active_users", "annual_revenue_usd"]


def test_scope_and_distribution_have_no_default():
    """A default would be the permissive answer (narrow, internal): the plan must state them."""
    assert Use.model_fields["scope"].is_required()
    assert Use.model_fields["distribution"].is_required()
    for name, field in Use.model_fields.items():  # any default a use fact keeps is the strict one
        if not field.is_required():
            assert (name, field.default) in {("commercial", True), ("monthly_active_users", None)}, name


@SETTINGS
@given(plan_dicts_and_computes(), st.sampled_from([("use", f) for f in USE_FACTS]
                                                  + [("organization", f) for f in ORGANIZATION_FACTS]))
def test_removing_or_defaulting_a_use_fact_never_opens_the_gate(case, where):
    """Drop one fact from a plan whose gate is closed: either the plan no longer validates (the
    fact is required, and the error names it) or the gate stays closed, whatever default fills in."""
    data, compute = case
    plan = Plan.model_validate(data)
    before = decide(plan, compute, PACKS, plan.schedule.start)
    assume(not gate_would_open(before))
    section, fact = where
    removed = copy.deepcopy(data)
    removed[section].pop(fact, None)
    try:
        plan = Plan.model_validate(removed)
    except ValidationError as exc:
        assert any(tuple(e["loc"]) == (section, fact) and e["type"] == "missing" for e in exc.errors())
        return
    after = decide(plan, compute, PACKS, plan.schedule.start)
    assert not gate_would_open(after), (where, after.outcome, after.rule_ids)


# -- checkpoint ids within a family ----------------------------------------------------------------

_SIZE_OR_VARIANT = re.compile(r"[-_.]?\d+(\.\d+)?[bm](?![a-z])|-(instruct|chat|it|base|hf)\b")
_SUFFIXES = ["1B", "3B-Instruct", "8B", "11B-Vision-Instruct", "27b-it", "70B-Instruct", "72B-Instruct", "405B"]
_SITUATIONS = [{}, {"use": {"scope": "general", "distribution": "open_weights"}, "student": {"license": "apache-2.0"}},
               {"use": {"distribution": "api"}, "student": {"name": "Llama-Acme-1B"}}]


def family(model: str) -> str:
    """``meta-llama/Llama-3.2-11B-Vision-Instruct`` -> ``meta-llama/llama-3.2``: the id up to its size."""
    return _SIZE_OR_VARIANT.split(model.casefold())[0]


def _checkpoint_ids() -> list[str]:
    """Open-weights teacher ids the scenario corpus uses, plus ids made from every weights entry's
    globs (``*`` replaced by common size/variant suffixes)."""
    from pathlib import Path

    from audit.yamlio import load_yaml_file

    ids = {m for m, access in TEACHERS if access == "weights"}
    for path in sorted((Path(__file__).parent / "scenarios").glob("*.yaml")):
        for row in load_yaml_file(path):
            teacher = (row.get("plan") or {}).get("teacher") or {}
            if teacher.get("model") and teacher.get("access", "weights") == "weights" and not teacher.get("license") \
                    and not str(teacher["model"]).startswith("/"):
                ids.add(teacher["model"])
    for _, entry in PACKS.teachers():
        if entry.channel == "weights":
            for pattern in entry.models:
                if pattern.count("*") == 1 and pattern.endswith("*") and "/" in pattern:
                    ids.update(pattern.replace("*", suffix) for suffix in _SUFFIXES[:3])
    return sorted(ids)


def test_a_checkpoint_is_never_more_permissive_than_its_family_without_a_reason():
    """Within a family (same id up to the size), a checkpoint that resolves to a different entry
    with a more permissive outcome must carry the pack's reason: a `notes` line on its entry."""
    families: dict[str, list[str]] = {}
    for model in _checkpoint_ids():
        families.setdefault(family(model), []).append(model)
    unexplained: set[str] = set()
    start = make_plan().schedule.start
    for members in (m for m in families.values() if len(m) > 1):
        for situation in _SITUATIONS:
            out = {m: decide(make_plan(merge(situation, {"teacher": {"model": m, "access": "weights"}})),
                             make_compute(), PACKS, start) for m in members}
            for a, b in itertools.permutations(members, 2):
                stricter, looser = out[a], out[b]
                if STRICTNESS[looser.outcome] >= STRICTNESS[stricter.outcome]:
                    continue
                if stricter.teacher.entry_id == looser.teacher.entry_id:
                    continue  # same entry, same terms: the plan facts made the difference
                assert looser.teacher.entry_id is not None, (b, "more permissive than", a, "with no entry")
                found = PACKS.find(looser.teacher.entry_id)
                if not (found and found[1].notes.strip()):
                    unexplained.add(looser.teacher.entry_id)
    assert not unexplained, sorted(unexplained)
