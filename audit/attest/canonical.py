"""RFC 8785 (JSON Canonicalization Scheme) bytes of a JSON value, and the strict reader of
the JSON we are given to verify.

JCS sorts object keys by UTF-16 code units, writes numbers the ECMAScript way (``1.0`` -> ``1``,
``1e21`` -> ``1e+21``), emits no whitespace and encodes as UTF-8. It accepts only I-JSON:
no NaN or infinity, and integers within +-(2**53 - 1); give large counts (FLOP) as floats.

:func:`strict_json_loads` reads envelopes and signed statements so that every parser reads
them the same way: a repeated object key (one parser keeps the first, another the last),
NaN/Infinity (not JSON) and nesting deeper than :data:`MAX_JSON_DEPTH` are refused.
"""

from __future__ import annotations

import json
import re
from typing import Any

import rfc8785

from audit.limits import MAX_JSON_DEPTH  # deepest nesting of arrays and objects accepted (64;
# ours are under 10 deep): checked before parsing, so no input reaches a ``RecursionError``

_STRUCTURAL = re.compile(r'[\[\]{}"\\]')


class StrictJSONError(ValueError):
    """JSON that :func:`strict_json_loads` refuses; the message says why, in one line."""


def canonical_json(value: Any) -> bytes:
    """The canonical bytes of ``value`` (dicts with str keys, lists, str, int, float, bool, None).

    Raises ``ValueError`` naming the problem for NaN/infinity, out-of-range integers or
    values JSON cannot hold (dates, sets, bytes): convert those before signing.
    """
    try:
        return rfc8785.dumps(value)
    except rfc8785.FloatDomainError as exc:
        raise ValueError(f"cannot sign NaN or infinity; use null and say why ({exc})") from None
    except rfc8785.IntegerDomainError as exc:
        raise ValueError(f"integer outside +-(2**53-1); give it as a float ({exc})") from None
    except (rfc8785.CanonicalizationError, TypeError) as exc:
        raise ValueError(f"value cannot be written as canonical JSON ({exc})") from None


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            shown = repr(key) if len(key) <= 40 else repr(key[:40]) + "..."
            raise StrictJSONError(f"duplicate key {shown} (a JSON object names each key once)")
        obj[key] = value
    return obj


def _no_constant(name: str) -> Any:
    raise StrictJSONError(f"{name} is not standard JSON")


def json_depth(text: str, limit: int) -> int:
    """The nesting depth of arrays and objects in ``text``, counting brackets outside strings;
    stops counting at ``limit + 1``. A cheap scan (it skips everything but brackets, quotes and
    backslashes), not a validation: malformed JSON is the parser's to refuse."""
    depth = deepest = 0
    in_string = False
    escaped_at = -1
    for match in _STRUCTURAL.finditer(text):
        char, at = match.group(), match.start()
        if in_string:
            if at == escaped_at:
                continue
            if char == "\\":
                escaped_at = at + 1
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > limit:
                    break
        elif char in "]}":
            depth -= 1
    return deepest


def strict_json_loads(data: bytes | str, max_depth: int = MAX_JSON_DEPTH, parse_int=None) -> Any:
    """Parse JSON text (bytes must be UTF-8) for verification, refusing what two parsers could
    read differently: repeated keys, NaN/Infinity, nesting deeper than ``max_depth``.

    Raises ``StrictJSONError`` (a ``ValueError``) with a one-line reason, or ``ValueError`` /
    ``UnicodeDecodeError`` from the decoder for text that is not JSON at all.
    """
    text = data.decode("utf-8") if isinstance(data, (bytes, bytearray)) else data
    if json_depth(text, max_depth) > max_depth:
        raise StrictJSONError(f"nested deeper than {max_depth} levels")
    try:
        return json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constant, parse_int=parse_int)
    except RecursionError:  # unreachable after the depth scan; kept as a last guard
        raise StrictJSONError(f"nested deeper than {max_depth} levels") from None
