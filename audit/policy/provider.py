"""Provider status: who places the student on the market as its provider. Pure.

A student trained from scratch is a new model and its trainer is its provider (``developer``).
A student that starts from a pre-existing model (``student.init`` base or pruned_teacher) is a
modification of that model. Under the Commission's GPAI guidelines (C(2025) 5045, paras 60-64;
points 60-61 in C(2025) 7719) the modifier becomes the provider of the modified model only when
the compute used for the modification is *greater than* one third of the original model's
training compute (``modifier_provider``); otherwise the original provider remains the provider
and the modifier owes none of the provider duties (``modifier_not_provider``). When the
original's compute is unknown the guidelines use one third of 1e23 FLOP, or one third of 1e25
FLOP if the original is a systemic-risk model: a modification between the two cannot be placed
without knowing which, so the status is undecided (None), as it is when the modification's
compute is unknown. Units: FLOP (1 multiply-add = 2 FLOP).
"""

from __future__ import annotations

from typing import Optional

from audit.compute.types import ComputeEstimate
from audit.plan import Plan

FALLBACK_GPAI = 1.0e23 / 3          # one third of the GPAI indicative criterion (para 64)
FALLBACK_SYSTEMIC = 1.0e25 / 3      # one third of the systemic-risk threshold (para 64)


def modification_threshold(compute: ComputeEstimate) -> Optional[float]:
    """One third of the original model's training compute, or None when that is unknown."""
    original = compute.original_model_flops
    return None if original is None else original / 3


MODIFIER_ROLES = frozenset({"modifier_provider", "modifier_not_provider"})


def possible_roles(plan: Plan, compute: ComputeEstimate) -> frozenset[str]:
    """The roles the plan may have: one when decided, both modifier roles when undecided."""
    role = provider_role(plan, compute)
    return MODIFIER_ROLES if role is None else frozenset({role})


def provider_role(plan: Plan, compute: ComputeEstimate) -> Optional[str]:
    """``developer``, ``modifier_provider``, ``modifier_not_provider``, or None (undecided)."""
    if plan.student.init == "scratch":
        return "developer"
    modification = compute.modification_flops
    if modification is None:
        return None
    threshold = modification_threshold(compute)
    if threshold is not None:
        return "modifier_provider" if modification > threshold else "modifier_not_provider"
    if modification > FALLBACK_SYSTEMIC:
        return "modifier_provider"
    if modification <= FALLBACK_GPAI:
        return "modifier_not_provider"
    return None
