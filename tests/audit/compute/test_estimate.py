"""Run-level compute: which components exist, what they cost and which totals they join."""

from pathlib import Path

import pytest

from audit.compute.estimate import build_estimate, estimate_plan, two_significant_figures
from audit.compute.tables import load_reference_tables
from audit.flops.summary import ModelSummary
from audit.plan import Plan, load_plan

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


TABLES = load_reference_tables()


def summary(train=6e9, forward=2e9, params=1e9):
    return ModelSummary(ref="m", architecture="X", params_total=params, params_active=params,
                        params_embedding=0, train_flops_per_token=train,
                        train_flops_per_token_noncausal=train, forward_flops_per_token=forward,
                        forward_flops_per_token_noncausal=forward, non_matmul_train_flops_per_token=0,
                        attention_share=0, coverage=1.0, method="counted")


def plan(**overrides):
    base = load_plan(EXAMPLES / "online-logit-kd.yaml").plan.model_dump()
    del base["teachers"]  # the one-teacher form: an override of teacher is the plan's teacher
    for dotted, value in overrides.items():
        section, _, key = dotted.partition("__")
        if key:
            base[section] = {**(base[section] or {}), key: value}
        else:
            base[section] = value
    return Plan.model_validate(base)


def by_id(estimate):
    return {c.id: c for c in estimate.components}


def test_online_logit_kd_components_and_totals():
    p = plan(data__tokens=1e9, data__epochs=2)
    e = build_estimate(p, summary(), summary(forward=1e10), TABLES)
    comps = by_id(e)
    assert comps["student_training"].flops == 6e9 * 2e9
    assert comps["teacher_forward"].flops == 1e10 * 2e9          # online: every epoch
    assert e.total_flops == 6e9 * 2e9 + 1e10 * 2e9
    assert e.update_flops == 6e9 * 2e9                           # teacher forward left out
    assert e.six_nd_flops == 6 * 1e9 * 2e9
    assert e.modification_flops is None


def test_cached_logits_run_the_teacher_once():
    p = plan(data__tokens=1e9, data__epochs=3, method__kind="cached_logits")
    e = build_estimate(p, summary(), summary(forward=1e10), TABLES)
    assert by_id(e)["teacher_forward"].flops == 1e10 * 1e9


@pytest.mark.parametrize("k, dtype, per_token", [(64, "float16", 388), (64, "bfloat16", 388), (32, "float32", 260)])
def test_cached_logits_state_the_size_of_their_store(k, dtype, per_token):
    """k ids (4 bytes) + k log-probabilities + a 4-byte tail per audited token; the trainer's
    cache_size takes the same figure (tests/distill/train/test_teacher_cache.py checks it on disk)."""
    from distill.train.teacher_cache import cache_size

    p = plan(data__tokens=1e9, data__epochs=3, method={"kind": "cached_logits", "cache_top_k": k, "cache_dtype": dtype})
    store = build_estimate(p, summary(), summary(forward=1e10), TABLES).logit_cache
    assert (store.top_k, store.dtype, store.bytes_per_token) == (k, dtype, per_token)
    assert store.tokens == 1e9 and store.total_bytes == per_token * 1e9     # one pass, not per epoch
    assert cache_size(1000, k, dtype).bytes_per_token == per_token
    assert build_estimate(plan(), summary(), summary(), TABLES).logit_cache is None


def test_sequence_kd_counts_discarded_and_prompt_tokens():
    p = plan(method={"kind": "sequence", "teacher_generated_tokens": 5e9, "prompt_tokens": 1e9})
    e = build_estimate(p, summary(), summary(forward=1e10), TABLES)
    gen = by_id(e)["teacher_generation"]
    assert gen.flops == 1e10 * 6e9 and gen.counts_toward == ["cumulative"]


def test_public_synthetic_data_is_excluded_from_cumulative():
    p = plan(method={"kind": "sequence", "teacher_generated_tokens": 5e9, "synthetic_data_public": True})
    e = build_estimate(p, summary(), summary(forward=1e10), TABLES)
    assert by_id(e)["teacher_generation"].counts_toward == []
    assert e.total_flops == by_id(e)["student_training"].flops


def test_api_teacher_with_declared_parameters_uses_two_flop_per_parameter():
    p = plan(teacher={"model": "gpt-4o", "access": "api", "parameters": 2e11})
    e = build_estimate(p, summary(), None, TABLES)
    assert by_id(e)["teacher_forward"].flops == 2 * 2e11 * p.data.tokens
    assert by_id(e)["teacher_forward"].method == "parameters_estimate"


def test_unknown_teacher_size_leaves_total_unknown_and_names_the_fact():
    p = plan(teacher={"model": "gpt-4o", "access": "api"})
    e = build_estimate(p, summary(), None, TABLES)
    assert e.total_flops is None and e.notification_figure is None
    assert any("teacher" in fact for fact in e.missing_facts)


