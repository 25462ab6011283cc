"""The log-scale chart, tested as pure geometry and as the SVG it becomes.

Expected positions are computed here from the definition of a log axis,
x = left + (log10(v) - low) / (high - low) * (right - left), not taken from the code.
"""

import math
import xml.etree.ElementTree as ET

import pytest
import report_cases
from hypothesis import given, settings
from hypothesis import strategies as st

from audit.compute.types import Component
from audit.report.chart import (Bar, LogAxis, Segment, Threshold, bars_from_compute, choose_axis,
                                compute_chart, layout_chart, render_svg, thresholds_from_regimes)


def expected_x(axis: LogAxis, value: float) -> float:
    return axis.left + (math.log10(value) - axis.low_exp) / (axis.high_exp - axis.low_exp) * (axis.right - axis.left)


def svg_tree(markup) -> ET.Element:
    return ET.fromstring(str(markup))   # also proves the SVG is well-formed XML


def threshold_lines(root) -> list[tuple[float, float, float]]:
    """(x, top, bottom) of each vertical dashed line (legend keys are horizontal)."""
    return [(float(line.get("x1")), float(line.get("y1")), float(line.get("y2"))) for line in root.iter("line")
            if line.get("stroke-dasharray") and line.get("x1") == line.get("x2")]


def bar_rows(root) -> dict[str, tuple[float, float]]:
    """Each bar's title (up to the ":") -> the bar's (top, bottom); the title sits 5 px above it."""
    rows = {}
    for text in root.iter("text"):
        if text.get("font-weight") == "600":
            top = float(text.get("y")) + 5
            rows[text.text.rsplit(":", 1)[0]] = (top, top + 22)
    return rows


def crosses(line, row) -> bool:
    return line[1] <= row[0] and line[2] >= row[1]


def overlaps(line, row) -> bool:
    return line[1] < row[1] and line[2] > row[0]


def test_axis_maps_decades_linearly():
    axis = LogAxis(20, 26, left=0.0, right=600.0)
    assert axis.x(1e20) == 0.0
    assert axis.x(1e26) == 600.0
    assert math.isclose(axis.x(1e23), 300.0)
    assert math.isclose(axis.x(10 ** 21.5), 150.0)


def test_axis_covers_every_value_with_a_decade_to_spare():
    axis = choose_axis([3.11e21, 1e23, 1e26, None])
    assert (axis.low_exp, axis.high_exp) == (20, 27)
    assert choose_axis([]).high_exp > choose_axis([]).low_exp


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(min_value=1e10, max_value=1e30), min_size=2, max_size=6))
def test_larger_value_lies_further_along_the_axis(values):
    axis = choose_axis(values)
    ordered = sorted(values)
    positions = [axis.x(v) for v in ordered]
    assert positions == sorted(positions)
    for value, position in zip(ordered, positions):
        assert math.isclose(position, expected_x(axis, value), abs_tol=1e-6)
        assert axis.left < position < axis.right


def test_bigger_single_bar_ends_further_right():
    layout = layout_chart([Bar("a", (Segment("s", "small", 2e21),), 2e21),
                           Bar("b", (Segment("s", "small", 7e24),), 7e24)], [])
    small, big = layout.bars
    assert small.segments[0].x_end < big.segments[0].x_end
    assert math.isclose(big.segments[0].x_end, expected_x(layout.axis, 7e24))


def test_stacked_segments_end_at_running_totals_largest_first():
    parts = (Segment("student", "Student", 1.7e20), Segment("teacher", "Teacher", 2.94e21),
             Segment("gen", "Generation", 4.0e20))
    layout = layout_chart([Bar("Cumulative", parts, 3.51e21)], [])
    placed = layout.bars[0].segments
    assert [s.label for s in placed] == ["Teacher", "Generation", "Student"]
    running_totals = [2.94e21, 2.94e21 + 4.0e20, 2.94e21 + 4.0e20 + 1.7e20]
    for segment, total in zip(placed, running_totals):
        assert math.isclose(segment.x_end, expected_x(layout.axis, total))
    assert placed[0].x_start == layout.axis.left
    assert all(a.x_end == b.x_start for a, b in zip(placed, placed[1:]))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(min_value=1e15, max_value=1e28), min_size=1, max_size=5))
def test_stacked_bar_is_contiguous_and_ends_at_the_sum(values):
    segments = tuple(Segment(f"k{i}", f"part {i}", v) for i, v in enumerate(values))
    layout = layout_chart([Bar("bar", segments, sum(values))], [])
    placed = layout.bars[0].segments
    ends = [s.x_end for s in placed]
    assert ends == sorted(ends)
    assert math.isclose(ends[-1], expected_x(layout.axis, sum(sorted(values, reverse=True))), abs_tol=1e-6)


