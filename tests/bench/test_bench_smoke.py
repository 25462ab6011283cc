"""bench/distill_step.py runs end to end on the CPU with tiny shapes and prints its tables: one
row per step variant (or an explicit skip note for Liger when it is not installed), and every
fast path agrees with the eager plain step. Not a timing test: no speed is asserted; the
speed-up columns are checked against the tokens/s column they are computed from."""

from __future__ import annotations

import json

import pytest
from bench_output import run_bench, summary, table_lines, ratio_follows

pytestmark = pytest.mark.slow

VARIANTS = ["plain-eager", "plain-compiled", "fused-eager", "fused-compiled", "cached-compiled"]
# Columns of the step table after the variant's name.
TOKENS_PER_S, VS_EAGER, VS_COMPILED, LOSS_ERROR, GRAD_ERROR = 0, 5, 6, 7, 8


def by_name(text: str, header_start: str) -> dict[str, list[str]]:
    """Rows of the table whose header starts with ``header_start``, keyed by their first cell."""
    rows, _ = table_lines(text, header_start)
    return {cells[0]: cells[1:] for cells in rows}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """(stdout, the --json file's content) of one tiny CPU run: every section and variant,
    two timed steps (batches 0 and 1) and no warm-up steps, so it stays well under a minute."""
    tmp = tmp_path_factory.mktemp("distill-step")
    out = run_bench("distill_step.py", "--tiny", "--device", "cpu", "--steps", "2", "--warmup", "0",
                    "--json", str(tmp / "step.json"), cwd=tmp)
    return out, json.loads((tmp / "step.json").read_text())


def test_precision_table_shows_the_fused_loss_closer_to_fp64(tiny_run):
    precision = by_name(tiny_run[0], "| path |")
    assert set(precision) >= {"plain: bf16 logits, then fp32", "flopgate fused (bf16 operands, fp32-output GEMMs)"}
    grad_error = {name: float(cells[1]) for name, cells in precision.items()}
    assert grad_error["flopgate fused (bf16 operands, fp32-output GEMMs)"] < grad_error["plain: bf16 logits, then fp32"]


def test_loss_alone_table_has_every_loss_and_no_failure(tiny_run):
    alone = by_name(tiny_run[0], "| variant | time")
    assert any(name.startswith("plain full-logit") for name in alone)
    assert any(name.startswith("TRL-style") for name in alone)
    assert any(name.startswith("flopgate fused") for name in alone)
    assert all(not cells[0].startswith("failed") for cells in alone.values())


def test_step_table_has_every_variant_matching_the_plain_step(tiny_run):
    out, _ = tiny_run
    steps = by_name(out, "| variant | tokens/s")
    assert all(name in steps for name in VARIANTS), steps.keys()
    for name in VARIANTS:
        cells = steps[name]
        assert float(cells[TOKENS_PER_S].replace(",", "")) > 0 and float(cells[1]) > 0   # tokens/s, step ms
        # fp32 on CPU: every fast path matches the plain step (loss and every gradient).
        assert float(cells[LOSS_ERROR]) < 1e-5 and float(cells[GRAD_ERROR]) < 1e-4, (name, cells)


def test_speedup_columns_are_tokens_per_s_over_each_baseline(tiny_run):
    steps = by_name(tiny_run[0], "| variant | tokens/s")
    eager, compiled = steps["plain-eager"][TOKENS_PER_S], steps["plain-compiled"][TOKENS_PER_S]
    for name in VARIANTS:
        cells = steps[name]
        assert ratio_follows(cells[VS_EAGER], cells[TOKENS_PER_S], eager), (name, cells, eager)
        assert ratio_follows(cells[VS_COMPILED], cells[TOKENS_PER_S], compiled), (name, cells, compiled)


def test_json_results_are_the_printed_rows(tiny_run):
    out, saved = tiny_run
    steps = by_name(out, "| variant | tokens/s")
    assert saved["pair"] == "tiny" and set(saved["results"]) - {"liger"} == set(VARIANTS)
    for name, result in saved["results"].items():
        assert f"{result['tokens_per_s']:,.0f}" == steps[name][TOKENS_PER_S]
        assert f"{result['step_ms']:.1f}" == steps[name][1]


def test_step_summary_after_the_table(tiny_run):
    out, saved = tiny_run
    _, after = table_lines(out, "| variant | tokens/s")
    summary(after, r"Errors compare each variant with the eager plain step")
    steps = by_name(out, "| variant | tokens/s")
    if "liger" not in steps:  # not installed here: said after the table, and in the JSON notes
        note = summary(after, r"liger: skipped \((.+)\)$")
        assert note.group(0) in saved["notes"]
