"""Issue 26 (items 2, 4, 5 and 6): territory clauses read the markets served, provider status
decides who owes the EU systemic-risk duties, the New York and Korean texts are applied as they
stand, and the main markets are covered. Scenario rows are in scenarios/issue26.yaml."""

from __future__ import annotations

import datetime as dt

from hypothesis import given, settings
from hypothesis import strategies as st

from audit.policy.engine import decide, gate_would_open
from audit.policy.provider import provider_role
from audit.policy.territory import territory_outcome
from policy_factories import make_compute, make_plan

DAY = dt.date(2026, 12, 1)

HUNYUAN = "tencent/Hunyuan-A13B-Instruct"


def _hunyuan_plan(jurisdictions, domicile="US"):
    """A student built on Hunyuan itself (so the ban on improving other models does not apply)."""
    return make_plan({"organization": {"jurisdictions": jurisdictions, "domicile": domicile},
                      "teacher": {"model": HUNYUAN},
                      "student": {"init": "base", "base_model": HUNYUAN}})


def _finding(decision, rule_id):
    found = [f for f in decision.findings if f.rule_id == rule_id]
    assert found, [f.rule_id for f in decision.findings]
    return found[0]


def test_a_us_company_serving_the_eu_is_outside_hunyuan_territory(builtin_packs):
    """Was info: the territory clause read organization.domicile only (US), so serving the EU,
    where the licence "does not apply", went unseen."""
    decision = decide(_hunyuan_plan(["US", "EU"]), make_compute(), builtin_packs, DAY)
    territory = _finding(decision, "tencent-hunyuan-community-license.territory")
    assert territory.effect == "deny"
    assert "EU" in territory.observed
    assert decision.outcome == "DENY" and not gate_would_open(decision)


def test_a_member_state_market_is_inside_the_excluded_region(builtin_packs):
    decision = decide(_hunyuan_plan(["US", "DE"]), make_compute(), builtin_packs, DAY)
    assert _finding(decision, "tencent-hunyuan-community-license.territory").effect == "deny"


def test_a_us_company_serving_only_the_us_is_inside_the_territory(builtin_packs):
    decision = decide(_hunyuan_plan(["US"]), make_compute(), builtin_packs, DAY)
    assert _finding(decision, "tencent-hunyuan-community-license.territory").effect == "info"


def test_an_eu_domiciled_company_serving_only_the_us_is_still_excluded(builtin_packs):
    """The works are used (trained) where the organisation is: domicile still counts."""
    decision = decide(_hunyuan_plan(["US"], domicile="FR"), make_compute(), builtin_packs, DAY)
    assert _finding(decision, "tencent-hunyuan-community-license.territory").effect == "deny"


def test_unknown_domicile_with_markets_outside_the_region_is_reviewed(builtin_packs):
    decision = decide(_hunyuan_plan(["US"], domicile=None), make_compute(), builtin_packs, DAY)
    assert _finding(decision, "tencent-hunyuan-community-license.territory").effect == "review"


def test_llama_multimodal_clause_stays_a_domicile_test(builtin_packs):
    """Meta's clause names where the licensee is domiciled, and spares end users of products:
    a US company serving the EU keeps its rights."""
    plan = make_plan({"organization": {"jurisdictions": ["US", "EU"], "domicile": "US"},
                      "teacher": {"model": "meta-llama/Llama-3.2-11B-Vision-Instruct"}})
    decision = decide(plan, make_compute(), builtin_packs, DAY)
    assert _finding(decision, "llama-3.2-multimodal-terms.eu-exclusion").effect == "info"


# -- provider status (EU) -------------------------------------------------------------------

def _modifier(modification, original=3.0e25, jurisdictions=("EU",)):
    plan = make_plan({"organization": {"jurisdictions": list(jurisdictions)},
                      "student": {"init": "base", "base_model": "meta-llama/Llama-3.1-8B"}})
    compute = make_compute(total_flops=original + modification, update_flops=modification,
                           modification_flops=modification, original_model_flops=original)
    return decide(plan, compute, _packs(), DAY, audit_date=DAY)


def _packs():
    from audit.policy.packs import load_packs

    return load_packs()


