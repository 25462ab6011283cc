"""A planned distillation run's compute, component by component (FLOP, 1 multiply-add = 2).

Components and which totals they join (EU GPAI guidelines, Annex A.1, ¶118-122):

* student training: forward + backward per token x tokens x epochs. Cumulative, parameter
  update, and modification (when the student starts from a pre-existing model). A student that
  trains adapters (``student.adapter``, LoRA) is counted with its weights frozen: forward and
  input-gradient backward of the frozen model, forward and backward of the adapters
  (``audit.flops.adapter``); its sampling (on-policy) runs the adapters too.
* teacher forward for logit distillation: forward per token x tokens (x epochs when online;
  once when logits are cached). Cumulative (non-public targets); whether it "directly
  contributes to parameter updates" is ambiguous, so it is left out of that total and the
  ambiguity is stated.
* teacher generation for sequence distillation: prompt prefill + every generated token,
  discarded samples included. Cumulative unless the synthetic data is public (¶122).
* on-policy distillation: the student samples its own answers (prefill + every sampled token,
  discarded ones included) and the teacher scores those same tokens with a forward pass. Both
  cumulative; neither is counted as a parameter update (the student's training step is).
* the pre-existing model's own training, when its weights initialise the student (¶121):
  cumulative only.
"""

from __future__ import annotations

import math

from audit.compute.types import (AdapterSummary, Component, ComputeEstimate, HardwareCheck, LogitCache,
                                 logit_cache_bytes_per_token)
from audit.flops.summary import ModelSummary
from audit.compute.tables import ReferenceTables
from audit.numbers import sci, short_sci
from audit.flops.summary import summarize_model
from audit.plan import LoadedPlan, Plan

EU_TOLERANCE = 0.30     # the guidelines accept estimates within 30%
UNCERTAINTY = {         # relative half-width of each method's band
    "counted": 0.05,    # exact op count; residue: non-matmul ops, token count, padding
    "closed_form": 0.15,
    "parameters_estimate": 0.5,
    "published": 0.30,
}


def estimate_plan(loaded: LoadedPlan, tables: ReferenceTables, *, use_cache: bool = True,
                  facts=None) -> ComputeEstimate:
    """The compute estimate of a loaded plan: counts its models (I/O: configs and the count
    cache), then :func:`build_estimate`. ``facts``: the plan's :class:`audit.policy.conditions.
    PlanFacts` (a cross-tokenizer plan reads the manifest's two token counts from them)."""
    plan, source = loaded.plan, str(loaded.path)
    seq_len = plan.data.seq_len
    teacher_len, ratio = cross_tokenizer_rows(plan, facts)
    # the configs as load_plan read them: the bytes counted are the bytes the audit signs
    shape = dict(source_len=plan.data.source_len, document_tokens=plan.data.mean_document_tokens)
    student = summarize_model(loaded.student_config, seq_len, **shape, source=source, field="student.config",
                              use_cache=use_cache)
    teacher = (summarize_model(loaded.teacher_config, teacher_len or seq_len, **shape, source=source,
                               field="teacher.config", use_cache=use_cache)
               if loaded.teacher_config is not None else None)
    adapter = None
    if plan.student.adapter is not None:
        from audit.flops.adapter import summarize_adapter

        adapter = summarize_adapter(loaded.student_config, seq_len, plan.student.adapter, source=source, **shape)
    return build_estimate(plan, student, teacher, tables, adapter=adapter, teacher_tokens_per_token=ratio)


def is_cross_tokenizer(plan: Plan) -> bool:
    """Logit distillation of a student with its own tokenizer (``student.tokenizer``)."""
    return plan.student.tokenizer is not None and plan.method.kind == "logits"


def cross_tokenizer_rows(plan: Plan, facts) -> tuple[int | None, float | None]:
    """(the teacher's row length, teacher tokens per student token) of a cross-tokenizer plan,
    from the manifest's two counts of the same text (:func:`teacher_row_tokens`); (None, None)
    for any other plan or when the manifest does not give both counts."""
    student = getattr(facts, "manifest_tokens", None)
    teacher = getattr(facts, "manifest_teacher_tokens", None)
    if not is_cross_tokenizer(plan) or not student or not teacher:
        return None, None
    row = teacher_row_tokens(plan.data.seq_len, student, teacher)
    return row, row / plan.data.seq_len


