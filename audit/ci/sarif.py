"""SARIF 2.1.0 (OASIS) for code-scanning views: one rule per policy rule, one result per reason.

A rule's help is its citation (source URL, section, date, quote, evidence level) and its
``helpUri`` the source; a result is an ``error`` (DENY), ``warning`` (REVIEW) or ``note``
(obligation, engine note), located at the line and column of the plan field it is about
(:mod:`audit.ci.results`), the other fields it read as ``relatedLocations``. Columns count
Unicode code points (``run.columnKind``), as the YAML parser does.
"""

from __future__ import annotations

from audit import __version__
from audit.ci.results import JudgedPlan, all_rules, artifact_uri, citation_text

SCHEMA_URI = "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"


def sarif_log(plans: list[JudgedPlan], exit_code: int) -> dict:
    """One SARIF log with one run over every plan in ``plans``; ``exit_code``: the command's."""
    rules = all_rules(plans)
    index = {rule.id: i for i, rule in enumerate(rules)}
    artifacts = [{"location": {"uri": artifact_uri(plan.path)}, "hashes": {"sha-256": plan.sha256},
                  "roles": ["analysisTarget"]} for plan in plans]
    results = []
    for artifact_index, plan in enumerate(plans):
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
        "properties": {"plans": [{"uri": artifact_uri(plan.path), "name": plan.plan_name, "outcome": plan.decision.outcome,
                                  "asOf": plan.decision.as_of.isoformat(), "exitCode": plan.exit_code}
                                 for plan in plans]},
    }
    return {"$schema": SCHEMA_URI, "version": "2.1.0", "runs": [run]}


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
