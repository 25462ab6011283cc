"""The student's model card (``README.md``), its ``NOTICE`` file and an HTML run report.

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
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional

import jinja2
import yaml

from audit.fsutil import write_atomic
from audit.report.numbers import exact, sci

README_NAME, NOTICE_NAME, REPORT_NAME = "README.md", "NOTICE", "run-report.html"
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
    report: Path
    items: list[CardItem]

    @property
    def todos(self) -> list[CardItem]:
        return [item for item in self.items if item.todo]


def installed_clause_types() -> dict[str, str]:
    """``{clause id: clause type}`` for every terms clause of the installed policy packs."""
    from audit.policy.packs import load_packs

    return {clause.id: clause.type for _, doc in load_packs().all_terms() for clause in doc.clauses}


def card_items(audit_predicate: dict, clause_types: Mapping[str, str]) -> tuple[list[CardItem], list[str], list[str]]:
    """The obligations as card items, the attribution phrases, and the notice texts."""
    decision = audit_predicate.get("decision") or {}
    finding_kinds = {f.get("rule_id"): f.get("kind") for f in decision.get("findings") or []
                     if isinstance(f, dict)}
    items, phrases, notices = [], [], []
    for o in decision.get("obligations") or []:
        if not isinstance(o, dict):
            continue
        text, rule_id = str(o.get("text") or ""), o.get("rule_id")
        kind = clause_types.get(rule_id) or finding_kinds.get(rule_id) or "unknown"
        met = o.get("status") == "met" and o.get("checkable") is True
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
        items.append(CardItem(id=str(o.get("id")), text=" ".join(text.split()), kind=kind,
                              status=str(o.get("status")), deadline=o.get("deadline"),
                              done=done, todo=not met))
    return items, _unique(phrases), _unique(notices)


def _unique(values: list[str]) -> list[str]:
    return list(dict.fromkeys(values))


def _md(text) -> str:
    """Plain text safe inside Markdown: one line, no raw HTML, Markdown syntax escaped."""
    text = html.escape(" ".join(str(text).split()), quote=False)
    return re.sub(r"([\\`*_\[\]|#])", r"\\\1", text)


def _shown_path(value) -> str:
    """A local path shows as its last part (the card is published; the build machine is not)."""
    return Path(str(value)).name if Path(str(value)).is_absolute() else str(value)


def _hours(value) -> str:
    return f"{value:.3g}" if isinstance(value, (int, float)) else "unknown"


def _teacher_terms(audit_predicate: dict) -> tuple[list[str], list[str]]:
    """(terms ids applied, citation URLs of the teacher findings)."""
    decision = audit_predicate.get("decision") or {}
    teacher = decision.get("teacher") or {}
    terms = [str(t) for t in (teacher.get("terms") or []) + (teacher.get("upstream") or [])]
    urls = [str((f.get("citation") or {}).get("url")) for f in decision.get("findings") or []
            if isinstance(f, dict) and f.get("kind") == "teacher" and (f.get("citation") or {}).get("url")]
    return terms, _unique(urls)


def render_readme(plan, audit_predicate: dict, record: dict, items: list[CardItem],
                  phrases: list[str], notices: list[str]) -> str:
    """The model card's Markdown (``plan`` is an ``audit.plan.Plan``)."""
    declared = plan.student.license
    front = {"license": "other", "license_name": declared or "undeclared",
             "tags": ["distillation", "flopgate"], "pipeline_tag": "text-generation"}
    terms, urls = _teacher_terms(audit_predicate)
    compute = record.get("compute") or {}
    checkpoint = record.get("checkpoint") or {}
    lines = ["---", yaml.safe_dump(front, sort_keys=True).rstrip(), "---", "", f"# {_md(plan.student.name)}", ""]
    lines += [f"**{_md(p)}**" for p in phrases] + ([""] if phrases else [])
    lines += [
        f"A student model distilled from `{_md(_shown_path(plan.teacher.model))}` by online logit distillation "
        f"({_md(plan.method.loss)}, temperature {plan.method.temperature:g}), trained with flopgate "
        f"behind a signed audit (outcome {_md(audit_predicate.get('outcome'))}).", "",
        f"Intended use: {_md(plan.use.purpose)} ({_md(plan.use.scope)} scope, "
        f"{_md(plan.use.distribution)} distribution).", "",
        "## Training", "",
        "| | |", "| --- | --- |",
        f"| Teacher | `{_md(_shown_path(plan.teacher.model))}` |",
        f"| Student | {_md(plan.student.init)} from `{_md(Path(plan.student.config).name)}` |",
        f"| Tokens processed | {exact(record.get('tokens'))} |",
        f"| Optimizer steps | {exact(record.get('steps'))} |",
        f"| Training compute | {sci(compute.get('flops'))} FLOP (1 multiply-add = 2 FLOP) |",
        f"| Audited budget | {sci(compute.get('budget_flops'))} FLOP, stop at {sci(compute.get('limit_flops'))} |",
        f"| Stopped by the budget | {'yes' if record.get('stopped_by_budget') else 'no'} |",
        f"| Device | {_md((record.get('device') or {}).get('name'))} x {(record.get('device') or {}).get('processes')} |",
        f"| Accelerator-hours | {_hours(record.get('accelerator_hours'))} |",
        f"| Weights | `{_md(checkpoint.get('name'))}` (root sha256 `{_md(checkpoint.get('root_sha256'))}`) |",
        f"| Audit envelope | `{_md(_shown_path((record.get('audit') or {}).get('envelope')))}` (sha256 "
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


_REPORT = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined).from_string("""\
<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<title>Run report: {{ name }}</title>
<style>
body{font:15px/1.45 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#1d2329}
table{border-collapse:collapse;width:100%;margin:.5rem 0 1.5rem}td,th{border-bottom:1px solid #d8dde3;padding:.35rem .5rem;text-align:left;vertical-align:top}
code{font-size:13px;word-break:break-all}.bar{background:#e8ecf0;height:12px;border-radius:6px;overflow:hidden}
.bar span{display:block;height:100%;background:{{ '#c0392b' if stopped else '#2e7d5b' }}}
.todo{color:#9a5b00}.met{color:#2e7d5b}.phrase{font-weight:bold;font-size:1.1rem}
</style></head><body>
<h1>Run report: {{ name }}</h1>
{% for p in phrases %}<p class="phrase">{{ p }}</p>{% endfor %}
<p>Distilled from <code>{{ teacher }}</code> behind an audit with outcome <strong>{{ outcome }}</strong>.
{{ message }}</p>
<h2>Compute</h2>
<div class="bar" title="compute used against the stop limit"><span style="width:{{ used_pct }}%"></span></div>
<p>{{ flops }} FLOP used of a {{ budget }} FLOP budget (the run stops before {{ limit }} FLOP);
the audit estimated {{ audited }} FLOP. 1 multiply-add = 2 FLOP.</p>
<table>{% for label, value in figures %}<tr><th>{{ label }}</th><td>{{ value }}</td></tr>{% endfor %}</table>
{% if loss_points %}<h2>Loss</h2>
<svg viewBox="0 0 400 120" width="100%" role="img" aria-label="training loss by step">
<polyline fill="none" stroke="#2e6bb0" stroke-width="1.5" points="{{ loss_points }}"/></svg>
<p>Loss per valid token, from {{ loss_first }} to {{ loss_last }} over {{ steps }} steps.</p>{% endif %}
<h2>Obligations carried to the student</h2>
<table><tr><th>Obligation</th><th>Status</th><th>Done by flopgate</th></tr>
{% for i in items %}<tr><td>{{ i.text }}<br><code>{{ i.id }}</code></td>
<td class="{{ 'todo' if i.todo else 'met' }}">{{ 'to do' if i.todo else 'met' }}{% if i.deadline %} (due {{ i.deadline }}){% endif %}</td>
<td>{{ i.done or '' }}</td></tr>{% else %}<tr><td colspan="3">none</td></tr>{% endfor %}</table>
<h2>Verification</h2>
<p>The figures above are signed in <code>run-record.intoto.json</code>. Check it with
<code>flopgate verify run-record.intoto.json --pubkey SIGNER.pub</code>.</p>
</body></html>
""")


