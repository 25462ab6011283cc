"""The HTML audit report: one self-contained page from the signed audit predicate.

A pure function: no files, no network, no JavaScript in the output. The template is rendered
with autoescaping on and nothing from the plan is ever marked safe; the only markup that is
not escaped by the template is the chart, which ``audit.report.chart`` builds from escaped
text. Links are emitted only for http(s) citation URLs. Figures are FLOP with
1 multiply-add = 2 FLOP; ``None`` is written "unknown".
"""

from __future__ import annotations

import functools
import shlex
from urllib.parse import urlsplit

import jinja2
from markupsafe import Markup

from audit.errors import InputError
from audit import numbers
from audit.policy.decision import regime_figures
from audit.report.chart import compute_chart

SOURCE = "audit predicate"

VERDICTS = {
    "ALLOW": ("allow", "Allowed"),
    "ALLOW_WITH_OBLIGATIONS": ("obligations", "Allowed with obligations"),
    "REVIEW": ("review", "Review required before training"),
    "DENY": ("deny", "Training denied"),
}
METHODS = {
    "counted": "counted from the model's operations",
    "closed_form": "closed-form formula",
    "published": "published figure",
    "parameters_estimate": "estimate from the parameter count",
    "unknown": "unknown",
}
NOTIONS = {
    "cumulative": "cumulative compute",
    "parameter_update": "compute for parameter updates",
    "modification": "compute of the modification",
}
REGIME_STATUS = {
    "exceeds": "exceeds the threshold",
    "below": "below the threshold",
    "not_in_force": "not in force",
    "unknown": "unknown",
}
OBLIGATION_STATUS = {"met": ("☑", "met"), "unmet": ("☒", "unmet"), "todo": ("☐", "to do")}
COMPARATORS = numbers.COMPARATORS

ALLOWING = ("ALLOW", "ALLOW_WITH_OBLIGATIONS")
_REQUIRED = {"plan": dict, "compute": dict, "decision": dict, "outcome": str, "inputs": list}


def verdict_sentence(predicate: dict) -> str:
    """The verdict in words, e.g. "Review required before training: 1 unmet obligation"."""
    outcome = predicate.get("outcome")
    if outcome not in VERDICTS:
        return f"Unrecognised outcome {outcome!r}: treat as not allowed"
    decision = predicate["decision"]
    obligations = decision.get("obligations") or []
    findings = decision.get("findings") or []
    counts = [
        (sum(f.get("effect") == "deny" for f in findings), "blocking finding"),
        (sum(o.get("status") == "unmet" for o in obligations), "unmet obligation"),
        (sum(f.get("effect") == "review" for f in findings), "finding to review", "findings to review"),
        (sum(o.get("status") == "todo" for o in obligations), "obligation to fulfil", "obligations to fulfil"),
    ]
    parts = [numbers.counted(*count) for count in counts if count[0]]
    return f"{VERDICTS[outcome][1]}: {', '.join(parts) if parts else 'nothing outstanding'}"


def verdict_reasons(decision: dict) -> list[str]:
    """What stands behind the verdict, most serious first: blocking and review findings,
    unmet obligations, then obligations still to fulfil."""
    findings = decision.get("findings") or []
    obligations = decision.get("obligations") or []
    reasons = [f"Blocking: {f.get('explanation')}" for f in findings if f.get("effect") == "deny"]
    reasons += [f"Unmet obligation: {o.get('text')}" for o in obligations if o.get("status") == "unmet"]
    reasons += [f"To review: {f.get('explanation')}" for f in findings if f.get("effect") == "review"]
    for o in obligations:
        if o.get("status") == "todo":
            deadline = f" (deadline: {o['deadline']})" if o.get("deadline") else ""
            reasons.append(f"To fulfil: {o.get('text')}{deadline}")
    return reasons


def http_url(url) -> str | None:
    """The URL when it is http(s), else None (no javascript:, data: or relative links)."""
    if not isinstance(url, str):
        return None
    parts = urlsplit(url.strip())
    return url.strip() if parts.scheme in ("http", "https") and parts.netloc else None


def _flop(value, unit: str = "FLOP") -> str:
    """Two significant figures with a unit, or "unknown" (never "unknown FLOP")."""
    figure = numbers.sci(value)
    return figure if figure == numbers.UNKNOWN else f"{figure} {unit}"


def _exact_breakable(value) -> Markup:
    """``numbers.exact`` with a line-break opportunity after each thousands comma."""
    return Markup(",<wbr>").join(numbers.exact(value).split(","))


def _flatten(value, prefix: str = "") -> list[tuple[str, str]]:
    """Plan content as (dotted.key, text) rows; a missing value is "not set"."""
    if isinstance(value, dict):
        rows = []
        for key, item in value.items():
            rows += _flatten(item, f"{prefix}.{key}" if prefix else str(key))
        return rows
    if value is None:
        text = "not set"
    elif isinstance(value, bool):
        text = "yes" if value else "no"
    elif isinstance(value, list) and any(isinstance(item, dict) for item in value):
        return [row for index, item in enumerate(value) for row in _flatten(item, f"{prefix}[{index}]")]
    elif isinstance(value, list):
        text = ", ".join(str(item) for item in value) if value else "none"
    elif isinstance(value, float):
        text = numbers.short_sci(value) if abs(value) >= 1e6 else f"{value:g}"
    else:
        text = str(value)
    return [(prefix, text)]


