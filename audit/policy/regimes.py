"""Legal compute thresholds: evaluate each regime that covers the plan's jurisdictions. Pure.

A regime is in force on ``as_of`` when ``in_force_from <= as_of < in_force_until``. One not in
force is reported with status ``not_in_force`` and never yields findings that change the
outcome. One in force compares one figure of the estimate with its threshold, exactly as the
text says (``>`` or ``>=``); an unknown figure gives status ``unknown`` and a REVIEW finding.

A regime that compares ``own_training_flops`` reads the student's own training compute: its
training run plus, when its weights start from a pre-existing model, that model's training; the
teacher's forward passes (inference) are left out. Laws such as California SB 53 count the
compute a model "was trained using", not the compute of another model that produced its data.

An obligation may carry ``when`` (it applies only then) and ``unless`` (exemptions, e.g. the EU
open-source exemption). A condition that cannot be decided keeps the duty (fail closed) and its
text says what was missing. ``deadline_days_from_audit`` dates a deadline from the audit (the
pre-run estimate, e.g. the EU notification), so it can fall before the run starts; without an
audit date the deadline stays in words.

A plan jurisdiction that no regime names in its ``applies_to`` is not covered by any pack: what
its law says about training compute is unknown, so it gives an ``engine.unknown-jurisdiction``
REVIEW finding naming the code (fail closed), never a silent empty table. A broad code (``US``)
does not bring in the sub-national regimes (``US-CA``, ``US-NY``); an ``engine.sub-national-scope``
info finding names those the plan leaves out, so the narrower scope is never silent.
"""

from __future__ import annotations

import datetime as dt
from typing import Optional

from audit.numbers import quantity
from audit.policy.conditions import (
    COMPARE, FACT_LABELS, Context, and3, fact_test, jurisdiction_covered, missing_facts,
    uncovered_jurisdictions, when_holds,
)
from audit.policy.failclosed import engine_finding, rule_error
from audit.policy.decision import Finding, LegalBasis, Obligation, RegimeResult
from audit.policy.packs import LoadedPack, PolicySet
from audit.policy.provider import FALLBACK_GPAI, FALLBACK_SYSTEMIC, provider_role
from audit.policy.schema import Regime
from audit.compute.types import OWN_TRAINING_COMPONENTS

_NOTION = {"total_flops": "cumulative", "update_flops": "parameter_update",
           "modification_flops": "modification", "own_training_flops": "cumulative", "cost_usd": "cumulative"}

_LABELS = {**FACT_LABELS, "own_training_flops": (
    "the student's own training compute (its training run, plus the training of a model whose weights "
    "initialise it; teacher inference excluded)")}


def regime_fact(ctx: Context, name: str) -> Optional[float]:
    """The figure a regime compares; ``own_training_flops`` is summed from the estimate's
    components (None when one of them is unknown or there is none)."""
    if name != "own_training_flops":
        return ctx.fact(name)
    values = [c.flops for c in ctx.compute.components if c.id in OWN_TRAINING_COMPONENTS]
    if not values or any(v is None for v in values):
        return None
    return float(sum(values))


def evaluate_regimes(ctx: Context, packs: PolicySet
                     ) -> tuple[list[Finding], list[Obligation], list[RegimeResult]]:
    findings: list[Finding] = []
    obligations: list[Obligation] = []
    results: list[RegimeResult] = []
    for loaded, regime in packs.regimes():
        if not jurisdiction_covered(ctx.plan.organization.jurisdictions, regime.applies_to):
            continue
        try:
            f, o, r = evaluate_regime(ctx, loaded, regime)
        except Exception as exc:  # noqa: BLE001 - fail closed: a broken rule means REVIEW
            f, o, r = [rule_error(regime.id, exc)], [], []
        findings += f
        obligations += o
        results += r
    codes = ctx.plan.organization.jurisdictions
    return (jurisdiction_findings(codes, packs) + sub_national_findings(codes, packs, ctx.as_of)
            + provider_findings(ctx, packs) + findings, obligations, results)


PROVIDER_RULE = "engine.provider-status"
GUIDELINES = "Commission GPAI guidelines C(2025) 5045"


