"""The report's compute chart: an inline SVG on a log10 axis, built in Python, no JavaScript.

Each bar is one notion of the run's compute (cumulative, parameter-update, modification) with
its components stacked largest first. Each legal threshold is a vertical line drawn across the
bar of the figure its rule compares (the EU GPAI line on the parameter-update bar, the
systemic-risk line on the cumulative bar), with its label just above that bar; thresholds in
dollars or users are not FLOP and stay out of the chart. On a log axis
a stacked segment runs from the running total before it to the running total after it, and
the first starts at the axis' left edge (log scale has no zero), so read a bar by its end
points, not by lengths. Every piece of text is escaped with ``markupsafe.escape``.
Values are FLOP (1 multiply-add = 2 FLOP); ``None`` means unknown.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from markupsafe import Markup, escape

from audit.compute.types import OWN_TRAINING_COMPONENTS
from audit.numbers import short_sci, sci

WIDTH = 720
LEFT, RIGHT = 28.0, 692.0
CHAR_WIDTH = 6.0            # rough width of one character at font-size 11, for truncating labels
LABEL_ROW, BAR_BLOCK, BAR_HEIGHT = 15, 58, 22
COLOURS = ["#1f4e79", "#5b9bd5", "#70ad47", "#ed7d31", "#8064a2", "#4bacc6", "#a5a5a5"]
THRESHOLD_COLOUR, INACTIVE_COLOUR = "#b3261e", "#8a8a8a"


@dataclass(frozen=True)
class Segment:
    key: str                 # same key, same colour, in every bar
    label: str
    flops: float | None


NOTION_LABELS = {"cumulative": "Cumulative compute",
                 "parameter_update": "Compute for parameter updates",
                 "modification": "Compute of this modification",
                 "own_training": "The student's own training compute"}
# the compute figure a regime's ``fact`` names -> the notion (bar) it is compared with
FACT_NOTIONS = {"total_flops": "cumulative", "update_flops": "parameter_update",
                "modification_flops": "modification", "own_training_flops": "own_training"}


@dataclass(frozen=True)
class Bar:
    label: str
    segments: tuple[Segment, ...]
    total: float | None      # the estimate's own total for this notion
    band: tuple[float | None, float | None] | None = None
    notions: tuple[str, ...] = ("cumulative",)   # the figures this bar shows (several when equal)


@dataclass(frozen=True)
class Threshold:
    label: str
    flops: float
    in_force: bool = True
    notion: str = "cumulative"   # the figure the rule compares: its line is drawn on that bar


@dataclass(frozen=True)
class LogAxis:
    """Maps a positive value to x: ``left`` is 10**low_exp, ``right`` is 10**high_exp."""

    low_exp: int
    high_exp: int
    left: float = LEFT
    right: float = RIGHT

    def x(self, value: float) -> float:
        position = (math.log10(value) - self.low_exp) / (self.high_exp - self.low_exp)
        return self.left + min(max(position, 0.0), 1.0) * (self.right - self.left)


@dataclass(frozen=True)
class PlacedSegment:
    key: str
    label: str
    flops: float
    x_start: float
    x_end: float
    colour: str


@dataclass(frozen=True)
class PlacedBar:
    label: str
    y: float
    segments: tuple[PlacedSegment, ...]
    unknown: tuple[str, ...]          # labels of components with no figure
    total: float | None
    band_x: tuple[float, float] | None


@dataclass(frozen=True)
class PlacedThreshold:
    flops: float
    x: float
    rows: tuple[str, ...]     # the label, wrapped: one text row each
    top_y: float              # baseline of the first row; the line starts just above it
    in_force: bool            # True when any regime at this value is in force
    anchor: str               # "start": label runs right of the line; "end": left of it
    bottom_y: float = 0.0     # the line ends just below the bar it is compared with
    bar: int = 0              # index of that bar in ``ChartLayout.bars``


@dataclass(frozen=True)
class ChartLayout:
    axis: LogAxis
    height: float
    plot_top: float           # top of the first bar's block (its threshold labels start here)
    axis_y: float
    bars: tuple[PlacedBar, ...]
    thresholds: tuple[PlacedThreshold, ...]
    legend: tuple[tuple[str, str, str], ...]   # (colour, label, figure)
    legend_y: float
    rules_date: str = "the rules date"         # the date regimes were judged in force (the audit's as_of)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _positive(value) -> bool:
    return _number(value) and value > 0


def _known(segments) -> list[Segment]:
    """Segments with a figure, largest first (so the widest stretch is the largest part)."""
    return sorted((s for s in segments if _number(s.flops) and s.flops >= 0), key=lambda s: -s.flops)


def choose_axis(values) -> LogAxis:
    """Whole decades from one below the smallest value to one above the largest."""
    logs = [math.log10(v) for v in values if _positive(v)]
    if not logs:
        return LogAxis(20, 27)
    low, high = math.floor(min(logs)) - 1, math.floor(max(logs)) + 1
    return LogAxis(low, max(high, low + 2))


def _group_thresholds(thresholds) -> list[tuple[float, list[str], bool]]:
    """One line per distinct value: (value, names, any in force), sorted by value."""
    grouped: dict[float, list[Threshold]] = {}
    for threshold in thresholds:
        if _positive(threshold.flops):
            grouped.setdefault(float(threshold.flops), []).append(threshold)
    lines = []
    for value in sorted(grouped):
        names = [t.label + ("" if t.in_force else " (not in force)") for t in grouped[value]]
        lines.append((value, list(dict.fromkeys(names)), any(t.in_force for t in grouped[value])))
    return lines


def _label_order(lines, axis: LogAxis) -> list:
    """Top-to-bottom order of the label rows that keeps lines out of the labels below them.

    Labels left of the middle run rightwards (listed left to right); labels right of it run
    leftwards (listed right to left), so a line drawn from a row above rarely crosses them.
    """
    middle = (axis.left + axis.right) / 2
    left = [line for line in lines if axis.x(line[0]) < middle]
    right = [line for line in lines if axis.x(line[0]) >= middle]
    return left + right[::-1]


def _wrap(names: list[str], value: float, room: float) -> tuple[str, ...]:
    """Names joined by " · " into rows of at most ``room`` px; the value always shows at the end.

    A name too long for a row is cut with "…" (the regime table has it in full).
    """
    limit = max(int(room / CHAR_WIDTH), 12)
    rows: list[str] = []
    for name in names:
        if rows and len(rows[-1]) + 3 + len(name) <= limit:
            rows[-1] += " · " + name
        else:
            if rows:
                rows[-1] += " ·"
            rows.append(name)
    suffix = short_sci(value)
    if len(rows[-1]) + 1 + len(suffix) <= limit:
        rows[-1] += " " + suffix
    elif len(rows) > 1 or len(rows[-1]) <= limit:
        rows.append(suffix)
    else:
        rows[-1] = _clip(rows[-1], limit - len(suffix) - 1) + " " + suffix
    return tuple(_clip(row, limit) for row in rows)


def _place_thresholds(lines, axis: LogAxis, top: float) -> list[PlacedThreshold]:
    """Label rows stacked downwards from ``top`` (px); the caller sets where the lines end."""
    placed, row = [], 0
    for value, names, in_force in _label_order(lines, axis):
        x = axis.x(value)
        anchor = "start" if x < (axis.left + axis.right) / 2 else "end"
        room = (axis.right - x if anchor == "start" else x - axis.left) - 6
        rows = _wrap(names, value, room)
        placed.append(PlacedThreshold(value, x, rows, top + LABEL_ROW * (row + 1) - 4, in_force, anchor))
        row += len(rows)
    return placed


def _with_compared_bars(bars, thresholds) -> list[Bar]:
    """``bars`` plus an empty "unknown" bar for each compared notion no bar shows, so that no
    threshold is ever drawn against a figure its rule does not compare."""
    bars, shown = list(bars), {notion for bar in bars for notion in bar.notions}
    for threshold in thresholds:
        if _positive(threshold.flops) and threshold.notion not in shown:
            bars.append(Bar(NOTION_LABELS.get(threshold.notion, threshold.notion), (), None,
                            notions=(threshold.notion,)))
            shown.add(threshold.notion)
    return bars


def _bar_index(threshold: Threshold, bars) -> int:
    return next(i for i, bar in enumerate(bars) if threshold.notion in bar.notions)


def layout_chart(bars, thresholds) -> ChartLayout:
    """Place bars, segments and threshold lines; pure geometry, no SVG.

    Each bar's block is its thresholds' label rows, then the bar's title, then the bar; a
    threshold's line runs from its label down across that bar only.
    """
    bars = _with_compared_bars(bars, thresholds)
    drawn = [(t, _bar_index(t, bars)) for t in thresholds if _positive(t.flops)]
    lines_by_bar = [_group_thresholds([t for t, at in drawn if at == i]) for i in range(len(bars))]
    ends = [line[0] for lines in lines_by_bar for line in lines]
    for bar in bars:
        running = 0.0
        for segment in _known(bar.segments):
            running += segment.flops
            ends.append(running)
        ends += [bar.total, *(bar.band or ())]
    axis = choose_axis(ends)

    colours: dict[str, str] = {}
    legend: dict[str, tuple[str, str, str]] = {}
    for bar in bars:
        for segment in bar.segments:
            colour = colours.setdefault(segment.key, COLOURS[len(colours) % len(COLOURS)])
            legend.setdefault(segment.key, (colour, segment.label, sci(segment.flops)))

    plot_top = top = 8.0
    placed_bars, placed_lines = [], []
    for index, (bar, lines) in enumerate(zip(bars, lines_by_bar)):
        block = _place_thresholds(lines, axis, top)
        label_rows = sum(len(line.rows) for line in block)
        y = top + (LABEL_ROW * label_rows + 6 if label_rows else 0) + 16
        placed_lines += [replace(line, bottom_y=y + BAR_HEIGHT + 4, bar=index) for line in block]
        running, x_start, segments = 0.0, axis.left, []
        for segment in _known(bar.segments):
            running += segment.flops
            x_end = axis.x(running) if running > 0 else axis.left
            segments.append(PlacedSegment(segment.key, segment.label, segment.flops, x_start, x_end,
                                          colours[segment.key]))
            x_start = x_end
        unknown = tuple(s.label for s in bar.segments if not (_number(s.flops) and s.flops >= 0))
        band = None
        if bar.band and all(_positive(v) for v in bar.band):
            band = (axis.x(bar.band[0]), axis.x(bar.band[1]))
        placed_bars.append(PlacedBar(bar.label, y, tuple(segments), unknown, bar.total, band))
        top = y - 16 + BAR_BLOCK

    axis_y = top if bars else plot_top + BAR_BLOCK
    legend_y = axis_y + 34
    legend_rows = len(legend) + (len(THRESHOLD_KEY) if placed_lines else 0) + 1
    height = legend_y + 16 * legend_rows + 4
    return ChartLayout(axis, height, plot_top, axis_y, tuple(placed_bars), tuple(placed_lines),
                       tuple(legend.values()), legend_y)


def _attrs(**attributes) -> str:
    """SVG attributes: ``stroke_width`` -> ``stroke-width``, ``class_`` -> ``class``; floats get
    one decimal; every value is escaped."""
    parts = []
    for name, value in attributes.items():
        text = f"{value:.1f}" if isinstance(value, float) else value
        parts.append(f'{name.rstrip("_").replace("_", "-")}="{escape(text)}"')
    return " ".join(parts)


def _text(x: float, y: float, content: str, **attributes) -> str:
    """Text with a white halo, so a threshold line crossing it does not hide it."""
    halo = {"paint_order": "stroke", "stroke": "#fff", "stroke_width": "3", "stroke_linejoin": "round"}
    return f"<text {_attrs(x=float(x), y=float(y), **{**halo, **attributes})}>{escape(content)}</text>"


def _rect(x: float, y: float, width: float, height: float, *, title: str | None = None, **style) -> str:
    attributes = _attrs(x=float(x), y=float(y), width=float(max(width, 0.0)), height=float(height), **style)
    return f"<rect {attributes}><title>{escape(title)}</title></rect>" if title else f"<rect {attributes}/>"


def _line(x1: float, y1: float, x2: float, y2: float, **style) -> str:
    return f"<line {_attrs(x1=float(x1), y1=float(y1), x2=float(x2), y2=float(y2), **style)}/>"


def _whisker(low: float, high: float, y: float) -> str:
    """|---| from ``low`` to ``high`` at height ``y``."""
    path = f"M{low:.1f} {y - 3:.1f}v6M{low:.1f} {y:.1f}H{high:.1f}M{high:.1f} {y - 3:.1f}v6"
    return f'<path {_attrs(d=path, stroke="#222", fill="none")}/>'


DASHED = {"stroke_width": "1.5", "stroke_dasharray": "5 3"}
THRESHOLD_KEY = ((THRESHOLD_COLOUR, "legal threshold in force on {date}"),
                 (INACTIVE_COLOUR, "threshold not in force on {date}"),
                 (None, "Each threshold line crosses the bar of the figure its rule compares."))
SMALL, NORMAL = {"font_size": "10", "fill": "#444"}, {"font_size": "11", "fill": "#222"}


def _clip(text: str, limit: int) -> str:
    """At most ``limit`` characters, cut with "…"."""
    limit = max(limit, 4)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _fit(label: str, room: float) -> str:
    """A label cut to fit ``room`` px."""
    return _clip(label, int(room / CHAR_WIDTH))


def _bar_svg(bar: PlacedBar, axis: LogAxis) -> list[str]:
    total = f"{sci(bar.total)} FLOP" if _number(bar.total) else "unknown"
    parts = [_text(axis.left, bar.y - 5, f"{bar.label}: {total}", **NORMAL, font_weight="600")]
    for segment in bar.segments:
        parts.append(_rect(segment.x_start, bar.y, segment.x_end - segment.x_start, BAR_HEIGHT,
                           title=f"{segment.label}: {sci(segment.flops)} FLOP", fill=segment.colour))
    end = bar.segments[-1].x_end if bar.segments else axis.left
    if bar.unknown or not _number(bar.total):
        # a dashed open end: the bar goes on by an amount nobody could estimate
        width = max(min(60.0, axis.right - end), 0.0)
        parts.append(_rect(end, bar.y, width, BAR_HEIGHT, fill="none", stroke="#555", stroke_dasharray="3 3"))
        note = "unknown: " + ", ".join(bar.unknown) if bar.unknown else "total unknown"
        note_x = min(end + width + 4, axis.right)
        parts.append(_text(note_x, bar.y + 15, _fit(note, max(axis.right - note_x, 40)), **SMALL,
                           text_anchor="start" if note_x < axis.right - 40 else "end"))
    if bar.band_x:
        parts.append(_whisker(*bar.band_x, bar.y + BAR_HEIGHT + 6))
    return parts


def _legend_svg(layout: ChartLayout) -> list[str]:
    x, y, parts = layout.axis.left, layout.legend_y, []
    for colour, label, figure in layout.legend:
        known = figure != "unknown"
        swatch = {"fill": colour} if known else {"fill": "none", "stroke": "#555", "stroke_dasharray": "2 2"}
        parts.append(_rect(x, y - 9, 12, 10, **swatch))
        parts.append(_text(x + 18, y, f"{label}: {figure} FLOP" if known else f"{label}: unknown", **NORMAL))
        y += 16
    if layout.thresholds:
        for colour, label in THRESHOLD_KEY:
            if colour:
                parts.append(_line(x, y - 4, x + 12, y - 4, stroke=colour, **DASHED))
            parts.append(_text(x + 18 if colour else x, y, label.format(date=layout.rules_date), **NORMAL))
            y += 16
    if any(bar.band_x for bar in layout.bars):
        parts.append(_whisker(x, x + 12, y - 4))
        parts.append(_text(x + 18, y, "uncertainty band of the cumulative total", **NORMAL))
    return parts


def render_svg(layout: ChartLayout, title: str = "Compute of this run against legal thresholds") -> Markup:
    """The layout as an SVG element (a ``Markup`` string, safe to place in HTML)."""
    axis, axis_y = layout.axis, layout.axis_y
    parts = [f'<svg {_attrs(viewBox=f"0 0 {WIDTH} {layout.height:.0f}", width="100%", role="img", class_="chart")}>',
             f"<title>{escape(title)}</title>"]
    for line in layout.thresholds:
        colour = THRESHOLD_COLOUR if line.in_force else INACTIVE_COLOUR
        parts.append(_line(line.x, line.top_y - 10, line.x, line.bottom_y, stroke=colour, **DASHED))
        label_x = line.x + (4 if line.anchor == "start" else -4)
        for index, row in enumerate(line.rows):
            parts.append(_text(label_x, line.top_y + index * LABEL_ROW, row, font_size="11", fill=colour,
                               text_anchor=line.anchor))
    for bar in layout.bars:
        parts += _bar_svg(bar, axis)
    parts.append(_line(axis.left, axis_y, axis.right, axis_y, stroke="#222"))
    step = 1 if axis.high_exp - axis.low_exp <= 14 else 2
    for exponent in range(axis.low_exp, axis.high_exp + 1):
        x = axis.x(10.0 ** exponent)
        parts.append(_line(x, axis_y, x, axis_y + 5, stroke="#222"))
        if (exponent - axis.low_exp) % step == 0:
            parts.append(_text(x, axis_y + 17, f"1e{exponent}", font_size="10", fill="#222", text_anchor="middle"))
    parts.append(_text(axis.right, axis_y + 30, "FLOP, log scale", **SMALL, text_anchor="end"))
    parts += _legend_svg(layout)
    parts.append("</svg>")
    return Markup("".join(parts))


# --- from the signed predicate -------------------------------------------------------------

NOTIONS = (("cumulative", "total_flops"), ("parameter_update", "update_flops"),
           ("modification", "modification_flops"))


def _same_figure(a, b) -> bool:
    """Two known figures that are equal (two unknowns are not known to be equal)."""
    return _number(a) and _number(b) and a == b


def bars_from_compute(compute: dict, compared=()) -> list[Bar]:
    """One bar per distinct compute figure: cumulative always; parameter-update and modification
    compute where they differ from it, are unknown, or a threshold in ``compared`` (notions)
    tests them; the student's own training compute when a threshold compares it. A figure equal to the cumulative one shares its bar, and the label says so."""
    components = compute.get("components") or []
    cumulative = compute.get("total_flops")
    bars, merged = [], ["cumulative"]
    for notion, field in NOTIONS[1:]:
        total = compute.get(field)
        if _same_figure(total, cumulative):
            merged.append(notion)
        elif not (total is None and notion == "modification" and notion not in compared):
            bars.append(_bar(compute, components, (notion,), total))
    if "own_training" in compared:  # its components: OWN_TRAINING_COMPONENTS, teacher inference excluded
        own = [c for c in components if c.get("id") in OWN_TRAINING_COMPONENTS]
        flops = [c.get("flops") for c in own]
        total = sum(flops) if own and None not in flops else None
        bars.append(Bar(NOTION_LABELS["own_training"],
                        tuple(Segment(c.get("id", "?"), c.get("label") or c.get("id", "?"), c.get("flops"))
                              for c in own), total, None, ("own_training",)))
    return [_bar(compute, components, tuple(merged), cumulative)] + bars


