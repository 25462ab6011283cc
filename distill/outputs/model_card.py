"""The student's model card (``README.md``) and its ``NOTICE`` file.

Everything here is derived from the signed audit (its decision's obligations and the teacher's
terms) and the signed run record; nothing is looked up on the network.

What is done automatically, by the type of the policy clause behind an obligation:

* ``attribution`` with a quoted phrase ("Built with Llama"): the phrase heads the card;
* ``notice_file`` with a quoted notice text ('a Notice file reading "..."'): the text goes
  into ``NOTICE`` beside the card;
* ``derivative_pass_through``: the licence section says the student is governed by the
  teacher's terms; ``use_policy``: the use restrictions section repeats the policy.

Every obligation that the audit did not find met stays on the card's to-do list, with a note
of what was done automatically: copies of licence texts, display on product pages and the
like cannot be done by a tool. An obligation whose clause type is unknown is only a to-do.
Clause types come from the installed policy packs, which the gate checked are the audited
versions (:func:`installed_clause_types`).

Units: FLOP with 1 multiply-add = 2 FLOP; tokens are the teacher tokenizer's tokens.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence

from audit.fsutil import write_atomic
from audit.numbers import exact, plain, sci
from audit.predicate import AuditPredicate

README_NAME, NOTICE_NAME = "README.md", "NOTICE"
# Licence ids Hugging Face's model-card metadata takes as ``license: <id>`` (a common subset of
# the list in hub-docs, docs/hub/repositories-licenses.md). Any other licence is written as
# ``license: other`` with ``license_name``.
HF_LICENSE_IDS = frozenset({
    "apache-2.0", "mit", "bsd-2-clause", "bsd-3-clause", "isc", "unlicense", "mpl-2.0",
    "gpl-3.0", "lgpl-3.0", "agpl-3.0", "cc0-1.0", "cc-by-4.0", "cc-by-sa-4.0", "cc-by-nc-4.0",
    "cc-by-nc-sa-4.0", "cc-by-nd-4.0", "cc-by-nc-nd-4.0", "openrail", "openrail++",
    "bigscience-openrail-m", "creativeml-openrail-m", "bigcode-openrail-m",
    "bigscience-bloom-rail-1.0", "llama2", "llama3", "llama3.1", "llama3.2", "llama3.3", "gemma",
})
_QUOTED = re.compile(r"[\"\u201c]([^\"\u201c\u201d]{3,})[\"\u201d]")
_NOTICE_QUOTE = re.compile(r"reading\s+[\"\u201c]([^\"\u201c\u201d]{3,})[\"\u201d]", re.I)


@dataclass(frozen=True)
class CardItem:
    """One obligation as the card presents it."""

    id: str
    text: str
    kind: str                   # the clause type, or "regime" / "organization" / "unknown"
    status: str                 # the audit's: met, unmet, todo
    deadline: Optional[str]
    done: Optional[str]         # what was done automatically, if anything
    todo: bool                  # still the publisher's to do


@dataclass(frozen=True)
class CardFiles:
    readme: Path
    notice: Optional[Path]
    items: list[CardItem]
    phrases: list[str]          # attribution phrases that head the card

    @property
    def todos(self) -> list[CardItem]:
        return [item for item in self.items if item.todo]


def installed_clause_types() -> dict[str, str]:
    """``{clause id: clause type}`` for every terms clause of the installed policy packs."""
    from audit.policy.packs import load_packs

    return {clause.id: clause.type for _, doc in load_packs().all_terms() for clause in doc.clauses}


def card_items(audit: AuditPredicate, clause_types: Mapping[str, str]) -> tuple[list[CardItem], list[str], list[str]]:
    """The obligations as card items, the attribution phrases, and the notice texts."""
    finding_kinds = {f.rule_id: f.kind for f in audit.decision.findings}
    items, phrases, notices = [], [], []
    for o in audit.decision.obligations:
        text, rule_id = o.text, o.rule_id
        kind = clause_types.get(rule_id) or finding_kinds.get(rule_id) or "unknown"
        met = o.status == "met" and o.checkable
        done = None
        if kind == "attribution" and (found := _QUOTED.search(text)):
            phrases.append(found.group(1).strip())
            done = f"\u201c{found.group(1).strip()}\u201d heads this card"
        elif kind == "notice_file" and (found := _NOTICE_QUOTE.search(text)):
            notices.append(" ".join(found.group(1).split()))
            done = f"the notice text is in {NOTICE_NAME}"
        elif kind == "derivative_pass_through":
            done = "stated in the card's licence section"
        elif kind == "use_policy":
            done = "repeated under the card's use restrictions"
        items.append(CardItem(id=o.id, text=" ".join(text.split()), kind=kind, status=o.status,
                              deadline=o.deadline, done=done, todo=not met))
    return items, _unique(phrases), _unique(notices)


def _unique(values: list[str]) -> list[str]:
    return list(dict.fromkeys(values))


def _md(text) -> str:
    """Plain text safe inside Markdown: one line, no raw HTML, Markdown syntax escaped."""
    text = html.escape(" ".join(str(text).split()), quote=False)
    return re.sub(r"([\\`*_\[\]|#])", r"\\\1", text)


def shown_path(value) -> str:
    """A local path shows as its last part (the card is published; the build machine is not)."""
    return Path(str(value)).name if Path(str(value)).is_absolute() else str(value)


def _teacher_terms(audit: AuditPredicate) -> tuple[list[str], list[str]]:
    """(terms ids applied, citation URLs of the teacher findings)."""
    teacher = audit.decision.teacher
    terms = (teacher.terms + teacher.upstream) if teacher else []
    urls = [f.citation.url for f in audit.decision.findings if f.kind == "teacher" and f.citation]
    return terms, _unique(urls)


def license_metadata(declared: Optional[str]) -> dict:
    """The card's licence fields: ``{"license": id}`` for an id Hugging Face knows (matched
    case-insensitively, so SPDX's "Apache-2.0" is "apache-2.0"), else ``license: other`` with
    ``license_name`` (``undeclared`` when the plan names no licence)."""
    known = (declared or "").strip().lower()
    if known in HF_LICENSE_IDS:
        return {"license": known}
    return {"license": "other", "license_name": declared or "undeclared"}


ADAPTER_NAMES = {"lora": "LoRA"}


def method_phrase(plan) -> str:
    """How the student learnt, in words, from the audited plan's ``method`` and ``student.adapter``
    (the card must name the method the run used: it is read as a compliance statement)."""
    method = plan.method
    soft = f"{method.loss}, temperature {method.temperature:g}"
    if method.kind == "logits":
        text = f"by online logit distillation ({soft}; the teacher runs beside the student)"
    elif method.kind == "cached_logits":
        text = (f"by logit distillation from cached teacher log-probabilities (top {method.cache_top_k} per "
                f"position, stored as {method.cache_dtype}; {soft})")
    elif method.kind == "sequence":
        text = "by sequence-level distillation (trained on answers the teacher generated"
        text += f", and on the teacher's logits over them: {soft})" if method.also_logits else ")"
    elif method.kind == "on_policy":
        text = (f"by on-policy distillation (the student samples its own answers and learns the teacher's "
                f"token distributions over them; {soft})")
    else:  # a plan kind this card does not know must not be described as another one
        raise ValueError(f"method.kind {method.kind!r}: no model card wording for it")
    adapter = plan.student.adapter
    if adapter is not None:
        text += (f", training {ADAPTER_NAMES.get(adapter.kind, adapter.kind)} adapters (rank {adapter.rank} on "
                 f"{', '.join(adapter.target_modules)}) on the frozen student")
    return text


def base_model_id(plan) -> Optional[str]:
    """The card's ``base_model``: the pre-trained student's id (``student.init: base``), else the
    teacher's; None when that is a local folder (a path on the build machine is no Hub id)."""
    value = plan.student.base_model if plan.student.init == "base" else plan.teacher.model
    return None if not value or Path(str(value)).is_absolute() else str(value)


