"""The policy-pack file format: what a YAML pack in ``policies/`` (or ``--policies DIR``) may say.

A pack is data, never code. It holds any of six lists:

- ``regimes``: legal compute thresholds, each with a jurisdiction, in-force dates and one test
  ``<fact> <comparator> <threshold>`` (plus optional extra ``requires`` tests);
- ``terms``: documents that govern a teacher (a licence, an API's terms), each a list of
  clauses of a small fixed set of types;
- ``teachers``: which models, reached through which channel, are governed by which terms;
- ``hosts``: third parties serving other providers' models through an API (``teacher.host``);
- ``rules``: an organisation's own rules (deny / review / obligation when conditions hold);
- ``markets``: a market's law where no compute threshold applies (a cited "no compute-based
  duty" and the duties it attaches otherwise).

Every rule, clause and teacher entry cites its source (:class:`Citation`). Unknown keys are
rejected. Units: FLOP counts use 1 multiply-add = 2 FLOP; money is US dollars; users are
monthly active users.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal, Optional, Union

from pydantic import Field, model_validator

from audit.policy.decision import Citation
from audit.validation import StrictModel

RuleId = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._-]*$", max_length=120)]
Comparator = Literal[">", ">=", "<", "<=", "==", "!="]
Effect = Literal["allow", "review", "deny"]
Channel = Literal["weights", "api", "consumer_app"]
FactName = Literal[
    "total_flops", "update_flops", "modification_flops", "original_model_flops",
    "teacher_training_flops", "cost_usd", "annual_revenue_usd", "monthly_active_users",
    "organization_monthly_active_users",
]


class FactTest(StrictModel):
    """``<fact> <comparator> <value>``; a fact the plan or estimate lacks makes the test unknown."""

    fact: FactName
    comparator: Comparator
    value: float


class When(StrictModel):
    """Conditions on the plan; all given conditions must hold (AND). Lists mean "any of"."""

    distribution: Optional[list[Literal["internal", "api", "open_weights"]]] = None
    distributed: Optional[bool] = Field(default=None, description="served through an API or weights published")
    scope: Optional[list[Literal["narrow", "general"]]] = None
    commercial: Optional[bool] = None
    student_init: Optional[list[Literal["scratch", "base", "pruned_teacher"]]] = None
    student_derived_from: Optional[list[str]] = Field(
        default=None, description="globs on student.base_model; a student pruned from the teacher always counts")
    access: Optional[list[Channel]] = None
    teacher_provider: Optional[list[str]] = None
    teacher_model: Optional[list[str]] = Field(default=None, description="globs on teacher.model")
    teacher_terms: Optional[list[str]] = Field(default=None, description="ids of terms documents that apply")
    jurisdictions_any: Optional[list[str]] = None
    domicile: Optional[list[str]] = Field(
        default=None, description="codes: organization.domicile is one of them (unknown domicile: undecided)")
    student_license: Optional[list[str]] = Field(
        default=None, description="globs on student.license (no licence given: does not match)")
    provider: Optional[list[Literal["developer", "modifier_provider", "modifier_not_provider"]]] = Field(
        default=None, description="who provides the student (audit.policy.provider): developer (trained from "
        "scratch), or a modifier of a pre-existing model above / at or below the one-third test (unknown "
        "compute: undecided)")
    facts: list[FactTest] = []


class Outcomes(StrictModel):
    """Effect per situation of the student: ``general`` (scope general), else ``narrow_`` plus
    its distribution. A missing entry takes the clause type's default."""

    general: Optional[Effect] = None
    narrow_internal: Optional[Effect] = None
    narrow_api: Optional[Effect] = None
    narrow_open_weights: Optional[Effect] = None


class _Clause(StrictModel):
    id: RuleId
    citation: Citation
    explanation: str = Field(min_length=1)
    when: Optional[When] = None


class CompetitorBan(_Clause):
    """Bars training a kind of model (one that competes, or a "foundational" one).
    Defaults: general -> deny, narrow -> review."""

    type: Literal["competitor_ban"]
    outcomes: Outcomes = Outcomes()
    authorization_lifts: bool = False
    except_derived_from: list[str] = []


class AnyTrainingBan(_Clause):
    """Bars training any (other) model on outputs. Default: deny everywhere."""

    type: Literal["any_training_ban"]
    outcomes: Outcomes = Outcomes()
    authorization_lifts: bool = False
    except_derived_from: list[str] = Field(default=[], description="globs: students built on these are exempt")


