"""RFC 8785 (JSON Canonicalization Scheme) bytes of a JSON value.

JCS sorts object keys by UTF-16 code units, writes numbers the ECMAScript way (``1.0`` -> ``1``,
``1e21`` -> ``1e+21``), emits no whitespace and encodes as UTF-8. It accepts only I-JSON:
no NaN or infinity, and integers within +-(2**53 - 1); give large counts (FLOP) as floats.
"""

from __future__ import annotations

from typing import Any

import rfc8785


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
