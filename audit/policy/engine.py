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
end in ALLOW. So do an unknown or unstated host for an open-weights model reached through an API
(``engine.unknown-host``, ``engine.host-missing``), an unknown base model
(``engine.unknown-base-model``; a known one's derivative-binding clauses apply as
``base-model.<clause id>``), and a local teacher folder whose card disagrees with the declared
licence or the pack's entry (``engine.teacher-license-conflict``). A derivative keeps its family's
terms (:mod:`audit.policy.derivatives`): a declared licence its family does not carry is
``engine.license-mismatch``, a base no pack knows ``engine.unknown-derivative-base``. Every other
source of outputs (``teachers[1:]``, ``data.sources``: :mod:`audit.policy.sources`) is judged as a
teacher, its findings named after it. The teacher's terms must also
say something affirmative (a permission or an obligation); silence is REVIEW. A plan that claims
more training tokens per epoch than its dataset manifest holds is REVIEW too (the manifest is read before ``decide``, see
:class:`audit.policy.conditions.PlanFacts`); and so is a student or teacher count that met FLOP-bearing
ops without a formula (``engine.uncounted-ops``): the compute could be undercounted.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import replace
from pathlib import PurePath

from audit.compute.types import ComputeEstimate
from audit.numbers import counted, exact
from audit.plan import Plan
from audit.policy.conditions import Context, PlanFacts
from audit.policy.failclosed import engine_finding
from audit.policy.markets import evaluate_markets
from audit.policy.decision import Decision, Finding, Obligation, Outcome, TeacherResolution
from audit.policy.derivatives import lineage_text, with_lineage
from audit.policy.duties import merge_duties
from audit.policy.sources import OutputSource, TableNote, output_sources
from audit.policy.org_rules import evaluate_rules
from audit.policy.packs import PolicySet
from audit.policy.regimes import evaluate_regimes
from audit.policy.teachers import (
    Resolution, base_model_of, evaluate_base_model, evaluate_teacher, resolve_base_model, resolve_plan_teacher,
    split_licenses, teacher_provider,
)


def decide(plan: Plan, compute: ComputeEstimate, packs: PolicySet, as_of: dt.date,
           facts: PlanFacts = PlanFacts(), audit_date: dt.date | None = None) -> Decision:
    """Judge a planned run against every pack in ``packs`` as the law stood on ``as_of``;
    ``facts`` are what :func:`audit.policy.facts.read_plan_facts` read from the plan's files;
    ``audit_date`` is the day this pre-run estimate is made (deadlines that run from it, such as the
    EU notification, get a date only when it is given)."""
    res = with_lineage(resolve_plan_teacher(plan.teacher, packs), facts.teacher_lineage, packs)
    ctx = Context(plan=plan, compute=compute, as_of=as_of,
                  teacher_provider=teacher_provider(res, packs), teacher_terms=res.all_terms(),
                  facts=facts, audit_date=audit_date)

    findings, obligations, regimes = evaluate_regimes(ctx, packs)
    market_findings, market_obligations = evaluate_markets(ctx, packs)
    teacher_findings, teacher_obligations = evaluate_teacher(ctx, packs, res)
    teacher_findings += _resolution_findings(res, teacher_findings)
    teacher_findings += _host_findings(res)
    teacher_findings += card_findings(res, facts, packs)
    base = _resolve_base(plan, packs, facts)
    applied = {f.rule_id for f in teacher_findings if f.effect != "info"}
    base_findings, base_obligations = evaluate_base_model(ctx, packs, base, applied)
    base_findings += _base_findings(plan, base)
    org_findings, org_obligations = evaluate_rules(ctx, packs)
    sources, notes, plain = output_sources(plan, packs)
    source_findings, source_obligations, source_resolutions = [], [], []
    if sources or notes or plain:  # several sources of outputs: each finding names its own
        label = f"teacher {plan.teacher.model!r}"
        teacher_findings = [_tagged(f, label) for f in teacher_findings]
        source_findings = _table_findings(notes, plain)
    for source in sources:
        found, owed = _source_findings(ctx, packs, source)
        source_findings += found
        source_obligations += owed
        source_resolutions.append(_teacher_resolution(source.res, packs).model_copy(update={"source": source.label}))

    findings = (findings + market_findings + teacher_findings + base_findings + source_findings + org_findings
                + data_findings(ctx) + uncounted_findings(compute))
    obligations = merge_duties(obligations + market_obligations + teacher_obligations + base_obligations
                               + source_obligations + org_obligations)  # one duty, one obligation
    outcome, rule_ids = outcome_of(findings, obligations)
    return Decision(outcome=outcome, as_of=as_of, findings=findings, obligations=obligations,
                    regimes=regimes, rule_ids=rule_ids,
                    packs=[{k: v for k, v in lp.summary().items() if k != "path"} for lp in packs.packs],
                    teacher=_teacher_resolution(res, packs),
                    base_model=_teacher_resolution(base, packs) if base is not None else None,
                    sources=source_resolutions)