def _one_teacher_once(content: dict) -> dict:
    """Plan content without ``teachers`` when it only repeats ``teacher`` (a one-teacher plan)."""
    if content.get("teachers") == [content.get("teacher")]:
        return {k: v for k, v in content.items() if k != "teachers"}
    return content


def _warnings(predicate: dict) -> list[str]:
    """Contradictions a reader must see. The page then shows the gate as closed (fail closed)."""
    warnings = []
    if predicate.get("gate_open") is True and predicate["outcome"] not in ALLOWING:
        warnings.append(f"The attestation says the gate opens, but the outcome is {predicate['outcome']}; "
                        "this page treats the gate as closed.")
    if predicate.get("historical") is True:
        warnings.append(f"Historical audit: the rules were applied as of {predicate.get('as_of')}, a date "
                        "before the plan's start and the signing day. It records how the law stood "
                        "then; the training gate refuses it.")
    return warnings


def _check_shape(predicate) -> None:
    if not isinstance(predicate, dict):
        raise InputError("expected a JSON object", source=SOURCE)
    for field, kind in _REQUIRED.items():
        if not isinstance(predicate.get(field), kind):
            expected = {dict: "an object", list: "a list", str: "a string"}[kind]
            raise InputError(f"expected {expected}, got {type(predicate.get(field)).__name__}",
                             source=SOURCE, field=field)


@functools.cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("audit", "report/templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        sci=numbers.sci, short_sci=numbers.short_sci, exact=numbers.exact, ratio=numbers.ratio,
        usd=numbers.usd, percent=numbers.percent, http_url=http_url, plain=numbers.plain,
        known=lambda value: numbers.UNKNOWN if value is None else value,
        exact_breakable=_exact_breakable, flop=_flop, regime_figures=regime_figures,
    )
    return env


def render_audit_html(predicate: dict, *, signer_fingerprint: str | None,
                      verification: dict | None = None,
                      attestation_name: str = "audit.intoto.json",
                      ledger: dict | None = None, documents: list[dict] | None = None) -> str:
    """Render the audit predicate (as signed) to one self-contained HTML page.

    ``verification`` is ``{"ok": bool, "reason": str}`` when the signature was checked; when
    ``ok`` is not True the page opens with a warning banner. ``ledger`` is the audit's ledger
    history (:func:`audit.ledger.history.audit_history`, or ``{"missing": True, "location":
    ...}``); without it the page has no ledger section (``flopgate check`` writes the report
    before any run). ``documents``: links to the EU documents beside the page
    (:func:`audit.docs.write.documents_beside`). Raises ``InputError`` when the
    predicate lacks a field the report needs.
    """
    _check_shape(predicate)
    decision = predicate["decision"]
    obligations = decision.get("obligations") or []
    findings = decision.get("findings") or []
    plan = predicate["plan"]
    css_class = VERDICTS.get(predicate["outcome"], ("deny", ""))[0]
    plan_argument = shlex.quote(str(plan.get("path") or "PLAN"))
    context = {
        "p": predicate,
        "compute": predicate["compute"],
        "decision": decision,
        "plan": plan,
        "content": plan.get("content") or {},
        "verdict": verdict_sentence(predicate),
        "verdict_class": css_class,
        "reasons": verdict_reasons(decision),
        "gate_open": predicate.get("gate_open") is True and predicate["outcome"] in ALLOWING,
        "warnings": _warnings(predicate),
        "verification": verification,
        "verification_failed": verification is not None and verification.get("ok") is not True,
        "fingerprint": signer_fingerprint,
        "chart": compute_chart(predicate["compute"], decision.get("regimes") or [],
                               rules_date=str(predicate["as_of"]) if predicate.get("as_of") else None),
        "obligations_by_id": _obligations_by_id(obligations),
        "teacher_findings": [f for f in findings if f.get("kind") == "teacher"],
        "other_findings": [f for f in findings if f.get("kind") != "teacher"],
        "plan_rows": _flatten(_one_teacher_once(plan.get("content") or {})),
        "verify_command": f"flopgate verify {shlex.quote(attestation_name)} --pubkey KEY.pub --plan {plan_argument}",
        "digest_command": f"sha256sum {plan_argument}",
        "methods": METHODS, "notions": NOTIONS, "regime_status": REGIME_STATUS,
        "obligation_status": OBLIGATION_STATUS, "comparators": COMPARATORS,
        "ledger": ledger,
        "documents": documents or [],
    }
    try:
        return _environment().get_template("audit.html.j2").render(context)
    except (jinja2.UndefinedError, TypeError, AttributeError) as exc:
        # a missing key (StrictUndefined) or a value of the wrong type somewhere in the predicate
        raise InputError(f"a field the report needs is missing or malformed ({exc})", source=SOURCE) from None


def _obligations_by_id(obligations: list[dict]) -> dict:
    """Each obligation under its own id and under the id of every legal basis merged into it (the
    same duty from another regime, :mod:`audit.policy.duties`), so each regime row finds its duty."""
    found = {b.get("obligation_id"): o for o in obligations for b in o.get("legal_bases") or []}
    return {**found, **{o.get("id"): o for o in obligations}}
