"""Teacher terms: find what governs the teacher, then apply each clause to the plan. Pure.

Resolution: a teacher entry matches when its channel equals ``teacher.access`` and one of its
globs matches ``teacher.model`` (case-insensitive); the most specific glob wins (most literal
characters). When no weights entry matches the full id, the model's own name (after the owner)
is matched against the name part of the globs, alone or after a ``-``, ``_`` or ``.``: a
re-upload (``someuser/Llama-3.1-8B-Instruct-abliterated``) or a fine-tune named after its base
(``someuser/Hermes-3-Llama-3.1-8B``) keeps the family's terms (``match == "name"``). Only a pack
entry for the full id (a pack note) can say otherwise. A local folder's card lineage
(``base_model``) adds the terms of what it derives from (:mod:`audit.policy.derivatives`).

Licence ids in ``teacher.license`` (``A AND B``, as SPDX writes it; filled in from a local model
directory by :mod:`audit.policy.facts`) name terms documents directly; a licence
governs weights, so for an API or app teacher no entry means "unknown" whatever licence is
declared. When an entry and a declared licence disagree, both apply and the decision needs
review. Upstream terms (the teacher was itself trained on another model's outputs) apply too.

Clause effects depend on the student's situation: ``general`` (scope general) or ``narrow_``
plus its distribution (``internal``, ``api``, ``open_weights``).

The channel: an open-weights model reached through an API is governed by whoever serves it.
``teacher.host`` names the host: the model's own provider (its first-party API entry governs), a
host entry (``hosts`` in a pack: the host's terms plus the model's licence, or a closed model's
provider terms), or an unknown host (REVIEW). An open-weights model through an API without a
host is REVIEW too (:func:`resolve_plan_teacher`).

The base model: a student initialised from ``student.base_model`` (or pruned from the teacher)
contains that model's weights, so the clauses of its licence that bind derivatives (naming,
pass-through, attribution, notice, use policy, caps, region, non-commercial) apply to the
student under rule ids ``base-model.<clause id>``; an unknown base model is REVIEW
(:func:`evaluate_base_model`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Optional

from audit.numbers import quantity
from audit.policy.conditions import (
    COMPARE, Context, matches_any, jurisdiction_covered, missing_facts, student_derived_from,
    when_holds,
)
from audit.policy.failclosed import engine_finding, rule_error
from audit.policy.decision import Finding, LegalBasis, Obligation
from audit.policy.packs import LoadedPack, PolicySet
from audit.policy.schema import HostEntry, TeacherEntry, Upstream, When
from audit.policy.territory import territory_outcome

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
    host: Optional[str] = None                # teacher.host as given
    # none: not an API teacher, or a closed model through its own provider's API without a host;
    # first_party: the host is the model's provider; third_party: a host entry governs too;
    # unknown: no pack knows the host; missing: an open-weights model through an API, host not given
    host_status: str = "none"
    host_entry: Optional[tuple[LoadedPack, HostEntry]] = None
    match: str = "id"                         # id: the full model id matched; name: only its own name did
    bases: tuple["Resolution", ...] = ()      # what a local folder's card says it derives from (base_model)
    unresolved_bases: tuple[str, ...] = ()    # base models no pack describes (or folders that are not there)

    @property
    def entry(self) -> Optional[TeacherEntry]:
        return self.entries[0][1] if self.entries else None

    @property
    def matched_by(self) -> str:
        if self.entries:
            return "model" if self.match == "id" else "name"
        if self.terms:
            return "license"
        return "base_model" if self.base_terms() else "none"

    def base_terms(self) -> tuple[str, ...]:
        """Terms of the models this one derives from (their own, upstream and bases), in order."""
        return tuple(dict.fromkeys(t for base in self.bases for t in base.all_terms()))

    def known(self) -> bool:
        """Whether some pack describes terms that govern it (its own or a base model's)."""
        return bool(self.terms or self.base_terms())

    @property
    def host_terms(self) -> tuple[str, ...]:
        return tuple(self.host_entry[1].terms) if self.host_entry else ()

    def all_terms(self) -> tuple[str, ...]:
        own = self.terms + tuple(up.terms for _, up in self.upstream if up.terms not in self.terms)
        own += tuple(t for t in self.base_terms() if t not in own)
        return own + tuple(t for t in self.host_terms if t not in own)


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


NAME_SEPARATORS = ("-", "_", ".")
_MIN_NAME_LITERALS = 4  # a glob's name part with fewer literal characters ("*", "gpt*") is not a family


def name_patterns(pattern: str) -> list[str]:
    """The globs a model's own name (after the owner) is matched with, for one entry glob: its
    name part alone or followed by a separator and anything (a re-upload: ``-GGUF``), each also
    after a separator (a fine-tune named after its base: ``Hermes-3-Llama-3.1-8B``)."""
    name = pattern.rsplit("/", 1)[-1]
    if _specificity(name) < _MIN_NAME_LITERALS:
        return []
    cores = [name] + ([f"{name}{sep}*" for sep in NAME_SEPARATORS] if not name.endswith("*") else [])
    return cores + [f"*{sep}{core}" for core in cores for sep in NAME_SEPARATORS]


def _name_entries(model: str, access: str, candidates) -> list:
    """:func:`_best_entries` on the model's own name, for weights entries only. An entry whose
    globs name the model's own owner is skipped: the provider's own ids are listed one by one
    (one left out, such as a checkpoint whose licence is not verified, stays unknown)."""
    if access != "weights":
        return []
    owner, _, name = model.rpartition("/")
    best, entries = -1, []
    for loaded, entry in candidates:
        owners = {g.rsplit("/", 1)[0].casefold() for g in entry.models if "/" in g}
        if entry.channel != access or owner.casefold() in owners:
            continue
        score = max((_specificity(p) for g in entry.models for p in name_patterns(g) if matches_any(name, [p])),
                    default=-1)
        if score > best:
            best, entries = score, [(loaded, entry)]
        elif score == best and score >= 0:
            entries.append((loaded, entry))
    return entries


def resolve_teacher(model: str, access: str, license: Optional[str], packs: PolicySet) -> Resolution:
    """The entries, terms and upstream terms that govern ``model`` reached through ``access``."""
    entries, match = [], "id"
    if not is_local_path(model):
        # Organisation entries add to the built-in match, never replace it: they can only add terms.
        teachers = packs.teachers()
        builtin, org = [t for t in teachers if t[0].builtin], [t for t in teachers if not t[0].builtin]
        entries = _best_entries(model, access, builtin) + _best_entries(model, access, org)
        if not entries:  # a re-upload or a fine-tune named after its family keeps the family's terms
            entries, match = _name_entries(model, access, builtin) + _name_entries(model, access, org), "name"
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
                      license_only_terms=tuple(extra) if entries else (), match=match if entries else "id")