def build_estimate(plan: Plan, student: ModelSummary, teacher: ModelSummary | None,
                   tables: ReferenceTables, *, adapter: AdapterSummary | None = None,
                   teacher_tokens_per_token: float | None = None) -> ComputeEstimate:
    """Pure: the estimate from a plan, the per-token counts of its models (and of the student
    with its adapter, for a plan with ``student.adapter``) and the reference tables (no I/O, no
    clock). ``teacher_tokens_per_token``: a cross-tokenizer plan's (:func:`cross_tokenizer_rows`);
    without it such a plan's teacher forward is unknown."""
    tokens = plan.data.tokens * plan.data.epochs
    missing: list[str] = []
    if plan.student.adapter is not None and (adapter is None or adapter.train_flops_per_token is None):
        why = f" ({adapter.failure})" if adapter is not None and adapter.failure else ""
        missing.append(f"student.adapter: the training FLOP per token of the student with its adapter{why}")
    components = [_student_training(student, tokens, plan, adapter)]

    teacher_forward, teacher_params = _teacher_forward_per_token(plan, teacher)
    if teacher_forward is None:  # every method needs the teacher's forward passes
        missing.append("teacher.config or teacher.parameters (the teacher's size)")
    if is_cross_tokenizer(plan):
        if teacher_tokens_per_token is None:
            missing.append("the teacher's token count of the training text (a data.manifest from flopgate data "
                           "prepare --teacher-tokenizer: student.tokenizer differs from the teacher's)")
        components.append(_teacher_logits(plan, tokens, teacher_forward, teacher, teacher_tokens_per_token))
    elif plan.method.kind in ("logits", "cached_logits"):
        components.append(_teacher_logits(plan, tokens, teacher_forward, teacher))
    elif plan.method.kind == "on_policy":
        components += _on_policy(plan, student, teacher_forward, teacher, adapter)
    else:
        components.append(_teacher_generation(plan, teacher_forward, teacher))
        if plan.method.also_logits:  # the teacher also runs over every training sample
            components.append(_teacher_logits(plan, tokens, teacher_forward, teacher))

    if plan.evaluation is not None:
        components.append(_evaluation(plan, student, teacher_forward, adapter,
                                      teacher_tokens_per_token if is_cross_tokenizer(plan) else 1.0))

    original_id, original = _original_model(plan, tables)
    if plan.student.init != "scratch":
        flops = original.training_flops if original else None
        if original is None:
            missing.append(f"published training compute of {original_id}")
        components.append(Component(
            id="base_model_training", label=f"training of {original_id}, whose weights initialise the student",
            flops=flops, method="published" if original else "unknown", counts_toward=["cumulative"],
            assumptions=[f"{original.kind} figure: {original.source.url}" if original else
                         "not in the published-compute table; supply it or expect REVIEW"]))

    total = _sum(c for c in components if "cumulative" in c.counts_toward)
    update = _sum(c for c in components if "parameter_update" in c.counts_toward)
    modification = update if plan.student.init != "scratch" else None
    low, high = _band(components)
    teacher_published = tables.find_published(plan.teacher.model)
    return ComputeEstimate(
        seq_len=plan.data.seq_len, tokens=tokens, components=components,
        total_flops=total, update_flops=update, modification_flops=modification,
        original_model=original_id,
        original_model_flops=original.training_flops if original else None,
        original_model_source=original.source.url if original else None,
        six_nd_flops=6.0 * student.params_active * tokens,
        params_total=student.params_total, params_active=student.params_active,
        student=student, adapter=adapter if plan.student.adapter is not None else None, teacher=teacher,
        teacher_tokens_per_token=teacher_tokens_per_token if is_cross_tokenizer(plan) else None,
        logit_cache=_logit_cache(plan),
        teacher_params_estimate=teacher_params,
        teacher_training_flops=teacher_published.training_flops if teacher_published else None,
        teacher_training_source=teacher_published.source.url if teacher_published else None,
        hardware=_hardware_check(plan, components, tables),
        uncertainty_low=low, uncertainty_high=high,
        notification_figure=two_significant_figures(total),
        cost_usd=(plan.hardware.count * plan.hardware.hours * plan.hardware.price_per_hour_usd
                  if plan.hardware and plan.hardware.price_per_hour_usd is not None else None),
        coverage=min([m.coverage for m in (student, teacher) if m is not None]
                     + ([adapter.coverage] if adapter is not None and adapter.coverage is not None else [])),
        missing_facts=missing,
    )


