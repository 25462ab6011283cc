"""Regime duties and dates that the scenario runner does not check (issue 16, regime half).

Scenario rows may carry ``audit_date`` (the day of the pre-run estimate, passed to
``decide(audit_date=...)``) and, under ``expect``:

- ``deadlines``: obligation id -> the ISO-date prefix its deadline must start with;
- ``deadline_words``: obligation ids whose deadline must carry no date (no audit date given);
- ``deadline_contains``: obligation id -> text its deadline must contain;
- ``undecided``: obligation ids kept because a condition could not be decided (fail closed).

Also unit tests for the student's own training compute (``own_training_flops``), which leaves
the teacher's inference out and counts a base model whose weights initialise the student.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pytest

from audit.compute.types import Component
from audit.policy.conditions import Context, PlanFacts
from audit.policy.engine import decide
from audit.policy.regimes import regime_fact
from audit.yamlio import load_yaml_file
from policy_factories import make_compute, make_plan

SCENARIO_DIR = Path(__file__).resolve().parent / "scenarios"
KEYS = ("deadlines", "deadline_words", "deadline_contains", "undecided")


def _rows() -> list[dict]:
    rows = []
    for path in sorted(SCENARIO_DIR.glob("*.yaml")):
        for row in load_yaml_file(path):
            if "audit_date" in row or any(k in row["expect"] for k in KEYS):
                rows.append(row)
    return rows


ROWS = _rows()


def test_there_are_rows_to_check():
    assert len(ROWS) >= 5


@pytest.mark.parametrize("row", ROWS, ids=[r["name"] for r in ROWS])
def test_regime_duties_row(row, builtin_packs):
    plan = make_plan(row.get("plan") or {})
    compute = make_compute(**(row.get("compute") or {}))
    decision = decide(plan, compute, builtin_packs, row.get("as_of") or plan.schedule.start, PlanFacts(),
                      audit_date=row.get("audit_date"))
    expect = row["expect"]
    assert decision.outcome == expect["outcome"]
    obligations = {o.id: o for o in decision.obligations}
    for ob_id, prefix in (expect.get("deadlines") or {}).items():
        assert obligations[ob_id].deadline.startswith(prefix), obligations[ob_id].deadline
    for ob_id in expect.get("deadline_words", []):
        assert not re.match(r"\d{4}-\d{2}-\d{2}", obligations[ob_id].deadline or ""), obligations[ob_id].deadline
    for ob_id, text in (expect.get("deadline_contains") or {}).items():
        assert text in (obligations[ob_id].deadline or ""), obligations[ob_id].deadline
    for ob_id in expect.get("undecided", []):
        assert "could not be decided" in obligations[ob_id].text, obligations[ob_id].text
    for ob_id, ob in obligations.items():
        if ob_id not in expect.get("undecided", []) and ob.rule_id.startswith("eu-ai-act"):
            assert "could not be decided" not in ob.text, ob_id


def test_the_notification_date_can_precede_the_run(builtin_packs):
    plan = make_plan({"schedule": {"start": "2026-12-01"}})
    decision = decide(plan, make_compute(total_flops=2e25), builtin_packs, plan.schedule.start,
                      audit_date=dt.date(2026, 11, 2))
    notify = next(o for o in decision.obligations if o.id == "eu-ai-act.systemic-risk.notify-commission")
    assert notify.deadline.startswith("2026-11-16 (")
    assert notify.deadline[:10] < plan.schedule.start.isoformat()


def _ctx(*components: Component, init: str = "scratch") -> Context:
    plan = make_plan({"student": {"init": init}})
    return Context(plan=plan, compute=make_compute(components=list(components)), as_of=plan.schedule.start)


def _component(id: str, flops, counts_toward) -> Component:
    return Component(id=id, label=id, flops=flops, method="counted" if flops is not None else "unknown",
                     counts_toward=counts_toward)


def test_own_training_leaves_teacher_inference_out():
    ctx = _ctx(_component("student_training", 5e25, ["cumulative", "parameter_update"]),
               _component("teacher_forward", 3e26, ["cumulative"]))
    assert regime_fact(ctx, "own_training_flops") == 5e25


def test_own_training_counts_the_model_whose_weights_start_the_student():
    ctx = _ctx(_component("student_training", 5e25, ["cumulative", "parameter_update", "modification"]),
               _component("teacher_generation", 1e26, ["cumulative"]),
               _component("base_model_training", 6e25, ["cumulative"]), init="pruned_teacher")
    assert regime_fact(ctx, "own_training_flops") == pytest.approx(1.1e26)


def test_own_training_is_unknown_when_a_part_is_unknown():
    ctx = _ctx(_component("student_training", 5e25, ["cumulative", "parameter_update", "modification"]),
               _component("base_model_training", None, ["cumulative"]), init="pruned_teacher")
    assert regime_fact(ctx, "own_training_flops") is None
