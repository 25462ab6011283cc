"""What a run may spend under an audit, and at what rate: the contract between the signed
compute estimate and the trainer's compute meter. FLOP throughout, 1 multiply-add = 2 FLOP.

``check`` records the budget in the ledger's audit row; ``distill`` meters against it.
"""

from __future__ import annotations

from typing import Any, NamedTuple

class MeterFigures(NamedTuple):
    """What the meter needs from the audit (FLOP, 1 multiply-add = 2 FLOP); ``refusal`` is a
    reason when it cannot run, and then the figures are None."""

    refusal: str | None
    flops_per_token: float | None          # per training token: student training (+ teacher forward)
    budget: float | None
    student_flops_per_token: float | None  # the parameter-update part of flops_per_token


METERED_COMPONENTS = {
    "logits": ("student_training", "teacher_forward"),
    "cached_logits": ("student_training", "teacher_forward"),
    "sequence": ("student_training",),
}
"""Per method, the audit's compute components a training run spends (and the meter charges).
A sequence-level run trains on answers the teacher already wrote: its generation is spent and
metered by ``generate``, not by the trainer."""


def meter_figures(plan, predicate: dict) -> MeterFigures:
    """The meter's figures from the audit's compute estimate.

    FLOP per token = the student's training FLOP per token, plus for logit methods the
    teacher's forward FLOP per token (from the model summaries, else the components divided by
    the audited tokens). Budget = the smaller of the plan's budget.max_flops and the audited
    compute of what the run spends (:data:`METERED_COMPONENTS`), never the audited total: that
    total also holds compute spent elsewhere (a base model's training, the teacher's
    generation), which the run must not get to spend again. The meter stops at the budget
    exactly, so the run never spends more than the audit compared with the thresholds. Unknown
    figures, or a method without a metered training run, refuse (fail closed)."""
    metered_ids = METERED_COMPONENTS.get(plan.method.kind)
    if metered_ids is None:
        return MeterFigures(f"method: {plan.method.kind!r} runs have no compute meter yet", None, None, None)
    compute = predicate.get("compute") or {}
    tokens = compute.get("tokens")
    components = {c.get("id"): c.get("flops") for c in compute.get("components") or [] if isinstance(c, dict)}

    def per_token(summary_key: str, figure: str, component: str):
        value = (compute.get(summary_key) or {}).get(figure)
        if positive_number(value):
            return float(value)
        if positive_number(components.get(component)) and positive_number(tokens):
            return float(components[component]) / float(tokens)
        return None

    student = per_token("student", "train_flops_per_token", "student_training")
    teacher = (per_token("teacher", "forward_flops_per_token", "teacher_forward")
               if "teacher_forward" in metered_ids else 0.0)
    if student is None or teacher is None:
        missing = "student training" if student is None else "teacher forward"
        return MeterFigures(f"compute: the audit has no {missing} FLOP per token, so the compute "
                            "meter cannot run", None, None, None)
    metered = [components.get(c) for c in metered_ids]
    if not all(positive_number(v) for v in metered):
        return MeterFigures("compute: the audit has no figure for the compute this run spends ("
                            + ", ".join(c.replace("_", " ") for c in metered_ids)
                            + "), so the run has no budget", None, None, None)
    candidates = [float(v) for v in (plan.budget.max_flops, sum(metered)) if positive_number(v)]
    return MeterFigures(None, student + teacher, min(candidates), student)


def positive_number(value: Any) -> bool:
    """A finite number > 0 (not a bool, not NaN)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value and value > 0
