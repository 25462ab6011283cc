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
    generation_flops_per_token: float | None = 0.0  # on-policy: the student's forward per sampled position


METERED_COMPONENTS = {
    "logits": ("student_training", "teacher_forward"),
    "cached_logits": ("student_training", "teacher_forward"),
    "sequence": ("student_training",),
    "on_policy": ("student_training", "student_generation", "teacher_scoring"),
}
"""Per method, the audit's compute components a training run spends (and the meter charges).
A sequence-level run trains on answers the teacher already wrote: its generation is spent and
metered by ``generate``, not by the trainer (with ``method.also_logits`` the teacher's forward
over the training samples is the run's too). An on-policy run spends all three of its own: the
student samples, the teacher scores what it sampled, the student trains on it."""


def meter_figures(plan, predicate: dict) -> MeterFigures:
    """The meter's figures from the audit's compute estimate.

    FLOP per token = the student's training FLOP per token (for a ``student.adapter`` plan, the
    adapter's: frozen student, trained adapters), plus for logit methods the teacher's forward
    FLOP per token, and for on-policy runs the teacher's forward over the positions it scores
    (from the model summaries, else the components divided by the tokens they count). On-policy
    runs also get ``generation_flops_per_token``: the student's forward FLOP per position it
    samples (prefill and decode). Budget = the smaller of the plan's budget.max_flops and the
    audited compute of what the run spends (:data:`METERED_COMPONENTS`), never the audited total:
    that total also holds compute spent elsewhere (a base model's training, the teacher's
    generation), which the run must not get to spend again. The meter stops at the budget
    exactly, so the run never spends more than the audit compared with the thresholds. A plan
    with an ``evaluation`` block adds its ``evaluation`` component to what the run spends
    (:func:`evaluation_figures` gives its rate and cap). Unknown figures, or a method without a
    metered training run, refuse (fail closed)."""
    metered_ids = METERED_COMPONENTS.get(plan.method.kind)
    if metered_ids is not None and plan.method.also_logits:  # sequence KD with the teacher's logits too
        metered_ids = metered_ids + ("teacher_forward",)
    if metered_ids is None:
        return MeterFigures(f"method: {plan.method.kind!r} runs have no compute meter yet", None, None, None, None)
    evaluation = getattr(plan, "evaluation", None)
    if evaluation is not None:  # the run spends its evaluations too
        metered_ids = metered_ids + ("evaluation",)
    compute = predicate.get("compute") or {}
    tokens = compute.get("tokens")
    components = {c.get("id"): c.get("flops") for c in compute.get("components") or [] if isinstance(c, dict)}
    rolled = plan.method.student_generated_tokens + plan.method.prompt_tokens

    def per_token(summary_key: str, figure: str, component: str, count=tokens):
        value = (compute.get(summary_key) or {}).get(figure)
        if positive_number(value):
            return float(value)
        if positive_number(components.get(component)) and positive_number(count):
            return float(components[component]) / float(count)
        return None

    def refuse(reason: str) -> MeterFigures:
        return MeterFigures(reason, None, None, None, None)

    adapter = plan.student.adapter is not None
    if adapter:  # never the full model's figure: the student's summary is not what this run trains
        student = per_token("adapter", "train_flops_per_token", "student_training")
    else:
        student = per_token("student", "train_flops_per_token", "student_training")
    teacher, generation = 0.0, 0.0
    if "teacher_forward" in metered_ids:
        teacher = per_token("teacher", "forward_flops_per_token", "teacher_forward")
        if getattr(plan.student, "tokenizer", None) is not None:  # cross-tokenizer: the teacher runs its own tokens
            flops = components.get("teacher_forward")
            teacher = float(flops) / float(tokens) if positive_number(flops) and positive_number(tokens) else None
    if plan.method.kind == "on_policy":
        teacher = per_token("teacher", "forward_flops_per_token", "teacher_scoring", rolled)
        generation = per_token("adapter" if adapter else "student", "forward_flops_per_token", "student_generation",
                               rolled)
    for value, what in ((student, "adapter training" if adapter else "student training"),
                        (teacher, "teacher forward"), (generation, "student sampling")):
        if value is None:
            return refuse(f"compute: the audit has no {what} FLOP per token, so the compute meter cannot run")
    metered = [components.get(c) for c in metered_ids]
    if not all(positive_number(v) for v in metered):
        return refuse("compute: the audit has no figure for the compute this run spends ("
                      + ", ".join(c.replace("_", " ") for c in metered_ids) + "), so the run has no budget")
    candidates = [float(v) for v in (plan.budget.max_flops, sum(metered)) if positive_number(v)]
    return MeterFigures(None, student + teacher, min(candidates), student, generation)


def evaluation_figures(plan, predicate: dict) -> tuple[float | None, float | None]:
    """(FLOP per evaluated position, the cap ``evaluation.tokens``) of a plan with an
    ``evaluation`` block: the audit's evaluation component / its tokens; (None, None) without
    the block or the figure (the run may then not evaluate under a meter)."""
    evaluation = getattr(plan, "evaluation", None)
    components = {c.get("id"): c.get("flops") for c in (predicate.get("compute") or {}).get("components") or []
                  if isinstance(c, dict)}
    if evaluation is None or not positive_number(components.get("evaluation")):
        return None, None
    return float(components["evaluation"]) / float(evaluation.tokens), float(evaluation.tokens)


def positive_number(value: Any) -> bool:
    """A finite number > 0 (not a bool, not NaN)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value and value > 0
