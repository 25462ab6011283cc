"""Audit predicates for the report tests, built from the real pydantic models and dumped as
they would be signed (``model_dump(mode="json")``). ``conftest.py`` serves them as fixtures.

Cases: a REVIEW with one unmet naming obligation, a DENY, a run with unknown figures, a plan
full of hostile strings, and a large run under many regimes. Figures are made up but
consistent: e.g. student training = train FLOP per token x tokens.
"""

from __future__ import annotations

import datetime as dt

from audit.compute.types import Component, ComputeEstimate, HardwareCheck
from audit.flops.summary import ModelSummary
from audit.plan import Plan
from audit.policy.decision import Citation, Decision, Finding, Obligation, RegimeResult

AS_OF = dt.date(2026, 12, 1)
DIGEST_A = "a" * 64
DIGEST_B = "0123456789abcdef" * 4
LLAMA_URL = "https://www.llama.com/llama3_1/license/"
EU_URL = "https://eur-lex.europa.eu/eli/reg/2024/1689/oj"
CA_URL = "https://leginfo.legislature.ca.gov/faces/billNavClient.xhtml?bill_id=202520260SB53"


def make_plan(**overrides) -> dict:
    data = {
        "plan_version": 1,
        "name": "acme-support-1b",
        "organization": {"name": "Acme", "jurisdictions": ["EU", "US-CA", "US-NY"], "domicile": "US-CA",
                         "annual_revenue_usd": 2.0e8, "monthly_active_users": 1.0e6},
        "teacher": {"model": "meta-llama/Llama-3.1-70B-Instruct", "access": "weights", "config": "llama-3.1-70b"},
        "student": {"name": "Acme-Support-1B", "config": "llama-3.2-1b", "init": "scratch"},
        "data": {"tokens": 2.0e10, "seq_len": 4096},
        "use": {"purpose": "customer support assistant", "scope": "narrow", "distribution": "internal",
                "monthly_active_users": 1.0e6},
        "hardware": {"accelerator": "H100-SXM", "count": 64, "hours": 120, "utilization": 0.4,
                     "price_per_hour_usd": 2.5},
        "schedule": {"start": AS_OF.isoformat()},
    }
    for key, value in overrides.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) and key in data else value
    return Plan.model_validate(data).model_dump(mode="json")


def student_summary(**overrides) -> ModelSummary:
    fields = dict(ref="llama-3.2-1b", architecture="LlamaForCausalLM", config_sha256=DIGEST_B,
                  params_total=1.236e9, params_active=1.236e9, params_embedding=2.627e8,
                  train_flops_per_token=8.5e9, train_flops_per_token_noncausal=9.1e9,
                  forward_flops_per_token=2.83e9, forward_flops_per_token_noncausal=3.03e9,
                  non_matmul_train_flops_per_token=4.1e7, attention_share=0.21, coverage=1.0, method="counted")
    return ModelSummary(**{**fields, **overrides})


def teacher_summary() -> ModelSummary:
    return ModelSummary(ref="llama-3.1-70b", architecture="LlamaForCausalLM", config_sha256=DIGEST_A,
                        params_total=7.06e10, params_active=7.06e10, params_embedding=2.1e9,
                        train_flops_per_token=4.4e11, train_flops_per_token_noncausal=4.6e11,
                        forward_flops_per_token=1.47e11, forward_flops_per_token_noncausal=1.53e11,
                        non_matmul_train_flops_per_token=9.0e8, attention_share=0.08, coverage=0.98,
                        unknown_ops={"aten::_fused_rms_norm": 80},
                        formula_errors={"aten::_scaled_mm": "scale shape not understood"}, method="counted")


def llama_citation(quote: str = "you shall also include \u201cLlama\u201d at the beginning of any such AI model name",
                   url: str = LLAMA_URL) -> Citation:
    return Citation(url=url, section="Llama 3.1 Community License, section 1.b.i",
                    date=dt.date(2024, 7, 23), quote=quote, evidence="primary")


FACTS = {"cumulative": "total_flops", "parameter_update": "update_flops", "modification": "modification_flops"}


def regime(id_, name, jurisdiction, threshold, observed, *, in_force=True, status=None,
           notion="cumulative", obligations=(), comparator=">") -> RegimeResult:
    """A FLOP regime result; ``notion`` is the figure compared (its ``fact`` follows from it)."""
    if status is None:
        status = "unknown" if observed is None else ("exceeds" if observed > threshold else "below")
    return RegimeResult(
        id=id_, name=name, jurisdiction=jurisdiction, in_force=in_force, status=status,
        threshold_flops=threshold, comparator=comparator, observed_flops=observed, compute_notion=notion,
        fact=FACTS[notion], observed_value=observed, threshold_value=threshold,
        margin_ratio=None if observed is None else observed / threshold, obligations=list(obligations),
        citation=Citation(url=EU_URL if jurisdiction == "EU" else CA_URL, section=f"{name}: threshold",
                          date=dt.date(2024, 7, 12), quote=f"training compute greater than {threshold:.0e}",
                          evidence="secondary"))


