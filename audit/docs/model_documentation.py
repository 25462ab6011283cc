"""The Model Documentation Form (GPAI Code of Practice, Transparency chapter, July 2025): one
entry per item, each ``filled`` (value and the signed files it came from), ``needs-input`` (the
plan fields or records that would give it) or ``not-applicable`` (why).

Numbers: parameters and training compute to two significant figures (:func:`audit.numbers.sci`);
the parameter size range from the exact count (:func:`size_range`); training compute counted,
not estimated from hardware: 1 multiply-add = 2 FLOP, forward + backward per training token,
the teacher's forward passes and generation included; energy in MWh to two significant figures
(:func:`audit.numbers.significant`; 1 MWh = 3.6e9 J); training time also as the form's range for
national authorities (:func:`training_time_range`); inference computation as the FLOP of a named
task, one forward pass over the audited sequence length (8.3, with the task and method in 8.4).
"""

from __future__ import annotations

import math
from pathlib import Path

from audit.docs.evidence import Evidence, Source, as_number
from audit.numbers import exact, plain, sci, significant

AUDIENCE_ALL = ("AI Office", "national authorities", "downstream providers")
AUDIENCE_AUTHORITIES = ("AI Office", "national authorities")
"""Who each item is for, as the form marks it: computational resources, energy and the number of
data points are not for downstream providers (the form asks the number of data points, training
time and compute once for national authorities and once for the AI Office). See
docs/eu-documents.md for which audiences were checked against a transcription of the form."""

SIZE_RANGES = ((5e8, "1-500M"), (5e9, "500M-5B"), (1.5e10, "5B-15B"), (5e10, "15B-50B"),
               (1e11, "50B-100B"), (5e11, "100B-500B"), (1e12, "500B-1T"))
"""The form's parameter ranges by their upper edge (inclusive); above the last, ">1T"."""

TRAINING_TIME_RANGES = ((1, "less than 1 month"), (3, "1 to 3 months"), (6, "3 to 6 months"))
"""The form's training-time ranges for national authorities, by upper edge in months (inclusive);
above the last, "more than 6 months"."""
DAYS_PER_MONTH = 365.25 / 12
"""A month as the mean Gregorian month (the form does not define one): 30.4375 days."""

JOULES_PER_MWH = 3.6e9
ENERGY_INPUTS = ["hardware.accelerator", "hardware.power_w", "hardware.pue"]
"""Plan fields that give an energy estimate when the run's devices have no energy counter."""
RUN_RECORD = "a run record (flopgate distill writes run-record.intoto.json; give it with --run-record)"


def size_range(params: float) -> str:
    """The form's size range of a parameter count (from the exact count, not the rounded one)."""
    for upper, label in SIZE_RANGES:
        if params <= upper:
            return label
    return ">1T"


def training_time_range(wall_s: float) -> str:
    """The form's training-time range (for national authorities) of a wall-clock time in seconds."""
    months = wall_s / 86400 / DAYS_PER_MONTH
    for upper, label in TRAINING_TIME_RANGES:
        if months <= upper:
            return label
    return "more than 6 months"


def filled(value: str, *sources: Source) -> dict:
    return {"status": "filled", "value": value, "sources": [s.as_json() for s in sources]}


def needs(*fields: str, known: str | None = None) -> dict:
    entry = {"status": "needs-input", "needs": list(fields)}
    if known:
        entry["known"] = known  # what flopgate holds so far; the item is not complete without the fields
    return entry


def not_applicable(reason: str) -> dict:
    return {"status": "not-applicable", "reason": reason}


def from_plan(value, field: str, ev: Evidence, shown=None) -> dict:
    """``filled`` from a plan field (the plan is signed inside the audit), else ``needs-input``."""
    if value in (None, "", []):
        return needs(field)
    text = shown(value) if shown else (", ".join(map(str, value)) if isinstance(value, list) else str(value))
    return filled(text, ev.audit_source)


def model_name(ev: Evidence) -> dict:
    """student.name, and the versions of ``disclosure.model_versions`` when given."""
    versions = ev.plan.disclosure.model_versions if ev.plan.disclosure else []
    return filled(ev.plan.student.name + (f"; versions: {', '.join(versions)}" if versions else ""), ev.audit_source)


