"""YAML loading with one-line errors.

PyYAML follows YAML 1.1, where ``1e10`` and ``2.0e10`` (no sign in the exponent) are strings.
Plans are full of such numbers, so our loader also reads them as floats (as YAML 1.2 does).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from audit.errors import InputError


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads ``1e10``, ``2.0e10`` and ``-3E+5`` as floats."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def load_yaml_text(text: str, source: str) -> Any:
    """Parse YAML text; a syntax error becomes an ``InputError`` naming ``source`` and the line."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "document"
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise InputError(f"invalid YAML ({problem})", source=source, field=where) from None


def load_yaml_file(path: str | Path) -> Any:
    """Read and parse a YAML file; a missing or unreadable file is an ``InputError``."""
    from audit.fsutil import decode_utf8, read_input

    return load_yaml_text(decode_utf8(read_input(path), path), str(path))