def small_compute(**overrides) -> ComputeEstimate:
    """1B student from scratch on 2e10 tokens, 70B teacher forward on the same tokens."""
    student_flops = 8.5e9 * 2.0e10        # 1.7e20
    teacher_flops = 1.47e11 * 2.0e10      # 2.94e21
    total = student_flops + teacher_flops  # 3.11e21
    fields = dict(
        seq_len=4096, tokens=2.0e10,
        components=[
            Component(id="student_training", label="Student training", flops=student_flops, method="counted",
                      counts_toward=["cumulative", "parameter_update"],
                      assumptions=["forward + backward = 3 x forward"]),
            Component(id="teacher_forward", label="Teacher forward passes", flops=teacher_flops, method="counted",
                      counts_toward=["cumulative"], assumptions=["one teacher forward per student token"]),
        ],
        total_flops=total, update_flops=student_flops, six_nd_flops=6 * 1.236e9 * 2.0e10,
        params_total=1.236e9, params_active=1.236e9, student=student_summary(), teacher=teacher_summary(),
        hardware=HardwareCheck(accelerator="H100-SXM", peak_flops_per_s=9.89e14, peak_source="NVIDIA H100 datasheet, dense BF16",
                               estimate_flops=64 * 120 * 3600 * 9.89e14 * 0.4, compared_to_flops=total,
                               ratio=64 * 120 * 3600 * 9.89e14 * 0.4 / total, implied_utilization=0.114,
                               outside_tolerance=True, note="the plan's hours look generous"),
        uncertainty_low=total * 0.9, uncertainty_high=total * 1.1, notification_figure="3.1e21",
        cost_usd=64 * 120 * 2.5, coverage=0.98,
    )
    return ComputeEstimate(**{**fields, **overrides})


def predicate(plan: dict, compute: ComputeEstimate, decision: Decision, *, gate_open: bool,
              inputs: list[dict] | None = None) -> dict:
    return {
        "tool": {"name": "flopgate", "version": "0.1.0", "torch": "2.13.0", "transformers": "5.24.0"},
        "as_of": AS_OF.isoformat(),
        "created": "2026-11-26T14:00:00Z",
        "plan": {"name": plan["name"], "path": "/srv/plans/plan.yaml", "sha256": DIGEST_A, "content": plan},
        "conventions": {"flop": "1 multiply-add = 2 FLOP", "attention": "causal-corrected"},
        "compute": compute.model_dump(mode="json"),
        "decision": decision.model_dump(mode="json"),
        "outcome": decision.outcome,
        "gate_open": gate_open,
        "inputs": inputs if inputs is not None else [
            {"role": "plan", "name": "plan.yaml", "sha256": DIGEST_A},
            {"role": "student_config", "name": "llama-3.2-1b.json", "sha256": DIGEST_B},
            {"role": "policy_pack", "name": "eu-ai-act.yaml", "sha256": "c" * 64,
             "pack_id": "eu-ai-act", "pack_version": "2026.11"},
        ],
    }


def _packs() -> list[dict]:
    return [{"id": "eu-ai-act", "version": "2026.11", "last_reviewed": "2026-11-01", "sha256": "c" * 64},
            {"id": "teacher-terms", "version": "2026.10", "last_reviewed": "2026-10-15", "sha256": "d" * 64}]


def _small_regimes(compute: ComputeEstimate, obligations=()) -> list[RegimeResult]:
    """As the EU pack tests them: GPAI compares the parameter-update figure, the rest cumulative."""
    total = compute.total_flops
    return [
        regime("eu-ai-act.gpai", "EU GPAI", "EU", 1e23, compute.update_flops, notion="parameter_update",
               obligations=obligations),
        regime("eu-ai-act.systemic-risk", "EU systemic risk", "EU", 1e25, total),
        regime("us-ca.sb53.frontier", "CA SB 53", "US-CA", 1e26, total),
        regime("us-ny.raise.frontier", "NY RAISE", "US-NY", 1e26, total, in_force=False, status="not_in_force"),
    ]