def _source_findings(ctx: Context, packs: PolicySet, source: OutputSource) -> tuple[list[Finding], list[Obligation]]:
    """One other source of outputs judged as a teacher (its own terms, fail-closed findings,
    host), every finding and obligation named after it."""
    plan = ctx.plan.model_copy(update={"teacher": source.teacher, "teachers": [source.teacher]})
    res = source.res
    sub = replace(ctx, plan=plan, teacher_provider=teacher_provider(res, packs), teacher_terms=res.all_terms(),
                  facts=PlanFacts())
    found, owed = evaluate_teacher(sub, packs, res)
    found += _resolution_findings(res, found) + _host_findings(res)
    owed = [o.model_copy(update={"text": f"{source.label}: {o.text}"}) for o in owed]
    return [_tagged(f, source.label) for f in found], owed


def _tagged(finding: Finding, label: str) -> Finding:
    return finding.model_copy(update={"source": label, "explanation": f"{label}: {finding.explanation}"})


def _table_findings(notes: list[TableNote], plain: list[str]) -> list[Finding]:
    """Where a data source's generators came from (the cited dataset table), and the data
    sources taken as written by people."""
    out = []
    for note in notes:
        out.append(Finding(
            rule_id=f"dataset-table.{note.dataset}", pack_id=note.pack[0], pack_version=note.pack[1], kind="teacher",
            effect="info", citation=note.citation, source=note.label,
            explanation=f"{note.label}: the plan does not say which models wrote it; its dataset card says "
                        f"{', '.join(map(repr, note.generated_by))} ({note.citation.url}, read {note.citation.date}), "
                        "so their output terms are applied."))
    for label in plain:
        out.append(engine_finding(
            "engine.dataset-without-generator",
            f"{label}: neither the plan (generated_by) nor flopgate's dataset table names a model that wrote it, so it "
            "is taken as written by people; if a model wrote any of it, list that model in generated_by.",
            observed=label, effect="info").model_copy(update={"source": label}))
    return out


def _resolve_base(plan: Plan, packs: PolicySet, facts: PlanFacts) -> Resolution | None:
    """The student's base model, with its card lineage when it is a local folder (or the
    teacher's, for a pruned teacher)."""
    pruned = plan.student.init == "pruned_teacher"
    cards = facts.teacher_lineage if pruned else facts.base_lineage
    own = " AND ".join(cards[0].licenses) if cards and not pruned else None
    base = resolve_base_model(plan, packs, own or None)
    return None if base is None else with_lineage(base, cards, packs)


def _host_findings(res: Resolution) -> list[Finding]:
    """Fail-closed findings about who serves an API teacher."""
    if res.host_status == "missing":
        return [engine_finding(
            "engine.host-missing",
            f"{res.model!r} is an open-weights model reached through an API, and teacher.host does not say who "
            "serves it. A hosted open-weights model is governed by the model licence plus the host's terms; the "
            "first-party API terms were assumed. Set teacher.host (e.g. meta, aws-bedrock, google-vertex, "
            "azure-foundry, alibaba-model-studio); a person must review it.",
            observed="teacher.host not set")]
    if res.host_status == "unknown":
        return [engine_finding(
            "engine.unknown-host",
            f"No policy pack describes the terms of host {res.host!r}, so how it lets customers use outputs is "
            "unknown; the model's own terms were applied and a person must review the host's terms (or add a "
            "host entry in an organisation pack).", observed=f"teacher.host = {res.host!r}")]
    return []


