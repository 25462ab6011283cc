"""JUnit XML for CI test reports: one test suite per plan, one test case per rule applied.

A rule with a DENY reason fails (``<failure type="DENY">``); so does one with a REVIEW reason
(``type="REVIEW"``): REVIEW keeps the training gate closed and the command exits 3, and a
skipped test would show green in most report views. Obligations that do not block (met, or
to do after training) and engine notes go to the case's ``<system-out>``; the case passes.
Rules that allowed the use, or did not apply, pass silently.

JUnit's common elements have no place for a line, so each failure's text names the plan file,
line and field; each case also carries the ``file`` (the plan) and, when a result points at a
field, the ``line`` attribute that test-report tools read to annotate a file (pytest writes
both; the publish-unit-test-result and action-junit-report GitHub actions read them): the
first blocking result's line, else the first note's.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from audit.ci.results import INVALID_PLAN, JudgedPlan, UnreadablePlan, citation_text

_NOT_XML = re.compile("[^\u0009\u000a\u000d\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
"""Characters XML 1.0 cannot hold at all (control characters): written as U+FFFD."""


def junit_xml(plans: list[JudgedPlan | UnreadablePlan]) -> str:
    """The report as a UTF-8 XML document (text, with its declaration). A plan that could not
    be judged is a suite with one erroring case (``flopgate.invalid-plan``)."""
    root = ET.Element("testsuites", name="flopgate")
    totals = {"tests": 0, "failures": 0, "errors": 0}
    for plan in plans:
        if isinstance(plan, UnreadablePlan):
            suite = ET.SubElement(root, "testsuite", name=_clean(plan.shown_path()), tests="1", failures="0",
                                  errors="1", skipped="0")
            case = ET.SubElement(suite, "testcase", name=INVALID_PLAN, classname=_clean(plan.shown_path()),
                                 file=_clean(plan.shown_path()), line=str(plan.line))
            error = ET.SubElement(case, "error", type="InputError", message=_clean(
                f"{plan.shown_path()}:{plan.line} ({plan.field or 'the plan'}): bad input"))
            error.text = _clean(plan.message)
            totals["tests"] += 1
            totals["errors"] += 1
            continue
        suite = ET.SubElement(root, "testsuite", name=_clean(plan.shown_path()), errors="0", skipped="0")
        props = ET.SubElement(suite, "properties")
        for name, value in (("outcome", plan.decision.outcome), ("plan_name", plan.plan_name),
                            ("plan_sha256", plan.sha256), ("as_of", plan.decision.as_of.isoformat()),
                            ("exit_code", str(plan.exit_code))):
            ET.SubElement(props, "property", name=name, value=_clean(value))
        failures = 0
        for rule in plan.rules:
            case = ET.SubElement(suite, "testcase", name=_clean(rule.id), classname=_clean(plan.shown_path()),
                                 file=_clean(plan.shown_path()))
            mine = [r for r in plan.results if r.rule_id == rule.id]
            blocking = [r for r in mine if r.level in ("error", "warning")]
            notes = [r for r in mine if r.level == "note"]
            if blocking or notes:
                case.set("line", str((blocking or notes)[0].line))
            if blocking:
                failures += 1
                worst = "DENY" if any(r.level == "error" for r in blocking) else "REVIEW"
                first = blocking[0]
                failure = ET.SubElement(case, "failure", type=worst, message=_clean(
                    f"{worst}: {plan.shown_path()}:{first.line} ({first.field or 'the plan'})"))
                failure.text = _clean("\n".join([_where(plan, r) + r.message for r in blocking]
                                                 + [citation_text(rule.citation)]))
            if notes:
                ET.SubElement(case, "system-out").text = _clean("\n".join(_where(plan, r) + r.message
                                                                          for r in notes))
        suite.set("tests", str(len(plan.rules)))
        suite.set("failures", str(failures))
        totals["tests"] += len(plan.rules)
        totals["failures"] += failures
    root.set("tests", str(totals["tests"]))
    root.set("failures", str(totals["failures"]))
    root.set("errors", str(totals["errors"]))
    root.set("skipped", "0")
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _where(plan: JudgedPlan, result) -> str:
    return f"{plan.shown_path()}:{result.line}:{result.column} ({result.field or 'the plan'}): "


def _clean(text: str) -> str:
    return _NOT_XML.sub("\ufffd", text)
