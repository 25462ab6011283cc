"""Teacher terms: find what governs the teacher, then apply each clause to the plan. Pure.

Resolution: a teacher entry matches when its channel equals ``teacher.access`` and one of its
globs matches ``teacher.model`` (case-insensitive); the most specific glob wins (most literal
characters). Licence ids in ``teacher.license`` (``A AND B``, as SPDX writes it; filled in from
a local model directory by :mod:`audit.policy.facts`) name terms documents directly; a licence
governs weights, so for an API or app teacher no entry means "unknown" whatever licence is
declared. When an entry and a declared licence disagree, both apply and the decision needs
review. Upstream terms (the teacher was itself trained on another model's outputs) apply too.

Clause effects depend on the student's situation: ``general`` (scope general) or ``narrow_``
plus its distribution (``internal``, ``api``, ``open_weights``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from audit.numbers import quantity
from audit.policy.conditions import (
    COMPARE, Context, matches_any, jurisdiction_covered, missing_facts, student_derived_from,
    when_holds,
)
from audit.policy.failclosed import rule_error
from audit.policy.decision import Finding, Obligation
from audit.policy.packs import LoadedPack, PolicySet
from audit.policy.schema import TeacherEntry, Upstream

_SITUATION_TEXT = {"general": "general-purpose", "narrow_internal": "narrow, internal-only",
                   "narrow_api": "narrow, API-served", "narrow_open_weights": "narrow, open-weights"}
BAN_DEFAULTS = {
    "competitor_ban": {"general": "deny", "narrow_internal": "review", "narrow_api": "review",
                       "narrow_open_weights": "review"},
    "any_training_ban": dict.fromkeys(_SITUATION_TEXT, "deny"),
    "authorization_required": dict.fromkeys(_SITUATION_TEXT, "deny"),
    "needs_review": dict.fromkeys(_SITUATION_TEXT, "review"),
}


@dataclass(frozen=True)
class Resolution:
    """What governs one teacher. ``terms`` and ``upstream`` hold terms-document ids."""

    model: str
    access: str
    entries: tuple[tuple[LoadedPack, TeacherEntry], ...] = ()
    terms: tuple[str, ...] = ()
    upstream: tuple[tuple[LoadedPack, Upstream], ...] = ()
    licenses: tuple[str, ...] = ()
    unknown_licenses: tuple[str, ...] = ()
    license_only_terms: tuple[str, ...] = ()  # named by the licence but not by the entry

    @property
    def entry(self) -> Optional[TeacherEntry]:
        return self.entries[0][1] if self.entries else None

    @property
    def matched_by(self) -> str:
        return "model" if self.entries else ("license" if self.terms else "none")

    def all_terms(self) -> tuple[str, ...]:
        return self.terms + tuple(up.terms for _, up in self.upstream if up.terms not in self.terms)


def split_licenses(value: Optional[str]) -> list[str]:
    """``"Apache-2.0 AND LicenseRef-gemma"`` -> ``["Apache-2.0", "LicenseRef-gemma"]``."""
    if not value:
        return []
    parts = re.split(r"\s+AND\s+", value.strip().strip("()"), flags=re.IGNORECASE)
    return [p.strip().strip("()") for p in parts if p.strip()]


def is_local_path(model: str) -> bool:
    return model.startswith(("/", "./", "../", "~"))


def _specificity(pattern: str) -> int:
    return len(pattern) - pattern.count("*") - pattern.count("?")


def _best_entries(model: str, access: str, candidates) -> list:
    best, entries = -1, []
    for loaded, entry in candidates:
        if entry.channel != access:
            continue
        score = max((_specificity(p) for p in entry.models if matches_any(model, [p])), default=-1)
        if score > best:
            best, entries = score, [(loaded, entry)]
        elif score == best and score >= 0:
            entries.append((loaded, entry))
    return entries


def resolve_teacher(model: str, access: str, license: Optional[str], packs: PolicySet) -> Resolution:
    """The entries, terms and upstream terms that govern ``model`` reached through ``access``."""
    entries = []
    if not is_local_path(model):
        # Organisation entries add to the built-in match, never replace it: they can only add terms.
        teachers = packs.teachers()
        entries = (_best_entries(model, access, [t for t in teachers if t[0].builtin])
                   + _best_entries(model, access, [t for t in teachers if not t[0].builtin]))
    entry_terms = [t for _, e in entries for t in e.terms]
    upstream = [(lp, up) for lp, e in entries for up in e.upstream]
    licenses = split_licenses(license)
    by_license, unknown = [], []
    for lic in licenses:
        ids = packs.terms_for_license(lic) or packs.terms_for_license(re.sub(r"^licenseref-", "", lic, flags=re.I))
        if ids:
            by_license.extend(ids)
        else:
            unknown.append(lic)
    covered = set(entry_terms) | {up.terms for _, up in upstream}
    extra = [t for t in dict.fromkeys(by_license) if t not in covered]
    if not entries and access != "weights":
        extra = []  # a licence governs weights; an unknown API or app stays unknown
    terms = list(dict.fromkeys(entry_terms + extra))
    return Resolution(model=model, access=access, entries=tuple(entries), terms=tuple(terms),
                      upstream=tuple(upstream), licenses=tuple(licenses), unknown_licenses=tuple(unknown),
                      license_only_terms=tuple(extra) if entries else ())


def teacher_provider(res: Resolution, packs: PolicySet) -> Optional[str]:
    if res.entry is not None:
        return res.entry.provider
    if res.terms:
        return packs.terms(res.terms[0])[1].provider
    return None


# -- clause evaluation -----------------------------------------------------------------------

@dataclass
class _Out:
    effect: str
    explanation: str
    observed: Optional[str] = None
    threshold: Optional[str] = None
    obligation: Optional[Obligation] = None


def evaluate_teacher(ctx: Context, packs: PolicySet, res: Resolution) -> tuple[list[Finding], list[Obligation]]:
    findings: list[Finding] = []
    obligations: list[Obligation] = []
    via: dict[str, Upstream] = {up.terms: up for _, up in res.upstream if up.terms not in res.terms}
    for loaded, up in res.upstream:
        findings.append(Finding(
            rule_id=up.id, pack_id=loaded.pack.id, pack_version=loaded.pack.version, kind="teacher",
            effect="info", citation=up.citation,
            explanation=f"Upstream terms: {up.explanation} The clauses of {up.terms} apply as well."))
    for terms_id in res.all_terms():
        loaded, doc = packs.terms(terms_id)
        for clause in doc.clauses:
            try:
                out = evaluate_clause(clause, ctx)
            except Exception as exc:  # noqa: BLE001 - fail closed: a broken clause means REVIEW
                findings.append(rule_error(clause.id, exc))
                continue
            prefix = f"{doc.title} ({doc.version})"
            if terms_id in via:
                prefix = f"Inherited via {via[terms_id].id}: {prefix}"
            findings.append(Finding(
                rule_id=clause.id, pack_id=loaded.pack.id, pack_version=loaded.pack.version, kind="teacher",
                effect=out.effect, observed=out.observed, threshold=out.threshold, citation=clause.citation,
                explanation=f"{prefix}: {out.explanation}"))
            if out.obligation is not None:
                obligations.append(out.obligation)
    return findings, obligations


def evaluate_clause(clause, ctx: Context) -> _Out:
    applies = when_holds(clause.when, ctx)
    if applies is False:
        return _Out("info", f"not triggered for this plan. {clause.explanation}")
    if applies is None:
        missing = ", ".join(missing_facts(clause.when, ctx))
        return _Out("review", f"cannot tell whether it applies: {missing} unknown. {clause.explanation}")
    handler = _HANDLERS[clause.type]
    return handler(clause, ctx)


def _obligation(clause, status: str, *, checkable: bool, authorized: bool = False,
                suffix: str = "", text: Optional[str] = None) -> Obligation:
    return Obligation(id=clause.id + suffix, rule_id=clause.id, text=text or clause.text,
                      checkable=checkable, status=status, authorized=authorized)


def _authorization_lift(clause, ctx: Context, effect: str) -> Optional[_Out]:
    auth = ctx.plan.teacher.authorization
    if auth is None or effect == "allow":
        return None
    text = (f"Written authorisation from the provider is declared ({auth.document}, sha256 {auth.sha256[:12]}...); "
            "keep it on file: it is what allows this use.")
    return _Out("allow", f"lifted by the declared written authorisation (recorded). {clause.explanation}",
                observed=f"teacher.authorization sha256 {auth.sha256[:12]}...",
                obligation=_obligation(clause, "met", checkable=True, authorized=True,
                                       suffix=".authorization", text=text))


def _ban(clause, ctx: Context) -> _Out:
    excepted = getattr(clause, "except_derived_from", [])
    if excepted and student_derived_from(ctx.plan, excepted):
        return _Out("allow", f"the student is built on the teacher's own family, which the terms exempt. "
                             f"{clause.explanation}", observed=_student_origin(ctx))
    situation = ctx.situation
    effect = getattr(clause.outcomes, situation) or BAN_DEFAULTS[clause.type][situation]
    lifts = clause.type == "authorization_required" or getattr(clause, "authorization_lifts", False)
    if lifts:
        lifted = _authorization_lift(clause, ctx, effect)
        if lifted:
            return lifted
    note = ""
    if ctx.plan.teacher.authorization is not None and not lifts and effect != "allow":
        note = " A written authorisation is declared, but these terms give it no effect on this clause."
    return _Out(effect, f"for a {_SITUATION_TEXT[situation]} student this is '{effect}'. "
                        f"{clause.explanation}{note}", observed=_situation_observed(ctx))


def _pass_through(clause, ctx: Context) -> _Out:
    lic = ctx.plan.student.license
    met = lic is not None and matches_any(lic, clause.student_license_any_of)
    status = "met" if met else "unmet"
    why = "" if met else (" student.license is not declared." if lic is None
                          else " The declared student licence does not carry these terms.")
    return _Out("obligation", f"{clause.explanation}{why}", observed=f"student.license = {lic!r}",
                threshold="one of " + ", ".join(clause.student_license_any_of),
                obligation=_obligation(clause, status, checkable=True))


def _normal(name: str) -> str:
    return re.sub(r"[-_\s]+", " ", name.strip())


def _naming(clause, ctx: Context) -> _Out:
    name = _normal(ctx.plan.student.name)
    if clause.prefix is not None:
        met = name.startswith(_normal(clause.prefix))
        threshold = f"begins with {clause.prefix!r}"
    else:
        met = not name.casefold().startswith(_normal(clause.forbidden_prefix).casefold())
        threshold = f"does not begin with {clause.forbidden_prefix!r}"
    return _Out("obligation", clause.explanation, observed=f"student.name = {ctx.plan.student.name!r}",
                threshold=threshold, obligation=_obligation(clause, "met" if met else "unmet", checkable=True))


def _todo(clause, ctx: Context) -> _Out:
    return _Out("obligation", f"{clause.explanation} This cannot be checked before training.",
                obligation=_obligation(clause, "todo", checkable=False))


def _non_commercial(clause, ctx: Context) -> _Out:
    observed = f"use.commercial = {ctx.plan.use.commercial}"
    if ctx.plan.use.commercial:
        return _Out(clause.if_commercial, f"the plan is commercial. {clause.explanation}", observed=observed)
    return _Out("obligation", clause.explanation, observed=observed,
                obligation=_obligation(clause, "met", checkable=True))


def _usage_cap(clause, ctx: Context) -> _Out:
    value = ctx.fact(clause.metric)
    unit = "users" if clause.metric == "monthly_active_users" else "USD"
    threshold = quantity(clause.limit, unit)
    field_name = "use.monthly_active_users" if unit == "users" else "organization.annual_revenue_usd"
    if value is None:
        return _Out("review", f"{field_name} is not in the plan, so the cap cannot be checked. {clause.explanation}",
                    observed="unknown", threshold=threshold)
    observed = quantity(value, unit)
    if not COMPARE[clause.comparator](value, clause.limit):
        return _Out("info", f"below the cap. {clause.explanation}", observed=observed, threshold=threshold)
    if clause.authorization_lifts:
        lifted = _authorization_lift(clause, ctx, clause.if_exceeded)
        if lifted:
            lifted.threshold = threshold
            return lifted
    return _Out(clause.if_exceeded, f"above the cap. {clause.explanation}", observed=observed, threshold=threshold)


def _region(clause, ctx: Context) -> _Out:
    codes = ctx.plan.organization.jurisdictions
    observed = "organization.jurisdictions = " + ", ".join(codes)
    if jurisdiction_covered(codes, clause.jurisdictions):
        return _Out("deny", f"the organisation is in an excluded region. {clause.explanation}", observed=observed)
    return _Out("info", f"the organisation is outside the excluded region. {clause.explanation}", observed=observed)


def _permission(clause, ctx: Context) -> _Out:
    return _Out("allow", clause.explanation)


def _student_origin(ctx: Context) -> str:
    s = ctx.plan.student
    return f"student.init = {s.init!r}" + (f", base_model = {s.base_model!r}" if s.base_model else "")


def _situation_observed(ctx: Context) -> str:
    use = ctx.plan.use
    return f"use.scope = {use.scope!r}, use.distribution = {use.distribution!r}"


_HANDLERS = {
    "competitor_ban": _ban, "any_training_ban": _ban, "authorization_required": _ban, "needs_review": _ban,
    "derivative_pass_through": _pass_through, "naming": _naming, "attribution": _todo,
    "notice_file": _todo, "use_policy": _todo, "non_commercial": _non_commercial,
    "usage_cap": _usage_cap, "region_exclusion": _region, "permission": _permission,
}
