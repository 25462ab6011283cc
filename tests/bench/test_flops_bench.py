"""bench/flops_bench.py: its summary after the table (which once died unpacking the table's
rows), run in-process on made-up rows and end to end at 32 tokens. No timing is asserted: the
summary's ratios are checked against the table columns they are computed from."""

from __future__ import annotations

import importlib.util

import pytest
from bench_output import ROOT, run_bench, summary, table_lines, ratio_follows

pytestmark = pytest.mark.slow

HEADER = "| model | counter |"
COUNTERS = ["flopgate", "FlopCounterMode", "fvcore (x2 x3)"]
MODELS = ["gpt2", "llama-3.1-8b"]


@pytest.fixture(scope="module")
def flops_bench():
    """bench/flops_bench.py as a module (its main() does not run)."""
    spec = importlib.util.spec_from_file_location("flops_bench", ROOT / "bench" / "flops_bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_summary_lines_divide_fvcore_by_flopgate_per_model(flops_bench):
    Row = flops_bench.Row
    rows = [Row("gpt2", "flopgate", 0.5, 0.0, 4.0e11, ""),
            Row("gpt2", "FlopCounterMode", 0.1, 5.0, None, "RuntimeError: meta"),
            Row("gpt2", "fvcore (x2 x3)", 12.5, 1500.0, 4.2e11, ""),
            Row("llama-3.1-8b", "flopgate", 0.6, 0.0, 2.3e13, ""),
            Row("llama-3.1-8b", "fvcore (x2 x3)", 0.001, 0.0, None, "MemoryError: needs real weights")]
    assert flops_bench.summary_lines(rows) == [
        "gpt2: flopgate is 25.0x faster than fvcore; fvcore counts 1.0500x flopgate's FLOP"]


def test_summary_lines_empty_when_no_model_has_both_counts(flops_bench):
    Row = flops_bench.Row
    rows = [Row("gpt2", "flopgate", 0.5, 0.0, 4.0e11, ""),
            Row("gpt2", "fvcore (x2 x3)", 0.2, 0.0, None, "ImportError: no fvcore")]
    assert flops_bench.summary_lines(rows) == []


def test_runs_at_32_tokens_and_summarises_its_table(tmp_path):
    out = run_bench("flops_bench.py", "--seq-len", "32", cwd=tmp_path)
    rows, after = table_lines(out, HEADER)
    table = {(cells[0], cells[1]): cells[2:] for cells in rows}
    assert list(table) == [(model, counter) for model in MODELS for counter in COUNTERS]
    for (model, counter), (seconds, mib, flops, failure) in table.items():
        assert float(seconds) >= 0 and float(mib) >= 0   # MiB: growth of the peak, never negative
        assert (flops == "-") == (failure != "-"), (model, counter, flops, failure)  # a count or a reason
    assert all(table[(model, "flopgate")][3] == "-" for model in MODELS)

    gpt2_ours, gpt2_fvcore = table[("gpt2", "flopgate")], table[("gpt2", "fvcore (x2 x3)")]
    assert gpt2_fvcore[3] == "-", f"fvcore must count GPT-2 for the summary to print: {gpt2_fvcore[3]}"
    line = summary(after, r"gpt2: flopgate is (\S+)x faster than fvcore; fvcore counts (\S+)x flopgate's FLOP$")
    assert ratio_follows(line.group(1), gpt2_fvcore[0], gpt2_ours[0]), (line.group(0), gpt2_fvcore, gpt2_ours)
    assert ratio_follows(line.group(2), gpt2_fvcore[2], gpt2_ours[2]), (line.group(0), gpt2_fvcore, gpt2_ours)
    # Same model, two conventions brought to training-step FLOP: they agree to within a few percent.
    assert 0.95 < float(line.group(2)) < 1.10

    big = summary(after, r"llama-3.1-405b, one training step at 8192 tokens, in a fresh process: first count "
                         r"(\S+) s .*second count (\S+) s; peak RSS of the whole process (\d+) MiB; (\S+) FLOP$")
    assert float(big.group(4)) > 0
