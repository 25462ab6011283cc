"""The decision's data model: what ``decide()`` returns and what the report renders.

Field names here are a contract shared by the engine, the signed audit payload, the HTML
report and the gate. Add fields freely; never rename or remove one.
"""

from __future__ import annotations

import datetime as dt
from typing import Literal, Mapping, Optional

from audit.numbers import ThresholdFigures, against_threshold
from audit.validation import StrictModel

Outcome = Literal["ALLOW", "ALLOW_WITH_OBLIGATIONS", "REVIEW", "DENY"]
Evidence = Literal["primary", "secondary", "unverified"]


class Citation(StrictModel):
    url: str
    section: str
    date: dt.date               # date of the source text (or when it was read)
    quote: str                  # one sentence at most, verbatim from the source
    evidence: Evidence


class Finding(StrictModel):
    rule_id: str
    pack_id: str
    pack_version: str
    kind: Literal["regime", "teacher", "organization", "engine"]
    effect: Literal["allow", "obligation", "review", "deny", "info"]
    observed: Optional[str] = None      # e.g. "3.2e24 FLOP" or "student.name = 'Acme-1B'"
    threshold: Optional[str] = None     # e.g. "1e25 FLOP"
    comparator: Optional[Literal[">", ">=", "<", "<=", "==", "!="]] = None
    citation: Optional[Citation] = None  # None only for engine findings (fail-closed reasons)
    explanation: str                    # plain English, one or two sentences
    source: Optional[str] = None        # which teacher or data source it is about, when a plan has several


class LegalBasis(StrictModel):
    """One rule that imposes an obligation: the pack's obligation id, the rule and its source."""

    obligation_id: str
    rule_id: str
    citation: Optional[Citation] = None


class Obligation(StrictModel):
    id: str
    rule_id: str
    text: str
    deadline: Optional[str] = None       # ISO date when the text fixes one, else words ("within 2 weeks of ...")
    checkable: bool                      # can the plan tell us now whether it is met?
    status: Literal["met", "unmet", "todo"]
    authorized: bool = False             # status changed by a provider's written authorisation
    duty: Optional[str] = None           # the pack's duty key: obligations naming one duty are merged into one
    legal_bases: list[LegalBasis] = []   # every rule that imposes it, with its citation (one per regime)


class RegimeResult(StrictModel):
    id: str                              # e.g. "eu-ai-act.systemic-risk"
    name: str
    jurisdiction: str
    in_force: bool                       # on the plan's start date
    status: Literal["exceeds", "below", "not_in_force", "unknown"]
    threshold_flops: Optional[float] = None
    comparator: Optional[Literal[">", ">="]] = None
    observed_flops: Optional[float] = None
    compute_notion: Literal["cumulative", "parameter_update", "modification"] = "cumulative"
    margin_ratio: Optional[float] = None  # observed / threshold
    obligations: list[str] = []          # Obligation ids
    citation: Optional[Citation] = None
    pack_id: Optional[str] = None
    pack_version: Optional[str] = None
    fact: Optional[str] = None           # the figure compared, e.g. "total_flops" or "cost_usd"
    unit: Literal["FLOP", "USD"] = "FLOP"
    observed_value: Optional[float] = None   # same as observed_flops for FLOP tests; dollars for cost tests
    threshold_value: Optional[float] = None
    status_note: str = ""                # why it is not in force, or what was missing


def regime_figures(regime) -> ThresholdFigures:
    """A regime's observed figure, threshold and margin as every output shows them (terminal,
    ``policy --json``, HTML): one call for a :class:`RegimeResult` or its JSON form. A regime not
    in force compares nothing, so its observed figure and margin show as "-"."""
    read = regime.get if isinstance(regime, Mapping) else (lambda key: getattr(regime, key, None))
    figures = against_threshold(read("observed_value"), read("threshold_value"), read("unit") or "FLOP",
                                read("comparator") or "")
    if not read("in_force"):
        return figures._replace(observed="-", margin="-")
    return figures


class TeacherResolution(StrictModel):
    """Which teacher entry and which terms documents the engine applied, and why."""

    model: str                           # plan.teacher.model as given
    access: Literal["weights", "api", "consumer_app"]
    entry_id: Optional[str] = None       # teacher entry in a pack; None when matched by licence or unknown
    entry_name: Optional[str] = None
    provider: Optional[str] = None
    # model: its full id; name: only its own name (a re-upload); base_model: a card's lineage
    matched_by: Literal["model", "name", "license", "base_model", "none"] = "none"
    terms: list[str] = []                # terms document ids applied directly ("id@version")
    upstream: list[str] = []             # terms inherited from the teacher's own teachers ("id@version")
    licenses: list[str] = []             # licence ids declared in the plan or read from a local model dir
    citation: Optional[Citation] = None  # source for the entry's mapping to its terms
    host: Optional[str] = None           # teacher.host as given (API teachers)
    host_entry_id: Optional[str] = None  # the host entry whose terms apply too
    host_terms: list[str] = []           # the host's terms documents ("id@version")
    derived_from: list[str] = []         # base models a local folder's card names (base_model chain)
    derived_terms: list[str] = []        # the terms they bring ("id@version")
    source: Optional[str] = None         # for Decision.sources: which teacher or data source


class Decision(StrictModel):
    outcome: Outcome
    as_of: dt.date
    findings: list[Finding]
    obligations: list[Obligation]
    regimes: list[RegimeResult]
    rule_ids: list[str]                  # the rules behind the outcome
    packs: list[dict]                    # [{"id", "version", "last_reviewed", "sha256"}]
    teacher: Optional[TeacherResolution] = None
    base_model: Optional[TeacherResolution] = None  # the weights the student starts from (init base / pruned)
    sources: list[TeacherResolution] = []  # the plan's other teachers and its datasets' generators and licences
