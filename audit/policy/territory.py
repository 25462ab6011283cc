"""Territory clauses: a licence that "does not apply" in some regions and bars using the model
or its outputs there. Pure.

Such a clause binds where the works are used, so two facts of the plan count: the markets the
student is placed on or used in (``organization.jurisdictions``; outputs shown to users there
are used there) and where the licensee itself is (``organization.domicile``; it trains and runs
the model there). Either one in an excluded region -> deny. Neither, but the domicile unknown ->
review (where the works are used cannot be told). Contrast ``region_exclusion``: a clause that
names only where the licensee is domiciled (Llama's multimodal clause) reads the domicile alone.
"""

from __future__ import annotations

from typing import Optional

from audit.plan import Plan
from audit.policy.conditions import jurisdiction_covered
from audit.policy.schema import TerritoryExclusion


def territory_outcome(clause: TerritoryExclusion, plan: Plan) -> tuple[str, str, str, str]:
    """``(effect, why, observed, threshold)`` for one territory clause and plan."""
    org = plan.organization
    excluded = clause.jurisdictions
    threshold = "markets and domicile outside " + ", ".join(excluded)
    markets = [code for code in org.jurisdictions if jurisdiction_covered([code], excluded)]
    domicile: Optional[str] = org.domicile
    observed = (f"organization.jurisdictions = [{', '.join(org.jurisdictions)}], "
                f"organization.domicile = {domicile or 'unknown'}")
    reasons = []
    if markets:
        reasons.append(f"the student is placed on or used in {', '.join(markets)} (organization.jurisdictions), "
                       "where the licence does not apply and its outputs may not be used or displayed")
    if domicile is not None and jurisdiction_covered([domicile], excluded):
        reasons.append(f"the organisation is domiciled in {domicile}, so it would use the works there")
    if reasons:
        return "deny", "; ".join(reasons) + ".", observed, threshold
    if domicile is None:
        why = ("no market served is in an excluded region, but organization.domicile is not in the plan, so "
               "where the organisation itself uses the works cannot be told.")
        return "review", why, observed, threshold
    return "info", "neither the markets served nor the domicile is in an excluded region.", observed, threshold
