"""Builders for plans and compute estimates used by the policy tests (no I/O, no torch)."""

from __future__ import annotations

import copy
import datetime as dt
from typing import Any

from audit.compute.types import Component, ComputeEstimate
from audit.flops.summary import ModelSummary
from audit.plan import Plan

# A 1.2B-parameter Llama-shaped student, 2e10 tokens: 6 N D = 1.44e20 FLOP. The numbers only
# need to be plausible; the policy engine reads the totals below.
BASE_PLAN: dict[str, Any] = {
    "plan_version": 1,
    "name": "scenario",
    "organization": {"name": "Acme", "jurisdictions": ["EU"], "domicile": "EU", "annual_revenue_usd": 2.0e8,
                     "monthly_active_users": 1.0e6},
    "teacher": {"model": "meta-llama/Llama-3.1-8B-Instruct", "access": "weights"},
    "student": {"name": "Acme-Student-1B", "config": "llama-3.2-1b", "init": "scratch"},
    "data": {"tokens": 2.0e10},
    "use": {"purpose": "customer support", "scope": "narrow", "distribution": "internal",
            "commercial": True, "monthly_active_users": 1.0e6},
    "schedule": {"start": dt.date(2026, 12, 1)},
}


def merge(base: dict, overrides: dict) -> dict:
    """Deep-merge ``overrides`` into a copy of ``base``; a None value removes the key."""
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def make_plan(overrides: dict | None = None) -> Plan:
    return Plan.model_validate(merge(BASE_PLAN, overrides or {}))


def _student_summary() -> ModelSummary:
    params = 1.2e9
    return ModelSummary(ref="llama-3.2-1b", architecture="LlamaForCausalLM", params_total=params,
                        params_active=params, params_embedding=2.6e8, train_flops_per_token=6 * params * 1.1,
                        train_flops_per_token_noncausal=6 * params * 1.2, forward_flops_per_token=2 * params * 1.1,
                        forward_flops_per_token_noncausal=2 * params * 1.2,
                        non_matmul_train_flops_per_token=0.02 * params, attention_share=0.09, coverage=1.0,
                        method="counted")


def make_compute(**fields: Any) -> ComputeEstimate:
    """A ComputeEstimate whose policy-relevant figures are given directly.

    Defaults: total 1e21 FLOP; ``update_flops`` equals ``total_flops`` unless given; every other
    figure unknown (None). Pass ``total_flops=None`` to make the total unknown.
    """
    total = fields.pop("total_flops", 1.0e21)
    update = fields.pop("update_flops", total)
    student = _student_summary()
    components = [Component(id="student_training", label="student training", flops=update,
                            method="counted", counts_toward=["cumulative", "parameter_update"])]
    values = dict(seq_len=4096, tokens=2.0e10, components=components, total_flops=total,
                  update_flops=update, six_nd_flops=6 * student.params_active * 2.0e10,
                  params_total=student.params_total, params_active=student.params_active,
                  student=student, coverage=1.0)
    values.update(fields)
    return ComputeEstimate(**values)