def test_thresholds_sit_at_their_log_positions():
    thresholds = [Threshold("EU GPAI", 1e23), Threshold("EU systemic risk", 1e25), Threshold("CA SB 53", 1e26)]
    layout = layout_chart([Bar("Cumulative", (Segment("s", "Student", 3.1e21),), 3.1e21)], thresholds)
    assert (layout.axis.low_exp, layout.axis.high_exp) == (20, 27)
    by_value = {line.flops: line for line in layout.thresholds}
    for value in (1e23, 1e25, 1e26):
        assert math.isclose(by_value[value].x, expected_x(layout.axis, value))
    assert by_value[1e23].x < by_value[1e25].x < by_value[1e26].x
    assert by_value[1e23].rows == ("EU GPAI 1e23",)


def test_thresholds_at_one_value_share_a_line_and_keep_every_name():
    layout = layout_chart([], [Threshold("CA SB 53", 1e26), Threshold("NY RAISE", 1e26, in_force=False),
                               Threshold("EU systemic risk", 1e25)])
    assert len(layout.thresholds) == 2
    line = next(t for t in layout.thresholds if t.flops == 1e26)
    label = " ".join(line.rows)
    assert "CA SB 53" in label and "NY RAISE (not in force)" in label and label.endswith("1e26")
    assert line.in_force


def test_long_labels_wrap_into_rows_that_never_overlap():
    names = [f"Regime number {i} with a long name" for i in range(6)]
    layout = layout_chart([], [Threshold(name, 1e26) for name in names] + [Threshold("EU GPAI", 1e23)])
    rows = [(line.top_y + i * 15) for line in layout.thresholds for i in range(len(line.rows))]
    assert len(rows) == len(set(rows)) and len(rows) > 2
    joined = " ".join(" ".join(line.rows) for line in layout.thresholds)
    assert all(name in joined for name in names)
    (bar,) = layout.bars          # no bar given: an empty cumulative one carries the lines
    assert max(rows) + 15 <= bar.y - 5   # every label row sits above the bar's own title


def test_the_threshold_value_survives_a_name_too_long_for_the_row():
    name = "EU AI Act: general-purpose AI model with systemic risk, cumulative training compute"
    layout = layout_chart([Bar("b", (Segment("s", "s", 1e21),), 1e21)], [Threshold(name, 1e25)])
    (line,) = layout.thresholds
    assert line.rows[-1].endswith(" 1e25")
    assert all(len(row) * 6.0 <= line.x - layout.axis.left for row in line.rows)
    assert line.rows[0].startswith("EU AI Act")


def test_svg_matches_the_layout():
    bar = Bar("Cumulative", (Segment("s", "Student", 1.7e20), Segment("t", "Teacher", 2.94e21)), 3.11e21)
    layout = layout_chart([bar], [Threshold("EU GPAI", 1e23), Threshold("NY RAISE", 1e26, in_force=False)])
    root = svg_tree(render_svg(layout))
    assert root.tag == "svg"
    bar_rects = [r for r in root.iter("rect") if r.find("title") is not None]
    assert [r.find("title").text for r in bar_rects] == ["Teacher: 2.9e21 FLOP", "Student: 1.7e20 FLOP"]
    for rect, placed in zip(bar_rects, layout.bars[0].segments):
        assert math.isclose(float(rect.get("x")), placed.x_start, abs_tol=0.051)
        assert math.isclose(float(rect.get("x")) + float(rect.get("width")), placed.x_end, abs_tol=0.11)
    dashed = threshold_lines(root)
    assert sorted(x for x, _, _ in dashed) == sorted(round(t.x, 1) for t in layout.thresholds)
    bottom = layout.bars[0].y + 22
    assert all(top < layout.bars[0].y and bottom < y2 < layout.axis_y for _, top, y2 in dashed)
    texts = [t.text for t in root.iter("text")]
    assert "EU GPAI 1e23" in texts
    assert "NY RAISE (not in force) 1e26" in texts
    assert {"1e20", "1e23", "1e27"} <= set(texts)


def test_unknown_figures_are_said_not_drawn():
    bar = Bar("Cumulative compute", (Segment("s", "Student training", 1.7e20),
                                     Segment("g", "Teacher generation", None)), None)
    svg = str(render_svg(layout_chart([bar], [Threshold("EU GPAI", 1e23)])))
    texts = [t.text for t in svg_tree(svg).iter("text")]
    assert "Cumulative compute: unknown" in texts
    assert "unknown: Teacher generation" in texts
    assert "Teacher generation: unknown" in texts
    assert "None" not in svg


def test_nothing_known_still_draws_an_axis():
    root = svg_tree(render_svg(layout_chart([Bar("Cumulative compute", (), None)], [])))
    texts = [t.text for t in root.iter("text")]
    assert "Cumulative compute: unknown" in texts
    assert any(text.startswith("1e") for text in texts)


