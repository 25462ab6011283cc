"""Terminal formatting helpers shared by the commands."""

from __future__ import annotations

import json
import sys
from typing import Any


def sci(value: float | None, digits: int = 3) -> str:
    """``3.14159e23`` -> ``3.14e+23``; None -> ``unknown``."""
    return "unknown" if value is None else f"{value:.{digits - 1}e}"


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, sort_keys=False, default=str)
    sys.stdout.write("\n")


def console():
    from rich.console import Console

    return Console(highlight=False, soft_wrap=False, width=None if sys.stdout.isatty() else 110)