def co2_metadata(record: dict, grid_gco2_per_kwh: Optional[float]) -> Optional[dict]:
    """Hugging Face's ``co2_eq_emissions`` (grams) from the record's energy and the grid's
    intensity (g CO2-eq per kWh, the audited plan's ``hardware.grid_gco2_per_kwh``); None
    without either."""
    from audit.energy import Energy

    block = record.get("energy")
    if not block or grid_gco2_per_kwh is None:
        return None
    energy = Energy.from_dict(block, source="run record")
    grams = energy.co2_grams(grid_gco2_per_kwh)
    if grams is None:
        return None
    device = record.get("device") or {}
    return {"emissions": round(grams, 3),
            "source": f"flopgate: {energy.status} energy {energy.summary()} x {grid_gco2_per_kwh:g} g CO2-eq/kWh "
                      "(the plan's hardware.grid_gco2_per_kwh)",
            "training_type": "knowledge distillation",
            "hardware_used": f"{device.get('processes')} x {device.get('name')}"}


def card_metadata(plan, record: dict, datasets: Sequence[str] = ()):
    """The card's front matter as huggingface_hub's ``ModelCardData``: licence, tags, base model,
    datasets and, when the plan gives the grid's intensity, the training's CO2-equivalent."""
    from huggingface_hub import ModelCardData

    hardware = plan.hardware
    co2 = co2_metadata(record, hardware.grid_gco2_per_kwh if hardware is not None else None)
    return ModelCardData(**license_metadata(plan.student.license), tags=["distillation", "flopgate"],
                         pipeline_tag="text-generation", base_model=base_model_id(plan),
                         datasets=list(datasets) or None, **({"co2_eq_emissions": co2} if co2 else {}))