def test_labels_are_escaped_text_never_markup():
    hostile = "</text><script>alert(1)</script>"
    svg = str(render_svg(layout_chart([Bar(hostile, (Segment("s", hostile, 1e21),), 1e21)],
                                      [Threshold('<b onload="x">', 1e23)])))
    assert "<script" not in svg and "<b " not in svg
    root = svg_tree(svg)
    assert [e.tag for e in root.iter() if e.tag in ("script", "b")] == []
    assert any(hostile in (t.text or "") for t in root.iter("text"))
    assert any('<b onload="x"> 1e23' == t.text for t in root.iter("text"))


def test_bars_follow_the_compute_notions():
    compute = {
        "components": [
            {"id": "base_model_training", "label": "Base", "flops": 3.8e25, "counts_toward": ["cumulative"]},
            {"id": "student_training", "label": "Student", "flops": 1.2e25,
             "counts_toward": ["cumulative", "parameter_update", "modification"]},
        ],
        "total_flops": 5.0e25, "update_flops": 1.2e25, "modification_flops": None,
        "uncertainty_low": 4e25, "uncertainty_high": 6e25,
    }
    bars = bars_from_compute(compute)
    assert [b.label for b in bars] == ["Cumulative compute", "Compute for parameter updates"]
    assert [b.notions for b in bars] == [("cumulative",), ("parameter_update",)]
    assert [s.label for s in bars[1].segments] == ["Student"]
    assert bars[0].band == (4e25, 6e25) and bars[1].band is None
    # an unknown modification figure gets a bar only when a threshold compares it
    assert bars_from_compute(compute, {"modification"})[-1] == Bar("Compute of this modification", (Segment(
        "student_training", "Student", 1.2e25),), None, None, ("modification",))
    # a figure equal to the cumulative one shares its bar, and the bar's title says so
    same = {**compute, "update_flops": 5.0e25, "modification_flops": 1.2e25}
    bars = bars_from_compute(same)
    assert [b.label for b in bars] == ["Cumulative compute = compute for parameter updates",
                                       "Compute of this modification"]
    assert bars[0].notions == ("cumulative", "parameter_update")
    # two unknown figures are not known to be equal
    unknown = {**compute, "total_flops": None, "update_flops": None}
    assert [b.notions for b in bars_from_compute(unknown)] == [("cumulative",), ("parameter_update",)]


def _regime_dict(id_, threshold, fact=None, notion="cumulative", unit="FLOP", in_force=True) -> dict:
    """A regime result as signed; ``fact`` None is a predicate from before that field existed."""
    flops = threshold if unit == "FLOP" else None
    return {"id": id_, "name": id_, "in_force": in_force, "threshold_flops": flops, "threshold_value": threshold,
            "fact": fact, "compute_notion": notion, "unit": unit}


# a run whose cumulative compute (3.0e23) is above the EU GPAI 1e23 line but whose
# parameter-update compute (5e22) is below it: GPAI compares the latter
SPLIT_COMPUTE = {
    "components": [
        {"id": "teacher_forward", "label": "Teacher forward passes", "flops": 2.5e23, "counts_toward": ["cumulative"]},
        {"id": "student_training", "label": "Student training", "flops": 5e22,
         "counts_toward": ["cumulative", "parameter_update"]},
    ],
    "total_flops": 3.0e23, "update_flops": 5e22, "modification_flops": None,
}


@pytest.mark.parametrize("gpai", [
    _regime_dict("EU GPAI", 1e23, fact="update_flops", notion="parameter_update"),
    _regime_dict("EU GPAI", 1e23, notion="parameter_update"),          # no ``fact``: compute_notion says it
])
def test_each_threshold_is_drawn_on_the_bar_of_the_figure_it_compares(gpai):
    regimes = [gpai, _regime_dict("EU systemic risk", 1e25, fact="total_flops"),
               _regime_dict("NY distillation cost", 5e6, fact="cost_usd", unit="USD")]
    root = svg_tree(compute_chart(SPLIT_COMPUTE, regimes))
    rows = bar_rows(root)
    cumulative, update = rows["Cumulative compute"], rows["Compute for parameter updates"]
    layout = layout_chart(bars_from_compute(SPLIT_COMPUTE), thresholds_from_regimes(regimes))
    x_of = {t.flops: round(t.x, 1) for t in layout.thresholds}
    lines = {x: (x, top, bottom) for x, top, bottom in threshold_lines(root)}
    assert len(lines) == 2                      # the dollar threshold is not a FLOP line
    gpai_line, systemic_line = lines[x_of[1e23]], lines[x_of[1e25]]
    assert crosses(gpai_line, update) and not overlaps(gpai_line, cumulative)
    assert crosses(systemic_line, cumulative) and not overlaps(systemic_line, update)
    # the cumulative bar ends right of the GPAI line, the update bar left of it
    ends = {bar.label: bar.segments[-1].x_end for bar in layout.bars}
    assert ends["Compute for parameter updates"] < x_of[1e23] < ends["Cumulative compute"]
    # each label sits in its bar's block: above that bar, below the bar before it
    texts = {t.text: float(t.get("y")) for t in root.iter("text")}
    assert cumulative[1] < texts["EU GPAI 1e23"] < update[0]
    assert texts["EU systemic risk 1e25"] < cumulative[0]
    assert not any("5e6" in (t or "") or "NY distillation" in (t or "") for t in texts)
    assert "Each threshold line crosses the bar of the figure its rule compares." in texts