def _base_findings(plan: Plan, base: Resolution | None) -> list[Finding]:
    """Fail-closed findings about the base model the student is built on."""
    if base is None:
        return []
    model, field = base_model_of(plan)
    out = _derivation_findings(base, field)
    if not base.known():
        out.append(engine_finding(
            "engine.unknown-base-model",
            f"The student is built on {model!r} ({field}), but no policy pack describes that model's licence, "
            "and its terms bind the student (naming, pass-through, notices, caps); a person must review it (or "
            "add a teacher entry for it in an organisation pack).", observed=f"{field} = {model!r}"))
    if base.unknown_licenses:
        out.append(engine_finding(
            "engine.unknown-base-license",
            f"The base model's licence {', '.join(map(repr, base.unknown_licenses))} is not in any policy pack; a "
            "person must review it.", observed=f"{field} = {model!r}"))
    if len(base.entries) > len({lp.builtin for lp, _ in base.entries}):
        ids = ", ".join(e.id for _, e in base.entries)
        out.append(engine_finding(
            "engine.ambiguous-base-model",
            f"The base model {model!r} matches several entries equally well ({ids}); all their terms are applied "
            "and a person must confirm which governs.", observed=f"{field} = {model!r}"))
    return out


def card_findings(res: Resolution, facts: PlanFacts, packs: PolicySet) -> list[Finding]:
    """``engine.teacher-license-conflict``: the licence the plan declares (``teacher.license``),
    the one the pack's entry for ``teacher.model`` gives and the one the local teacher folder's
    card (README front matter / LICENSE) names do not all agree. Compared as terms documents;
    a licence id no pack knows stands for itself."""
    if not facts.teacher_card_licenses:
        return []

    def terms_of(ids: list[str]) -> frozenset[str]:
        out = set()
        for lic in ids:
            known = packs.terms_for_license(lic) or packs.terms_for_license(
                re.sub(r"^licenseref-", "", lic, flags=re.I))
            out.update(known or [lic.casefold()])
        return frozenset(out)

    declared = split_licenses(facts.teacher_declared_license)
    entry_terms = [t for _, e in res.entries for t in e.terms] + [up.terms for _, up in res.upstream]
    sources = {"card": terms_of(facts.teacher_card_licenses)}
    if declared:
        sources["declared"] = terms_of(declared)
    if entry_terms:
        sources["entry"] = frozenset(entry_terms)
    if len(sources) < 2 or len(set(sources.values())) == 1:
        return []
    entry = (f"the pack's entry {res.entry.id} for {res.model!r} names {', '.join(dict.fromkeys(entry_terms))}"
             if entry_terms else f"no pack entry describes {res.model!r}")
    declared_text = (f"the plan declares teacher.license = {facts.teacher_declared_license!r}" if declared
                     else "the plan declares no teacher.license")
    card_text = (f"the model card in {facts.teacher_card} names "
                 f"{' AND '.join(facts.teacher_card_licenses)!r}")
    return [engine_finding(
        "engine.teacher-license-conflict",
        f"The teacher's licence sources disagree: {declared_text}; {entry}; {card_text}. Every licence found is "
        "applied, but a person must confirm which governs.",
        observed=f"declared {facts.teacher_declared_license!r}; entry "
                 f"{', '.join(dict.fromkeys(entry_terms)) or 'none'}; card {' AND '.join(facts.teacher_card_licenses)!r}")]


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
    out += _derivation_findings(res, "teacher.model")
    if not res.known():
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
        out.append(_mismatch_finding(res, "teacher.license"))
    if res.known() and not any(f.effect != "info" for f in teacher_findings):
        out.append(engine_finding(
            "engine.no-permission",
            "None of the teacher's terms says affirmatively that this use is allowed; failing closed.",
            observed=who))
    return out


def _mismatch_finding(res: Resolution, field: str) -> Finding:
    """``engine.license-mismatch``: the declared licence brings terms that what governs the model
    (its pack entry, or the models it derives from) does not name; both are applied."""
    governs = (f"the matched teacher entry ({res.entry.id})" if res.entry is not None
               else f"the model it derives from ({lineage_text(res)})")
    governing = res.entry.terms if res.entry is not None else res.base_terms()
    return engine_finding(
        "engine.license-mismatch",
        f"The declared licence names terms ({', '.join(res.license_only_terms)}) that {governs} does not; both "
        "are applied and a person must confirm which governs. A relabelled, re-uploaded or fine-tuned model "
        "keeps its family's terms.",
        observed=f"{field} = {', '.join(res.licenses)!r}; governed by {', '.join(governing)}")


