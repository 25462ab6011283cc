"""The decision: one pure function over (plan, compute estimate, packs, date).

``decide`` does no I/O, reads no clock, keeps no state and draws no random numbers; the same
inputs always give the same :class:`Decision`. Outcome precedence, strictest first:

    DENY  >  REVIEW  >  ALLOW_WITH_OBLIGATIONS  >  ALLOW

- any finding with effect ``deny`` -> DENY (deny overrides allow);
- any ``review`` finding, or any checkable obligation that is ``unmet`` -> REVIEW;
- any obligation (``met`` or ``todo``) -> ALLOW_WITH_OBLIGATIONS;
- otherwise ALLOW.

Fail closed: an unknown teacher, an unknown licence, a jurisdiction no regime pack covers, a fact
a rule needs that is missing, or a rule that raises all give REVIEW findings, so none of them can
end in ALLOW. The teacher's terms must also say something affirmative (a permission or an
obligation); silence is REVIEW. A plan that claims more training tokens per epoch than its
dataset manifest holds is REVIEW too (the manifest is read before ``decide``, see
:class:`audit.policy.conditions.PlanFacts`).
"""

from __future__ import annotations

import datetime as dt
from pathlib import PurePath

from audit.compute.types import ComputeEstimate
from audit.numbers import exact
from audit.plan import Plan
from audit.policy.conditions import Context, PlanFacts
from audit.policy.failclosed import engine_finding
from audit.policy.decision import Decision, Finding, Obligation, Outcome, TeacherResolution
from audit.policy.org_rules import evaluate_rules
from audit.policy.packs import PolicySet
from audit.policy.regimes import evaluate_regimes
from audit.policy.teachers import Resolution, evaluate_teacher, resolve_teacher, teacher_provider


def decide(plan: Plan, compute: ComputeEstimate, packs: PolicySet, as_of: dt.date,
           facts: PlanFacts = PlanFacts()) -> Decision:
    """Judge a planned run against every pack in ``packs`` as the law stood on ``as_of``;
    ``facts`` are what :func:`audit.policy.facts.read_plan_facts` read from the plan's files."""
    res = resolve_teacher(plan.teacher.model, plan.teacher.access, plan.teacher.license, packs)
    ctx = Context(plan=plan, compute=compute, as_of=as_of,
                  teacher_provider=teacher_provider(res, packs), teacher_terms=res.all_terms(),
                  facts=facts)

    findings, obligations, regimes = evaluate_regimes(ctx, packs)
    teacher_findings, teacher_obligations = evaluate_teacher(ctx, packs, res)
    teacher_findings += _resolution_findings(res, teacher_findings)
    org_findings, org_obligations = evaluate_rules(ctx, packs)

    findings = findings + teacher_findings + org_findings + data_findings(ctx)
    obligations = obligations + teacher_obligations + org_obligations
    outcome, rule_ids = outcome_of(findings, obligations)
    return Decision(outcome=outcome, as_of=as_of, findings=findings, obligations=obligations,
                    regimes=regimes, rule_ids=rule_ids,
                    packs=[{k: v for k, v in lp.summary().items() if k != "path"} for lp in packs.packs],
                    teacher=_teacher_resolution(res, packs))


def _resolution_findings(res: Resolution, teacher_findings: list[Finding]) -> list[Finding]:
    """Fail-closed findings about the teacher itself."""
    out = []
    who = f"{res.model!r} via {res.access}"
    if res.unknown_licenses:
        out.append(engine_finding(
            "engine.unknown-license",
            f"Licence {', '.join(map(repr, res.unknown_licenses))} is not in any policy pack, so its terms "
            "are unknown; a person must review it (or add a pack that describes it).",
            observed=f"teacher.license = {', '.join(res.licenses)!r}"))
    if not res.terms:
        out.append(engine_finding(
            "engine.unknown-teacher",
            f"No policy pack describes the terms for teacher {who}; without them the use of its outputs "
            "cannot be allowed. Declare teacher.license, or add a teacher entry in an organisation pack.",
            observed=who))
    if len(res.entries) > len({lp.builtin for lp, _ in res.entries}):
        ids = ", ".join(e.id for _, e in res.entries)
        out.append(engine_finding("engine.ambiguous-teacher",
                                  f"Teacher {who} matches several entries equally well ({ids}); all their "
                                  "terms are applied and a person must confirm which governs.", observed=who))
    if res.license_only_terms:
        out.append(engine_finding(
            "engine.license-mismatch",
            f"The declared licence names terms ({', '.join(res.license_only_terms)}) that the matched teacher "
            f"entry ({res.entry.id}) does not; both are applied and a person must confirm which governs.",
            observed=f"teacher.license = {', '.join(res.licenses)!r}"))
    if res.terms and not any(f.effect != "info" for f in teacher_findings):
        out.append(engine_finding(
            "engine.no-permission",
            "None of the teacher's terms says affirmatively that this use is allowed; failing closed.",
            observed=who))
    return out


