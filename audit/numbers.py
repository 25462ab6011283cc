"""How flopgate writes numbers, in the terminal, the HTML reports, the model card and the
signed texts alike. ``None`` (a figure the estimate could not make) is "unknown".

FLOP counts use 1 multiply-add = 2 FLOP; these helpers only format them. Scientific notation is
written the way thresholds are quoted in law and guidance: ``2.3e25``, never ``2.3e+25``.
"""

from __future__ import annotations

import math
from decimal import Decimal

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
