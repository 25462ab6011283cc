"""Organisation rules ("never use provider X", "open-weights releases need review"). Pure.

A rule whose conditions hold applies its effect; one whose conditions cannot be decided
(a fact is unknown, or the teacher was not recognised) gives REVIEW, never silence.
"""

from __future__ import annotations

from audit.policy.conditions import Context, missing_facts, when_holds
from audit.policy.failclosed import rule_error
from audit.policy.decision import Finding, LegalBasis, Obligation
from audit.policy.packs import PolicySet


def evaluate_rules(ctx: Context, packs: PolicySet) -> tuple[list[Finding], list[Obligation]]:
    findings: list[Finding] = []
    obligations: list[Obligation] = []
    for loaded, rule in packs.rules():
        try:
            holds = when_holds(rule.when, ctx)
        except Exception as exc:  # noqa: BLE001 - fail closed: a broken rule means REVIEW
            findings.append(rule_error(rule.id, exc))
            continue
        effect, text = rule.effect, rule.explanation
        if holds is False:
            effect, text = "info", f"not triggered. {rule.explanation}"
        elif holds is None:
            effect = "review"
            text = f"cannot tell whether it applies: {', '.join(missing_facts(rule.when, ctx))} unknown. {rule.explanation}"
        elif rule.effect == "obligation":
            basis = LegalBasis(obligation_id=rule.id, rule_id=rule.id, citation=rule.citation)
            obligations.append(Obligation(id=rule.id, rule_id=rule.id, text=rule.text, deadline=rule.deadline,
                                          checkable=False, status="todo", legal_bases=[basis]))
        findings.append(Finding(rule_id=rule.id, pack_id=loaded.pack.id, pack_version=loaded.pack.version,
                                kind="organization", effect=effect, citation=rule.citation, explanation=text))
    return findings, obligations
