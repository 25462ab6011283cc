"""GitHub Actions workflow commands: an annotation per reason, on the plan file's line.

``::error`` for DENY, ``::warning`` for REVIEW (and an unmet checkable obligation), ``::notice``
for other obligations and engine notes. Escaping follows GitHub's runner: in the message ``%``,
CR and LF are written ``%25``, ``%0D`` and ``%0A``; in a property (file, title) ``:`` and ``,``
are also written ``%3A`` and ``%2C``, so a value can never end the property list or the command.
"""

from __future__ import annotations

from audit.ci.results import INVALID_PLAN, JudgedPlan, UnreadablePlan

COMMANDS = {"error": "error", "warning": "warning", "note": "notice"}


def escape_data(text: str) -> str:
    """A workflow command's message, escaped."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    """A workflow command's property value, escaped."""
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def annotations(plans: list[JudgedPlan | UnreadablePlan]) -> str:
    """One line per reason, then one plain summary line per plan; a plan that could not be
    judged is one ``::error`` at the field its error names."""
    lines = []
    for plan in plans:
        if isinstance(plan, UnreadablePlan):
            lines.append(_command("error", plan.shown_path(), plan.line, plan.column, f"flopgate {INVALID_PLAN}",
                                  plan.message))
            continue
        sources = {rule.id: rule.citation.url for rule in plan.rules if rule.citation is not None}
        for r in plan.results:
            message = r.message + (f" Source: {sources[r.rule_id]}" if r.rule_id in sources else "")
            lines.append(_command(COMMANDS[r.level], plan.shown_path(), r.line, r.column,
                                  f"flopgate {r.rule_id}", message))
    for plan in plans:
        if isinstance(plan, UnreadablePlan):
            lines.append(escape_data(f"flopgate: {plan.shown_path()}: not judged (bad input)"))
            continue
        gate = "the training gate would open" if plan.exit_code == 0 else "the training gate stays closed"
        lines.append(escape_data(f"flopgate: {plan.shown_path()}: {plan.decision.outcome} for plan "
                                 f"{plan.plan_name!r}: {gate}"))
    return "\n".join(lines) + "\n"


def _command(command: str, file: str, line: int, column: int, title: str, message: str) -> str:
    props = {"file": file, "line": str(line), "col": str(column), "title": title}
    joined = ",".join(f"{k}={escape_property(v)}" for k, v in props.items())
    return f"::{command} {joined}::{escape_data(message)}"
