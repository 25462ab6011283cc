"""The HTML run report (``run-report.html``): what a run spent, its loss curve and the
obligations carried to the student, for a compliance officer.

Rendered from the signed run record and the audit (nothing is looked up on the network); the
page is self-contained (no scripts, no external requests). Units: FLOP with 1 multiply-add =
2 FLOP.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import jinja2

from audit.fsutil import write_atomic
from audit.numbers import exact, plain, sci
from audit.predicate import AuditPredicate
from distill.outputs.model_card import CardFiles, shown_path

REPORT_NAME = "run-report.html"


_REPORT = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined).from_string("""\
<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<title>Run report: {{ name }}</title>
<style>
body{font:15px/1.45 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#1d2329}
table{border-collapse:collapse;width:100%;margin:.5rem 0 1.5rem}td,th{border-bottom:1px solid #d8dde3;padding:.35rem .5rem;text-align:left;vertical-align:top}
code{font-size:13px;word-break:break-all}svg.loss{max-width:40rem;display:block}
svg.loss text{font:11px system-ui,sans-serif;fill:#333}.bar{background:#e8ecf0;height:12px;border-radius:6px;overflow:hidden}
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
<p class="energy"><strong>Energy:</strong> {{ energy }}. {{ energy_method }}</p>
<table>{% for label, value in figures %}<tr><th>{{ label }}</th><td>{{ value }}</td></tr>{% endfor %}</table>
{% if loss %}{% set b = box %}<h2>Loss</h2>
<svg class="loss" viewBox="0 0 {{ b.width }} {{ b.height }}" width="100%" role="img" aria-label="loss per valid token by optimizer step">
<line x1="{{ b.left }}" y1="{{ b.top }}" x2="{{ b.left }}" y2="{{ b.bottom }}" stroke="#555"/>
<line x1="{{ b.left }}" y1="{{ b.bottom }}" x2="{{ b.right }}" y2="{{ b.bottom }}" stroke="#555"/>
{% for label, x, anchor in loss.x_ticks %}<line x1="{{ x }}" y1="{{ b.bottom }}" x2="{{ x }}" y2="{{ b.bottom + 4 }}" stroke="#555"/>
<text class="x-tick" x="{{ x }}" y="{{ b.bottom + 16 }}" text-anchor="{{ anchor }}">{{ label }}</text>
{% endfor %}{% for label, y in loss.y_ticks %}<line x1="{{ b.left - 4 }}" y1="{{ y }}" x2="{{ b.left }}" y2="{{ y }}" stroke="#555"/>
<text class="y-tick" x="{{ b.left - 6 }}" y="{{ y + 4 }}" text-anchor="end">{{ label }}</text>
{% endfor %}<text class="x-title" x="{{ (b.left + b.right) / 2 }}" y="{{ b.height - 4 }}" text-anchor="middle">optimizer step</text>
<text class="y-title" transform="rotate(-90)" x="{{ -(b.top + b.bottom) / 2 }}" y="12" text-anchor="middle">loss per valid token</text>
<polyline fill="none" stroke="#2e6bb0" stroke-width="1.5" points="{{ loss.points }}"/></svg>
<p>Loss per valid token, from {{ loss_first }} to {{ loss_last }} over {{ steps }} steps.</p>{% endif %}
<h2>Obligations carried to the student</h2>
<table><tr><th>Obligation</th><th>Status</th><th>Done by flopgate</th></tr>
{% for i in items %}<tr><td>{{ i.text }}<br><code>{{ i.id }}</code></td>
<td class="{{ 'todo' if i.todo else 'met' }}">{{ 'to do' if i.todo else 'met' }}{% if i.deadline %} (due {{ i.deadline }}){% endif %}</td>
<td>{{ i.done or '' }}</td></tr>{% else %}<tr><td colspan="3">none</td></tr>{% endfor %}</table>
<h2>Verification</h2>
<p>The figures above are signed in <code>run-record.intoto.json</code>. Check it with
<code>flopgate verify run-record.intoto.json --pubkey SIGNER.pub</code>.</p>
<h2>EU documents</h2>
<p>The Model Documentation Form and the public summary of training content, written from the audit and this
record: <code>flopgate docs eu AUDIT --pubkey AUDITOR.pub --run-record run-record.intoto.json --runner-pubkey
SIGNER.pub --out eu-docs</code>, then <a href="eu-docs/model-documentation.md">eu-docs/model-documentation.md</a>
and <a href="eu-docs/training-content-summary.md">eu-docs/training-content-summary.md</a>.</p>
</body></html>
""")


def _loss_points(metrics_path: Path) -> list[tuple[int, float]]:
    points = []
    if not metrics_path.is_file():
        return points
    from distill.outputs.run_log import read_metrics_text

    for line in read_metrics_text(metrics_path).splitlines():
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            break
        loss = record.get("loss")
        if isinstance(loss, (int, float)) and loss == loss and abs(loss) != float("inf"):
            points.append((int(record.get("step", len(points) + 1)), float(loss)))
    return points


# the loss chart's box in px: the plot runs from left to right and top to bottom inside it
LOSS_BOX = {"width": 480, "height": 200, "left": 72, "right": 464, "top": 10, "bottom": 160}


@dataclass(frozen=True)
class LossChart:
    """The loss curve in ``LOSS_BOX`` px: polyline points, x ticks (step label, x, text-anchor)
    and y ticks (loss label, y)."""

    points: str
    x_ticks: tuple[tuple[str, float, str], ...]
    y_ticks: tuple[tuple[str, float], ...]


def loss_chart(points: list[tuple[int, float]], box: dict = LOSS_BOX) -> LossChart | None:
    """Optimizer step on x (first and last step labelled), loss per valid token on y (lowest and
    highest labelled); None for fewer than two points."""
    if len(points) < 2:
        return None
    steps, losses = [p[0] for p in points], [p[1] for p in points]
    first, last, low, high = min(steps), max(steps), min(losses), max(losses)
    width, height = box["right"] - box["left"], box["bottom"] - box["top"]

    def x(step: float) -> float:
        return round(box["left"] + width * (step - first) / ((last - first) or 1), 1)

    def y(loss: float) -> float:
        return round(box["top"] + height * (high - loss) / ((high - low) or 1), 1)

    x_ticks = [(exact(first), x(first), "start"), (exact(last), x(last), "end")] if last != first else \
        [(exact(first), x(first), "start")]
    y_ticks = [(plain(high, 4), y(high)), (plain(low, 4), y(low))] if high != low else [(plain(high, 4), y(high))]
    return LossChart(" ".join(f"{x(s)},{y(v)}" for s, v in points), tuple(x_ticks), tuple(y_ticks))


def render_run_report(plan, audit: AuditPredicate, record: dict, card: CardFiles, metrics_path: Path) -> str:
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
        ("Wall time", f"{plain(record.get('wall_time_s'))} s"),
        ("Accelerator-hours", plain(record.get("accelerator_hours"))),
        ("Device", f"{device.get('name')} ({device.get('type')}) x {device.get('processes')}"),
        ("Stopped by the budget", "yes" if record.get("stopped_by_budget") else "no"),
        ("Lost to crashes (charged)", f"{sci(compute.get('lost_flops'))} FLOP, {exact(compute.get('lost_tokens'))} tokens"
         if compute.get("lost_tokens") else "none"),
        ("Final checkpoint", f"{checkpoint.get('name')}, root sha256 {checkpoint.get('root_sha256')}"),
        ("Audit envelope", f"{shown_path(audit_info.get('envelope'))}, sha256 {audit_info.get('sha256')}"),
        ("Approval", approval_text(audit_info)),
    ]
    return _REPORT.render(
        name=plan.student.name, teacher=shown_path(plan.teacher.model), outcome=audit.outcome,
        message=record.get("message", ""), phrases=card.phrases, stopped=bool(record.get("stopped_by_budget")),
        used_pct=f"{used:.1f}", flops=sci(flops), budget=sci(compute.get("budget_flops")), limit=sci(limit),
        audited=sci(compute.get("audited_total_flops")), figures=figures, items=card.items,
        **energy_figures(record.get("energy")),
        loss=loss_chart(points), box=LOSS_BOX, loss_first=plain(points[0][1], 4) if points else "",
        loss_last=plain(points[-1][1], 4) if points else "", steps=record.get("steps"))


def energy_figures(block: dict | None) -> dict:
    """The report's energy line: kWh or MWh and, as the EU form gives it, MWh to two significant
    figures, then the method in words (a record from before energy was metered: not recorded)."""
    from audit.energy import Energy

    if not block:
        return {"energy": "not recorded", "energy_method": "This run record predates energy metering."}
    energy = Energy.from_dict(block, source="run record")
    shown = energy.summary() if energy.joules is None else f"{energy.summary()}, {sci(energy.mwh, 2)} MWh"
    return {"energy": shown, "energy_method": energy.method}


def approval_text(audit_info: dict) -> str:
    """The approval of a REVIEW as the record signs it: who (key fingerprint), when, the note."""
    sha = audit_info.get("approval_sha256")
    if not sha:
        return "none"
    approval = audit_info.get("approval") or {}
    if not approval.get("approver"):
        return f"sha256 {sha}"
    from audit.attest.keys import short_fingerprint

    return (f"approved by {short_fingerprint(approval['approver'])} at {approval.get('approved_at')}: "
            f"\u201c{approval.get('note')}\u201d (approval sha256 {sha})")


def write_run_report(out_dir: str | Path, *, plan, audit: AuditPredicate, record: dict, card: CardFiles,
                     metrics_path: str | Path | None = None) -> Path:
    """Write ``run-report.html`` into ``out_dir`` atomically; the loss curve comes from
    ``metrics_path`` (default ``out_dir/metrics.jsonl``)."""
    out_dir = Path(out_dir)
    metrics = Path(metrics_path) if metrics_path is not None else out_dir / "metrics.jsonl"
    return write_atomic(out_dir / REPORT_NAME, render_run_report(plan, audit, record, card, metrics))