def _uses_provider(regime: Regime) -> bool:
    whens = [regime.when] + [w for spec in regime.obligations for w in [spec.when, *spec.unless]]
    return any(w is not None and w.provider is not None for w in whens)


def provider_findings(ctx: Context, packs: PolicySet) -> list[Finding]:
    """One ``engine.provider-status`` info finding for a student built on a pre-existing model
    when an in-force regime covering the plan decides duties by provider status (the EU pack):
    it says whether the organisation is the provider of the result, and why
    (:mod:`audit.policy.provider`). Undecided status is said here; the regimes it leaves
    undecided give their own REVIEW findings."""
    if ctx.plan.student.init == "scratch":
        return []
    if not any(_uses_provider(r) and in_force(r, ctx.as_of)
               and jurisdiction_covered(ctx.plan.organization.jurisdictions, r.applies_to)
               for _, r in packs.regimes()):
        return []
    compute = ctx.compute
    role = provider_role(ctx.plan, compute)
    modification, original = compute.modification_flops, compute.original_model_flops
    name = compute.original_model or "the original model"
    shown_mod = "unknown" if modification is None else quantity(modification, "FLOP")
    if original is not None:
        test = f"one third of {name}'s training compute ({quantity(original, 'FLOP')} / 3 = " \
               f"{quantity(original / 3, 'FLOP')})"
    else:
        test = (f"one third of {name}'s training compute, which is unknown: the guidelines then use "
                f"{quantity(FALLBACK_GPAI, 'FLOP')}, or {quantity(FALLBACK_SYSTEMIC, 'FLOP')} for a systemic-risk "
                "original")
    observed = f"compute of the modification: {shown_mod}"
    if role == "modifier_provider":
        text = (f"Provider status: the student modifies {name} and this run's compute ({shown_mod}) is greater "
                f"than {test}, so the organisation is the provider of the modified model and owes the provider "
                f"duties for it ({GUIDELINES}, paras 60-64 and 68-70).")
    elif role == "modifier_not_provider":
        text = (f"Provider status: the student modifies {name} and this run's compute ({shown_mod}) is at most "
                f"{test}, so the organisation is a downstream modifier, not the provider of the result "
                f"({GUIDELINES}, paras 60-64): the provider duties (Art. 53-55, the Commission notification) stay "
                "with the original model's provider, and only the duties that attach to a modifier, with the "
                "teacher's and base model's terms, apply to this plan.")
    else:
        text = (f"Provider status undecided: whether this run's compute ({shown_mod}) is greater than {test} "
                f"cannot be told, so who is the provider of the result is unknown ({GUIDELINES}, paras 60-64); the "
                "regimes that depend on it are reviewed.")
    return [engine_finding(PROVIDER_RULE, text, effect="info", observed=observed, threshold=test, comparator=">")]


SUB_NATIONAL_RULE = "engine.sub-national-scope"


def sub_national_findings(plan_codes: list[str], packs: PolicySet, as_of: dt.date) -> list[Finding]:
    """One ``engine.sub-national-scope`` info finding per broad plan code (``US``) for which
    regime packs hold sub-national regimes (``applies_to: [US-CA]``) the plan does not list: a
    plan that says ``US`` is not checked against California's or New York's law, and says so.
    Regimes that ended before ``as_of`` are left out. Laws are named by their pack's ``title``
    (the part before " - ")."""
    out = []
    for code in dict.fromkeys(c for c in plan_codes if "-" not in c):
        laws: dict[str, list[str]] = {}
        for loaded, regime in packs.regimes():
            if regime.in_force_until is not None and regime.in_force_until <= as_of:
                continue
            for sub in regime.applies_to:
                if sub.startswith(code + "-") and sub not in plan_codes:
                    names = laws.setdefault(sub, [])
                    law = loaded.pack.title.split(" - ")[0].strip()
                    if law not in names:
                        names.append(law)
        if not laws:
            continue
        subs = sorted(laws)
        named = list(dict.fromkeys(law for sub in subs for law in laws[sub]))
        text = (f"{code}: sub-national laws apply only when listed: add {', '.join(subs)} to "
                f"organization.jurisdictions to check {_and(named)}. As written, the plan is not checked "
                f"against them.")
        out.append(engine_finding(SUB_NATIONAL_RULE, text, effect="info",
                                  observed=f"organization.jurisdictions: [{', '.join(plan_codes)}]"))
    return out


