"""SARIF 2.1.0 (OASIS) for code-scanning views: one rule per policy rule, one result per reason.

A rule's help is its citation (source URL, section, date, quote, evidence level) and its
``helpUri`` the source; a result is an ``error`` (DENY), ``warning`` (REVIEW) or ``note``
(obligation, engine note), located at the line and column of the plan field it is about
(:mod:`audit.ci.results`), the other fields it read as ``relatedLocations``. Columns count
Unicode code points (``run.columnKind``), as the YAML parser does.
"""

from __future__ import annotations

from audit import __version__
from audit.ci.results import (
    INVALID_PLAN,
    JudgedPlan,
    UnreadablePlan,
    all_rules,
    artifact_uri,
    citation_text,
)

SCHEMA_URI = "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"


def sarif_log(plans: list[JudgedPlan | UnreadablePlan], exit_code: int) -> dict:
    """One SARIF log with one run over every plan in ``plans``; ``exit_code``: the command's. A
    plan that could not be judged is one ``error`` result (rule ``flopgate.invalid-plan``) at the
    line of the field its error names."""
    rules = all_rules(plans)
    index = {rule.id: i for i, rule in enumerate(rules)}
    artifacts = []
    for plan in plans:
        artifact = {"location": {"uri": artifact_uri(plan.path)}, "roles": ["analysisTarget"]}
        if plan.sha256:
            artifact["hashes"] = {"sha-256": plan.sha256}
        artifacts.append(artifact)
    results = []
    for artifact_index, plan in enumerate(plans):
        if isinstance(plan, UnreadablePlan):
            results.append({"ruleId": INVALID_PLAN, "ruleIndex": index[INVALID_PLAN], "level": "error",
                            "message": {"text": plan.message},
                            "locations": [_location(plan, artifact_index, plan.line, plan.column)],
                            "properties": {"field": plan.field, "exitCode": plan.exit_code}})
            continue
        for r in plan.results:
            result = {
                "ruleId": r.rule_id, "ruleIndex": index[r.rule_id], "level": r.level,
                "message": {"text": r.message},
                "locations": [_location(plan, artifact_index, r.line, r.column)],
                "properties": {"effect": r.effect, "fields": list(r.fields), "planOutcome": plan.decision.outcome},
            }
            related = _related(plan, artifact_index, r)
            if related:
                result["relatedLocations"] = related
            results.append(result)
    run = {
        "tool": {"driver": {"name": "flopgate", "version": __version__,
                            "rules": [_rule(rule) for rule in rules]}},
        "columnKind": "unicodeCodePoints",
        "artifacts": artifacts,
        "invocations": [{"executionSuccessful": True, "exitCode": exit_code}],
        "results": results,
        "properties": {"plans": [_plan_summary(plan) for plan in plans]},
    }
    return {"$schema": SCHEMA_URI, "version": "2.1.0", "runs": [run]}


def _plan_summary(plan) -> dict:
    if isinstance(plan, UnreadablePlan):
        return {"uri": artifact_uri(plan.path), "outcome": None, "exitCode": plan.exit_code}
    return {"uri": artifact_uri(plan.path), "name": plan.plan_name, "outcome": plan.decision.outcome,
            "asOf": plan.decision.as_of.isoformat(), "exitCode": plan.exit_code}


def _rule(rule) -> dict:
    help_text = citation_text(rule.citation)
    out = {"id": rule.id, "shortDescription": {"text": _first_sentence(rule.summary)},
           "fullDescription": {"text": rule.summary}, "help": {"text": help_text},
           "properties": {"kind": rule.kind, "tags": ["flopgate", rule.kind]}}
    if rule.pack:
        out["properties"]["pack"] = rule.pack
    if rule.citation is not None:
        out["helpUri"] = rule.citation.url
        out["properties"]["source"] = rule.citation.model_dump(mode="json")
    return out


def _location(plan: JudgedPlan, artifact_index: int, line: int, column: int) -> dict:
    return {"physicalLocation": {"artifactLocation": {"uri": artifact_uri(plan.path), "index": artifact_index},
                                 "region": {"startLine": line, "startColumn": column}}}


def _related(plan: JudgedPlan, artifact_index: int, result) -> list[dict]:
    """The other fields the result read that the plan writes, each at its own line."""
    from audit.ci.fields import locate

    out = []
    for i, name in enumerate(f for f in result.fields if f != result.field):
        field, line, column = locate([name], plan.positions)
        if field != name:  # not written in the plan: no place to point at
            continue
        location = _location(plan, artifact_index, line, column)
        location.update({"id": i, "message": {"text": name}})
        out.append(location)
    return out


def _first_sentence(text: str) -> str:
    head, dot, _ = text.partition(". ")
    return head + dot.strip() if dot else text
