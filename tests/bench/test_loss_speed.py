"""bench/loss_speed.py --small: the fused loss and the full-logit reference side by side, each run
in a fresh process; the speed and memory ratios must follow from the table's columns, and the
cached log-probability table must rank the storage dtypes by their error. No timing or memory
size is asserted."""

from __future__ import annotations

import pytest
from bench_output import ratio_follows, run_bench, table_lines

pytestmark = pytest.mark.slow

SECONDS_FUSED, SECONDS_REF, SPEED, MIB_FUSED, MIB_REF, MEMORY = 4, 5, 6, 7, 8, 9


def test_small_run_prints_both_losses_side_by_side_with_ratios_from_its_columns(tmp_path):
    out = run_bench("loss_speed.py", "--small", "--repeats", "1", cwd=tmp_path)
    rows, after = table_lines(out, "| V | tokens | H | loss |")
    assert [(cells[0], cells[1], cells[2], cells[3]) for cells in rows] == [
        ("3000", "64", "64", "forward_kl"), ("3000", "64", "64", "jsd")]
    for cells in rows:
        assert all(float(cells[i]) >= 0 for i in (SECONDS_FUSED, SECONDS_REF, MIB_FUSED, MIB_REF))
        if cells[SPEED] != "n/a":  # per pair, reference seconds over fused seconds: "median (min-max)"
            median, spread = cells[SPEED].split(" ", 1)
            low, high = (float(x) for x in spread.strip("()").split("-"))
            assert low <= float(median.rstrip("x")) <= high, cells
            # one repeat: one pair, so the median is the ratio of the table's two columns
            assert ratio_follows(median, cells[SECONDS_REF], cells[SECONDS_FUSED]), cells
        if cells[MEMORY] != "n/a":  # fused peak over reference peak
            assert ratio_follows(cells[MEMORY], cells[MIB_FUSED], cells[MIB_REF]), cells
    assert any(line.startswith("V=3000 tokens=64 H=64 jsd: fused runs ") for line in after)


def test_cached_dtype_table_ranks_fp32_then_fp16_then_bf16(tmp_path):
    out = run_bench("loss_speed.py", "--cache-dtypes", "--small", cwd=tmp_path)
    rows, _ = table_lines(out, "| log-prob dtype |")
    errors = {cells[0]: [float(cell) for cell in cells[1:]] for cells in rows}
    assert list(errors) == ["float32", "float16", "bfloat16"]
    for column in range(6):
        assert errors["float32"][column] < errors["float16"][column] < errors["bfloat16"][column]
    # Rounding a log-probability costs at most half an ulp: 2^-11 (fp16) and 2^-8 (bf16) relative.
    assert errors["float16"][0] <= 2 ** -11 * 8 and errors["bfloat16"][0] <= 2 ** -8 * 8
