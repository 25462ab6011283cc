"""Markets whose law sets no compute threshold: the cited statement that it ties no duty to
training compute, and the duties it attaches otherwise (e.g. China's filing and labelling for a
generative AI service offered to the public). Pure.

A market pack covers its codes for :func:`audit.policy.regimes.jurisdiction_findings`, so a
plan that serves it is not REVIEW for an unknown jurisdiction. In force on ``as_of`` when
``in_force_from <= as_of``; each duty is kept or dropped by its ``when`` and ``unless`` exactly as
a regime's duty is (undecided: kept, fail closed).
"""

from __future__ import annotations

from audit.policy.conditions import Context, jurisdiction_covered
from audit.policy.decision import Finding, Obligation
from audit.policy.failclosed import rule_error
from audit.policy.packs import PolicySet
from audit.policy.regimes import duty_of, evidence_note


def evaluate_markets(ctx: Context, packs: PolicySet) -> tuple[list[Finding], list[Obligation]]:
    """An info finding per market the plan serves (what its law says), and its duties."""
    findings: list[Finding] = []
    obligations: list[Obligation] = []
    for loaded, market in packs.markets():
        if not jurisdiction_covered(ctx.plan.organization.jurisdictions, market.applies_to):
            continue
        if ctx.as_of < market.in_force_from:
            text = f"{market.name}: not yet in force on {ctx.as_of} (applies from {market.in_force_from})."
            duties = []
        else:
            try:
                duties = [d for d in (duty_of(market, spec, ctx) for spec in market.obligations) if d is not None]
            except Exception as exc:  # noqa: BLE001 - fail closed: a broken rule means REVIEW
                findings.append(rule_error(market.id, exc))
                continue
            text = f"{market.name}: no duty is tied to training compute. {market.explanation}"
        findings.append(Finding(
            rule_id=market.id, pack_id=loaded.pack.id, pack_version=loaded.pack.version, kind="regime",
            effect="obligation" if duties else "info", citation=market.citation,
            observed=f"organization.jurisdictions: [{', '.join(ctx.plan.organization.jurisdictions)}]",
            explanation=text + evidence_note(market.citation)))
        obligations += duties
    return findings, obligations
