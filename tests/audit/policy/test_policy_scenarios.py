"""The scenario corpus (Cedar/OPA style): each YAML row gives plan facts, compute figures, a date
and the expected outcome with the exact rule ids behind it. Also checks that the corpus covers
every teacher entry, every threshold (below / at / above) and every in-force boundary."""

from __future__ import annotations

import datetime as dt
from functools import lru_cache
from pathlib import Path

import pytest

from audit.policy.conditions import PlanFacts
from audit.policy.engine import decide, gate_would_open
from audit.policy.packs import load_packs
from audit.yamlio import load_yaml_file
from policy_factories import make_compute, make_plan

HERE = Path(__file__).resolve().parent
SCENARIO_DIR = HERE / "scenarios"
ORG_PACKS = HERE / "org_packs"


def _load_scenarios() -> list[dict]:
    rows = []
    for path in sorted(SCENARIO_DIR.glob("*.yaml")):
        for row in load_yaml_file(path):
            row["file"] = path.name
            rows.append(row)
    return rows


SCENARIOS = _load_scenarios()


@lru_cache(maxsize=None)
def _packs(org: tuple[str, ...]):
    return load_packs([ORG_PACKS / name for name in org])


def run_scenario(row: dict):
    plan = make_plan(row.get("plan") or {})
    facts = PlanFacts()
    if "manifest_facts" in row:  # what read_plan_facts read from data.manifest
        facts = PlanFacts(manifest=plan.data.manifest, **(row["manifest_facts"] or {}))
    if "card_facts" in row:  # what read_plan_facts read from a local teacher folder's README/LICENSE
        facts = PlanFacts.model_validate(facts.model_dump() | row["card_facts"])  # lineage cards validated
    compute = make_compute(**(row.get("compute") or {}))
    as_of = row.get("as_of") or plan.schedule.start
    return decide(plan, compute, _packs(tuple(row.get("org_packs", []))), as_of, facts)


@lru_cache(maxsize=None)
def _decision(index: int):
    return run_scenario(SCENARIOS[index])


def test_corpus_is_large_and_names_are_unique():
    names = [row["name"] for row in SCENARIOS]
    assert len(SCENARIOS) >= 60
    assert len(names) == len(set(names))


@pytest.mark.parametrize("index", range(len(SCENARIOS)), ids=[r["name"] for r in SCENARIOS])
def test_scenario(index):
    row = SCENARIOS[index]
    expect = row["expect"]
    decision = _decision(index)
    assert decision.outcome == expect["outcome"], [f.explanation for f in decision.findings if f.effect != "info"]
    assert set(decision.rule_ids) == set(expect["rules"])
    assert len(decision.rule_ids) == len(set(decision.rule_ids))
    if "teacher" in expect:
        assert (decision.teacher.entry_id if decision.teacher else None) == expect["teacher"]
    if "matched_by" in expect:
        assert decision.teacher.matched_by == expect["matched_by"]
    obligations = {o.id: o for o in decision.obligations}
    for ob_id, status in (expect.get("obligations") or {}).items():
        assert obligations[ob_id].status == status, ob_id
    for ob_id in expect.get("absent_obligations", []):
        assert ob_id not in obligations
    for ob_id in expect.get("authorized", []):
        assert obligations[ob_id].authorized and obligations[ob_id].status == "met"
    if not expect.get("authorized"):
        assert not any(o.authorized for o in decision.obligations)
    if "uncovered_jurisdictions" in expect:
        named = [f.observed.removeprefix("organization.jurisdictions includes ") for f in decision.findings
                 if f.rule_id == "engine.unknown-jurisdiction"]
        assert named == expect["uncovered_jurisdictions"]
    if "sub_national_scope" in expect:  # the note a broad code (US) gets for state laws it leaves out
        notes = [f for f in decision.findings if f.rule_id == "engine.sub-national-scope"]
        assert all(f.effect == "info" for f in notes)
        assert [f.explanation for f in notes] == expect["sub_national_scope"]
    if "data_tokens_finding" in expect:
        found = [f for f in decision.findings if f.rule_id == "engine.data-tokens-exceed-manifest"]
        assert bool(found) == expect["data_tokens_finding"]
    regimes = {r.id: r for r in decision.regimes}
    for regime_id, status in (expect.get("regimes") or {}).items():
        if status == "absent":
            assert regime_id not in regimes
        else:
            assert regimes[regime_id].status == status, regime_id
    # The gate opens exactly for ALLOW and ALLOW_WITH_OBLIGATIONS (no unmet checkable obligation
    # can survive into ALLOW_WITH_OBLIGATIONS).
    assert gate_would_open(decision) == (expect["outcome"] in ("ALLOW", "ALLOW_WITH_OBLIGATIONS"))


# -- coverage of the corpus --------------------------------------------------------------------------

def test_every_teacher_entry_appears_in_a_scenario(builtin_packs):
    seen = {_decision(i).teacher.entry_id for i in range(len(SCENARIOS))}
    missing = {e.id for _, e in builtin_packs.teachers()} - seen
    assert not missing, f"teacher entries without a scenario: {sorted(missing)}"


def test_every_host_entry_appears_in_a_scenario(builtin_packs):
    seen = {_decision(i).teacher.host_entry_id for i in range(len(SCENARIOS))}
    missing = {h.id for _, h in builtin_packs.hosts()} - seen
    assert not missing, f"host entries without a scenario: {sorted(missing)}"


def test_every_regime_threshold_is_tested_below_at_and_above(builtin_packs):
    positions: dict[str, set[str]] = {}
    for i in range(len(SCENARIOS)):
        for r in _decision(i).regimes:
            if r.observed_value is None or r.threshold_value is None:
                continue
            where = ("below" if r.observed_value < r.threshold_value
                     else "at" if r.observed_value == r.threshold_value else "above")
            positions.setdefault(r.id, set()).add(where)
    for _, regime in builtin_packs.regimes():
        assert positions.get(regime.id, set()) == {"below", "at", "above"}, regime.id


def test_every_in_force_boundary_is_tested(builtin_packs):
    """For each start and end date: a scenario on the day before and one on the day itself."""
    dated: dict[str, set[dt.date]] = {}
    for i, row in enumerate(SCENARIOS):
        decision = _decision(i)
        for r in decision.regimes:
            dated.setdefault(r.id, set()).add(decision.as_of)
    one_day = dt.timedelta(days=1)
    for _, regime in builtin_packs.regimes():
        for boundary in (regime.in_force_from, regime.in_force_until):
            if boundary is None:
                continue
            # the modifier rules share the EU dates; the corpus tests the family once
            family = regime.id.split(".")[0]
            seen = set().union(*(d for rid, d in dated.items() if rid.split(".")[0] == family))
            assert {boundary - one_day, boundary} <= seen, (regime.id, boundary)


def test_corpus_covers_every_outcome_and_clause_type(builtin_packs):
    outcomes = {row["expect"]["outcome"] for row in SCENARIOS}
    assert outcomes == {"ALLOW", "ALLOW_WITH_OBLIGATIONS", "REVIEW", "DENY"}
    fired_types = set()
    clause_type = {c.id: c.type for _, doc in builtin_packs.all_terms() for c in doc.clauses}
    for i in range(len(SCENARIOS)):
        for f in _decision(i).findings:
            if f.rule_id in clause_type and f.effect != "info":
                fired_types.add(clause_type[f.rule_id])
    from audit.policy.schema import CLAUSE_TYPES

    assert fired_types == set(CLAUSE_TYPES)