def test_threshold_on_a_figure_equal_to_the_cumulative_one_uses_the_shared_bar():
    same = {**SPLIT_COMPUTE, "update_flops": 3.0e23}
    regimes = [_regime_dict("EU GPAI", 1e23, fact="update_flops", notion="parameter_update")]
    root = svg_tree(compute_chart(same, regimes))
    rows = bar_rows(root)
    assert list(rows) == ["Cumulative compute = compute for parameter updates"]
    (line,) = threshold_lines(root)
    assert crosses(line, rows["Cumulative compute = compute for parameter updates"])


def test_threshold_on_an_unknown_figure_gets_an_unknown_bar():
    regimes = [_regime_dict("EU modification", 1e25 / 3, fact="modification_flops", notion="modification")]
    root = svg_tree(compute_chart(SPLIT_COMPUTE, regimes))
    rows = bar_rows(root)
    assert "Compute of this modification" in rows
    assert "Compute of this modification: unknown" in [t.text for t in root.iter("text")]
    (line,) = threshold_lines(root)
    assert crosses(line, rows["Compute of this modification"])
    assert not any(overlaps(line, row) for name, row in rows.items() if name != "Compute of this modification")


def test_a_threshold_on_own_training_compute_crosses_its_own_bar():
    """SB 53 and the other own-training rules compare the student's training (plus a base
    model's), never teacher inference: their line crosses a bar of just those components."""
    regimes = [_regime_dict("SB 53", 1e26, fact="own_training_flops", notion="cumulative")]
    root = svg_tree(compute_chart(SPLIT_COMPUTE, regimes))
    rows = bar_rows(root)
    assert "The student's own training compute" in rows
    bar = next(b for b in bars_from_compute(SPLIT_COMPUTE, {"own_training"}) if b.notions == ("own_training",))
    assert bar.total == 5e22 and [s.key for s in bar.segments] == ["student_training"]
    (line,) = threshold_lines(root)
    assert crosses(line, rows["The student's own training compute"])
    assert not overlaps(line, rows["Cumulative compute"])


def test_real_eu_pack_draws_gpai_against_the_update_figure():
    """The engine's own regime results: EU GPAI tests ``update_flops`` (1e23), systemic risk
    ``total_flops`` (1e25); cumulative 3.0e23 is above 1e23, parameter updates 5e22 below."""
    from audit.plan import Plan
    from audit.policy.engine import decide
    from audit.policy.packs import load_packs

    compute = report_cases.small_compute(
        components=[Component(id=c["id"], label=c["label"], flops=c["flops"], method="counted",
                              counts_toward=c["counts_toward"]) for c in SPLIT_COMPUTE["components"]],
        total_flops=3.0e23, update_flops=5e22, uncertainty_low=2.7e23, uncertainty_high=3.3e23)
    decision = decide(Plan.model_validate(report_cases.make_plan()), compute, load_packs(), report_cases.AS_OF)
    regimes = decision.model_dump(mode="json")["regimes"]
    gpai = next(r for r in regimes if r["id"] == "eu-ai-act.gpai")
    assert gpai["fact"] == "update_flops" and gpai["status"] == "below"
    dumped = compute.model_dump(mode="json")
    root = svg_tree(compute_chart(dumped, regimes))
    rows = bar_rows(root)
    axis = layout_chart(bars_from_compute(dumped), thresholds_from_regimes(regimes)).axis
    (gpai_line,) = [line for line in threshold_lines(root) if math.isclose(line[0], axis.x(1e23), abs_tol=0.06)]
    assert crosses(gpai_line, rows["Compute for parameter updates"])
    assert not overlaps(gpai_line, rows["Cumulative compute"])


def test_chart_from_a_predicate(review_case):
    root = svg_tree(compute_chart(review_case["compute"], review_case["decision"]["regimes"]))
    texts = [t.text for t in root.iter("text")]
    assert "Cumulative compute: 3.1e21 FLOP" in texts
    assert "Compute for parameter updates: 1.7e20 FLOP" in texts
    assert any("EU GPAI 1e23" in text for text in texts)
