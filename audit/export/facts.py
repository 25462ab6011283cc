"""What a bill of materials says, read once from the verified sources (``sources.Sources``).

Every name and digest comes from a signed predicate: the plan as audited
(``predicate.plan.content``), the audit's ``inputs`` (the sha256 of each file decided on), the
engine's teacher resolution (licences and terms), and the run and generation records. The
renderers (``cyclonedx``, ``spdx``) read only these facts. Energy is in joules as the run record
gives it and in kWh (1 kWh = 3.6e6 J) for the formats; FLOP use 1 multiply-add = 2 FLOP.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from audit.errors import InputError
from audit.export.sources import Signed, Sources, as_dict

JOULES_PER_KWH = 3.6e6


@dataclass(frozen=True)
class Model:
    """A model the student is made from or with: a teacher, the base model, or the student."""

    ref: str                         # a stable id inside the export (bom-ref, SPDX id suffix)
    name: str                        # plan field as audited (teacher.model, student.name, base_model)
    role: str                        # student, teacher, base_model
    licenses: tuple[str, ...] = ()   # licence ids or terms documents ("id@version"), as audited
    hashes: tuple[tuple[str, str], ...] = ()   # (audited input name, sha256)
    details: dict = field(default_factory=dict)   # access, provider, architecture, parameters...


@dataclass(frozen=True)
class Dataset:
    ref: str
    name: str
    kind: str                        # manifest, prompts, generated, source
    sha256: str | None = None
    license: str | None = None
    url: str | None = None
    generated_by: tuple[str, ...] = ()   # model names whose outputs it holds
    size: int | None = None       # samples or tokens, as ``details`` says
    details: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Energy:
    """One run's energy: device joules as measured or estimated; ``activity`` is training or fine-tuning."""

    run: str
    activity: str
    joules: float
    status: str
    method: str
    pue: float | None

    @property
    def kwh(self) -> float:
        return self.joules / JOULES_PER_KWH


@dataclass(frozen=True)
class Reference:
    """A signed envelope the export is built on: file name, sha256 of its bytes, predicate type."""

    name: str
    sha256: str
    kind: str                        # audit, run_record, generation_record


@dataclass(frozen=True)
class Facts:
    audit_sha256: str
    created: str                     # when the audit was signed
    organization: str
    plan_name: str
    outcome: str
    student: Model
    teachers: tuple[Model, ...]
    base_model: Model | None
    datasets: tuple[Dataset, ...]
    references: tuple[Reference, ...]
    energy: tuple[Energy, ...]
    metrics: tuple[tuple[str, str], ...]      # (name, value) of the last held-out evaluation
    hyperparameters: tuple[tuple[str, str], ...]
    regimes: tuple[dict, ...]        # {"id", "name", "jurisdiction", "status"}
    purpose: str
    method: str
    training: str                    # informationAboutTraining, in words
    obligations: tuple[str, ...]


def _plan(predicate: dict, source: str):
    from pydantic import ValidationError

    from audit.plan import Plan
    from audit.validation import describe_error, field_path

    try:
        return Plan.model_validate((predicate.get("plan") or {}).get("content"))
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        raise InputError(f"plan.content.{field_path(first['loc'])}: {describe_error(first)} "
                         "(an audit this flopgate cannot read)", source=source) from None


def _inputs(predicate: dict, role: str) -> list[dict]:
    return [e for e in predicate.get("inputs") or [] if isinstance(e, dict) and e.get("role") == role]


def _hashes(predicate: dict, *roles: str) -> tuple[tuple[str, str], ...]:
    return tuple((e["name"], e["sha256"]) for role in roles for e in _inputs(predicate, role))


def _licences(declared: str | None, resolution: dict | None) -> tuple[str, ...]:
    """The licence the plan declares, else what the engine resolved (licence ids, then terms)."""
    if declared:
        return (declared,)
    resolution = resolution or {}
    return tuple(resolution.get("licenses") or ()) or tuple(resolution.get("terms") or ())


