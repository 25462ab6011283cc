"""``engine.uncounted-ops``: a student or teacher count that met FLOP-bearing ops without a
formula makes the decision REVIEW, naming the ops and the model; a complete count adds nothing."""

from __future__ import annotations

from audit.policy.engine import decide, uncounted_findings
from policy_factories import _student_summary, make_compute, make_plan

RULE = "engine.uncounted-ops"


def _uncounted(decision):
    return [f for f in decision.findings if f.rule_id == RULE]


def test_complete_counts_give_no_finding_and_the_plan_is_not_reviewed(builtin_packs):
    plan = make_plan()
    decision = decide(plan, make_compute(teacher=_student_summary()), builtin_packs, plan.schedule.start)
    assert not _uncounted(decision)
    assert decision.outcome in ("ALLOW", "ALLOW_WITH_OBLIGATIONS") and RULE not in decision.rule_ids


def test_an_unknown_op_in_the_students_count_is_review(builtin_packs):
    plan = make_plan()
    student = _student_summary().model_copy(update={"coverage": 0.975, "unknown_ops": {"aten._fused_rms_norm": 48}})
    decision = decide(plan, make_compute(student=student, coverage=0.975), builtin_packs, plan.schedule.start)
    assert decision.outcome == "REVIEW" and decision.rule_ids == [RULE]
    (finding,) = _uncounted(decision)
    assert finding.effect == "review" and finding.kind == "engine" and finding.citation is None
    assert "student" in finding.explanation and "llama-3.2-1b" in finding.explanation
    assert "aten._fused_rms_norm (48 calls)" in finding.explanation
    assert finding.observed == "student: 1 uncounted op(s), coverage 0.9750"


def test_the_teacher_is_checked_too_and_formula_errors_count_as_uncounted():
    teacher = _student_summary().model_copy(update={
        "ref": "big-teacher", "coverage": 0.9, "unknown_ops": {"aten._scaled_mm": 1},
        "formula_errors": {"aten._scaled_mm": "ValueError: scale", "aten.weird": "KeyError: x"}})
    (finding,) = uncounted_findings(make_compute(teacher=teacher))
    assert "teacher" in finding.explanation and "big-teacher" in finding.explanation
    assert "aten._scaled_mm (1 call)" in finding.explanation and "aten.weird (formula error)" in finding.explanation


def test_coverage_below_one_without_named_ops_still_fails_closed():
    student = _student_summary().model_copy(update={"coverage": 0.5})
    (finding,) = uncounted_findings(make_compute(student=student))
    assert "none named" in finding.explanation


def test_one_finding_per_model_and_none_for_closed_form_or_parameter_estimates():
    bad = _student_summary().model_copy(update={"coverage": 0.9, "unknown_ops": {"aten.foo": 2}})
    assert [("student" in f.explanation, "teacher" in f.explanation)
            for f in uncounted_findings(make_compute(student=bad, teacher=bad))] == [(True, False), (False, True)]
    closed = _student_summary().model_copy(update={"method": "closed_form", "coverage": 0.0,
                                                    "fallback_reason": "meta-device run failed"})
    assert uncounted_findings(make_compute(student=closed)) == []
    assert uncounted_findings(make_compute(teacher=None)) == []