class AuthorizationRequired(_Clause):
    """Training on outputs needs the provider's written permission; a declared, verified
    authorisation lifts it. Default without one: deny everywhere."""

    type: Literal["authorization_required"]
    outcomes: Outcomes = Outcomes()


class DerivativePassThrough(_Clause):
    """The student is a derivative; when it is distributed its licence must carry the terms.
    Checkable: ``student.license`` must match one of ``student_license_any_of`` (globs)."""

    type: Literal["derivative_pass_through"]
    text: str = Field(min_length=1)
    student_license_any_of: list[str] = Field(min_length=1)


class Naming(_Clause):
    """Checkable: the student's name must (or must not) begin with a word."""

    type: Literal["naming"]
    text: str = Field(min_length=1)
    prefix: Optional[str] = None
    forbidden_prefix: Optional[str] = None

    @model_validator(mode="after")
    def _one_prefix(self):
        if (self.prefix is None) == (self.forbidden_prefix is None):
            raise ValueError("expected exactly one of prefix or forbidden_prefix")
        return self


class Attribution(_Clause):
    """A display duty ("Built with ..."): cannot be checked before training (todo)."""

    type: Literal["attribution"]
    text: str = Field(min_length=1)


class NoticeFile(_Clause):
    """Ship a notice file or a copy of the terms: cannot be checked before training (todo)."""

    type: Literal["notice_file"]
    text: str = Field(min_length=1)


class UsePolicy(_Clause):
    """An acceptable-use policy that keeps applying: cannot be checked before training (todo)."""

    type: Literal["use_policy"]
    text: str = Field(min_length=1)


class NonCommercial(_Clause):
    """Commercial use is barred (``if_commercial``, default deny); otherwise a met obligation."""

    type: Literal["non_commercial"]
    text: str = Field(min_length=1)
    if_commercial: Effect = "deny"


class UsageCap(_Clause):
    """A user or revenue cap: above it the licence needs the provider's permission."""

    type: Literal["usage_cap"]
    metric: Literal["monthly_active_users", "organization_monthly_active_users", "annual_revenue_usd"] = Field(
        description="monthly_active_users: the student's product (use.monthly_active_users); "
        "organization_monthly_active_users: the licensee and its affiliates (organization.monthly_active_users)")
    comparator: Literal[">", ">="]
    limit: float = Field(gt=0)
    text: str = Field(min_length=1)
    if_exceeded: Effect = "deny"
    authorization_lifts: bool = False


class RegionExclusion(_Clause):
    """Rights are not granted to organisations domiciled (principal place of business) in the
    listed jurisdictions; read from ``organization.domicile``, unknown -> review."""

    type: Literal["region_exclusion"]
    jurisdictions: list[str] = Field(min_length=1)
    text: str = Field(min_length=1)


class TerritoryExclusion(_Clause):
    """The licence does not apply in the listed regions: neither the model nor its outputs may be
    used, distributed or displayed there. Read from the markets served
    (``organization.jurisdictions``) and from ``organization.domicile`` (where the licensee itself
    uses the works): either in a listed region -> deny; neither, with the domicile unknown -> review."""

    type: Literal["territory_exclusion"]
    jurisdictions: list[str] = Field(min_length=1)
    text: str = Field(min_length=1)


class Permission(_Clause):
    """The terms expressly allow training on outputs (or grant the rights needed)."""

    type: Literal["permission"]


class NeedsReview(_Clause):
    """The text is ambiguous, unverified or silent: a person must decide. Default: review."""

    type: Literal["needs_review"]
    outcomes: Outcomes = Outcomes()


Clause = Annotated[
    Union[CompetitorBan, AnyTrainingBan, AuthorizationRequired, DerivativePassThrough, Naming,
          Attribution, NoticeFile, UsePolicy, NonCommercial, UsageCap, RegionExclusion, Permission,
          NeedsReview, TerritoryExclusion],
    Field(discriminator="type"),
]
CLAUSE_TYPES = ("competitor_ban", "any_training_ban", "authorization_required", "derivative_pass_through",
                "naming", "attribution", "notice_file", "use_policy", "non_commercial", "usage_cap",
                "region_exclusion", "permission", "needs_review", "territory_exclusion")