def test_base_initialised_student_adds_published_base_training():
    p = plan(student={"name": "Llama-X", "config": "llama-3.1-8b", "init": "base",
                      "base_model": "meta-llama/Llama-3.1-8B"})
    e = build_estimate(p, summary(), summary(forward=1e10), TABLES)
    base = by_id(e)["base_model_training"]
    assert base.flops == 7.5e23 and base.counts_toward == ["cumulative"]
    assert e.original_model_flops == 7.5e23
    assert e.modification_flops == e.update_flops
    assert e.total_flops == pytest.approx(e.update_flops + by_id(e)["teacher_forward"].flops + 7.5e23)


def test_unpublished_base_is_a_missing_fact():
    p = plan(student={"name": "S", "config": "llama-3.2-1b", "init": "base", "base_model": "acme/secret-base"})
    e = build_estimate(p, summary(), summary(), TABLES)
    assert e.total_flops is None and e.original_model_flops is None
    assert any("acme/secret-base" in fact for fact in e.missing_facts)


def test_hardware_cross_check_uses_dense_peak_and_flags_thirty_percent():
    p = plan(hardware={"accelerator": "H100-SXM", "count": 1, "hours": 1, "utilization": 0.5})
    executed = 989.4e12 * 3600 * 0.5
    student = summary(train=executed / p.data.tokens)
    e = build_estimate(p.model_copy(update={"method": p.method.model_copy(update={"kind": "sequence", "teacher_generated_tokens": 1})}),
                       student, summary(forward=0.0), TABLES)
    assert e.hardware.ratio == pytest.approx(1.0)
    assert e.hardware.outside_tolerance is False
    e2 = build_estimate(p, summary(train=executed / p.data.tokens * 2), summary(forward=0.0), TABLES)
    assert e2.hardware.outside_tolerance is True


def test_unknown_accelerator_is_said_not_guessed():
    p = plan(hardware={"accelerator": "Quantum-9000", "count": 1, "hours": 1})
    e = build_estimate(p, summary(), summary(), TABLES)
    assert e.hardware.peak_flops_per_s is None and "unknown accelerator" in e.hardware.note


def test_planned_energy_is_accelerator_hours_times_board_power_times_pue():
    p = plan(hardware={"accelerator": "H100-SXM", "count": 8, "hours": 10, "pue": 1.25})
    energy = build_estimate(p, summary(), summary(), TABLES).hardware.planned_energy
    # 80 accelerator-hours x 700 W = 56 kWh at the boards; x 1.25 = 70 kWh
    assert energy["status"] == "estimated" and energy["board_power_w"] == 700
    assert energy["joules"] == pytest.approx(70 * 3.6e6)
    own = plan(hardware={"accelerator": "Quantum-9000", "count": 2, "hours": 3, "power_w": 500, "pue": 1.0})
    assert build_estimate(own, summary(), summary(), TABLES).hardware.planned_energy["joules"] == pytest.approx(
        2 * 3 * 500 * 3600)   # the plan's own power for an accelerator the table does not know
    unknown = plan(hardware={"accelerator": "Quantum-9000", "count": 1, "hours": 1})
    assert build_estimate(unknown, summary(), summary(), TABLES).hardware.planned_energy is None


def test_cost_and_two_significant_figures():
    e = build_estimate(plan(), summary(), summary(), TABLES)
    assert e.cost_usd == 64 * 120 * 2.5
    assert two_significant_figures(2.34e25) == "2.3e25"
    assert two_significant_figures(9.96e22) == "1.0e23"


def test_estimate_plan_counts_the_bundled_models():
    e = estimate_plan(load_plan(EXAMPLES / "online-logit-kd.yaml"), TABLES)
    assert e.student.method == "counted" and e.teacher.method == "counted"
    assert e.coverage == 1.0
    # counted training FLOP sit above 6·N·D by the attention and lm_head share, not wildly
    assert 1.0 < by_id(e)["student_training"].flops / e.six_nd_flops < 1.3


@pytest.mark.parametrize("kind, teacher_runs", [("logits", True), ("cached_logits", False)])
def test_evaluation_forwards_are_counted_in_the_total(kind, teacher_runs):
    """Issue 29: the plan's evaluation block adds its forwards (student, and the online teacher)."""
    p = plan(data__tokens=1e9, method__kind=kind, evaluation={"tokens": 5e6})
    e = build_estimate(p, summary(), summary(forward=1e10), TABLES)
    without = build_estimate(plan(data__tokens=1e9, method__kind=kind), summary(), summary(forward=1e10), TABLES)
    evaluation = by_id(e)["evaluation"]
    assert evaluation.flops == (2e9 + (1e10 if teacher_runs else 0)) * 5e6
    assert e.total_flops == without.total_flops + evaluation.flops
    assert e.update_flops == without.update_flops                # forwards only: no parameter update
    assert "evaluation" not in by_id(without)
