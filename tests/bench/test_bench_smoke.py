"""bench/distill_step.py runs end to end on the CPU with tiny shapes and prints its tables: one
row per step variant (or an explicit skip note for Liger when it is not installed), and every
fast path agrees with the eager plain step. Not a timing test: no speed is asserted."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VARIANTS = ["plain-eager", "plain-compiled", "fused-eager", "fused-compiled", "cached-compiled"]


def table_rows(text: str, header_start: str) -> dict[str, list[str]]:
    """Rows of the markdown table whose header starts with ``header_start``, by first cell."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return rows


def test_tiny_cpu_run_prints_every_section_and_variant(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "distill_step.py"), "--tiny", "--device", "cpu",
                             "--steps", "2", "--json", str(tmp_path / "step.json")],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    out = result.stdout
    assert result.returncode == 0, result.stderr[-2000:]

    precision = table_rows(out, "| path |")
    assert set(precision) >= {"plain: bf16 logits, then fp32", "flopgate fused (bf16 operands, fp32-output GEMMs)"}
    grad_error = {name: float(cells[1]) for name, cells in precision.items()}
    assert grad_error["flopgate fused (bf16 operands, fp32-output GEMMs)"] < grad_error["plain: bf16 logits, then fp32"]

    alone = table_rows(out, "| variant | time")
    assert any(name.startswith("plain full-logit") for name in alone)
    assert any(name.startswith("TRL-style") for name in alone)
    assert any(name.startswith("flopgate fused") for name in alone)
    assert all(not cells[0].startswith("failed") for cells in alone.values())

    steps = table_rows(out, "| variant | tokens/s")
    assert all(name in steps for name in VARIANTS), steps.keys()
    assert "liger" in steps or re.search(r"^liger: skipped \(.+\)$", out, re.M)
    for name in VARIANTS:
        cells = steps[name]
        assert float(cells[0].replace(",", "")) > 0 and float(cells[1]) > 0   # tokens/s, step ms
        assert cells[5].endswith("x") and cells[6].endswith("x")              # ratios to both baselines
        # fp32 on CPU: every fast path matches the plain step (loss and every gradient).
        assert float(cells[7]) < 1e-5 and float(cells[8]) < 1e-4, (name, cells)
    assert steps["plain-eager"][5] == "1.00x" and steps["plain-compiled"][6] == "1.00x"
    assert (tmp_path / "step.json").read_text().count('"tokens_per_s"') == len(VARIANTS)