def dependencies(ev: Evidence) -> dict:
    student = ev.plan.student
    if student.init == "base":
        return filled(f"{student.base_model} (the student starts from its weights)", ev.audit_source)
    if student.init == "pruned_teacher":
        return filled(f"{ev.plan.teacher.model} (the student is cut down from it)", ev.audit_source)
    return filled("N/A: the student starts from random weights (student.init: scratch); the models it "
                  "learned from are listed as teachers under training process and data", ev.audit_source)


def _authenticity(ev: Evidence) -> dict:
    if not ev.runs:
        return needs(RUN_RECORD)
    lines = [f"checkpoint {r.predicate.get('checkpoint', {}).get('name')}: root sha256 "
             f"{r.predicate.get('checkpoint', {}).get('root_sha256')}" for r in ev.runs]
    return filled("; ".join(lines), *(r.source for r in ev.runs))


def _architecture(ev: Evidence) -> dict:
    summary = ev.audit.compute.student
    ref = Path(summary.ref).name if Path(summary.ref).is_absolute() else summary.ref  # no local folders in a filing
    text = f"{summary.architecture} (counted from {ref}, config sha256 {summary.config_sha256 or 'n/a'})"
    if ev.audit.compute.adapter is not None:
        text += f"; trained as LoRA adapters of rank {ev.audit.compute.adapter.rank}"
    return filled(text, ev.audit_source)


def _parameters(ev: Evidence) -> dict:
    total, active = ev.audit.compute.params_total, ev.audit.compute.params_active
    text = f"{sci(total)} ({exact(int(total))} parameters)"
    if active != total:
        text += f"; {sci(active)} active per token"
    return filled(text, ev.audit_source)


def _training_process(ev: Evidence) -> dict:
    plan, method = ev.plan, ev.plan.method
    teachers = ", ".join(t.model for t in plan.teachers)
    kinds = {"logits": "logit distillation (the teacher runs beside the student)",
             "cached_logits": "logit distillation from the teacher's cached top-k log-probabilities",
             "sequence": "sequence-level distillation (the student trains on text the teacher generated)",
             "on_policy": "on-policy distillation (the teacher scores the student's own samples)"}
    text = (f"knowledge distillation: {kinds[method.kind]}; teacher(s): {teachers}; loss {method.loss}, "
            f"temperature {method.temperature:g}; {exact(plan.data.tokens)} tokens per epoch x "
            f"{plan.data.epochs:g} epochs, sequences of {plan.data.seq_len} tokens")
    return filled(text, ev.audit_source)


def _provenance(ev: Evidence) -> dict:
    known = [f"synthetic data / model outputs from {', '.join(t.model for t in ev.plan.teachers)}"]
    if ev.manifest is not None:
        known.append(f"{len(manifest_files(ev.manifest))} file(s) of the signed dataset manifest")
    provenance = [ev.plan.disclosure and ev.plan.disclosure.crawler, ev.plan.disclosure and ev.plan.disclosure.user_data,
                  ev.plan.disclosure and ev.plan.disclosure.private_datasets]
    if all(value is not None for value in provenance):
        return filled("; ".join(known) + "; crawled, user and private data: see the training-content summary",
                      ev.audit_source)
    return needs("disclosure.crawler", "disclosure.user_data", "disclosure.private_datasets", known="; ".join(known))


def manifest_files(manifest: dict) -> list[dict]:
    """A manifest's source files: a shard manifest's ``inputs``, a raw-file one's ``files``."""
    files = manifest.get("inputs") if isinstance(manifest.get("inputs"), list) else manifest.get("files")
    return [f for f in files if isinstance(f, dict)] if isinstance(files, list) else []