def collect(sources: Sources) -> Facts:
    """The facts of an export (see the module docstring)."""
    audit = sources.audit
    predicate = audit.predicate
    plan = _plan(predicate, str(audit.path))
    decision = predicate.get("decision") or {}
    compute = predicate.get("compute") or {}
    student_figures = compute.get("student") or {}
    student = Model(
        ref="student", name=plan.student.name, role="student", licenses=_licences(plan.student.license, None),
        hashes=_hashes(predicate, "student_config"),
        details={"architecture": student_figures.get("architecture"), "config": plan.student.config,
                 "parameters": student_figures.get("params_total"), "init": plan.student.init,
                 "adapter": plan.student.adapter.kind if plan.student.adapter else None})
    teachers = []
    for i, teacher in enumerate(plan.teachers):
        resolution = decision.get("teacher") if i == 0 else None
        teacher_figures = compute.get("teacher") if i == 0 else None
        teachers.append(Model(
            ref=f"teacher-{i + 1}", name=teacher.model, role="teacher",
            licenses=_licences(teacher.license, resolution),
            hashes=_hashes(predicate, "teacher_config", "teacher_weights") if i == 0 else (),
            details={"access": teacher.access, "provider": (resolution or {}).get("provider"),
                     "architecture": (teacher_figures or {}).get("architecture"),
                     "parameters": (teacher_figures or {}).get("params_total") or teacher.parameters}))
    base = None
    if plan.student.init == "base":
        base = Model(ref="base-model", name=plan.student.base_model, role="base_model",
                     licenses=_licences(None, decision.get("base_model")),
                     hashes=_hashes(predicate, "student_base_weights"), details={"init": "base"})
    elif plan.student.init == "pruned_teacher":
        base = Model(ref="base-model", name=plan.teacher.model, role="base_model",
                     licenses=teachers[0].licenses, hashes=teachers[0].hashes, details={"init": "pruned_teacher"})
    return Facts(
        audit_sha256=audit.sha256, created=str(predicate.get("created")), organization=plan.organization.name,
        plan_name=plan.name, outcome=str(predicate.get("outcome")), student=student, teachers=tuple(teachers),
        base_model=base, datasets=tuple(_datasets(plan, predicate, sources)),
        references=tuple(_references(sources)), energy=tuple(_energy(plan, sources.run_records)),
        metrics=_metrics(sources.run_records), hyperparameters=_hyperparameters(plan, sources.run_records),
        regimes=tuple({"id": r["id"], "name": r["name"], "jurisdiction": r["jurisdiction"], "status": r["status"]}
                      for r in decision.get("regimes") or []),
        purpose=plan.use.purpose, method=plan.method.kind,
        training=_training_text(plan, compute, sources.run_records),
        obligations=tuple(f"{o['id']}: {o['text']} ({o['status']})" for o in decision.get("obligations") or []))


def _datasets(plan, predicate: dict, sources: Sources) -> list[Dataset]:
    teacher_names = tuple(t.model for t in plan.teachers)
    found = []
    for entry in _inputs(predicate, "dataset_manifest"):
        found.append(Dataset(ref="dataset-manifest", name=entry["name"], kind="manifest", sha256=entry["sha256"],
                             details={"tokens_per_epoch": plan.data.tokens}))
    for entry in _inputs(predicate, "prompts"):
        found.append(Dataset(ref="prompts", name=entry["name"], kind="prompts", sha256=entry["sha256"]))
    for i, source in enumerate(plan.data.sources):
        found.append(Dataset(ref=f"source-{i + 1}", name=source.id, kind="source", license=source.license,
                             url=source.url, generated_by=tuple(source.generated_by or ())))
    for job in sources.generation_records:
        outputs = as_dict(job.predicate.get("outputs"))
        teacher = as_dict(job.predicate.get("teacher")).get("model")
        kept = next((e for e in _inputs(job.predicate, "kept_samples") if e.get("sha256") == outputs.get("kept_sha256")),
                    None)
        if kept is None:
            raise InputError("inputs: expected the kept_samples file whose sha256 is outputs.kept_sha256",
                             source=str(job.path))
        found.append(Dataset(ref=f"generated-{len(found) + 1}", name=kept["name"], kind="generated",
                             sha256=kept["sha256"], generated_by=(teacher,) if teacher else teacher_names,
                             size=outputs.get("kept"), details={"unit": "samples", "generation_record": job.name}))
    return found


