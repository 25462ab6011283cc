"""bench/trainer_memory.py runs end to end on a small corpus and prints its table: the 8x corpus
has 8 times the tokens of the 1x one, and its ratio column follows from the printed peaks. Not a
memory assertion: the bar (8x within 10% of 1x) is measured in docs/benchmarks.md."""

from __future__ import annotations

import pytest
from bench_output import ratio_follows, run_bench, table_lines

pytestmark = pytest.mark.slow


def test_the_memory_table_compares_one_and_eight_times_the_corpus(tmp_path):
    out = run_bench("trainer_memory.py", "--tokens", "50000", "--steps", "2", cwd=tmp_path)
    rows, after = table_lines(out, "| corpus |")
    (one, x1_tokens, _, x1_peak, x1_ratio), (eight, x8_tokens, _, x8_peak, x8_ratio) = rows
    assert (one, eight, x1_ratio) == ("1x", "8x", "1.00")
    assert int(x8_tokens.replace(",", "")) == 8 * int(x1_tokens.replace(",", ""))
    assert ratio_follows(x8_ratio, x8_peak.split()[0], x1_peak.split()[0])
    assert any("2 steps" in line for line in after)
