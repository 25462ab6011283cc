"""Helpers for the bench smoke tests: run a bench script, read its markdown tables and the
summary lines after them, and check that a printed ratio follows from two printed numbers.

Nothing here asserts a timing: a ratio is checked against the columns it is computed from,
allowing for the rounding of every printed number."""

from __future__ import annotations

import re
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_bench(script: str, *args: str, cwd: Path, timeout: float = 300) -> str:
    """Run ``bench/<script>`` with ``args`` in a fresh interpreter; assert it exits 0; its stdout."""
    result = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args],
                            capture_output=True, text=True, timeout=timeout, cwd=cwd)
    assert result.returncode == 0, f"{script} exited {result.returncode}:\n{result.stderr[-3000:]}"
    return result.stdout


def table_lines(text: str, header_start: str) -> tuple[list[list[str]], list[str]]:
    """(rows as lists of stripped cells, the lines after the table) of the markdown table whose
    header line starts with ``header_start``."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith(header_start)), None)
    assert start is not None, f"no table starting {header_start!r} in:\n{text}"
    assert lines[start + 1].startswith("|---"), lines[start + 1]
    end = start + 2
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in lines[start + 2:end]]
    return rows, lines[end:]


def summary(after: list[str], pattern: str) -> re.Match:
    """The first non-empty line after a table that matches ``pattern`` from its start."""
    for line in after:
        match = re.match(pattern, line)
        if match:
            return match
    raise AssertionError(f"no line matching {pattern!r} after the table:\n" + "\n".join(after))


def shown(text: str) -> tuple[float, float]:
    """A printed number ("1,119", "2.922", "2.3850e+10", "21.5x") and half its last digit's unit:
    the true value lies within that of the printed one."""
    number = Decimal(text.strip().rstrip("x%").replace(",", ""))
    return float(number), 0.5 * 10.0 ** number.as_tuple().exponent


def ratio_follows(ratio: str, numerator: str, denominator: str) -> bool:
    """Whether the printed ``ratio`` can be numerator / denominator, given how each was rounded."""
    r, dr = shown(ratio)
    a, da = shown(numerator)
    b, db = shown(denominator)
    low = (a - da) / (b + db)
    high = (a + da) / (b - db) if b - db > 0 else float("inf")
    slack = 1e-9 * max(1.0, abs(r))
    return low - dr - slack <= r <= high + dr + slack
