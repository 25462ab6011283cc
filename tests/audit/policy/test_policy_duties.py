"""One duty, one obligation: two regimes that impose the same duty on one plan (the packs' ``duty``
key) give one obligation carrying every legal basis, and merging loses no (duty, citation) pair.

Scenario rows may carry, under ``expect``:

- ``same_duty``: groups of pack obligation ids that are one duty; exactly one obligation of the
  decision stands for each group, and its legal bases name every id, rule and citation of it;
- ``separate``: obligation ids that stay obligations of their own (different laws).
"""

from __future__ import annotations

import datetime as dt

import pytest
from policy_factories import make_compute, make_plan
from test_policy_scenarios import SCENARIOS, run_scenario

from audit.policy import engine
from audit.policy.decision import Citation, LegalBasis, Obligation
from audit.policy.duties import bases_note, duty_key, merge_duties

ROWS = [r for r in SCENARIOS if {"same_duty", "separate"} & set(r["expect"])]


def _stands_for(ob, ids: set[str]) -> bool:
    return bool(ids & ({ob.id} | {b.obligation_id for b in getattr(ob, "legal_bases", [])}))


def test_there_are_rows_to_check():
    assert len(ROWS) >= 3


@pytest.mark.parametrize("row", ROWS, ids=[r["name"] for r in ROWS])
def test_one_obligation_per_duty(row, builtin_packs):
    plan = make_plan(row.get("plan") or {})
    decision = engine.decide(plan, make_compute(**(row.get("compute") or {})), builtin_packs,
                             row.get("as_of") or plan.schedule.start, audit_date=row.get("audit_date"))
    regimes = {r.id: r for r in decision.regimes}
    for group in row["expect"].get("same_duty", []):
        owners = [o for o in decision.obligations if _stands_for(o, set(group))]
        assert [o.id for o in owners] == [group[0]], f"{group}: {[o.id for o in owners]}"
        bases = {b.obligation_id: b for b in owners[0].legal_bases}
        assert set(group) <= set(bases), bases
        for ob_id in group:  # each basis names the regime that listed it, and that regime's citation
            rule = bases[ob_id].rule_id
            assert ob_id in regimes[rule].obligations
            assert bases[ob_id].citation is not None
    for ob_id in row["expect"].get("separate", []):
        owners = [o for o in decision.obligations if _stands_for(o, {ob_id})]
        assert [o.id for o in owners] == [ob_id]
        assert [b.obligation_id for b in owners[0].legal_bases] == [ob_id]


def _pairs(decision) -> set[tuple]:
    return {(duty_key(o), b.obligation_id, b.rule_id, b.citation.model_dump_json() if b.citation else None)
            for o in decision.obligations for b in o.legal_bases}


@pytest.mark.parametrize("index", range(len(SCENARIOS)), ids=[r["name"] for r in SCENARIOS])
def test_merging_loses_no_duty_or_citation(index, monkeypatch):
    """Over every scenario row: the (duty, citation) pairs with duties merged equal those of the
    same decision with merging switched off, and no two obligations left are one duty."""
    merged = run_scenario(SCENARIOS[index])
    monkeypatch.setattr(engine, "merge_duties", lambda obligations: obligations)
    unmerged = run_scenario(SCENARIOS[index])
    assert _pairs(merged) == _pairs(unmerged)
    keys = [duty_key(o) for o in merged.obligations]
    assert len(keys) == len(set(keys))
    assert all(o.legal_bases for o in merged.obligations)
    # every obligation a regime lists is still in the list, as itself or as a legal basis
    named = {b.obligation_id for o in merged.obligations for b in o.legal_bases}
    assert {i for r in merged.regimes for i in r.obligations} <= named
    assert merged.outcome == unmerged.outcome and set(merged.rule_ids) == set(unmerged.rule_ids)


CITE = Citation(url="https://example.org", section="1", date=dt.date(2026, 1, 1), quote="A duty.", evidence="primary")


def _ob(id: str, rule: str, status="todo", deadline=None, duty="d") -> Obligation:
    return Obligation(id=id, rule_id=rule, text=id, deadline=deadline, checkable=status != "todo", status=status,
                      duty=duty, legal_bases=[LegalBasis(obligation_id=id, rule_id=rule, citation=CITE)])


def test_merge_keeps_the_least_met_the_earliest_date_and_every_basis():
    first = _ob("a.x", "a", deadline="within two weeks")
    second = _ob("b.x", "b", status="unmet", deadline="2026-12-09 (two weeks)")
    other = _ob("c.y", "c", duty=None)
    out = merge_duties([first, other, second])
    assert [o.id for o in out] == ["b.x", "c.y"]
    assert out[0].status == "unmet" and out[0].deadline == "2026-12-09 (two weeks)"
    assert [(b.obligation_id, b.rule_id) for b in out[0].legal_bases] == [("a.x", "a"), ("b.x", "b")]
    assert bases_note(out[0]) == " Owed under: a (1); b (1)."
    assert bases_note(out[0].model_dump(mode="json")) == bases_note(out[0])
    assert bases_note(out[1]) == ""


def test_merge_on_a_tie_keeps_the_first_and_its_earlier_date():
    out = merge_duties([_ob("a.x", "a", deadline="2026-12-01 (x)"), _ob("b.x", "b", deadline="2026-12-09 (y)")])
    assert [(o.id, o.deadline) for o in out] == [("a.x", "2026-12-01 (x)")]


def test_same_id_without_duty_is_still_one_obligation():
    """The same terms reached through two sources (no duty key): one obligation, the least met."""
    out = merge_duties([_ob("t.x", "t", duty=None), _ob("t.x", "t", status="met", duty=None)])
    assert [(o.id, o.status, len(o.legal_bases)) for o in out] == [("t.x", "todo", 1)]