def test_a_modifier_below_one_third_of_a_systemic_risk_model_is_not_its_provider():
    """Was ALLOW_WITH_OBLIGATIONS with the Commission notification and Art. 55: the cumulative
    figure (base 3e25 + modification 1e24) exceeds 1e25, though the modifier is not the provider."""
    decision = _modifier(1.0e24)
    ids = {o.id for o in decision.obligations}
    assert not any(i.startswith("eu-ai-act.systemic-risk.") for i in ids), ids
    assert not any(i.startswith("eu-ai-act.gpai.") for i in ids), ids
    status = _finding(decision, "engine.provider-status")
    assert status.effect == "info" and "not the provider" in status.explanation
    systemic = {r.id: r for r in decision.regimes}
    assert "eu-ai-act.systemic-risk" not in systemic or systemic["eu-ai-act.systemic-risk"].status != "exceeds"


def test_a_modifier_above_one_third_becomes_provider_of_a_systemic_risk_model():
    decision = _modifier(1.2e25)
    notify = [o for o in decision.obligations if o.id.endswith(".notify-commission")]
    assert [o.id for o in notify] == ["eu-ai-act.systemic-risk.notify-commission"]  # one duty, told once
    assert [b.rule_id for b in notify[0].legal_bases] == ["eu-ai-act.systemic-risk",
                                                          "eu-ai-act.downstream-modifier-systemic"]
    assert "is the provider" in _finding(decision, "engine.provider-status").explanation


def test_provider_status_at_exactly_one_third_is_not_provider():
    """The guidelines' test is "greater than a third": at one third the modifier stays a modifier."""
    decision = _modifier(1.0e25)
    assert not any(o.id.startswith("eu-ai-act.systemic-risk.") for o in decision.obligations)


def test_provider_status_with_unknown_modification_compute_is_reviewed():
    plan = make_plan({"student": {"init": "base", "base_model": "meta-llama/Llama-3.1-8B"}})
    compute = make_compute(total_flops=4.0e25, update_flops=None, modification_flops=None,
                           original_model_flops=3.0e25)
    decision = decide(plan, compute, _packs(), DAY)
    assert decision.outcome == "REVIEW"
    status = _finding(decision, "engine.provider-status")
    assert status.effect == "info" and "undecided" in status.explanation
    review = _finding(decision, "eu-ai-act.systemic-risk")
    assert review.effect == "review" and "provider status" in review.explanation


def test_a_scratch_student_is_the_provider_of_its_model():
    plan = make_plan({})
    decision = decide(plan, make_compute(total_flops=2.0e25), _packs(), DAY, audit_date=DAY)
    assert "eu-ai-act.systemic-risk.notify-commission" in {o.id for o in decision.obligations}


# -- dates and thresholds ---------------------------------------------------------------------

def _ny(as_of):
    plan = make_plan({"teacher": {"model": "microsoft/phi-4"}, "organization": {"jurisdictions": ["US-NY"]}})
    compute = make_compute(cost_usd=1.5e8, teacher_training_flops=3.0e26, total_flops=2.0e26)
    return decide(plan, compute, _packs(), as_of)


def test_raise_2025_text_is_not_applied_after_the_chapter_amendment():
    """Was ALLOW_WITH_OBLIGATIONS with the 2025 distillation duty all through 2026: the chapter
    amendment (signed 2026-03-27) moved the article's start to 2027-01-01, with a new text."""
    regimes = {r.id: r.status for r in _ny(dt.date(2026, 6, 1)).regimes}
    assert regimes["ny-raise-2025.distilled-frontier-model"] == "not_in_force"
    assert regimes["ny-raise-2026.frontier-developer"] == "not_in_force"


def test_a_plan_starting_in_2027_gets_the_amended_text():
    regimes = {r.id: r.status for r in _ny(dt.date(2027, 1, 1)).regimes}
    assert regimes["ny-raise-2026.frontier-developer"] == "exceeds"
    assert regimes["ny-raise-2025.distilled-frontier-model"] == "not_in_force"


def test_korea_finding_says_its_threshold_is_unverified():
    plan = make_plan({"teacher": {"model": "microsoft/phi-4"}, "organization": {"jurisdictions": ["KR"]}})
    decision = decide(plan, make_compute(total_flops=2.0e26), _packs(), DAY)
    finding = _finding(decision, "kr-ai-basic-act.high-performance")
    assert finding.citation.evidence != "primary"
    assert "not verified" in finding.explanation


# -- coverage of the main markets ------------------------------------------------------------