def _data_points(ev: Evidence) -> dict:
    data = ev.plan.data
    text = f"{exact(data.tokens)} tokens per epoch, {data.epochs:g} epoch(s) ({exact(ev.audit.compute.tokens)} training tokens)"
    sources = [ev.audit_source]
    if ev.manifest is not None and as_number(ev.manifest.get("total_documents")) is not None:
        text += f"; {exact(int(ev.manifest['total_documents']))} documents in the dataset manifest"
        sources.append(ev.manifest_source)
    if ev.runs:
        text += f"; {exact(sum(int(r.predicate.get('tokens') or 0) for r in ev.runs))} tokens processed by the run(s)"
        sources += [r.source for r in ev.runs]
    return filled(text, *sources)


def _training_time(ev: Evidence) -> dict:
    if not ev.runs:
        return needs(RUN_RECORD)
    wall = math.fsum(as_number(r.predicate.get("wall_time_s")) or 0.0 for r in ev.runs)
    device_hours = math.fsum(as_number(r.predicate.get("accelerator_hours")) or 0.0 for r in ev.runs)
    devices = sorted({f"{(r.predicate.get('device') or {}).get('name')} x "
                      f"{(r.predicate.get('device') or {}).get('processes')}" for r in ev.runs})
    text = (f"national authorities: {training_time_range(wall)}; AI Office: {plain(wall / 86400)} wall-clock days "
            f"({plain(wall / 3600)} h), {plain(device_hours / 24)} accelerator-days ({plain(device_hours)} "
            f"accelerator-hours on {', '.join(devices)})")
    generation = math.fsum(as_number(g.predicate.get("wall_time_s")) or 0.0 for g in ev.generations)
    if ev.generations:
        text += f"; teacher generation: {plain(generation / 3600)} h wall-clock"
    return filled(text, *(r.source for r in ev.runs), *(g.source for g in ev.generations))


def _compute(ev: Evidence) -> dict:
    estimate = ev.audit.compute
    if not ev.runs and not ev.generations:
        return needs(RUN_RECORD, known=f"{sci(estimate.total_flops)} FLOP estimated before the run by the audit")
    run_flops = math.fsum(as_number((r.predicate.get("compute") or {}).get("flops")) or 0.0 for r in ev.runs)
    generation = math.fsum(as_number((g.predicate.get("flops") or {}).get("used")) or 0.0 for g in ev.generations)
    total = run_flops + generation
    order = f"1e{math.floor(math.log10(total))}" if total > 0 else "0"
    text = f"{sci(total)} FLOP (order of magnitude {order}): training runs {sci(run_flops)} FLOP"
    if ev.generations:
        text += f", teacher generation {sci(generation)} FLOP"
    sources = [r.source for r in ev.runs] + [g.source for g in ev.generations]
    base = next((c for c in estimate.components if c.id == "base_model_training" and c.flops), None)
    if base is not None:
        text += f"; with the base model's own training ({sci(base.flops)} FLOP, audit) {sci(total + base.flops)} FLOP"
        sources.append(ev.audit_source)
    if ev.ledger is not None:
        text += f"; the ledger holds {sci(ev.ledger.charged_flops)} FLOP charged to this audit"
        sources.append(ev.ledger.source)
    return filled(text, *sources)


def _compute_method(ev: Evidence) -> dict:
    parts = [c.label for c in ev.audit.compute.components if "cumulative" in c.counts_toward and c.flops]
    text = ("counted, not estimated from hardware: every operation of the model's computation graph counted on "
            "the meta device per training token, forward + backward, 1 multiply-add = 2 FLOP, attention over "
            "causal pairs; the run's meter multiplies the tokens it processed by the audited FLOP per token. "
            f"Counted: {', '.join(parts) or 'the student training'}"
            " (the teacher's forward passes and generation count toward the cumulative training compute).")
    return filled(text, ev.audit_source)


def _energy_runs(ev: Evidence) -> tuple[float | None, str, list[str], str | None]:
    """(joules summed over the runs or None, measured/estimated, method texts, why not)."""
    if not ev.runs:
        return None, "", [], RUN_RECORD
    joules, statuses, methods = [], set(), []
    for record in ev.runs:
        block = record.predicate.get("energy")
        if not isinstance(block, dict) or block.get("status") not in ("measured", "estimated") \
                or as_number(block.get("joules")) is None:
            why = "unavailable" if isinstance(block, dict) else "absent"
            return None, "", [], f"the energy of {record.source.name} is {why}"
        joules.append(float(block["joules"]))
        statuses.add(block["status"])
        text = str(block.get("method") or "")
        if as_number(block.get("pue")) is not None:
            text += f" (PUE {block['pue']:g})"
        if text and text not in methods:
            methods.append(text)
    return math.fsum(joules), ("measured" if statuses == {"measured"} else "estimated"), methods, None