def _provider_key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.casefold())


def is_first_party(host: str, provider: str) -> bool:
    """``meta`` for Meta, ``mistral`` for Mistral AI, ``openai`` for OpenAI."""
    h, p = _provider_key(host), _provider_key(provider)
    return bool(h) and (h == p or p.startswith(h))


def resolve_plan_teacher(teacher, packs: PolicySet) -> Resolution:
    """:func:`resolve_teacher` plus the channel: who serves an API teacher (``teacher.host``).

    - not an API teacher: as :func:`resolve_teacher`;
    - no host: a closed model is taken to be served by its provider; an open-weights model (one
      a weights entry knows) could be served by anyone, so ``host_status`` is ``missing`` (REVIEW);
    - a host entry: the host's terms plus the model's licence (a weights entry or the declared
      licence), or, for a closed model, its provider's API terms;
    - the model's own provider: its API entry, as without a host;
    - any other host: ``unknown`` (REVIEW), with the model's licence or provider terms.
    """
    res = resolve_teacher(teacher.model, teacher.access, teacher.license, packs)
    if teacher.access != "api":
        return res
    weights = resolve_teacher(teacher.model, "weights", teacher.license, packs)
    host = teacher.host
    if host is None:
        return replace(res, host_status="missing") if weights.entries else res
    model = replace(weights, access="api") if weights.terms else res
    found = packs.host(host)
    if found is not None:
        return replace(model, host=host, host_status="third_party", host_entry=found)
    if res.entry is not None and is_first_party(host, res.entry.provider):
        return replace(res, host=host, host_status="first_party")
    return replace(model, host=host, host_status="unknown")


