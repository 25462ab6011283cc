"""A duty two regimes impose is one CI result that names both rules and their sections (the
SARIF, JUnit and GitHub formats read this message), not two results for one duty."""

from __future__ import annotations

import datetime as dt

from audit.ci.results import judge
from audit.fsutil import sha256_bytes
from audit.policy.decision import Citation, Decision, LegalBasis, Obligation
from audit.policy.packs import load_packs

RAW = b"plan_version: 1\nname: ci-duty\norganization:\n  jurisdictions: [EU]\n"


def _basis(ob_id: str, rule: str, section: str) -> LegalBasis:
    return LegalBasis(obligation_id=ob_id, rule_id=rule, citation=Citation(
        url="https://eur-lex.europa.eu/eli/reg/2024/1689/oj", section=section, date=dt.date(2024, 6, 13),
        quote="within two weeks", evidence="primary"))


def test_one_result_for_one_duty_naming_every_rule():
    notify = Obligation(
        id="eu-ai-act.systemic-risk.notify-commission", rule_id="eu-ai-act.systemic-risk",
        text="Notify the European Commission.", checkable=False, status="todo", duty="eu-ai-act.art-52-1-notification",
        legal_bases=[_basis("eu-ai-act.systemic-risk.notify-commission", "eu-ai-act.systemic-risk", "Art. 52(1)"),
                     _basis("eu-ai-act.downstream-modifier-systemic.notify-commission",
                            "eu-ai-act.downstream-modifier-systemic", "Guidelines para 70")])
    decision = Decision(outcome="ALLOW_WITH_OBLIGATIONS", as_of=dt.date(2026, 12, 1), findings=[],
                        obligations=[notify], regimes=[], rule_ids=["eu-ai-act.systemic-risk"], packs=[])
    judged = judge("plan.yaml", RAW, sha256_bytes(RAW), "ci-duty", "base", decision, load_packs(), 0)
    results = [r for r in judged.results if r.effect == "obligation"]
    assert len(results) == 1
    assert results[0].message.endswith(
        "Owed under: eu-ai-act.systemic-risk (Art. 52(1)); eu-ai-act.downstream-modifier-systemic "
        "(Guidelines para 70).")
