"""Engine findings: the fail-closed reasons (unknown teacher, unknown licence, a jurisdiction no
regime pack covers, a rule that raised, data.tokens above the manifest's tokens, a model count
with FLOP-bearing ops no formula counts). They carry no citation and always mean REVIEW."""

from __future__ import annotations

from typing import Optional

from audit import __version__
from audit.policy.decision import Finding

ENGINE_PACK = "engine"


def engine_finding(rule_id: str, explanation: str, observed: Optional[str] = None,
                   effect: str = "review", threshold: Optional[str] = None,
                   comparator: Optional[str] = None) -> Finding:
    return Finding(rule_id=rule_id, pack_id=ENGINE_PACK, pack_version=__version__, kind="engine",
                   effect=effect, observed=observed, threshold=threshold, comparator=comparator,
                   explanation=explanation)


def rule_error(rule_id: str, exc: Exception) -> Finding:
    """A rule raised: record it and fail closed (REVIEW), never skip it."""
    first = str(exc).splitlines()[0] if str(exc) else ""
    return engine_finding("engine.rule-error",
                          f"Rule {rule_id} could not be evaluated ({exc.__class__.__name__}: {first}); "
                          "failing closed, a person must review it.", observed=rule_id)
