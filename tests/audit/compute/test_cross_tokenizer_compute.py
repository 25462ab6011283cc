"""A student with its own tokenizer (``student.tokenizer``): the teacher's forward is counted on
the teacher's tokens of the same text (the manifest's second count), never on the student's, and
the meter charges that rate; without the count the teacher's forward is a missing fact."""

from __future__ import annotations

import json

import pytest

from audit.compute.estimate import build_estimate, cross_tokenizer_rows, teacher_row_tokens
from audit.compute.run_budget import meter_figures
from audit.compute.tables import load_reference_tables
from audit.errors import InputError
from audit.plan import Plan
from audit.policy.conditions import PlanFacts
from audit.policy.facts import read_manifest_facts

TABLES = load_reference_tables()
TOKENS, SEQ_LEN = 1.0e6, 64


def plan(kind="logits", tokenizer="/abs/student-tokenizer", **method) -> Plan:
    student = {"name": "S", "config": "llama-3.2-1b"}
    if tokenizer:
        student["tokenizer"] = tokenizer
    return Plan.model_validate({
        "plan_version": 1, "name": "p", "organization": {"name": "O", "jurisdictions": ["EU"]},
        "teacher": {"model": "t", "access": "weights", "parameters": 1e9}, "student": student,
        "data": {"tokens": TOKENS, "seq_len": SEQ_LEN},
        "method": {"kind": kind, **method},
        "use": {"purpose": "x", "scope": "narrow", "distribution": "internal"}, "schedule": {"start": "2026-12-01"}})


def summary(train=6e9, forward=2e9):
    from audit.flops.summary import ModelSummary

    return ModelSummary(ref="m", architecture="X", params_total=1e9, params_active=1e9, params_embedding=0,
                        train_flops_per_token=train, train_flops_per_token_noncausal=train,
                        forward_flops_per_token=forward, forward_flops_per_token_noncausal=forward,
                        non_matmul_train_flops_per_token=0, attention_share=0, coverage=1.0, method="counted")


def test_the_teacher_forward_is_counted_on_the_teachers_padded_rows():
    facts = PlanFacts(manifest_tokens=1000, manifest_teacher_tokens=1500)   # the teacher needs 1.5x the tokens
    row, ratio = cross_tokenizer_rows(plan(), facts)
    assert row == teacher_row_tokens(SEQ_LEN, 1000, 1500) and row > 1.5 * SEQ_LEN
    estimate = build_estimate(plan(), summary(), summary(forward=1e10), TABLES, teacher_tokens_per_token=ratio)
    teacher = next(c for c in estimate.components if c.id == "teacher_forward")
    assert teacher.flops == pytest.approx(1e10 * TOKENS * row / SEQ_LEN)
    assert estimate.teacher_tokens_per_token == ratio
    assert any("its own tokens" in a for a in teacher.assumptions)
    # the meter charges the same rate per student token
    predicate = {"compute": estimate.model_dump(mode="json")}
    figures = meter_figures(plan(), predicate)
    assert figures.refusal is None
    assert figures.flops_per_token == pytest.approx(6e9 + 1e10 * row / SEQ_LEN)


def test_an_evaluation_counts_the_teachers_own_positions_too():
    facts = PlanFacts(manifest_tokens=1000, manifest_teacher_tokens=1500)
    row, ratio = cross_tokenizer_rows(plan(), facts)
    evaluated = Plan.model_validate({**plan().model_dump(), "evaluation": {"tokens": 4096}})
    estimate = build_estimate(evaluated, summary(), summary(forward=1e10), TABLES, teacher_tokens_per_token=ratio)
    evaluation = next(c for c in estimate.components if c.id == "evaluation")
    assert evaluation.flops == pytest.approx((2e9 + 1e10 * row / SEQ_LEN) * 4096)
    unknown = build_estimate(evaluated, summary(), summary(forward=1e10), TABLES, teacher_tokens_per_token=None)
    assert next(c for c in unknown.components if c.id == "evaluation").flops is None


def test_without_the_teachers_count_the_teacher_forward_is_unknown_and_the_meter_refuses():
    ratio = cross_tokenizer_rows(plan(), PlanFacts(manifest_tokens=1000))[1]
    assert ratio is None
    estimate = build_estimate(plan(), summary(), summary(forward=1e10), TABLES, teacher_tokens_per_token=ratio)
    assert next(c for c in estimate.components if c.id == "teacher_forward").flops is None
    assert estimate.total_flops is None
    assert any("teacher's token count" in m for m in estimate.missing_facts)
    assert meter_figures(plan(), {"compute": estimate.model_dump(mode="json")}).refusal is not None


def test_a_shared_tokenizer_plan_is_counted_as_before():
    assert cross_tokenizer_rows(plan(tokenizer=None), PlanFacts(manifest_tokens=1000, manifest_teacher_tokens=9)) == (
        None, None)
    estimate = build_estimate(plan(tokenizer=None), summary(), summary(forward=1e10), TABLES)
    assert next(c for c in estimate.components if c.id == "teacher_forward").flops == 1e10 * TOKENS


@pytest.mark.parametrize("method", [{"kind": "cached_logits"},
                                    {"kind": "on_policy", "student_generated_tokens": 10},
                                    {"kind": "sequence", "teacher_generated_tokens": 10, "also_logits": True}])
def test_methods_that_need_one_vocabulary_refuse_a_student_tokenizer(method):
    with pytest.raises(ValueError, match="student.tokenizer is set"):
        plan(**method)
    plan(tokenizer=None, **method)  # fine with one tokenizer
    plan(kind="sequence", teacher_generated_tokens=10)  # sequence KD trains on text: any tokenizer


def test_the_manifest_gives_the_teachers_count(tmp_path):
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"total_tokens": 1000, "teacher_tokenization": {"total_tokens": 1500}}))
    assert read_manifest_facts(str(path), source="plan.yaml").manifest_teacher_tokens == 1500
    path.write_text(json.dumps({"total_tokens": 1000, "teacher_tokenization": {"total_tokens": -3}}))
    with pytest.raises(InputError, match="teacher_tokenization.total_tokens"):
        read_manifest_facts(str(path), source="plan.yaml")
