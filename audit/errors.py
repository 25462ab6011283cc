"""Errors that reach the user as one line, never as a traceback.

``InputError`` is bad input (exit code 2). Its message names the file, the field and what was
expected, e.g. ``plan.yaml: data.tokens: expected a number > 0, got -5``.
"""

from __future__ import annotations


class FlopgateError(Exception):
    """An error with a message fit to print as-is. ``exit_code`` is what the CLI returns."""

    exit_code = 1


class InputError(FlopgateError):
    """Invalid input from the user: a plan, a config, a key, a policy pack, a flag."""

    exit_code = 2

    def __init__(self, message: str, *, source: str | None = None, field: str | None = None):
        self.source = source
        self.field = field
        parts = [p for p in (source, field) if p]
        super().__init__(": ".join(parts + [message]) if parts else message)


def error_line(exc: BaseException) -> str:
    """An engine error as one line (SQLAlchemy wraps the driver's message in several)."""
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else exc.__class__.__name__