def _logit_cache(plan: Plan) -> LogitCache | None:
    """The cached targets' size for a ``cached_logits`` plan (one teacher pass over data.tokens)."""
    if plan.method.kind != "cached_logits":
        return None
    per_token = logit_cache_bytes_per_token(plan.method.cache_top_k, plan.method.cache_dtype)
    return LogitCache(top_k=plan.method.cache_top_k, dtype=plan.method.cache_dtype, bytes_per_token=per_token,
                      tokens=plan.data.tokens, total_bytes=per_token * plan.data.tokens)


def two_significant_figures(flops: float | None) -> str | None:
    """``2.34e25`` -> ``"2.3e25"``: the EU notification's format."""
    return None if flops is None else sci(flops, 2)


def _student_training(student: ModelSummary, tokens: float, plan: Plan,
                      adapter: AdapterSummary | None = None) -> Component:
    buckets = ["cumulative", "parameter_update"] + (["modification"] if plan.student.init != "scratch" else [])
    declared = plan.student.adapter
    if declared is not None:
        per_token = adapter.train_flops_per_token if adapter is not None else None
        what = (f"LoRA rank {declared.rank} on {', '.join(declared.target_modules)}; the student's weights frozen: "
                "its forward and input-gradient backward, the adapters' forward and backward")
        return Component(
            id="student_training", label="student training (adapters on the frozen student)",
            flops=per_token * tokens if per_token is not None else None,
            method="counted" if per_token is not None else "unknown", counts_toward=buckets,
            assumptions=([f"{short_sci(per_token, 4)} FLOP/token at {plan.data.seq_len} tokens per sequence x "
                          f"{short_sci(tokens, 4)} tokens ({plan.data.epochs:g} epochs)"] if per_token is not None
                         else [f"not counted: {adapter.failure if adapter is not None else 'no adapter count'}"])
            + [what, f"full training would be {short_sci(student.train_flops_per_token, 4)} FLOP/token",
               "attention over causal pairs; activation recomputation not counted"])
    return Component(
        id="student_training", label="student training (forward + backward)",
        flops=student.train_flops_per_token * tokens, method=student.method, counts_toward=buckets,
        assumptions=[f"{short_sci(student.train_flops_per_token, 4)} FLOP/token at {plan.data.seq_len} tokens "
                     f"per sequence x {short_sci(tokens, 4)} tokens ({plan.data.epochs:g} epochs)",
                     "attention over causal pairs; activation recomputation not counted"]
        + ([f"closed form: {student.fallback_reason}"] if student.fallback_reason else []))


def _teacher_forward_per_token(plan: Plan, teacher: ModelSummary | None) -> tuple[float | None, float | None]:
    """Forward FLOP per token of the teacher: counted from its config, else 2 x parameters."""
    if teacher is not None:
        return teacher.forward_flops_per_token, None
    if plan.teacher.parameters:
        return 2.0 * plan.teacher.parameters, plan.teacher.parameters
    return None, None


def _teacher_method(teacher: ModelSummary | None, per_token: float | None) -> str:
    if per_token is None:
        return "unknown"
    return teacher.method if teacher is not None else "parameters_estimate"


def teacher_row_tokens(seq_len: int, student_tokens: int, teacher_tokens: int) -> int:
    """Cross-tokenizer logit distillation: the teacher's row length (tokens, padding included) for
    a student row of ``seq_len`` tokens, when the same text is ``student_tokens`` tokens to the
    student and ``teacher_tokens`` to the teacher (the manifest's counts). The expected length e =
    seq_len x teacher/student, plus 4 sqrt(e) + 1 for rows denser than the mean (a longer span is
    cut by the trainer). The trainer runs the teacher on rows of exactly this length, and the
    audit counts them: one rule for both (``distill.train.cross_tokenizer``)."""
    if seq_len <= 0 or student_tokens <= 0 or teacher_tokens <= 0:
        raise ValueError("expected positive token counts")
    expected = seq_len * teacher_tokens / student_tokens
    return math.ceil(expected + 4 * math.sqrt(expected)) + 1


