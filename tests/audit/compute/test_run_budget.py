"""``meter_figures`` for on-policy runs and adapter students: what each step is charged per
position and what the run may spend, read from the audit's compute; unknown figures refuse."""

from __future__ import annotations

import pytest

from audit.compute.run_budget import METERED_COMPONENTS, evaluation_figures, meter_figures
from audit.plan import Plan

STUDENT_TRAIN, STUDENT_FWD, TEACHER_FWD = 6.0e5, 2.0e5, 9.0e5
ADAPTER_TRAIN, ADAPTER_FWD = 4.1e5, 2.1e5
TOKENS, PROMPT, SAMPLED = 4096.0, 1000.0, 3000.0


def plan(kind="on_policy", adapter=False, max_flops=None) -> Plan:
    method = {"kind": kind}
    if kind == "on_policy":
        method.update(student_generated_tokens=SAMPLED, prompt_tokens=PROMPT)
    student = {"name": "S", "config": "llama-3.2-1b"}
    if adapter:
        student["adapter"] = {"kind": "lora", "rank": 8, "target_modules": ["q_proj", "v_proj"]}
    return Plan.model_validate({
        "plan_version": 1, "name": "p", "organization": {"name": "O", "jurisdictions": ["EU"]},
        "teacher": {"model": "t", "access": "weights", "parameters": 1e9}, "student": student,
        "data": {"tokens": TOKENS, "seq_len": 32}, "method": method,
        "use": {"purpose": "x", "scope": "narrow", "distribution": "internal"}, "schedule": {"start": "2026-12-01"},
        "budget": {"max_flops": max_flops}})


def compute(adapter=False, summaries=True) -> dict:
    train, fwd = (ADAPTER_TRAIN, ADAPTER_FWD) if adapter else (STUDENT_TRAIN, STUDENT_FWD)
    block = {"tokens": TOKENS, "components": [
        {"id": "student_training", "flops": train * TOKENS},
        {"id": "student_generation", "flops": fwd * (PROMPT + SAMPLED)},
        {"id": "teacher_scoring", "flops": TEACHER_FWD * (PROMPT + SAMPLED)}]}
    if summaries:
        block["student"] = {"train_flops_per_token": STUDENT_TRAIN, "forward_flops_per_token": STUDENT_FWD}
        block["teacher"] = {"forward_flops_per_token": TEACHER_FWD}
        if adapter:
            block["adapter"] = {"train_flops_per_token": ADAPTER_TRAIN, "forward_flops_per_token": ADAPTER_FWD}
    return block


def audited_spend(adapter=False) -> float:
    return sum(c["flops"] for c in compute(adapter)["components"])


@pytest.mark.parametrize("summaries", [True, False], ids=["summaries", "components"])
def test_on_policy_runs_are_charged_for_sampling_scoring_and_training(summaries):
    figures = meter_figures(plan(), {"compute": compute(summaries=summaries)})
    assert figures.refusal is None
    assert figures.flops_per_token == pytest.approx(STUDENT_TRAIN + TEACHER_FWD)
    assert figures.student_flops_per_token == pytest.approx(STUDENT_TRAIN)
    assert figures.generation_flops_per_token == pytest.approx(STUDENT_FWD)
    assert figures.budget == pytest.approx(audited_spend())
    assert METERED_COMPONENTS["on_policy"] == ("student_training", "student_generation", "teacher_scoring")


def test_the_plans_budget_caps_an_on_policy_run():
    assert meter_figures(plan(max_flops=1e9), {"compute": compute()}).budget == 1e9


def test_an_adapter_student_is_charged_the_adapters_rates_never_the_full_models():
    figures = meter_figures(plan(adapter=True), {"compute": compute(adapter=True)})
    assert figures.student_flops_per_token == ADAPTER_TRAIN
    assert figures.flops_per_token == ADAPTER_TRAIN + TEACHER_FWD
    assert figures.generation_flops_per_token == ADAPTER_FWD
    logits = meter_figures(plan("logits", adapter=True), {"compute": {
        "tokens": TOKENS, "student": {"train_flops_per_token": STUDENT_TRAIN},
        "adapter": {"train_flops_per_token": ADAPTER_TRAIN}, "teacher": {"forward_flops_per_token": TEACHER_FWD},
        "components": [{"id": "student_training", "flops": ADAPTER_TRAIN * TOKENS},
                       {"id": "teacher_forward", "flops": TEACHER_FWD * TOKENS}]}})
    assert logits.flops_per_token == ADAPTER_TRAIN + TEACHER_FWD and logits.generation_flops_per_token == 0.0


def test_unknown_figures_refuse():
    block = compute()
    block["components"][1]["flops"] = None
    del block["student"]["forward_flops_per_token"]
    refusal = meter_figures(plan(), {"compute": block}).refusal
    assert "student sampling" in refusal
    block = compute()
    block["components"][2]["flops"] = None
    assert "no budget" in meter_figures(plan(), {"compute": block}).refusal
    block = compute(adapter=True)
    del block["adapter"]
    block["components"][0]["flops"] = None  # only the full model's figure is left: not used for an adapter
    assert "adapter training" in meter_figures(plan(adapter=True), {"compute": block}).refusal


def test_a_logit_run_has_no_sampling_rate():
    block = compute()
    block["components"].append({"id": "teacher_forward", "flops": TEACHER_FWD * TOKENS})
    refusal, per_token, budget, student, sampling = meter_figures(plan("logits"), {"compute": block})
    assert refusal is None and per_token > student > 0 and budget > 0 and sampling == 0.0


def test_an_audited_evaluation_joins_the_budget_with_its_rate_and_cap():
    """Issue 29: a plan with evaluation.tokens: the run may spend the evaluation component too,
    charged per evaluated position at its audited rate, up to the cap."""
    from audit.plan import Evaluation

    audited = plan("logits").model_copy(update={"evaluation": Evaluation(tokens=1000.0)})
    block = {"tokens": TOKENS, "components": [
        {"id": "student_training", "flops": STUDENT_TRAIN * TOKENS},
        {"id": "teacher_forward", "flops": TEACHER_FWD * TOKENS},
        {"id": "evaluation", "flops": (STUDENT_FWD + TEACHER_FWD) * 1000.0}]}
    figures = meter_figures(audited, {"compute": block})
    assert figures.refusal is None
    assert figures.budget == pytest.approx((STUDENT_TRAIN + TEACHER_FWD) * TOKENS + (STUDENT_FWD + TEACHER_FWD) * 1000)
    rate, cap = evaluation_figures(audited, {"compute": block})
    assert rate == pytest.approx(STUDENT_FWD + TEACHER_FWD) and cap == 1000
    plain = meter_figures(plan("logits"), {"compute": block})
    assert evaluation_figures(plan("logits"), {"compute": block}) == (None, None) and plain.budget == pytest.approx((STUDENT_TRAIN + TEACHER_FWD) * TOKENS)
    del block["components"][2]                                   # audited evaluation with no figure: refused
    assert "evaluation" in meter_figures(audited, {"compute": block}).refusal