def _derivation_findings(res: Resolution, field: str) -> list[Finding]:
    """What a model derives from: matched by its own name (info), the bases its card names
    (info), and bases no pack describes (REVIEW ``engine.unknown-derivative-base``)."""
    out = []
    if res.entries and res.match == "name":
        out.append(engine_finding(
            "engine.matched-by-name",
            f"{res.model!r} is not an id any pack lists, but its own name matches {res.entry.id} ({res.entry.name}): "
            "a re-upload or a fine-tune named after its base keeps the family's terms, which are applied.",
            observed=f"{field} = {res.model!r}", effect="info"))
    if res.bases:
        out.append(engine_finding(
            "engine.derived-from",
            f"The model card of {res.model!r} names the models it was made from: {lineage_text(res)}; their "
            "terms apply as well (a derivative keeps its family's terms).",
            observed=f"{field} = {res.model!r}", effect="info"))
    if res.unresolved_bases:
        out.append(engine_finding(
            "engine.unknown-derivative-base",
            f"The model card of {res.model!r} says it derives from {', '.join(map(repr, res.unresolved_bases))}, "
            "but no policy pack describes that model's licence (or the folder is not there, or says neither its "
            "base nor its licence); the terms that follow it are unknown, so a person must review it.",
            observed=f"{field} = {res.model!r}"))
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


def uncounted_findings(compute: ComputeEstimate) -> list[Finding]:
    """``engine.uncounted-ops``: the student's or teacher's count met FLOP-bearing ops that no
    formula counts (``unknown_ops``, formula errors, or coverage below 1), so the compute may be
    undercounted; one REVIEW finding per model, naming the ops. A closed-form count (no op count
    to be short of; its method and reason are stated) and a teacher known only by its parameter
    count give none."""
    out = []
    for role, summary in (("student", compute.student), ("teacher", compute.teacher)):
        if summary is None or summary.method != "counted":
            continue
        ops = dict(summary.unknown_ops)
        for name in summary.formula_errors:
            ops.setdefault(name, 0)
        if not ops and summary.coverage >= 1.0:
            continue
        named = ", ".join(f"{name} ({_calls(calls)})" for name, calls in sorted(ops.items())) or "none named"
        out.append(engine_finding(
            "engine.uncounted-ops",
            f"The {role}'s count ({summary.ref}, {summary.architecture}) met FLOP-bearing ops that no formula "
            f"counts: {named}; op coverage {summary.coverage:.2%}. Their FLOP are not in the compute figures, "
            "which may therefore be too low; a person must review it (or add formulas for those ops).",
            observed=f"{role}: {len(ops)} uncounted op(s), coverage {summary.coverage:.4f}",
            threshold="every FLOP-bearing op counted (coverage 1)", comparator="<"))
    return out


def _calls(calls: float) -> str:
    return counted(int(calls), "call") if calls else "formula error"


def _tokens(value: float) -> str:
    return f"{exact(value)} tokens"


def outcome_of(findings: list[Finding], obligations: list[Obligation]) -> tuple[Outcome, list[str]]:
    """The outcome and the ids of the rules that determined it (Cedar's "reasons")."""
    deny = [f.rule_id for f in findings if f.effect == "deny"]
    if deny:
        return "DENY", _unique(deny)
    review = [f.rule_id for f in findings if f.effect == "review"]
    review += [rule for o in obligations if o.status == "unmet" for rule in _imposed_by(o)]
    if review:
        return "REVIEW", _unique(review)
    if obligations:
        return "ALLOW_WITH_OBLIGATIONS", _unique([rule for o in obligations for rule in _imposed_by(o)])
    return "ALLOW", _unique([f.rule_id for f in findings if f.effect == "allow"])


def _imposed_by(ob: Obligation) -> list[str]:
    """The obligation's rule, then every other rule that imposes the same duty (its legal bases)."""
    return [ob.rule_id] + [b.rule_id for b in ob.legal_bases]


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
        entry_name=entry.name if entry else None, provider=teacher_provider(res, packs),
        matched_by=res.matched_by, terms=tagged(res.terms),
        upstream=tagged([up.terms for _, up in res.upstream]), licenses=list(res.licenses),
        citation=entry.citation if entry else None, host=res.host,
        host_entry_id=res.host_entry[1].id if res.host_entry else None, host_terms=tagged(res.host_terms),
        derived_from=[b.model for b in res.bases], derived_terms=tagged(res.base_terms()))


def _unique(ids: list[str]) -> list[str]:
    return list(dict.fromkeys(ids))
