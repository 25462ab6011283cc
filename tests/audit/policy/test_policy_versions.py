"""Terms are versioned in time: a terms document applies only inside its effective window
(``effective_from <= as_of < superseded_on``), and a teacher none of whose terms was in force on
the audit's date is REVIEW (the version that governed then is not in any pack), never ALLOW."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audit.policy.engine import decide
from audit.policy.packs import load_packs
from audit.policy.schema import TermsDoc
from policy_factories import make_compute, make_plan

PACKS = load_packs([])
GEMINI = {"teacher": {"model": "gemini-2.5-pro", "access": "api"},
          "use": {"scope": "narrow", "distribution": "internal", "commercial": True}}


def teacher_rules(decision) -> set[str]:
    return {f.rule_id for f in decision.findings if f.kind in ("teacher", "engine")}


def test_a_terms_version_applies_only_inside_its_window():
    _, doc = PACKS.terms("gemini-api-terms")
    assert doc.effective_from == dt.date(2025, 5, 20)
    assert not doc.in_force(dt.date(2025, 5, 19)) and doc.in_force(dt.date(2025, 5, 20))
    ended = doc.model_copy(update={"superseded_on": dt.date(2026, 1, 1)})
    assert ended.in_force(dt.date(2025, 12, 31)) and not ended.in_force(dt.date(2026, 1, 1))
    with pytest.raises(ValueError, match="superseded_on must be after effective_from"):
        TermsDoc.model_validate({**doc.model_dump(), "superseded_on": dt.date(2025, 5, 20)})


def test_before_the_only_version_in_a_pack_the_teacher_is_reviewed():
    plan = make_plan(GEMINI)
    now = decide(plan, make_compute(), PACKS, dt.date(2026, 12, 1))
    before = decide(plan, make_compute(), PACKS, dt.date(2025, 3, 1))
    assert "engine.no-terms-in-force" not in teacher_rules(now)
    assert "engine.no-terms-in-force" in teacher_rules(before)
    assert "engine.terms-not-in-force" in teacher_rules(before)
    assert before.outcome in ("REVIEW", "DENY")


@settings(max_examples=40, deadline=None)
@given(day=st.dates(min_value=dt.date(2023, 1, 1), max_value=dt.date(2027, 12, 31)))
def test_no_version_in_force_never_allows(day):
    decision = decide(make_plan(GEMINI), make_compute(), PACKS, day)
    if "engine.no-terms-in-force" in teacher_rules(decision):
        assert decision.outcome not in ("ALLOW", "ALLOW_WITH_OBLIGATIONS")
