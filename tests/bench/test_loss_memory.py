"""bench/loss_memory.py --small: three cases in fresh processes, then the memory ratios, which
must follow from the table's memory column. No timing or memory size is asserted."""

from __future__ import annotations

import pytest
from bench_output import run_bench, summary, table_lines, ratio_follows

pytestmark = pytest.mark.slow


def test_small_run_prints_its_cases_and_memory_ratios(tmp_path):
    out = run_bench("loss_memory.py", "--small", cwd=tmp_path)
    rows, after = table_lines(out, "| tokens | loss |")
    assert [(cells[0], cells[1]) for cells in rows] == [("128", "fused"), ("128", "reference"), ("512", "fused")]
    mib = {(cells[0], cells[1]): cells[2] for cells in rows}
    assert all(float(cells[2]) >= 0 and float(cells[3]) >= 0 for cells in rows)   # MiB, seconds

    versus = summary(after, r"at 128 tokens the fused loss takes (\S+) less memory than the reference "
                            r"\((\d+) vs (\d+) MiB\)$")
    assert (versus.group(2), versus.group(3)) == (mib[("128", "fused")], mib[("128", "reference")])
    if versus.group(1) != "n/a":
        assert ratio_follows(versus.group(1), mib[("128", "reference")], mib[("128", "fused")]), versus.group(0)

    growth = summary(after, r"fused, 128 -> 512 tokens: peak RSS growth (\d+) -> (\d+) MiB \((\S+)\)$")
    assert (growth.group(1), growth.group(2)) == (mib[("128", "fused")], mib[("512", "fused")])
    if growth.group(3) != "n/a":
        assert ratio_follows(growth.group(3), mib[("512", "fused")], mib[("128", "fused")]), growth.group(0)
