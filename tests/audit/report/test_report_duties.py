"""One duty, one line: a duty two regimes impose (the EU notification for a modifier above one
third of a systemic-risk base) is one checklist row naming both rules and their sources, and
each regime's row still finds its duty."""

from __future__ import annotations

import re

import report_cases
from test_report_render import Page, render

from audit.plan import Plan
from audit.policy.engine import decide
from audit.policy.packs import load_packs

BASE = "mistralai/Mixtral-8x22B-v0.1"


def _modifier_case() -> dict:
    plan = report_cases.make_plan(organization={"jurisdictions": ["EU"], "domicile": "DE"},
                                  student={"init": "base", "base_model": BASE})
    compute = report_cases.small_compute(total_flops=4.2e25, update_flops=1.2e25, modification_flops=1.2e25,
                                         original_model=BASE, original_model_flops=3.0e25)
    decision = decide(Plan.model_validate(plan), compute, load_packs(), report_cases.AS_OF,
                      audit_date=report_cases.AS_OF)
    return report_cases.predicate(plan, compute, decision, gate_open=False)


def test_a_duty_two_regimes_impose_is_one_row_citing_both():
    html = render(_modifier_case())
    checklist = re.search(r'<table class="checklist">.*?</table>', html, re.DOTALL)[0]
    rows = [Page(row).text for row in re.findall(r"<tr>.*?</tr>", checklist, re.DOTALL)]
    notify = [row for row in rows if "notify the european commission" in row.casefold()]
    assert len(notify) == 1, notify
    assert "eu-ai-act.systemic-risk " in notify[0] + " " and "eu-ai-act.downstream-modifier-systemic" in notify[0]
    assert "Art. 52(1)" in notify[0]
    evaluation = [row for row in rows if "Art. 55(1)(a)" in row]
    assert len(evaluation) == 1 and "Guidelines C(2025) 5045, para 70" in evaluation[0]


def test_every_regime_row_finds_its_duty():
    html = render(_modifier_case())
    regimes = Page(re.search(r'<section id="regimes">.*?</section>', html, re.DOTALL)[0]).text
    assert "not in the obligation list" not in regimes
    assert "eu-ai-act.downstream-modifier-systemic" in regimes
