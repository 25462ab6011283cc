"""Turn pydantic validation errors into one-line ``InputError`` messages.

Every message names the source file, the field path (``teacher.access``, ``data.tokens``) and
what was expected.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from audit.errors import InputError


class StrictModel(BaseModel):
    """The base of every data model read from a file or signed: unknown keys are rejected and
    instances are read-only."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def field_path(loc: tuple[Any, ...]) -> str:
    """``('teacher', 'authorization', 'sha256')`` -> ``teacher.authorization.sha256``;
    list indices become ``[i]``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _describe(error: dict[str, Any], model: type[BaseModel]) -> str:
    kind = error["type"]
    got = error.get("input")
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required field is missing"
    msg = error["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    msg = msg.replace("Input should be", "expected")
    if not isinstance(got, (dict, list)):
        shown = repr(got)
        if len(shown) > 60:
            shown = shown[:57] + "..."
        msg += f", got {shown}"
    return msg


def validate_model(model: type[BaseModel], data: Any, source: str, context: dict | None = None):
    """Validate ``data`` against ``model``; raise a one-line ``InputError`` on the first error.

    Errors are sorted so the message is stable: the first by field path.
    """
    try:
        return model.model_validate(data, context=context)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        first = errors[0]
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise InputError(_describe(first, model) + more, source=source,
                         field=field_path(first["loc"])) from None
