"""bench/check_bench.py on one example plan: a row with a verdict's exit code, then the median
line, whose figures are the table's. No timing is asserted."""

from __future__ import annotations

import pytest
from bench_output import ROOT, run_bench, summary, table_lines, ratio_follows

pytestmark = pytest.mark.slow

VERDICT_CODES = {"0", "3", "4"}  # ALLOW, REVIEW, DENY; 1 and 2 mean the check did not run to a verdict


def test_one_plan_cold_and_cached_then_its_medians(tmp_path):
    out = run_bench("check_bench.py", str(ROOT / "examples" / "api-teacher.yaml"), cwd=tmp_path)
    rows, after = table_lines(out, "| plan | exit code |")
    assert [cells[0] for cells in rows] == ["api-teacher.yaml"]
    _, code, cold, cached = rows[0]
    assert code in VERDICT_CODES
    assert float(cold) > 0 and float(cached) > 0
    line = summary(after, r"median over 1 plan: cold (\S+) s, cached (\S+) s \(cached is (\S+)x faster\)$")
    assert (line.group(1), line.group(2)) == (cold, cached)   # the median of one plan is its row
    assert ratio_follows(line.group(3), cold, cached), (line.group(0), cold, cached)
    assert not any(text.startswith("no verdict") for text in after)