def review_case() -> dict:
    """REVIEW: the student's name lacks the "Llama" prefix the teacher's licence requires."""
    naming = Obligation(id="llama.naming", rule_id="teacher.llama31.naming",
                        text="Begin the student's name with \u201cLlama\u201d", deadline="before release",
                        checkable=True, status="unmet")
    notice = Obligation(id="llama.notice", rule_id="teacher.llama31.attribution",
                        text="Show \u201cBuilt with Llama\u201d with the model", deadline=None, checkable=False, status="met")
    compute = small_compute()
    decision = Decision(
        outcome="REVIEW", as_of=AS_OF,
        findings=[
            Finding(rule_id="teacher.llama31.naming", pack_id="teacher-terms", pack_version="2026.10", kind="teacher",
                    effect="obligation", observed="student.name = 'Acme-Support-1B'", threshold="starts with 'Llama'",
                    comparator="==", citation=llama_citation(),
                    explanation="The licence asks models trained on Llama outputs to carry Llama in their name."),
            Finding(rule_id="eu-ai-act.gpai.below", pack_id="eu-ai-act", pack_version="2026.11", kind="regime",
                    effect="allow", observed="1.7e20 FLOP", threshold="1e23 FLOP", comparator=">",
                    citation=regime("x", "EU GPAI", "EU", 1e23, 1.0).citation,
                    explanation="Below the indicative GPAI threshold."),
        ],
        obligations=[naming, notice],
        regimes=_small_regimes(compute, obligations=("llama.naming",)),
        rule_ids=["teacher.llama31.naming"], packs=_packs())
    return predicate(make_plan(), compute, decision, gate_open=False)


def deny_case() -> dict:
    """DENY: a consumer chat app's outputs may not train a competing model."""
    compute = small_compute(teacher=None, teacher_params_estimate=None)
    decision = Decision(
        outcome="DENY", as_of=AS_OF,
        findings=[Finding(rule_id="teacher.consumer-app.compete", pack_id="teacher-terms", pack_version="2026.10",
                          kind="teacher", effect="deny", observed="teacher.access = 'consumer_app'",
                          citation=Citation(url="https://openai.com/policies/row-terms-of-use/", section="What you cannot do",
                                            date=dt.date(2024, 12, 11), evidence="unverified",
                                            quote="use Output to develop models that compete with OpenAI"),
                          explanation="The provider's terms forbid training competing models on its outputs.")],
        obligations=[], regimes=_small_regimes(compute),
        rule_ids=["teacher.consumer-app.compete"], packs=_packs())
    plan = make_plan(teacher={"model": "chatgpt", "access": "consumer_app", "config": None, "parameters": 1e12})
    return predicate(plan, compute, decision, gate_open=False)


def unknown_case() -> dict:
    """Figures the estimate could not make: teacher size, generation cost, peak, price."""
    compute = small_compute(
        components=[
            Component(id="student_training", label="Student training", flops=1.7e20, method="counted",
                      counts_toward=["cumulative", "parameter_update"]),
            Component(id="teacher_generation", label="Teacher generation", flops=None, method="unknown",
                      counts_toward=["cumulative"], assumptions=["teacher size not given"]),
        ],
        total_flops=None, update_flops=1.7e20, teacher=None, teacher_params_estimate=None,
        hardware=HardwareCheck(accelerator="TPU-v9", peak_flops_per_s=None, note="no peak figure for this accelerator"),
        uncertainty_low=None, uncertainty_high=None, notification_figure=None, cost_usd=None,
        missing_facts=["teacher.parameters", "hardware.price_per_hour_usd"])
    decision = Decision(
        outcome="REVIEW", as_of=AS_OF,
        findings=[Finding(rule_id="engine.unknown-compute", pack_id="engine", pack_version="0.1.0", kind="engine",
                          effect="review", explanation="The total compute is unknown, so no threshold can be ruled out.")],
        obligations=[], regimes=_small_regimes(compute), rule_ids=["engine.unknown-compute"], packs=_packs())
    plan = make_plan(teacher={"model": "some-api-model", "access": "api", "config": None},
                     method={"kind": "sequence", "teacher_generated_tokens": 5e9})
    return predicate(plan, compute, decision, gate_open=False)


HOSTILE = {
    "student": "<script>alert(1)</script>",
    "purpose": '"><img src=x onerror=alert(1)>',
    "quote": "</style><script>alert(2)</script>",
    "plan_name": "{{ 1234*5 }}",
    "regime": "<b onmouseover=alert(3)>EU</b>",
    "obligation": "<iframe src=javascript:alert(4)></iframe>",
    "url": "javascript:alert(5)",
    "input": 'x" onfocus="alert(6)',
    "label": "</text><script>alert(7)</script>",
    "assumption": "<svg onload=alert(8)>",
    "reason": "<script>alert(9)</script>",
    "fingerprint": "SHA256:<img src=http://evil.example/x>",
}