def teacher_provider(res: Resolution, packs: PolicySet) -> Optional[str]:
    """The entry's provider; else that of the first base model a provider is known for (a
    derivative is governed by its family); else that of the licence's terms."""
    if res.entry is not None:
        return res.entry.provider
    for base in res.bases:
        found = teacher_provider(base, packs)
        if found is not None:
            return found
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
    derived = {t: base.model for base in res.bases for t in base.all_terms() if t not in res.terms and t not in via}
    own = set(res.terms) | set(via) | set(derived)
    for loaded, up in res.upstream:
        findings.append(Finding(
            rule_id=up.id, pack_id=loaded.pack.id, pack_version=loaded.pack.version, kind="teacher",
            effect="info", citation=up.citation,
            explanation=f"Upstream terms: {up.explanation} The clauses of {up.terms} apply as well."))
    if res.host_entry is not None:
        loaded, host = res.host_entry
        findings.append(Finding(
            rule_id=host.id, pack_id=loaded.pack.id, pack_version=loaded.pack.version, kind="teacher",
            effect="info", citation=host.citation,
            explanation=f"Host: {host.name} serves {res.model!r}; its terms ({', '.join(host.terms)}) apply "
                        "together with the model's own licence or provider terms."))
    in_force = 0
    for terms_id in res.all_terms():
        loaded, doc = packs.terms(terms_id)
        if not doc.in_force(ctx.as_of):
            findings.append(_not_in_force(doc, ctx.as_of))
            continue
        in_force += terms_id in res.terms or terms_id in derived
        for clause in doc.clauses:
            try:
                out = evaluate_clause(clause, ctx)
            except Exception as exc:  # noqa: BLE001 - fail closed: a broken clause means REVIEW
                findings.append(rule_error(clause.id, exc))
                continue
            prefix = f"{doc.title} ({doc.version})"
            if terms_id in via:
                prefix = f"Inherited via {via[terms_id].id}: {prefix}"
            elif terms_id in derived:
                prefix = f"Derived from {derived[terms_id]!r} (the model card's base_model): {prefix}"
            elif terms_id not in own:
                prefix = f"Host {res.host!r}: {prefix}"
            findings.append(Finding(
                rule_id=clause.id, pack_id=loaded.pack.id, pack_version=loaded.pack.version, kind="teacher",
                effect=out.effect, observed=out.observed, threshold=out.threshold, citation=clause.citation,
                explanation=f"{prefix}: {out.explanation}"))
            if out.obligation is not None:
                obligations.append(out.obligation)
    if (res.terms or derived) and not in_force:  # fail closed: the version that governed then is not in any pack
        findings.append(engine_finding(
            "engine.no-terms-in-force",
            f"No version of {', '.join(res.terms)} that a pack holds was in force on {ctx.as_of}; the terms "
            "that governed then are unknown, so a person must review them.", observed=str(ctx.as_of)))
    return findings, obligations


def _not_in_force(doc, day) -> Finding:
    window = f"from {doc.effective_from or 'the start'} until {doc.superseded_on or 'now'}"
    return engine_finding("engine.terms-not-in-force",
                          f"{doc.title} ({doc.version}) governs {window}, not on {day}: its clauses were not "
                          "applied.", observed=f"{doc.id} on {day}", effect="info")


def evaluate_clause(clause, ctx: Context, when: Optional[When] = None, *, override: bool = False) -> _Out:
    """One clause's effect; ``override`` evaluates ``when`` in place of the clause's own."""
    when = when if override else clause.when
    applies = when_holds(when, ctx)
    if applies is False:
        return _Out("info", f"not triggered for this plan. {clause.explanation}")
    if applies is None:
        missing = ", ".join(missing_facts(when, ctx))
        return _Out("review", f"cannot tell whether it applies: {missing} unknown. {clause.explanation}")
    handler = _HANDLERS[clause.type]
    return handler(clause, ctx)


# -- the base model --------------------------------------------------------------------------

BASE_PREFIX = "base-model."
BASE_CLAUSE_TYPES = frozenset({"naming", "derivative_pass_through", "attribution", "notice_file", "use_policy",
                               "usage_cap", "region_exclusion", "non_commercial", "territory_exclusion"})
"""Clause types that bind a model built on the licensed weights (a derivative), whoever taught it."""
# Conditions about how the student relates to the teacher; a student built on the base model
# contains its weights, the closest relation there is, so they hold for the base model's clauses.
_TEACHER_RELATION = ("student_init", "student_derived_from", "access", "teacher_provider", "teacher_model",
                     "teacher_terms")


def base_model_of(plan) -> Optional[tuple[str, str]]:
    """``(model id, field)`` of the weights the student starts from, or None for a scratch student."""
    student = plan.student
    if student.init == "base" and student.base_model:
        return student.base_model, "student.base_model"
    if student.init == "pruned_teacher":
        return plan.teacher.model, "teacher.model (student.init: pruned_teacher)"
    return None


def resolve_base_model(plan, packs: PolicySet, card_license: Optional[str] = None) -> Optional[Resolution]:
    """The weights licence that governs the student's base model (None for a scratch student).
    A pruned teacher's declared licence counts; a base model has no declared licence field, but
    ``card_license`` (what a base model folder's own card says) does."""
    found = base_model_of(plan)
    if found is None:
        return None
    model, _ = found
    license = plan.teacher.license if plan.student.init == "pruned_teacher" else card_license
    return resolve_teacher(model, "weights", license, packs)


def _base_when(when: Optional[When]) -> Optional[When]:
    return None if when is None else when.model_copy(update=dict.fromkeys(_TEACHER_RELATION))