def render_readme(plan, audit: AuditPredicate, record: dict, items: list[CardItem],
                  phrases: list[str], notices: list[str], datasets: Sequence[str] = ()) -> str:
    """The model card's Markdown (``plan`` is an ``audit.plan.Plan``)."""
    declared = plan.student.license
    terms, urls = _teacher_terms(audit)
    compute = record.get("compute") or {}
    checkpoint = record.get("checkpoint") or {}
    evaluated = record.get("eval") or {}
    front = card_metadata(plan, record, datasets).to_yaml()
    lines = ["---", front.rstrip(), "---", "", f"# {_md(plan.student.name)}", ""]
    lines += [f"**{_md(p)}**" for p in phrases] + ([""] if phrases else [])
    lines += [
        f"A student model distilled from `{_md(shown_path(plan.teacher.model))}` {_md(method_phrase(plan))}, "
        f"trained with flopgate behind a signed audit (outcome {_md(audit.outcome)}).", "",
        f"Intended use: {_md(plan.use.purpose)} ({_md(plan.use.scope)} scope, "
        f"{_md(plan.use.distribution)} distribution).", "",
        "## Training", "",
        "| | |", "| --- | --- |",
        f"| Teacher | `{_md(shown_path(plan.teacher.model))}` |",
        f"| Student | {_md(plan.student.init)} from `{_md(Path(plan.student.config).name)}` |",
        f"| Tokens processed | {exact(record.get('tokens'))} |",
        f"| Optimizer steps | {exact(record.get('steps'))} |",
        f"| Training compute | {sci(compute.get('flops'))} FLOP (1 multiply-add = 2 FLOP) |",
        f"| Audited budget | {sci(compute.get('budget_flops'))} FLOP, stop at {sci(compute.get('limit_flops'))} |",
        f"| Stopped by the budget | {'yes' if record.get('stopped_by_budget') else 'no'} |",
        *([f"| Held-out evaluation (step {exact(evaluated.get('step'))}, {exact(evaluated.get('tokens'))} tokens) | "
           + ", ".join(f"{name} {plain(evaluated[name])}" for name in ("kl", "ce", "top1_agreement")
                       if evaluated.get(name) is not None) + " |"] if evaluated else []),
        f"| Device | {_md((record.get('device') or {}).get('name'))} x {(record.get('device') or {}).get('processes')} |",
        f"| Accelerator-hours | {plain(record.get('accelerator_hours'))} |",
        f"| Energy | {_md(energy_line(record.get('energy')))} |",
        f"| Weights | `{_md(checkpoint.get('name'))}` (root sha256 `{_md(checkpoint.get('root_sha256'))}`) |",
        f"| Audit envelope | `{_md(shown_path((record.get('audit') or {}).get('envelope')))}` (sha256 "
        f"`{_md((record.get('audit') or {}).get('sha256'))}`) |",
        "", "The signed run record `run-record.intoto.json` holds these figures; check it with "
        "`flopgate verify run-record.intoto.json --pubkey SIGNER.pub`.", "",
        "## Licence and terms", "",
        f"- Student licence: {_md(declared) if declared else 'not declared in the plan (student.license)'}.",
    ]
    if terms:
        lines.append("- The teacher's terms that apply: " + ", ".join(f"`{_md(t)}`" for t in terms) + ".")
    else:
        lines.append("- The audit names no terms document for the teacher.")
    lines += [f"- Source: {_md(url)}" for url in urls]
    lines += [f"- {_md(i.text)}" for i in items if i.kind == "derivative_pass_through"]
    if notices:
        lines.append(f"- The notices the teacher's terms require are in `{NOTICE_NAME}`.")
    uses = [i for i in items if i.kind == "use_policy"]
    if uses:
        lines += ["", "## Use restrictions", ""] + [f"- {_md(i.text)}" for i in uses]
    todos = [i for i in items if i.todo]
    met = [i for i in items if not i.todo]
    lines += ["", "## Obligations carried to this model", ""]
    if not items:
        lines.append("The audit recorded no obligations.")
    for item in met:
        lines.append(f"- [x] {_md(item.text)} (`{_md(item.id)}`, met according to the audit)")
    for item in todos:
        due = f"; due {_md(item.deadline)}" if item.deadline else ""
        auto = f"; flopgate: {_md(item.done)}" if item.done else ""
        lines.append(f"- [ ] {_md(item.text)} (`{_md(item.id)}`, {_md(item.status)}{due}{auto})")
    if todos:
        lines += ["", f"{len(todos)} obligation(s) above are still to do before this model is "
                  "released; a tool cannot fulfil them for you."]
    return "\n".join(lines) + "\n"


def energy_line(block: Optional[dict]) -> str:
    """``0.39 kWh (estimated)`` from a record's energy block; ``not recorded`` for older records."""
    from audit.energy import Energy

    return Energy.from_dict(block, source="run record").summary() if block else "not recorded"


def write_model_card(out_dir: str | Path, *, plan, audit: AuditPredicate, record: dict,
                     clause_types: Mapping[str, str], datasets: Sequence[str] = ()) -> CardFiles:
    """Write ``README.md`` and ``NOTICE`` (only when an obligation gives a notice text) into
    ``out_dir``, each atomically. ``datasets``: the card's ``datasets`` metadata (the names of
    the data sources the audited manifest lists)."""
    out_dir = Path(out_dir)
    items, phrases, notices = card_items(audit, clause_types)
    readme = write_atomic(out_dir / README_NAME, render_readme(plan, audit, record, items,
                                                               phrases, notices, datasets))
    notice = None
    if notices:
        notice = write_atomic(out_dir / NOTICE_NAME, "\n\n".join(notices) + "\n")
    return CardFiles(readme, notice, items, phrases)
