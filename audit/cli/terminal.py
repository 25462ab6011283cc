"""Terminal formatting helpers shared by the commands."""

from __future__ import annotations

import json
import re
import sys
from typing import Any

from audit.numbers import ratio, sci


def hardware_line(hardware: dict | None) -> str | None:
    """The hardware cross-check in one line (``compute.hardware`` of an estimate), flagged when
    it is outside the EU guidelines' +/-30%; None when there is nothing to compare."""
    if not hardware or hardware.get("ratio") is None:
        return None
    flag = ("  OUTSIDE ±30% of the count: the count decides the outcome; check the plan's hardware.hours "
            "and hardware.utilization" if hardware.get("outside_tolerance") else "")
    return f"{sci(hardware.get('estimate_flops'), 3)} FLOP ({ratio(hardware['ratio'])} the count){flag}"


def first_sentence(text: str) -> str:
    """A note's first sentence, for a table cell (the whole note is in the report and the JSON),
    with the note's weaker evidence markers ([secondary], [unverified]) kept in sight."""
    head = text.split(". ", 1)[0].strip()
    if head == text.strip():
        return head
    head = head if head.endswith(".") else head + "."
    markers = dict.fromkeys(m.group(0) for m in re.finditer(r"\[(?:secondary|unverified)\]", text))
    return " ".join([head, *markers])


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, sort_keys=False, default=str)
    sys.stdout.write("\n")


def console():
    from rich.console import Console

    return Console(highlight=False, soft_wrap=False, width=None if sys.stdout.isatty() else 110)