def _loss_points(metrics_path: Path) -> list[tuple[int, float]]:
    points = []
    if not metrics_path.is_file():
        return points
    for line in metrics_path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            break
        loss = record.get("loss")
        if isinstance(loss, (int, float)) and loss == loss and abs(loss) != float("inf"):
            points.append((int(record.get("step", len(points) + 1)), float(loss)))
    return points


def _polyline(points: list[tuple[int, float]]) -> str:
    """SVG points in a 400 x 120 box (numbers only, so nothing to escape)."""
    if len(points) < 2:
        return ""
    steps, losses = [p[0] for p in points], [p[1] for p in points]
    span_x, span_y = (max(steps) - min(steps)) or 1, (max(losses) - min(losses)) or 1
    return " ".join(f"{5 + 390 * (s - min(steps)) / span_x:.1f},{5 + 110 * (max(losses) - v) / span_y:.1f}"
                    for s, v in points)


def render_report(plan, audit_predicate: dict, record: dict, items: list[CardItem],
                  phrases: list[str], metrics_path: Path) -> str:
    """The self-contained HTML run report (no scripts, no external requests)."""
    compute = record.get("compute") or {}
    flops, limit = compute.get("flops"), compute.get("limit_flops")
    used = 0.0 if not (isinstance(flops, (int, float)) and limit) else min(100.0, 100 * flops / limit)
    device = record.get("device") or {}
    audit_info = record.get("audit") or {}
    checkpoint = record.get("checkpoint") or {}
    points = _loss_points(metrics_path)
    figures = [
        ("Tokens processed", exact(record.get("tokens"))), ("Optimizer steps", exact(record.get("steps"))),
        ("Wall time", f"{_hours(record.get('wall_time_s'))} s"),
        ("Accelerator-hours", _hours(record.get("accelerator_hours"))),
        ("Device", f"{device.get('name')} ({device.get('type')}) x {device.get('processes')}"),
        ("Stopped by the budget", "yes" if record.get("stopped_by_budget") else "no"),
        ("Final checkpoint", f"{checkpoint.get('name')}, root sha256 {checkpoint.get('root_sha256')}"),
        ("Audit envelope", f"{_shown_path(audit_info.get('envelope'))}, sha256 {audit_info.get('sha256')}"),
        ("Approval", audit_info.get("approval_sha256") or "none"),
    ]
    return _REPORT.render(
        name=plan.student.name, teacher=_shown_path(plan.teacher.model), outcome=audit_predicate.get("outcome"),
        message=record.get("message", ""), phrases=phrases, stopped=bool(record.get("stopped_by_budget")),
        used_pct=f"{used:.1f}", flops=sci(flops), budget=sci(compute.get("budget_flops")), limit=sci(limit),
        audited=sci(compute.get("audited_total_flops")), figures=figures, items=items,
        loss_points=_polyline(points), loss_first=f"{points[0][1]:.4f}" if points else "",
        loss_last=f"{points[-1][1]:.4f}" if points else "", steps=record.get("steps"))


def write_model_card(out_dir: str | Path, *, plan, audit_predicate: dict, record: dict,
                     clause_types: Mapping[str, str], metrics_path: str | Path | None = None) -> CardFiles:
    """Write ``README.md``, ``NOTICE`` (only when an obligation gives a notice text) and
    ``run-report.html`` into ``out_dir``, each atomically."""
    out_dir = Path(out_dir)
    items, phrases, notices = card_items(audit_predicate, clause_types)
    readme = write_atomic(out_dir / README_NAME, render_readme(plan, audit_predicate, record, items,
                                                               phrases, notices))
    notice = None
    if notices:
        notice = write_atomic(out_dir / NOTICE_NAME, "\n\n".join(notices) + "\n")
    metrics = Path(metrics_path) if metrics_path is not None else out_dir / "metrics.jsonl"
    report = write_atomic(out_dir / REPORT_NAME, render_report(plan, audit_predicate, record, items,
                                                               phrases, metrics))
    return CardFiles(readme, notice, report, items)
