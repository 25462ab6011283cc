"""Facts and conditions: the small vocabulary every rule is written in. Pure functions.

Conditions are three-valued: ``True``, ``False`` or ``None`` (a fact they need is unknown).
An unknown never counts as "does not apply"; the caller turns it into REVIEW.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import operator
from dataclasses import dataclass, field
from typing import Optional

from audit.compute.types import ComputeEstimate
from audit.plan import Plan
from audit.policy.cards import ModelCard
from audit.policy.provider import possible_roles, provider_role
from audit.policy.schema import FactTest, When
from audit.validation import StrictModel

COMPARE = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le,
           "==": operator.eq, "!=": operator.ne}

FACT_LABELS = {
    "total_flops": "cumulative training compute",
    "update_flops": "compute contributing to parameter updates",
    "modification_flops": "compute of the modification",
    "original_model_flops": "training compute of the original model",
    "teacher_training_flops": "the teacher's published training compute",
    "cost_usd": "compute cost",
    "annual_revenue_usd": "organization.annual_revenue_usd",
    "monthly_active_users": "use.monthly_active_users",
    "organization_monthly_active_users": "organization.monthly_active_users",
}


class PlanFacts(StrictModel):
    """Facts read from the files a plan names, by the I/O step before ``decide``
    (:func:`audit.policy.facts.read_plan_facts`). Plain data: ``decide`` only reads it."""

    manifest: Optional[str] = None          # the data.manifest that was read (absolute path)
    manifest_sha256: Optional[str] = None   # of the bytes read: the audit signs exactly these
    manifest_tokens: Optional[int] = None   # tokens the manifest says its files hold; None: it gives no count
    manifest_tokens_field: Optional[str] = None  # where the count came from: total_tokens or files[].tokens
    manifest_teacher_tokens: Optional[int] = None  # the teacher's tokens of the same text (teacher_tokenization.total_tokens)
    teacher_card: Optional[str] = None      # the local teacher folder whose README/LICENSE was read
    teacher_card_licenses: list[str] = []   # licence ids that folder's card and LICENSE name
    teacher_declared_license: Optional[str] = None  # teacher.license exactly as the plan wrote it
    teacher_lineage: list[ModelCard] = []   # the local teacher folder's card, then its local base_model folders
    base_lineage: list[ModelCard] = []      # the same for student.base_model given as a local folder


@dataclass(frozen=True)
class Context:
    """Everything a rule may look at. Built once per decision; never mutated."""

    plan: Plan
    compute: ComputeEstimate
    as_of: dt.date
    teacher_provider: Optional[str] = None   # None when the teacher is unknown
    teacher_terms: tuple[str, ...] = ()
    facts: PlanFacts = field(default_factory=PlanFacts)  # read from the plan's files before decide
    audit_date: Optional[dt.date] = None     # when the pre-run estimate was made (the audit); None: not given

    def fact(self, name: str) -> Optional[float]:
        """A numeric fact, or None when the plan or the estimate does not know it."""
        if name == "annual_revenue_usd":
            return self.plan.organization.annual_revenue_usd
        if name == "monthly_active_users":
            return self.plan.use.monthly_active_users
        if name == "organization_monthly_active_users":
            return self.plan.organization.monthly_active_users
        return getattr(self.compute, name)

    @property
    def distributed(self) -> bool:
        """Served to others through an API, or weights published ("distributed or made available")."""
        return self.plan.use.distribution != "internal"

    @property
    def situation(self) -> str:
        """``general``, or ``narrow_internal`` / ``narrow_api`` / ``narrow_open_weights``."""
        if self.plan.use.scope == "general":
            return "general"
        return f"narrow_{self.plan.use.distribution}"


def matches_any(value: Optional[str], patterns: list[str]) -> bool:
    """Case-insensitive glob match (``*`` also spans ``/``)."""
    if value is None:
        return False
    folded = value.casefold()
    return any(fnmatch.fnmatchcase(folded, p.casefold()) for p in patterns)


def jurisdiction_covered(plan_codes: list[str], codes: list[str]) -> bool:
    """``US`` covers ``US-CA``; ``EU`` covers only ``EU`` (member states are listed explicitly)."""
    return any(pc == c or pc.startswith(c + "-") for pc in plan_codes for c in codes)


def uncovered_jurisdictions(plan_codes: list[str], covered_codes: set[str]) -> list[str]:
    """The plan's codes that no regime names in its ``applies_to``, in plan order.

    A code is covered only when a regime lists it itself: a regime for ``US`` is applied to
    ``US-TX`` (see :func:`jurisdiction_covered`), but it says nothing about Texas's own law.
    """
    return list(dict.fromkeys(code for code in plan_codes if code not in covered_codes))


def student_derived_from(plan: Plan, patterns: list[str]) -> bool:
    """A student pruned from the teacher, or initialised from a base model matching ``patterns``."""
    student = plan.student
    if student.init == "pruned_teacher":
        return True
    return student.init == "base" and matches_any(student.base_model, patterns)


def fact_test(test: FactTest, ctx: Context) -> Optional[bool]:
    value = ctx.fact(test.fact)
    return None if value is None else COMPARE[test.comparator](value, test.value)


def and3(values: list[Optional[bool]]) -> Optional[bool]:
    """Three-valued AND: any False -> False; else any None -> None; else True."""
    if any(v is False for v in values):
        return False
    return None if any(v is None for v in values) else True


def when_holds(when: Optional[When], ctx: Context) -> Optional[bool]:
    if when is None:
        return True
    plan = ctx.plan
    checks: list[Optional[bool]] = []
    if when.distribution is not None:
        checks.append(plan.use.distribution in when.distribution)
    if when.distributed is not None:
        checks.append(ctx.distributed == when.distributed)
    if when.scope is not None:
        checks.append(plan.use.scope in when.scope)
    if when.commercial is not None:
        checks.append(plan.use.commercial == when.commercial)
    if when.student_init is not None:
        checks.append(plan.student.init in when.student_init)
    if when.student_derived_from is not None:
        checks.append(student_derived_from(plan, when.student_derived_from))
    if when.access is not None:
        checks.append(plan.teacher.access in when.access)
    if when.teacher_provider is not None:
        wanted = {p.casefold() for p in when.teacher_provider}
        checks.append(None if ctx.teacher_provider is None else ctx.teacher_provider.casefold() in wanted)
    if when.teacher_model is not None:
        checks.append(matches_any(plan.teacher.model, when.teacher_model))
    if when.teacher_terms is not None:
        checks.append(None if not ctx.teacher_terms else bool(set(when.teacher_terms) & set(ctx.teacher_terms)))
    if when.jurisdictions_any is not None:
        checks.append(jurisdiction_covered(plan.organization.jurisdictions, when.jurisdictions_any))
    if when.domicile is not None:
        domicile = plan.organization.domicile
        checks.append(None if domicile is None else domicile in when.domicile)
    if when.student_license is not None:
        checks.append(matches_any(plan.student.license, when.student_license))
    if when.provider is not None:
        roles = possible_roles(plan, ctx.compute)
        checks.append(True if roles <= set(when.provider) else False if not roles & set(when.provider) else None)
    checks.extend(fact_test(t, ctx) for t in when.facts)
    return and3(checks)


def missing_facts(when: Optional[When], ctx: Context) -> list[str]:
    """Names of the facts that made ``when`` unknown (for the finding's explanation)."""
    if when is None:
        return []
    out = [FACT_LABELS[t.fact] for t in when.facts if ctx.fact(t.fact) is None]
    if when.teacher_provider is not None and ctx.teacher_provider is None:
        out.append("the teacher's provider (teacher not recognised)")
    if when.teacher_terms is not None and not ctx.teacher_terms:
        out.append("the teacher's terms (teacher not recognised)")
    if when.domicile is not None and ctx.plan.organization.domicile is None:
        out.append("organization.domicile")
    if when.provider is not None and provider_role(ctx.plan, ctx.compute) is None and \
            possible_roles(ctx.plan, ctx.compute) & set(when.provider):
        out.append("the provider status (the modification's compute, or the original model's, "
                   "against the one-third test)")
    return out
