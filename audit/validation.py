"""Turn pydantic validation errors into ``InputError`` messages, one line per error.

The message names the source file; each of its lines names a field path (``teacher.access``,
``data.tokens``) and what was expected there.
"""

from __future__ import annotations

import difflib
from typing import Any, get_args

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
    """Validate ``data`` against ``model``; raise an ``InputError`` naming every error.

    One error is one line (``source: field: what was expected``). Several are one line each
    under ``source: N problems:``, sorted by field path so the message is stable. An unknown key
    close to a known one at the same place suggests it (``organisation`` -> ``organization``).
    """
    try:
        return model.model_validate(data, context=context)
    except ValidationError as exc:
        errors = sorted(exc.errors(include_url=False), key=lambda e: [str(p) for p in e["loc"]])
        described = [(field_path(e["loc"]), describe_error(e) + _suggestion(model, e)) for e in errors]
        if len(described) == 1:
            raise InputError(described[0][1], source=source, field=described[0][0]) from None
        lines = "".join(f"\n  {field}: {text}" for field, text in described)
        error = InputError(f"{len(described)} problems:{lines}", source=source)
        error.field = described[0][0]
        raise error from None


def _suggestion(model: type[BaseModel], error: dict[str, Any]) -> str:
    """``; did you mean 'organization'?`` for an unknown key close to a known one, else ''."""
    loc = error["loc"]
    if error["type"] != "extra_forbidden" or not loc or not isinstance(loc[-1], str):
        return ""
    known = known_keys(model, loc[:-1])
    close = difflib.get_close_matches(loc[-1], known, n=1, cutoff=0.75)
    return f"; did you mean {close[0]!r}?" if close else ""


def known_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The field names of the model found at ``loc`` below ``model`` (list indices skipped);
    empty when the path leads to no model."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        field = current.model_fields.get(part) if _is_model(current) else None
        current = _model_in(field.annotation) if field is not None else None
        if current is None:
            return []
    return list(current.model_fields) if _is_model(current) else []


def _is_model(value: Any) -> bool:
    return isinstance(value, type) and issubclass(value, BaseModel)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The model inside an annotation (``Optional[Teacher]``, ``list[Adapter]``), if one."""
    if _is_model(annotation):
        return annotation
    for arg in get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None