def data_findings(ctx: Context) -> list[Finding]:
    """``engine.data-tokens-exceed-manifest``: ``data.tokens`` (per epoch) above the tokens the
    dataset manifest holds. Nothing when they agree, when the plan uses less than the manifest
    holds (the trainer stops at data.tokens x epochs, so the audited compute still bounds the
    run), or when no manifest was read or it gives no token count."""
    held, planned = ctx.facts.manifest_tokens, ctx.plan.data.tokens
    if held is None or planned <= held:
        return []
    name = PurePath(ctx.facts.manifest).name if ctx.facts.manifest else "the manifest"
    return [engine_finding(
        "engine.data-tokens-exceed-manifest",
        f"The plan trains on {_tokens(planned)} per epoch (data.tokens), but its dataset manifest {name} "
        f"holds only {_tokens(held)}; an epoch cannot see more tokens than the data holds, so the audited "
        "compute would not match the data. Correct data.tokens (and data.epochs) or the manifest; a person "
        "must review it.",
        observed=f"data.tokens = {_tokens(planned)} per epoch",
        threshold=f"{_tokens(held)} in {name} ({ctx.facts.manifest_tokens_field})", comparator=">")]


def _tokens(value: float) -> str:
    return f"{exact(value)} tokens"


def outcome_of(findings: list[Finding], obligations: list[Obligation]) -> tuple[Outcome, list[str]]:
    """The outcome and the ids of the rules that determined it (Cedar's "reasons")."""
    deny = [f.rule_id for f in findings if f.effect == "deny"]
    if deny:
        return "DENY", _unique(deny)
    review = [f.rule_id for f in findings if f.effect == "review"]
    review += [o.rule_id for o in obligations if o.status == "unmet"]
    if review:
        return "REVIEW", _unique(review)
    if obligations:
        return "ALLOW_WITH_OBLIGATIONS", _unique([o.rule_id for o in obligations])
    return "ALLOW", _unique([f.rule_id for f in findings if f.effect == "allow"])


def gate_would_open(decision: Decision) -> bool:
    """The one gate rule (``check`` records it, the training gate applies it to the verified
    decision): True for ALLOW, or ALLOW_WITH_OBLIGATIONS with every checkable obligation met."""
    if decision.outcome == "ALLOW":
        return True
    if decision.outcome != "ALLOW_WITH_OBLIGATIONS":
        return False
    return all(o.status == "met" for o in decision.obligations if o.checkable)


def exit_code(decision: Decision) -> int:
    """CLI convention: 0 gate would open, 4 DENY, 3 anything else (REVIEW, unmet obligation)."""
    if gate_would_open(decision):
        return 0
    return 4 if decision.outcome == "DENY" else 3


def _teacher_resolution(res: Resolution, packs: PolicySet) -> TeacherResolution:
    def tagged(ids):
        return [f"{i}@{packs.terms(i)[1].version}" for i in ids]

    entry = res.entry
    return TeacherResolution(
        model=res.model, access=res.access, entry_id=entry.id if entry else None,
        entry_name=entry.name if entry else None, provider=entry.provider if entry else (
            packs.terms(res.terms[0])[1].provider if res.terms else None),
        matched_by=res.matched_by, terms=tagged(res.terms),
        upstream=tagged([up.terms for _, up in res.upstream]), licenses=list(res.licenses),
        citation=entry.citation if entry else None)


def _unique(ids: list[str]) -> list[str]:
    return list(dict.fromkeys(ids))