class TermsDoc(StrictModel):
    """One governing document (a licence or a service's terms) at one version."""

    id: RuleId
    title: str = Field(min_length=1)
    provider: str = Field(min_length=1)
    version: str = Field(min_length=1)
    url: str = Field(min_length=1)
    license_ids: list[str] = Field(default=[], description="ids that name it in plans and README front matter")
    license_text_markers: list[str] = Field(default=[], description="phrases that identify it in a LICENSE file")
    spdx: Optional[str] = None
    effective_from: Optional[dt.date] = Field(default=None, description="first day this version governs "
                                              "(unknown: assumed in force from the start)")
    superseded_on: Optional[dt.date] = Field(default=None, description="first day a later version governs "
                                             "instead (unknown: still in force)")
    clauses: list[Clause] = Field(min_length=1)

    @model_validator(mode="after")
    def _window(self):
        if self.effective_from and self.superseded_on and self.superseded_on <= self.effective_from:
            raise ValueError("superseded_on must be after effective_from")
        return self

    def in_force(self, day: dt.date) -> bool:
        """Whether this version governs on ``day``: ``effective_from <= day < superseded_on``."""
        return ((self.effective_from is None or self.effective_from <= day)
                and (self.superseded_on is None or day < self.superseded_on))


class Upstream(StrictModel):
    """Terms the teacher itself inherited (it was trained on another model's outputs)."""

    id: RuleId
    terms: str
    citation: Citation
    explanation: str = Field(min_length=1)


class TeacherEntry(StrictModel):
    """Models (globs on the plan's ``teacher.model``, case-insensitive) reached through one
    channel, and the terms that govern them."""

    id: RuleId
    name: str = Field(min_length=1)
    provider: str = Field(min_length=1)
    channel: Channel
    models: list[str] = Field(min_length=1)
    terms: list[str] = Field(min_length=1)
    upstream: list[Upstream] = []
    citation: Citation
    notes: str = ""


class DatasetEntry(StrictModel):
    """A widely used dataset written (wholly or partly) by models, and which models, as its card
    says: a plan's ``data.sources`` entry naming it without ``generated_by`` gets these."""

    id: str = Field(min_length=1)                 # the dataset's id (a Hugging Face dataset repo id)
    aliases: list[str] = []                       # other ids or names it is published under
    name: str = Field(min_length=1)
    generated_by: list[str] = Field(min_length=1)  # model ids (or API model names) whose outputs it holds
    citation: Citation
    notes: str = ""


class HostEntry(StrictModel):
    """A third party that serves other providers' models through its own API (``teacher.host``).
    A hosted model is governed by the host's terms plus the model's own licence (or, for a closed
    model, its provider's terms)."""

    id: RuleId
    name: str = Field(min_length=1)
    provider: str = Field(min_length=1)
    hosts: list[str] = Field(min_length=1, description="values of teacher.host that name it (case-insensitive)")
    terms: list[str] = Field(min_length=1)
    citation: Citation
    notes: str = ""


class ObligationSpec(StrictModel):
    id: RuleId
    text: str = Field(min_length=1)
    duty: Optional[RuleId] = Field(
        default=None, description="names the duty when another regime imposes the same one: obligations with "
        "the same duty become one obligation in a decision, citing every rule that imposes it")
    deadline: Optional[str] = Field(default=None, description="in words, as the text gives it")
    deadline_days_from_start: Optional[int] = Field(
        default=None, ge=0, description="adds an ISO date: schedule.start + this many days")
    deadline_days_from_audit: Optional[int] = Field(
        default=None, ge=0, description="adds an ISO date: the audit date (the pre-run estimate) + this many "
        "days, when decide() is given it; otherwise the deadline stays in words")
    when: Optional[When] = Field(default=None, description="the duty applies only when these hold "
                                 "(undecided: it is kept, fail closed)")
    unless: list[When] = Field(default=[], description="exemptions: the duty is dropped when any of them "
                               "holds (undecided: it is kept, fail closed)")
    citation: Optional[Citation] = None


class RelativeThreshold(StrictModel):
    """Threshold = ``fraction_of`` / ``divisor``, or ``fallback`` when that figure is unknown."""

    fraction_of: Literal["original_model_flops"]
    divisor: float = Field(gt=0)
    fallback: float = Field(gt=0)