def _references(sources: Sources) -> list[Reference]:
    refs = [Reference(sources.audit.name, sources.audit.sha256, "audit")]
    refs += [Reference(r.name, r.sha256, "run_record") for r in sources.run_records]
    refs += [Reference(r.name, r.sha256, "generation_record") for r in sources.generation_records]
    return refs


def _activity(plan) -> str:
    """Fine-tuning when the student starts from trained weights or trains adapters; else training."""
    return "fine-tuning" if plan.student.init != "scratch" or plan.student.adapter else "training"


def _energy(plan, runs: tuple[Signed, ...]) -> list[Energy]:
    """The energy each run record reports, when it was measured or estimated (never a default)."""
    found = []
    for run in runs:
        energy = as_dict(run.predicate.get("energy"))
        if energy.get("status") not in ("measured", "estimated"):
            continue
        joules = energy.get("joules")
        if not isinstance(joules, (int, float)) or isinstance(joules, bool) or joules < 0:
            continue
        pue = energy.get("pue")
        found.append(Energy(run=run.name, activity=_activity(plan), joules=float(joules),
                            status=energy["status"], method=str(energy.get("method") or "unknown"),
                            pue=float(pue) if isinstance(pue, (int, float)) and not isinstance(pue, bool) else None))
    return found


def _metrics(runs: tuple[Signed, ...]) -> tuple[tuple[str, str], ...]:
    """The last held-out evaluation of each run record: cross-entropy and KL in nats per token,
    top-1 agreement with the teacher as a fraction."""
    found = []
    for run in runs:
        evaluation = as_dict(run.predicate.get("eval"))
        for key in ("ce", "kl", "top1_agreement"):
            if isinstance(evaluation.get(key), (int, float)) and not isinstance(evaluation.get(key), bool):
                found.append((f"{key} ({run.name}, step {evaluation.get('step')})", repr(float(evaluation[key]))))
    return tuple(found)


def _hyperparameters(plan, runs: tuple[Signed, ...]) -> tuple[tuple[str, str], ...]:
    method, data = plan.method, plan.data
    found = [("method", method.kind), ("loss", method.loss), ("temperature", repr(method.temperature)),
             ("seq_len", str(data.seq_len)), ("epochs", repr(data.epochs)), ("tokens_per_epoch", repr(data.tokens))]
    if method.kind == "cached_logits":
        found += [("cache_top_k", str(method.cache_top_k)), ("cache_dtype", method.cache_dtype)]
    if plan.student.adapter:
        found += [("adapter", plan.student.adapter.kind), ("adapter_rank", str(plan.student.adapter.rank))]
    for run in runs:
        found += [(f"steps ({run.name})", str(run.predicate.get("steps"))),
                  (f"tokens ({run.name})", str(run.predicate.get("tokens")))]
    return tuple(found)


def _training_text(plan, compute: dict, runs: tuple[Signed, ...]) -> str:
    from audit.numbers import sci

    text = (f"Knowledge distillation ({plan.method.kind}, {plan.method.loss}) from "
            f"{', '.join(t.model for t in plan.teachers)}; audited compute {sci(compute.get('total_flops'), 3)} FLOP "
            f"cumulative, {sci(compute.get('update_flops'), 3)} FLOP parameter-update (1 multiply-add = 2 FLOP).")
    for run in runs:
        flops = as_dict(run.predicate.get("compute")).get("flops")
        text += (f" Run {run.name}: {run.predicate.get('steps')} steps, {run.predicate.get('tokens')} tokens, "
                 f"{sci(flops, 3) if flops is not None else 'unknown'} FLOP metered.")
    return text