def hostile_case() -> dict:
    """Every free-text field carries markup; a report that runs or loads any of it fails."""
    h = HOSTILE
    obligation = Obligation(id="o1", rule_id="r1", text=h["obligation"], deadline=h["obligation"], checkable=True,
                            status="unmet")
    compute = small_compute(components=[
        Component(id="student_training", label=h["label"], flops=2e21, method="counted",
                  counts_toward=["cumulative", "parameter_update"], assumptions=[h["assumption"]]),
    ], total_flops=2e21, update_flops=2e21, notification_figure="2.0e21")
    decision = Decision(
        outcome="REVIEW", as_of=AS_OF,
        findings=[Finding(rule_id="teacher.x", pack_id="teacher-terms", pack_version="1", kind="teacher",
                          effect="review", observed=h["student"], explanation=h["purpose"],
                          citation=llama_citation(quote=h["quote"], url=h["url"]))],
        obligations=[obligation],
        regimes=[regime("r.hostile", h["regime"], "EU", 1e22, 2e21, obligations=("o1",))],
        rule_ids=["teacher.x"], packs=_packs())
    plan = make_plan(name=h["plan_name"], student={"name": h["student"]}, use={"purpose": h["purpose"]})
    inputs = [{"role": "plan", "name": h["input"], "sha256": DIGEST_A}]
    return predicate(plan, compute, decision, gate_open=False, inputs=inputs)


def many_regimes_case() -> dict:
    """A 2e25 FLOP modification of a published base model, checked under seven regimes."""
    student_flops, teacher_flops, base_flops = 1.2e25, 8.0e24, 3.8e25
    total = base_flops + student_flops + teacher_flops
    compute = small_compute(
        components=[
            Component(id="base_model_training", label="Base model's own training", flops=base_flops,
                      method="published", counts_toward=["cumulative"]),
            Component(id="student_training", label="Student training", flops=student_flops, method="closed_form",
                      counts_toward=["cumulative", "parameter_update", "modification"]),
            Component(id="teacher_forward", label="Teacher forward passes", flops=teacher_flops, method="counted",
                      counts_toward=["cumulative", "modification"]),
        ],
        total_flops=total, update_flops=student_flops, modification_flops=student_flops + teacher_flops,
        original_model="meta-llama/Llama-3.1-405B", original_model_flops=base_flops,
        original_model_source="Meta model card", uncertainty_low=total * 0.85, uncertainty_high=total * 1.2,
        notification_figure="5.8e25", cost_usd=3.1e7)
    todo_notify = Obligation(id="eu.notify", rule_id="eu-ai-act.systemic-risk", checkable=False, status="todo",
                             text="Notify the European Commission", deadline="within 2 weeks of meeting the threshold")
    todo_docs = Obligation(id="eu.docs", rule_id="eu-ai-act.gpai", checkable=False, status="todo",
                           text="Draw up technical documentation", deadline="2027-08-02")
    met_copyright = Obligation(id="eu.copyright", rule_id="eu-ai-act.gpai", checkable=True, status="met",
                               authorized=True, text="Put in place a copyright policy")
    regimes = [
        regime("eu-ai-act.gpai", "EU GPAI", "EU", 1e23, student_flops, notion="parameter_update",
               obligations=("eu.docs", "eu.copyright")),
        regime("eu-ai-act.systemic-risk", "EU systemic risk", "EU", 1e25, total, comparator=">=",
               obligations=("eu.notify",)),
        regime("eu-ai-act.modification", "EU modification (one third)", "EU", base_flops / 3,
               student_flops + teacher_flops, notion="modification"),
        regime("us-ca.sb53.frontier", "CA SB 53", "US-CA", 1e26, total),
        regime("us-ny.raise.frontier", "NY RAISE", "US-NY", 1e26, total, in_force=False, status="not_in_force"),
        regime("kr.ai-basic-act.high-impact", "Korea AI Basic Act", "KR", 1e26, total),
        regime("us.eo-reporting", "US reporting (rescinded)", "US", 1e26, total, in_force=False, status="not_in_force"),
    ]
    decision = Decision(
        outcome="ALLOW_WITH_OBLIGATIONS", as_of=AS_OF,
        findings=[Finding(rule_id="teacher.llama31.allowed", pack_id="teacher-terms", pack_version="2026.10",
                          kind="teacher", effect="allow", citation=llama_citation(),
                          explanation="The licence allows training on outputs when its naming rule is kept."),
                  Finding(rule_id="org.eu-presence", pack_id="eu-ai-act", pack_version="2026.11", kind="organization",
                          effect="info", observed="organization.jurisdictions includes EU",
                          citation=regime("x", "EU GPAI", "EU", 1e23, 1.0).citation,
                          explanation="The organisation places models on the EU market.")],
        obligations=[todo_notify, todo_docs, met_copyright], regimes=regimes,
        rule_ids=["eu-ai-act.systemic-risk", "eu-ai-act.gpai"], packs=_packs())
    plan = make_plan(student={"name": "Llama-Acme-405B-Distilled", "init": "base",
                              "base_model": "meta-llama/Llama-3.1-405B"},
                     use={"scope": "general", "distribution": "api"})
    return predicate(plan, compute, decision, gate_open=True)