def evaluate_base_model(ctx: Context, packs: PolicySet, base: Optional[Resolution],
                        already: set[str]) -> tuple[list[Finding], list[Obligation]]:
    """The derivative-binding clauses of the base model's terms (and its upstream terms), as
    ``base-model.<clause id>``. ``already``: clause ids the teacher's own evaluation applied
    (not info), which are not repeated."""
    findings: list[Finding] = []
    obligations: list[Obligation] = []
    if base is None or not base.terms:
        return findings, obligations
    for terms_id in base.all_terms():
        loaded, doc = packs.terms(terms_id)
        for clause in doc.clauses:
            if clause.type not in BASE_CLAUSE_TYPES or clause.id in already:
                continue
            rule_id = BASE_PREFIX + clause.id
            try:
                out = evaluate_clause(clause, ctx, _base_when(clause.when), override=True)
            except Exception as exc:  # noqa: BLE001 - fail closed
                findings.append(rule_error(rule_id, exc))
                continue
            findings.append(Finding(
                rule_id=rule_id, pack_id=loaded.pack.id, pack_version=loaded.pack.version, kind="teacher",
                effect=out.effect, observed=out.observed, threshold=out.threshold, citation=clause.citation,
                explanation=f"Base model {base.model!r}, {doc.title} ({doc.version}): the student is built on "
                            f"these weights, so this binds it. {out.explanation}"))
            if out.obligation is not None:
                ob = out.obligation
                bases = [b.model_copy(update={"obligation_id": BASE_PREFIX + b.obligation_id, "rule_id": rule_id})
                         for b in ob.legal_bases]
                obligations.append(ob.model_copy(update={"id": BASE_PREFIX + ob.id, "rule_id": rule_id,
                                                         "legal_bases": bases}))
    return findings, obligations


def _obligation(clause, status: str, *, checkable: bool, authorized: bool = False,
                suffix: str = "", text: Optional[str] = None) -> Obligation:
    basis = LegalBasis(obligation_id=clause.id + suffix, rule_id=clause.id, citation=clause.citation)
    return Obligation(id=clause.id + suffix, rule_id=clause.id, text=text or clause.text,
                      checkable=checkable, status=status, authorized=authorized, legal_bases=[basis])


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


_CAP_FIELDS = {"monthly_active_users": "use.monthly_active_users",
               "organization_monthly_active_users": "organization.monthly_active_users",
               "annual_revenue_usd": "organization.annual_revenue_usd"}


def _usage_cap(clause, ctx: Context) -> _Out:
    value = ctx.fact(clause.metric)
    unit = "USD" if clause.metric == "annual_revenue_usd" else "users"
    threshold = quantity(clause.limit, unit)
    field_name = _CAP_FIELDS[clause.metric]
    if value is None:
        return _Out("review", f"{field_name} is not in the plan, so the cap cannot be checked. {clause.explanation}",
                    observed=f"{field_name} unknown", threshold=threshold)
    observed = f"{field_name} = {quantity(value, unit)}"
    if not COMPARE[clause.comparator](value, clause.limit):
        return _Out("info", f"below the cap. {clause.explanation}", observed=observed, threshold=threshold)
    if clause.authorization_lifts:
        lifted = _authorization_lift(clause, ctx, clause.if_exceeded)
        if lifted:
            lifted.threshold = threshold
            return lifted
    return _Out(clause.if_exceeded, f"above the cap. {clause.explanation}", observed=observed, threshold=threshold)


def _region(clause, ctx: Context) -> _Out:
    """Region clauses name where the licensee is domiciled or has its principal place of
    business (``organization.domicile``), not the markets it serves (``jurisdictions``)."""
    domicile = ctx.plan.organization.domicile
    threshold = "domicile not in " + ", ".join(clause.jurisdictions)
    if domicile is None:
        return _Out("review", "organization.domicile is not in the plan, so it cannot be told whether the "
                              "organisation is domiciled (principal place of business) in the excluded region; "
                              f"the markets it serves (organization.jurisdictions) do not say. {clause.explanation}",
                    observed="organization.domicile unknown", threshold=threshold)
    observed = f"organization.domicile = {domicile}"
    if jurisdiction_covered([domicile], clause.jurisdictions):
        return _Out("deny", f"the organisation is domiciled in an excluded region. {clause.explanation}",
                    observed=observed, threshold=threshold)
    return _Out("info", f"the organisation is domiciled outside the excluded region. {clause.explanation}",
                observed=observed, threshold=threshold)


def _territory(clause, ctx: Context) -> _Out:
    effect, why, observed, threshold = territory_outcome(clause, ctx.plan)
    return _Out(effect, f"{why} {clause.explanation}", observed=observed, threshold=threshold)


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
    "territory_exclusion": _territory,
}
