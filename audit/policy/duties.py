"""One duty, one obligation. Pure.

Two rules can impose the same duty on one plan: the EU Art. 52(1) notification is owed under
``eu-ai-act.systemic-risk`` (the student's cumulative compute) and under
``eu-ai-act.downstream-modifier-systemic`` (a modification above one third of a systemic-risk
original). The packs say which obligations are one duty (an obligation's ``duty`` key);
:func:`merge_duties` makes each duty one obligation that keeps every legal basis (each rule and
its citation), so the decision names the duty once and its sources all. Obligations without a
``duty`` key are merged only with their own id (the same terms reached through two sources).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from audit.policy.decision import LegalBasis, Obligation

_LEAST_MET_FIRST = ("unmet", "todo", "met")
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def duty_key(ob: Obligation) -> tuple[str, str]:
    """What makes two obligations one: the pack's duty key, else the obligation id."""
    return ("duty", ob.duty) if ob.duty else ("id", ob.id)


def merge_duties(obligations: list[Obligation]) -> list[Obligation]:
    """One obligation per duty, in the order each duty first appears: the least met of them
    (the first on a tie), with the legal bases of all and the earliest dated deadline."""
    groups: dict[tuple[str, str], list[Obligation]] = {}
    for ob in obligations:
        groups.setdefault(duty_key(ob), []).append(ob)
    return [_one(group) for group in groups.values()]


def _one(group: list[Obligation]) -> Obligation:
    kept = min(group, key=lambda ob: _LEAST_MET_FIRST.index(ob.status))
    if len(group) == 1:
        return kept
    bases: dict[str, LegalBasis] = {}
    for ob in group:
        for basis in ob.legal_bases:
            bases.setdefault(basis.model_dump_json(), basis)
    return kept.model_copy(update={"legal_bases": list(bases.values()), "deadline": _earliest(kept, group)})


def _earliest(kept: Obligation, group: list[Obligation]) -> str | None:
    """The kept obligation's deadline, unless another one's falls on an earlier date."""
    dated = [ob.deadline for ob in group if ob.deadline and _ISO_DATE.match(ob.deadline)]
    if not dated:
        return kept.deadline
    first = min(dated, key=lambda d: d[:10])
    if kept.deadline and _ISO_DATE.match(kept.deadline) and kept.deadline[:10] <= first[:10]:
        return kept.deadline
    return first


def bases_note(ob: Obligation | Mapping) -> str:
    """" Owed under: <rule> (<section>); <rule> (<section>)." when more than one rule imposes the
    obligation (for the one-line outputs: terminal, SARIF); "" otherwise. Takes an Obligation or
    its JSON form."""
    bases = ob.get("legal_bases") if isinstance(ob, Mapping) else ob.legal_bases
    bases = [b if isinstance(b, Mapping) else b.model_dump(mode="json") for b in bases or []]
    if len({b["rule_id"] for b in bases}) < 2:
        return ""
    named = [b["rule_id"] + (f" ({b['citation']['section']})" if b.get("citation") else "") for b in bases]
    return f" Owed under: {'; '.join(named)}."
