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


def describe_error(error: dict[str, Any]) -> str:
    """One pydantic error as "what was expected, got what": the one wording for every file
    flopgate validates (plans, packs, reference tables)."""
    kind, got = error["type"], error.get("input")
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required field is missing"
    msg = error["msg"].removeprefix("Value error, ").replace("Input should be", "expected")
    if not isinstance(got, (dict, list)):
        shown = repr(got)
        msg += f", got {shown[:57] + '...' if len(shown) > 60 else shown}"
    return msg


def validate_model(model: type[BaseModel], data: Any, source: str, context: dict | None = None):
    """Validate ``data`` against ``model``; raise a one-line ``InputError`` on the first error.

    Errors are sorted so the message is stable: the first by field path.
    """
    try:
        return model.model_validate(data, context=context)
    except ValidationError as exc:
        errors = sorted(exc.errors(include_url=False), key=lambda e: [str(p) for p in e["loc"]])
        first = errors[0]
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise InputError(describe_error(first) + more, source=source,
                         field=field_path(first["loc"])) from None