def _bar(compute: dict, components, notions: tuple[str, ...], total) -> Bar:
    """The bar of ``notions[0]`` (its components stacked), titled by every notion it shows."""
    label = " = ".join([NOTION_LABELS[notions[0]]] + [NOTION_LABELS[n].lower() for n in notions[1:]])
    segments = tuple(Segment(c.get("id", "?"), c.get("label") or c.get("id", "?"), c.get("flops"))
                     for c in components if notions[0] in (c.get("counts_toward") or []))
    band = None
    if notions[0] == "cumulative":
        band = (compute.get("uncertainty_low"), compute.get("uncertainty_high"))
    return Bar(label, segments, total, band, notions)


def regime_notion(regime: dict) -> str | None:
    """The compute notion a regime result compares, from its ``fact`` (e.g. ``update_flops``)
    or, in predicates without one, its ``compute_notion``; None for a test not in FLOP."""
    if regime.get("unit", "FLOP") != "FLOP":
        return None
    fact = regime.get("fact")
    if fact is not None:
        return FACT_NOTIONS.get(fact)
    notion = regime.get("compute_notion") or "cumulative"
    return notion if notion in NOTION_LABELS else None


def thresholds_from_regimes(regimes: list[dict]) -> list[Threshold]:
    """FLOP thresholds only, each tagged with the figure its rule compares."""
    return [Threshold(r.get("name") or r.get("id", "?"), r["threshold_flops"], bool(r.get("in_force")),
                      regime_notion(r))
            for r in regimes if _positive(r.get("threshold_flops")) and regime_notion(r)]


def compute_chart(compute: dict, regimes: list[dict], rules_date: str | None = None) -> Markup:
    """The chart of an audit's ``compute`` against its ``regimes``, in force as of ``rules_date``
    (the audit's ``as_of``, the date the page's "Rules applied as of" names)."""
    thresholds = thresholds_from_regimes(regimes)
    bars = bars_from_compute(compute, {t.notion for t in thresholds})
    layout = layout_chart(bars, thresholds)
    return render_svg(replace(layout, rules_date=rules_date) if rules_date else layout)