def _and(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def jurisdiction_findings(plan_codes: list[str], packs: PolicySet) -> list[Finding]:
    """One ``engine.unknown-jurisdiction`` REVIEW finding per plan code no regime covers."""
    covered = {code for _, regime in packs.regimes() for code in regime.applies_to}
    covered |= {code for _, market in packs.markets() for code in market.applies_to}
    out = []
    for code in uncovered_jurisdictions(plan_codes, covered):
        parent = code.split("-")[0]
        if parent != code and parent in covered:
            text = (f"No regime pack covers {code}: the rules for {parent} were applied, but no pack "
                    f"describes {code}'s own law, so whether it attaches duties to this run is unknown; a "
                    f"person must review it (or add a regime pack that covers {code}).")
        else:
            text = (f"No regime pack covers {code}, so whether its law attaches duties to training compute "
                    f"is unknown; a person must review it (or add a regime pack that covers {code}).")
        out.append(engine_finding("engine.unknown-jurisdiction", text,
                                  observed=f"organization.jurisdictions includes {code}"))
    return out


def evidence_note(citation) -> str:
    """What a finding must say when its rule rests on less than the primary text."""
    if citation.evidence == "primary":
        return ""
    return (f" Evidence: {citation.evidence}. The rule's text or figure was not verified against the primary "
            "text, so this outcome is only as sure as its source.")


def in_force(regime: Regime, as_of: dt.date) -> bool:
    return regime.in_force_from <= as_of and (regime.in_force_until is None or as_of < regime.in_force_until)


def _not_in_force_note(regime: Regime, as_of: dt.date) -> str:
    if as_of < regime.in_force_from:
        return f"not yet in force on {as_of}: applies from {regime.in_force_from}"
    return f"{regime.ended} on {regime.in_force_until}; not in force on {as_of}"


def threshold_for(regime: Regime, ctx: Context) -> tuple[float, str]:
    """The threshold value and how it was set (fixed, one third of the original, or fallback)."""
    if regime.threshold is not None:
        return regime.threshold, ""
    rel = regime.relative_threshold
    base = ctx.fact(rel.fraction_of)
    if base is None:
        return rel.fallback, f" (fallback: {_LABELS[rel.fraction_of]} is unknown)"
    return base / rel.divisor, f" ({_LABELS[rel.fraction_of]} {quantity(base, 'FLOP')} / {rel.divisor:g})"


def evaluate_regime(ctx: Context, loaded: LoadedPack, regime: Regime
                    ) -> tuple[list[Finding], list[Obligation], list[RegimeResult]]:
    unit = "USD" if regime.fact == "cost_usd" else "FLOP"
    base = dict(id=regime.id, name=regime.name, jurisdiction=regime.jurisdiction,
                comparator=regime.comparator, compute_notion=_NOTION[regime.fact],
                citation=regime.citation, pack_id=loaded.pack.id, pack_version=loaded.pack.version,
                fact=regime.fact, unit=unit)

    def finding(effect: str, explanation: str, observed: Optional[str] = None,
                threshold: Optional[str] = None) -> Finding:
        explanation += evidence_note(regime.citation)
        return Finding(rule_id=regime.id, pack_id=loaded.pack.id, pack_version=loaded.pack.version,
                       kind="regime", effect=effect, observed=observed, threshold=threshold,
                       comparator=regime.comparator if threshold else None, citation=regime.citation,
                       explanation=explanation)

    if not in_force(regime, ctx.as_of):
        note = _not_in_force_note(regime, ctx.as_of)
        if regime.status_note:
            note += f". {regime.status_note}"
        return [], [], [RegimeResult(**base, in_force=False, status="not_in_force", status_note=note)]

    applies = when_holds(regime.when, ctx)
    if applies is False:
        return [finding("info", f"{regime.name}: does not apply to this plan. {regime.explanation}")], [], []

    threshold, how = threshold_for(regime, ctx)
    shown_threshold = quantity(threshold, unit) + how
    observed = regime_fact(ctx, regime.fact)
    flops = dict(threshold_flops=threshold if unit == "FLOP" else None, threshold_value=threshold)
    # an undecided condition matters only when the threshold is met: below it, no duty either way
    if observed is None or (applies is None and COMPARE[regime.comparator](observed, threshold)):
        missing = [_LABELS[regime.fact]] if observed is None else missing_facts(regime.when, ctx)
        why = f" (the estimate lacks: {'; '.join(ctx.compute.missing_facts)})" if ctx.compute.missing_facts else ""
        text = (f"{regime.name}: cannot be decided because {', '.join(missing)} is unknown{why}; "
                f"a person must review it. {regime.explanation}")
        return ([finding("review", text, "unknown", shown_threshold)], [],
                [RegimeResult(**base, **flops, in_force=True, status="unknown",
                              status_note=f"missing: {', '.join(missing)}")])

    shown_observed = quantity(observed, unit) + f" ({_LABELS[regime.fact]})"
    values = dict(**flops, observed_flops=observed if unit == "FLOP" else None, observed_value=observed,
                  margin_ratio=observed / threshold)
    exceeded = COMPARE[regime.comparator](observed, threshold)
    extra = and3([fact_test(t, ctx) for t in regime.requires]) if exceeded else False
    if not exceeded or extra is False:
        why = "below the threshold" if not exceeded else "the threshold is met but a further condition is not"
        text = f"{regime.name}: {why}. {regime.explanation}"
        return ([finding("info", text, shown_observed, shown_threshold)], [],
                [RegimeResult(**base, **values, in_force=True, status="below")])
    if extra is None:
        missing = [FACT_LABELS[t.fact] for t in regime.requires if ctx.fact(t.fact) is None]
        text = (f"{regime.name}: the threshold is met, but {', '.join(missing)} is unknown, so whether "
                f"the rule applies cannot be decided; a person must review it. {regime.explanation}")
        return ([finding("review", text, shown_observed, shown_threshold)], [],
                [RegimeResult(**base, **values, in_force=True, status="unknown",
                              status_note=f"missing: {', '.join(missing)}")])

    obligations = [o for o in (duty_of(regime, spec, ctx) for spec in regime.obligations) if o is not None]
    effect = regime.effect
    text = f"{regime.name}: threshold exceeded. {regime.explanation}"
    result = RegimeResult(**base, **values, in_force=True, status="exceeds",
                          obligations=[o.id for o in obligations])
    return [finding(effect, text, shown_observed, shown_threshold)], obligations, [result]


def duty_of(regime, spec, ctx: Context) -> Optional[Obligation]:
    """The duty of ``spec`` under ``regime`` (a regime or a market: anything with an ``id``), or None when its ``when`` is false or one of its ``unless`` exemptions holds.
    An undecided condition keeps the duty and says so in its text (fail closed)."""
    applies = when_holds(spec.when, ctx)
    exempt = [when_holds(u, ctx) for u in spec.unless]
    if applies is False or any(e is True for e in exempt):
        return None
    text = spec.text
    undecided = ([spec.when] if applies is None else []) + [u for u, e in zip(spec.unless, exempt) if e is None]
    if undecided:
        missing = list(dict.fromkeys(m for w in undecided for m in missing_facts(w, ctx)))
        text += (" (Listed because whether it applies could not be decided"
                 + (f": {', '.join(missing)} is unknown" if missing else "") + ".)")
    deadline = spec.deadline
    if spec.deadline_days_from_start is not None:
        date = ctx.plan.schedule.start + dt.timedelta(days=spec.deadline_days_from_start)
        deadline = f"{date.isoformat()} ({deadline})" if deadline else date.isoformat()
    if spec.deadline_days_from_audit is not None and ctx.audit_date is not None:
        date = ctx.audit_date + dt.timedelta(days=spec.deadline_days_from_audit)
        deadline = f"{date.isoformat()} ({deadline})" if deadline else date.isoformat()
    basis = LegalBasis(obligation_id=spec.id, rule_id=regime.id, citation=spec.citation or regime.citation)
    return Obligation(id=spec.id, rule_id=regime.id, text=text, deadline=deadline,
                      checkable=False, status="todo", duty=spec.duty, legal_bases=[basis])