MAIN_MARKETS = ["JP", "GB", "CN", "CA", "BR", "IN", "SG"]


def test_every_main_market_is_known():
    """Was REVIEW (engine.unknown-jurisdiction) for each of them."""
    for code in MAIN_MARKETS:
        plan = make_plan({"teacher": {"model": "microsoft/phi-4"}, "organization": {"jurisdictions": [code]}})
        decision = decide(plan, make_compute(), _packs(), DAY)
        assert not [f for f in decision.findings if f.rule_id == "engine.unknown-jurisdiction"], code
        stated = [f for f in decision.findings if f.kind == "regime" and f.citation is not None]
        assert stated, code  # each market says what its law attaches (or that it attaches no compute duty)


def test_an_unknown_market_stays_review():
    plan = make_plan({"teacher": {"model": "microsoft/phi-4"}, "organization": {"jurisdictions": ["ZA"]}})
    decision = decide(plan, make_compute(), _packs(), DAY)
    assert decision.outcome == "REVIEW"
    assert [f.observed for f in decision.findings if f.rule_id == "engine.unknown-jurisdiction"] == [
        "organization.jurisdictions includes ZA"]


# -- properties -----------------------------------------------------------------------------------

SEVERITY = {"info": 0, "review": 1, "deny": 2}
MARKETS = ["US", "US-CA", "EU", "DE", "FR", "GB", "UK", "KR", "JP", "CN", "SG", "IN"]


def _territory_clause(builtin_packs):
    found = builtin_packs.find("tencent-hunyuan-community-license.territory")
    assert found is not None
    return found[1]


@settings(max_examples=60, deadline=None)
@given(markets=st.lists(st.sampled_from(MARKETS), min_size=1, max_size=4, unique=True),
       extra=st.sampled_from(MARKETS), domicile=st.one_of(st.none(), st.sampled_from(MARKETS)))
def test_serving_one_more_market_never_makes_a_territory_clause_more_permissive(builtin_packs, markets, extra,
                                                                               domicile):
    clause = _territory_clause(builtin_packs)
    excluded = set(clause.jurisdictions)
    before = make_plan({"organization": {"jurisdictions": markets, "domicile": domicile}})
    after = make_plan({"organization": {"jurisdictions": list(dict.fromkeys(markets + [extra])),
                                        "domicile": domicile}})
    effect_before = territory_outcome(clause, before)[0]
    effect_after = territory_outcome(clause, after)[0]
    assert SEVERITY[effect_after] >= SEVERITY[effect_before]
    # deny exactly when a market served or the domicile is in an excluded region
    hit = any(m in excluded for m in markets) or (domicile in excluded)
    assert (effect_before == "deny") == hit


@settings(max_examples=60, deadline=None)
@given(original=st.floats(min_value=1e22, max_value=1e26), low=st.floats(min_value=1e20, max_value=1e26),
       factor=st.floats(min_value=1.0, max_value=100.0))
def test_spending_more_on_a_modification_never_makes_the_modifier_less_of_a_provider(original, low, factor):
    plan = make_plan({"student": {"init": "base", "base_model": "meta-llama/Llama-3.1-8B"}})

    def role(modification):
        return provider_role(plan, make_compute(modification_flops=modification, original_model_flops=original))

    if role(low) == "modifier_provider":
        assert role(low * factor) == "modifier_provider"
    assert role(original / 3) == "modifier_not_provider"  # "greater than a third": at a third, not


def test_a_market_rule_not_yet_in_force_still_covers_its_code_and_attaches_no_duty():
    plan = make_plan({"teacher": {"model": "microsoft/phi-4"}, "organization": {"jurisdictions": ["CN"]},
                      "use": {"distribution": "api"}})
    before = decide(plan, make_compute(), _packs(), dt.date(2023, 8, 14))
    assert not [f for f in before.findings if f.rule_id == "engine.unknown-jurisdiction"]
    market = _finding(before, "cn-genai-measures.public-services")
    assert market.effect == "info" and "not yet in force" in market.explanation
    assert not [o for o in before.obligations if o.id.startswith("cn-genai-measures.")]
    after = decide(plan, make_compute(), _packs(), dt.date(2023, 8, 15))
    assert {o.id for o in after.obligations} >= {"cn-genai-measures.security-assessment-and-filing",
                                                  "cn-genai-measures.labelling"}