class Regime(StrictModel):
    """One legal threshold test. In force on ``as_of`` when ``in_force_from <= as_of`` and
    (``in_force_until`` is empty or ``as_of < in_force_until``)."""

    id: RuleId
    name: str = Field(min_length=1)
    jurisdiction: str = Field(min_length=1)
    applies_to: list[str] = Field(min_length=1, description="plan jurisdiction codes it covers; 'US' covers 'US-CA'")
    in_force_from: dt.date
    in_force_until: Optional[dt.date] = None
    ended: Optional[Literal["rescinded", "superseded"]] = None
    status_note: str = ""
    fact: Literal["total_flops", "update_flops", "modification_flops", "own_training_flops", "cost_usd"]
    comparator: Literal[">", ">="]
    threshold: Optional[float] = Field(default=None, gt=0)
    relative_threshold: Optional[RelativeThreshold] = None
    requires: list[FactTest] = []
    when: Optional[When] = None
    effect: Literal["obligation", "review", "deny", "info"] = "obligation"
    obligations: list[ObligationSpec] = []
    citation: Citation
    explanation: str = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self):
        if (self.threshold is None) == (self.relative_threshold is None):
            raise ValueError("expected exactly one of threshold or relative_threshold")
        if (self.in_force_until is None) != (self.ended is None):
            raise ValueError("in_force_until and ended go together")
        if self.in_force_until is not None and self.in_force_until <= self.in_force_from:
            raise ValueError("in_force_until must be after in_force_from")
        if self.effect == "obligation" and not self.obligations:
            raise ValueError("effect 'obligation' needs at least one obligation")
        return _one_obligation_per_duty(self)


class Market(StrictModel):
    """One market's law on training or releasing a model where no compute threshold applies: an
    explicit, cited statement that the law sets no compute-based duty (so the market is known,
    not REVIEW), plus the duties it attaches otherwise (each with ``when``, e.g. only for a
    service offered to the public). In force on ``as_of`` like a regime."""

    id: RuleId
    name: str = Field(min_length=1)
    jurisdiction: str = Field(min_length=1)
    applies_to: list[str] = Field(min_length=1, description="plan jurisdiction codes it covers")
    in_force_from: dt.date
    compute_duty: Literal["none"] = Field(description="none: the law ties no duty to training compute")
    obligations: list[ObligationSpec] = []
    citation: Citation
    explanation: str = Field(min_length=1)

    @model_validator(mode="after")
    def _duties(self):
        return _one_obligation_per_duty(self)


def _one_obligation_per_duty(rule):
    """Two obligations of one regime or market that name the same ``duty`` would be merged into
    one: a pack error, not a decision to make at run time."""
    duties = [spec.duty for spec in rule.obligations if spec.duty is not None]
    twice = sorted({d for d in duties if duties.count(d) > 1})
    if twice:
        raise ValueError(f"duty {twice[0]!r} is named by two obligations of one rule; expected one each")
    return rule


class OrgRule(StrictModel):
    """An organisation's rule: when ``when`` holds, apply ``effect``."""

    id: RuleId
    effect: Literal["deny", "review", "obligation", "info"]
    when: When
    text: Optional[str] = Field(default=None, description="the obligation, for effect 'obligation'")
    deadline: Optional[str] = None
    citation: Citation
    explanation: str = Field(min_length=1)

    @model_validator(mode="after")
    def _text_for_obligation(self):
        if self.effect == "obligation" and not self.text:
            raise ValueError("effect 'obligation' needs text")
        return self


class Pack(StrictModel):
    id: RuleId
    version: str = Field(min_length=1)
    last_reviewed: dt.date
    kind: Literal["regime", "teacher", "organization"]
    title: str = Field(min_length=1)
    description: str = ""
    regimes: list[Regime] = []
    terms: list[TermsDoc] = []
    teachers: list[TeacherEntry] = []
    hosts: list[HostEntry] = []
    rules: list[OrgRule] = []
    markets: list[Market] = []
    datasets: list[DatasetEntry] = []

    @model_validator(mode="after")
    def _not_empty(self):
        if not (self.regimes or self.terms or self.teachers or self.hosts or self.rules or self.markets
                or self.datasets):
            raise ValueError("a pack needs at least one of regimes, terms, teachers, hosts, rules, markets or "
                             "datasets")
        return self
