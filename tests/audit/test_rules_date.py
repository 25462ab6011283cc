"""The date an audit applies the rules as of: never before the signing day unless asked for,
and then marked historical (the gate refuses such audits; tests/distill/gate/test_distill_gate.py)."""

import datetime as dt
from pathlib import Path

from audit.check import assess, build_predicate, rules_date
from audit.plan import load_plan

ROOT = Path(__file__).resolve().parents[2]
TODAY = dt.date(2026, 11, 30)


def test_rules_date_is_the_later_of_start_and_today():
    assert rules_date(dt.date(2024, 6, 1), TODAY) == TODAY
    assert rules_date(dt.date(2027, 1, 10), TODAY) == dt.date(2027, 1, 10)


def _plan_starting(tmp_path, start: str):
    text = (ROOT / "examples" / "online-logit-kd.yaml").read_text()
    assert "start: 2026-12-01" in text
    plan = tmp_path / "plan.yaml"
    plan.write_text(text.replace("start: 2026-12-01", f"start: {start}"))
    return load_plan(plan)


def test_a_start_in_the_past_does_not_move_the_rules_back(tmp_path):
    """The attack: schedule.start 2024-06-01 put the EU systemic-risk regime 'not yet in force'."""
    found = assess(_plan_starting(tmp_path, "2024-06-01"), today=TODAY)
    assert found.as_of == TODAY and found.historical is False
    eu = next(r for r in found.decision.regimes if "systemic risk" in r.name)
    assert eu.in_force


def test_an_explicit_past_date_is_historical_and_says_so(tmp_path, fixed_clock):
    loaded = _plan_starting(tmp_path, "2026-12-01")
    found = assess(loaded, as_of=dt.date(2024, 6, 1), today=TODAY)
    assert found.as_of == dt.date(2024, 6, 1) and found.historical is True
    predicate, _, _ = build_predicate(loaded, as_of=dt.date(2024, 6, 1))
    assert predicate["historical"] is True and predicate["as_of"] == "2024-06-01"
    fixed_clock("2027-02-05")
    current, _, _ = build_predicate(loaded)
    assert current["historical"] is False
    assert current["as_of"] == "2027-02-05" and current["created"].startswith("2027-02-05T")