def _teacher_logits(plan: Plan, tokens: float, per_token: float | None, teacher,
                    teacher_tokens_per_token: float | None = 1.0) -> Component:
    """The teacher's forward over the training text; a cross-tokenizer plan's runs on the
    teacher's own tokens, ``teacher_tokens_per_token`` per student token (None: unknown)."""
    cached = plan.method.kind == "cached_logits"
    passes = plan.data.tokens if cached else tokens
    cross = [] if teacher_tokens_per_token == 1.0 else [
        f"the teacher reads its own tokens of the same text: {teacher_tokens_per_token:.6g} per student token "
        "(its padded rows over data.seq_len, from the manifest's two token counts)"
        if teacher_tokens_per_token is not None else "the teacher's token count of the text is unknown"]
    known = per_token is not None and teacher_tokens_per_token is not None
    return Component(
        id="teacher_forward", label="teacher forward passes producing the targets",
        flops=per_token * passes * teacher_tokens_per_token if known else None,
        method=_teacher_method(teacher, per_token), counts_toward=["cumulative"],
        assumptions=[("logits computed once and cached" if cached else
                      "teacher runs online over the training samples, every epoch (also_logits)"
                      if plan.method.also_logits else "teacher runs online, every epoch"),
                     "non-public targets count toward cumulative compute (EU guidelines ¶119)",
                     "left out of the parameter-update total: whether teacher forward passes "
                     "directly contribute to parameter updates is not settled"] + cross
        + ([] if teacher is not None or per_token is None else ["2 x declared parameters per token"]))


def _teacher_generation(plan: Plan, per_token: float | None, teacher) -> Component:
    generated = plan.method.teacher_generated_tokens + plan.method.prompt_tokens
    public = plan.method.synthetic_data_public
    return Component(
        id="teacher_generation", label="teacher generation (prefill + decode, discarded samples included)",
        flops=per_token * generated if per_token is not None else None,
        method=_teacher_method(teacher, per_token), counts_toward=[] if public else ["cumulative"],
        assumptions=[f"{short_sci(plan.method.prompt_tokens, 4)} prompt + "
                     f"{short_sci(plan.method.teacher_generated_tokens, 4)} "
                     "generated tokens; a KV-cache decode costs the same as a causal forward",
                     "public synthetic data need not be counted (EU guidelines ¶122)" if public else
                     "non-public synthetic data counts, discarded samples included (EU guidelines ¶119)"])


def _on_policy(plan: Plan, student: ModelSummary, per_token: float | None, teacher,
               adapter: AdapterSummary | None = None) -> list[Component]:
    """The student's sampling (forward per token x prompt + sampled tokens; with its adapters
    for a ``student.adapter`` plan) and the teacher's scoring of the same tokens (its forward per
    token x the same count)."""
    rolled = plan.method.student_generated_tokens + plan.method.prompt_tokens
    sampling = student.forward_flops_per_token
    if plan.student.adapter is not None:
        sampling = adapter.forward_flops_per_token if adapter is not None else None
    what = (f"{short_sci(plan.method.prompt_tokens, 4)} prompt + {short_sci(plan.method.student_generated_tokens, 4)} "
            "student-sampled tokens, discarded samples included")
    return [
        Component(id="student_generation", label="student sampling (prefill + decode, discarded samples included)",
                  flops=sampling * rolled if sampling is not None else None,
                  method=student.method if sampling is not None else "unknown", counts_toward=["cumulative"],
                  assumptions=[what, "a KV-cache decode costs the same as a causal forward",
                               "left out of the parameter-update total: sampling makes the data, the training "
                               "step updates the parameters"]),
        Component(id="teacher_scoring", label="teacher forward passes scoring the student's samples",
                  flops=per_token * rolled if per_token is not None else None,
                  method=_teacher_method(teacher, per_token), counts_toward=["cumulative"],
                  assumptions=[what, "non-public targets count toward cumulative compute (EU guidelines ¶119)"]
                  + ([] if teacher is not None or per_token is None else ["2 x declared parameters per token"])),
    ]


def evaluation_teacher_runs(plan: Plan) -> bool:
    """Whether an evaluation runs the teacher too (online logits, sequence with also_logits)."""
    return plan.method.kind == "logits" or plan.method.also_logits


