"""How flopgate writes numbers, in the terminal, the HTML reports, the model card and the
signed texts alike. ``None`` (a figure the estimate could not make) is "unknown".

FLOP counts use 1 multiply-add = 2 FLOP; these helpers only format them. Scientific notation is
written the way thresholds are quoted in law and guidance: ``2.3e25``, never ``2.3e+25``.
"""

from __future__ import annotations

import math
from decimal import Decimal
from typing import NamedTuple

UNKNOWN = "unknown"


def _usable(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def sci(value, digits: int = 2) -> str:
    """``value`` in scientific notation with ``digits`` significant figures: 2.3e25, 1.0e23."""
    if not _usable(value):
        return UNKNOWN
    if value == 0:
        return "0"
    mantissa, exponent = f"{value:.{digits - 1}e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def significant(value, digits: int = 2) -> str:
    """``digits`` significant figures (rounded once, as :func:`sci`), without an exponent from
    1e-3 up to 10**digits: 2.0, 0.028, 12; beyond, as :func:`sci`: 1.2e24, 1.0e23 (9.96e22)."""
    text = sci(value, digits)
    if "e" not in text:  # "unknown" or "0"
        return text
    exponent = int(text.split("e")[1])
    if -3 <= exponent < digits:
        return f"{float(text):.{digits - 1 - exponent}f}"
    return text


def short_sci(value, digits: int = 3) -> str:
    """Up to ``digits`` significant figures, trailing zeros dropped: 1e23, 3.3e25, 1.25e26."""
    text = sci(value, digits)
    if "e" not in text:  # "unknown" or "0"
        return text
    mantissa, exponent = text.split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{exponent}"


def exact(value) -> str:
    """All digits, grouped by thousands, with no digits the float does not carry.

    A float carries about 15 significant decimal digits, so that is what is printed:
    2.4576e21 is 2,457,600,000,000,000,000,000, not the binary value's spurious tail, and a
    sum such as 3.8e25 + 1.2e25 + 8e24 is 58,000,...,000 without rounding noise.
    """
    if not _usable(value):
        return UNKNOWN
    if isinstance(value, int):
        return f"{value:,}"
    text = f"{Decimal(f'{value:.15g}'):,f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def ratio(value) -> str:
    """A ratio such as observed / threshold: 0.025×, 1.4×, 3.0e-5×."""
    if not _usable(value):
        return UNKNOWN
    if value == 0:
        return "0×"
    if 0.01 <= abs(value) < 1000:
        return f"{float(f'{value:.2g}'):g}×"
    return f"{sci(value)}×"


def plain(value, digits: int = 3) -> str:
    """A measured quantity such as hours or seconds, ``digits`` significant figures, no exponent
    below a million: 0.0123, 4.5, 12,345; 1.23e+06 -> 1.23e6."""
    if not _usable(value):
        return UNKNOWN
    if value != 0 and not 1e-4 <= abs(value) < 1e6:
        return sci(value, digits)
    text = f"{value:.{digits}g}"
    return f"{value:,.0f}" if "e" in text else text  # ``g`` writes 12345 as 1.234e+04


def counted(count: int, singular: str, plural: str | None = None) -> str:
    """``1 regime``, ``2 regimes``; ``plural`` when it is not ``singular + "s"``."""
    return f"{count} {singular if count == 1 else (plural or singular + 's')}"


def usd(value) -> str:
    """US dollars, whole dollars: $19,200."""
    if not _usable(value):
        return UNKNOWN
    return f"${value:,.0f}"


def percent(share) -> str:
    """A 0-1 share as a percentage with one decimal: 0.987 -> 98.7%."""
    if not _usable(share):
        return UNKNOWN
    text = f"{share * 100:.1f}".removesuffix(".0")
    return f"{text}%"


def quantity(value: float, unit: str = "") -> str:
    """A figure with its unit, as findings and the policy table state it (six significant
    figures, so a threshold reads as written): ``1e25 FLOP``, ``3.33333e22 FLOP``; dollars and
    users below 1e12 in full: ``$500,000,000``, ``1,000,000 users``."""
    if unit == "USD" and abs(value) < 1e12:
        return f"${value:,.0f}"
    if unit == "users" and abs(value) < 1e12:
        return f"{value:,.0f} users"
    text = f"{value:.6g}"
    if "e" in text:
        mantissa, exp = text.split("e")
        text = f"{mantissa}e{int(exp)}"
    return f"{text} {unit}".strip()


def byte_size(count: int) -> str:
    """A size in bytes, in the largest binary unit it fills: ``4 MiB``, ``5.5 GiB``, ``812 bytes``."""
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= size:
            return f"{count / size:.1f}".removesuffix(".0") + f" {unit}"
    return counted(count, "byte")


NEAR = 0.10
"""Within this share of a threshold a figure is "near" it: shown with at least three significant
figures, and its margin as a signed percentage instead of a ratio."""


def near(value, threshold, digits: int = 2) -> str:
    """``value`` as :func:`sci`, with as many significant figures as it takes to show which side
    of ``threshold`` it lies on (at least three within :data:`NEAR` of it): 1.03e23 against
    1e23, never "1.0e23" beside "exceeds"."""
    if not (_usable(value) and _usable(threshold)) or threshold == 0:
        return sci(value, digits)
    if value != threshold and abs(value / threshold - 1) < NEAR:
        digits = max(digits, 3)
    side = (value > threshold) - (value < threshold)
    while digits < 15:
        rounded = float(sci(value, digits))
        if (rounded > threshold) - (rounded < threshold) == side:
            break
        digits += 1
    return sci(value, digits)


def margin(value, threshold) -> str:
    """How ``value`` stands against ``threshold``: within :data:`NEAR` of it a signed percentage
    (+3.0%, -0.040%), equal "0%", farther the ratio (3.8e-3×, 0.5×, 25×)."""
    if not (_usable(value) and _usable(threshold)) or threshold == 0:
        return UNKNOWN
    share = value / threshold - 1
    if share == 0:
        return "0%"
    if abs(share) >= NEAR:
        return ratio(value / threshold)
    return f"{share * 100:+#.2g}".rstrip(".") + "%"  # two significant figures: never 0 for a nonzero share


COMPARATORS = {">": ">", ">=": "≥", "<": "<", "<=": "≤", "==": "=", "!=": "≠"}
"""A rule's comparator as the outputs write it."""


class ThresholdFigures(NamedTuple):
    observed: str
    threshold: str
    margin: str


def against_threshold(observed, threshold, unit: str = "FLOP", comparator: str = "") -> ThresholdFigures:
    """A legal test's three figures, as every output shows them (terminal, JSON, HTML): the
    observed figure (:func:`near` the threshold; dollars in full), the threshold as the law
    writes it (``> 1e23 FLOP``, ``≥ 1e25 FLOP``, ``> $100,000,000``) and the :func:`margin`. A missing figure is
    "unknown"; a test without a threshold shows "-" for it."""
    def amount(value, text: str) -> str:
        if not _usable(value):
            return UNKNOWN
        return usd(value) if unit == "USD" else f"{text} {unit}".strip()

    shown = amount(observed, near(observed, threshold) if _usable(observed) else "")
    sign = COMPARATORS.get(comparator, comparator)
    limit = "-" if threshold is None else f"{sign} {amount(threshold, short_sci(threshold))}".strip()
    return ThresholdFigures(shown, limit, margin(observed, threshold) if threshold is not None else "-")