def _energy(ev: Evidence) -> dict:
    joules, status, _, why = _energy_runs(ev)
    if joules is None:
        return needs(*ENERGY_INPUTS, known=why)
    return filled(f"{significant(joules / JOULES_PER_MWH)} MWh ({status}; {sci(joules)} J)",
                  *(r.source for r in ev.runs))


def _energy_method(ev: Evidence) -> dict:
    joules, status, methods, why = _energy_runs(ev)
    if joules is None:
        return needs(*ENERGY_INPUTS, known=why)
    return filled(f"{status}: " + "; ".join(methods or ["method not stated by the run record"]),
                  *(r.source for r in ev.runs))


def _inference(ev: Evidence) -> dict:
    """FLOP of the task named in :func:`_inference_method`: one forward pass over ``seq_len`` tokens."""
    per_token, seq_len = ev.audit.compute.student.forward_flops_per_token, ev.audit.compute.seq_len
    return filled(f"{sci(per_token * seq_len)} FLOP for one forward pass over {exact(seq_len)} tokens "
                  f"({sci(per_token)} FLOP per token)", ev.audit_source)


def _inference_method(ev: Evidence) -> dict:
    return filled(f"task: one forward pass of the student over a sequence of {exact(ev.audit.compute.seq_len)} "
                  "tokens; hardware: none, the operations of the model's computation graph are counted on the "
                  "meta device (1 multiply-add = 2 FLOP, attention over causal pairs), not benchmarked on "
                  "hardware", ev.audit_source)


def _intended_uses(ev: Evidence) -> dict:
    d, use = ev.plan.disclosure, ev.plan.use
    text = d.intended_uses if d and d.intended_uses else f"{use.purpose} ({use.scope} scope, {use.distribution})"
    if d and d.forbidden_uses:
        text += f"; not to be used for: {d.forbidden_uses}"
    return filled(text, ev.audit_source)


def _channels(ev: Evidence) -> dict:
    d = ev.plan.disclosure
    if not (d and d.distribution_channels):
        return needs("disclosure.distribution_channels", known=f"use.distribution: {ev.plan.use.distribution}")
    return filled(", ".join(d.distribution_channels) + f" (use.distribution: {ev.plan.use.distribution})",
                  ev.audit_source)


def _disclosed(name: str):
    return lambda ev: from_plan(getattr(ev.plan.disclosure, name, None) if ev.plan.disclosure else None,
                                 f"disclosure.{name}", ev)