def _evaluation(plan: Plan, student: ModelSummary, teacher_per_token: float | None,
                adapter: AdapterSummary | None = None, teacher_tokens_per_token: float | None = 1.0) -> Component:
    """Held-out evaluation: the student's forward (with its adapters for a ``student.adapter``
    plan) and, when the teacher runs online, the teacher's forward, per evaluated position x
    ``evaluation.tokens``. ``teacher_tokens_per_token``: the teacher's positions per student
    position (a cross-tokenizer plan's ratio; None: unknown, so the figure is)."""
    tokens = plan.evaluation.tokens
    per_token = student.forward_flops_per_token
    if plan.student.adapter is not None:
        per_token = adapter.forward_flops_per_token if adapter is not None else None
    with_teacher = evaluation_teacher_runs(plan)
    if with_teacher:
        known = None not in (per_token, teacher_per_token, teacher_tokens_per_token)
        per_token = per_token + teacher_per_token * teacher_tokens_per_token if known else None
    return Component(
        id="evaluation", label="held-out evaluation (forward passes)",
        flops=per_token * tokens if per_token is not None else None,
        method=student.method if per_token is not None else "unknown", counts_toward=["cumulative"],
        assumptions=[f"{short_sci(tokens, 4)} evaluated positions (evaluation.tokens), the cap the run is held to",
                     "the student's forward" + (" and the teacher's forward" if with_teacher else "") + " per position",
                     "counted in cumulative compute (the conservative side); not a parameter update"])


def _original_model(plan: Plan, tables: ReferenceTables):
    if plan.student.init == "base":
        return plan.student.base_model, tables.find_published(plan.student.base_model)
    if plan.student.init == "pruned_teacher":
        return plan.teacher.model, tables.find_published(plan.teacher.model)
    return None, None


def _sum(components) -> float | None:
    values = [c.flops for c in components]
    return None if any(v is None for v in values) else float(sum(values))


def _band(components: list[Component]) -> tuple[float | None, float | None]:
    counted = [c for c in components if "cumulative" in c.counts_toward]
    if any(c.flops is None for c in counted):
        return None, None
    low = sum(c.flops * (1 - UNCERTAINTY.get(c.method, 0.5)) for c in counted)
    high = sum(c.flops * (1 + UNCERTAINTY.get(c.method, 0.5)) for c in counted)
    return low, high


def _hardware_check(plan: Plan, components: list[Component], tables: ReferenceTables) -> HardwareCheck | None:
    """count x hours x dense peak x utilisation, against the compute the run itself executes
    (the base model's training happened elsewhere; an API teacher runs at the provider)."""
    hw = plan.hardware
    if hw is None:
        return None
    accelerator = tables.find_accelerator(hw.accelerator)
    if accelerator is None:
        return HardwareCheck(accelerator=hw.accelerator, peak_flops_per_s=None,
                             note="unknown accelerator: no dense peak in policies/hardware.yaml",
                             planned_energy=_planned_energy(plan, tables))
    local = [c for c in components if c.id in ("student_training", "student_generation", "evaluation")
             or (c.id in ("teacher_forward", "teacher_generation", "teacher_scoring")
                 and plan.teacher.access == "weights")]
    executed = _sum(local)
    seconds = hw.count * hw.hours * 3600.0
    estimate = seconds * accelerator.dense_bf16_flops_per_s * hw.utilization
    ratio = estimate / executed if executed else None
    return HardwareCheck(
        accelerator=accelerator.id, peak_flops_per_s=accelerator.dense_bf16_flops_per_s,
        peak_source=accelerator.source.url, estimate_flops=estimate, compared_to_flops=executed,
        ratio=ratio,
        implied_utilization=executed / (seconds * accelerator.dense_bf16_flops_per_s) if executed else None,
        outside_tolerance=(abs(ratio - 1) > EU_TOLERANCE) if ratio is not None else None,
        note=f"{hw.count} x {hw.hours:g} h x {short_sci(accelerator.dense_bf16_flops_per_s, 4)} FLOP/s (dense BF16) "
             f"x {hw.utilization:g} utilisation; compared with "
             + ", ".join(c.id for c in local),
        planned_energy=_planned_energy(plan, tables))


def _planned_energy(plan: Plan, tables: ReferenceTables) -> dict | None:
    """The planned run's energy, estimated before it runs: count x hours accelerator-hours x
    board power x PUE (:func:`audit.energy.run_energy`); None without a board power."""
    from audit.energy import run_energy

    hw = plan.hardware
    energy = run_energy(None, hw.count * hw.hours, devices=[], device_name=hw.accelerator, device_type="cuda",
                        plan_hardware=hw.model_dump(), tables=tables, reason="planned, before the run")
    return energy.to_dict() if energy.joules is not None else None