FORM = (
    ("1.1", "General information", "Legal name for the model provider", AUDIENCE_ALL,
     lambda ev: from_plan(ev.plan.organization.name, "organization.name", ev)),
    ("1.2", "General information", "Model name", AUDIENCE_ALL, model_name),
    ("1.3", "General information", "Model authenticity", AUDIENCE_ALL, _authenticity),
    ("1.4", "General information", "Release date", AUDIENCE_ALL, _disclosed("release_date")),
    ("1.5", "General information", "Union market release date", AUDIENCE_ALL, _disclosed("eu_market_date")),
    ("1.6", "General information", "Model dependencies", AUDIENCE_ALL, dependencies),
    ("2.1", "Model properties", "Model architecture", AUDIENCE_ALL, _architecture),
    ("2.2", "Model properties", "Design specifications of the model", AUDIENCE_ALL, _disclosed("design_specification")),
    ("2.3", "Model properties", "Input modalities and maximum input size", AUDIENCE_ALL, _disclosed("input_modalities")),
    ("2.4", "Model properties", "Output modalities and maximum output size", AUDIENCE_ALL,
     _disclosed("output_modalities")),
    ("2.5", "Model properties", "Total model size", AUDIENCE_ALL, _parameters),
    ("2.6", "Model properties", "Model size range", AUDIENCE_ALL,
     lambda ev: filled(size_range(ev.audit.compute.params_total), ev.audit_source)),
    ("3.1", "Methods of distribution and licences", "Distribution channels", AUDIENCE_ALL, _channels),
    ("3.2", "Methods of distribution and licences", "Licence", AUDIENCE_ALL,
     lambda ev: from_plan(ev.plan.student.license, "student.license", ev)),
    ("4.1", "Use", "Acceptable use policy", AUDIENCE_ALL, _disclosed("acceptable_use_policy_url")),
    ("4.2", "Use", "Intended uses", AUDIENCE_ALL, _intended_uses),
    ("4.3", "Use", "AI systems it can be integrated into and technical means for integration", AUDIENCE_ALL,
     _disclosed("integration")),
    ("4.4", "Use", "Required hardware", AUDIENCE_ALL, _disclosed("required_hardware")),
    ("4.5", "Use", "Required software", AUDIENCE_ALL, _disclosed("required_software")),
    ("5.1", "Training process", "Design specifications of the training process", AUDIENCE_ALL, _training_process),
    ("5.2", "Training process", "Decision rationale", AUDIENCE_ALL, _disclosed("training_rationale")),
    ("6.1", "Data", "Data type and modality", AUDIENCE_ALL,
     lambda ev: filled("text (token sequences)", ev.audit_source)),
    ("6.2", "Data", "Provenance of the data", AUDIENCE_ALL, _provenance),
    ("6.3", "Data", "How the data was obtained and selected", AUDIENCE_ALL, _disclosed("data_collection")),
    ("6.4", "Data", "Number of data points", AUDIENCE_AUTHORITIES, _data_points),
    ("6.5", "Data", "Scope and main characteristics", AUDIENCE_ALL, _disclosed("data_description")),
    ("6.6", "Data", "Data curation", AUDIENCE_ALL, _disclosed("data_curation")),
    ("6.7", "Data", "Measures to detect unsuitable data sources", AUDIENCE_ALL, _disclosed("unsuitable_data_measures")),
    ("6.8", "Data", "Measures to detect identifiable biases", AUDIENCE_ALL, _disclosed("bias_measures")),
    ("7.1", "Computational resources", "Training time", AUDIENCE_AUTHORITIES, _training_time),
    ("7.2", "Computational resources", "Amount of computation used for training", AUDIENCE_AUTHORITIES, _compute),
    ("7.3", "Computational resources", "Method used to measure or estimate the compute", AUDIENCE_AUTHORITIES,
     _compute_method),
    ("8.1", "Energy", "Amount of energy used for training", AUDIENCE_AUTHORITIES, _energy),
    ("8.2", "Energy", "Method used to measure or estimate the energy", AUDIENCE_AUTHORITIES, _energy_method),
    ("8.3", "Energy", "Benchmarked amount of computation used for inference", AUDIENCE_AUTHORITIES, _inference),
    ("8.4", "Energy", "Measurement methodology for the computation used for inference", AUDIENCE_AUTHORITIES,
     _inference_method),
)


def model_documentation(ev: Evidence) -> dict:
    """The form as JSON: ``{"form", "model", "items": [{id, section, item, audience, status, ...}]}``."""
    items = []
    for item_id, section, label, audience, fill in FORM:
        entry = {"id": item_id, "section": section, "item": label, "audience": list(audience)}
        entry.update(fill(ev))
        items.append(entry)
    contact = ev.plan.disclosure.contact if ev.plan.disclosure else None
    return {"form": "Model Documentation Form (GPAI Code of Practice, Transparency chapter, July 2025)",
            "model": ev.plan.student.name, "contact": contact, "audit": audit_line(ev), "items": items}


def audit_line(ev: Evidence) -> dict:
    """The audit the documents are written from: its file, sha256 and outcome."""
    return {**ev.audit_source.as_json(), "outcome": ev.audit.outcome, "gate_open": ev.audit.gate_open,
            "runs": len(ev.runs)}
