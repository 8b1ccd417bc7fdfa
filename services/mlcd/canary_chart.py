"""Canary charts drawn on the server as SVG: each analysis check's values over time against its bounds,
and the traffic the candidate had at each step. Plain string building, no I/O; the page inserts the SVG
as it is (no script, every text escaped), so the charts work offline in a cluster.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from datetime import UTC, datetime
from xml.sax.saxutils import escape

from mlcd.store.rollouts import Measurement, Rollout

WIDTH = 720
PANEL_H = 130
TRAFFIC_H = 150
EMPTY_H = 24  # the line that says nothing was measured
LEFT, RIGHT, TOP = 64, 16, 28
PASS, FAIL, UNSURE, BOUND, INK, MUTED = "#1a7f37", "#cf222e", "#8c959f", "#bf8700", "#1f2328", "#57606a"


def svg(rollout: Rollout, measured: Sequence[Measurement]) -> str:
    """The rollout's chart: a panel per check (oldest check first), then the traffic split per step."""
    checks = list(dict.fromkeys(m.check for m in measured))
    panels = PANEL_H * len(checks) if checks else EMPTY_H
    height = TOP + panels + TRAFFIC_H + 8
    title = f"{rollout.model} version {rollout.version}: canary analysis and traffic per step"
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {height}" role="img" '
        f'aria-label="{_attr(title)}" class="canary-chart" data-rollout="{rollout.id}" '
        'font-family="system-ui, sans-serif" font-size="12">',
        f"<title>{escape(title)}</title>",
        f'<text x="{LEFT}" y="16" font-weight="600" fill="{INK}">{escape(_heading(rollout))}</text>',
    ]
    start, end = _span(rollout, measured)
    for index, check in enumerate(checks):
        top = TOP + index * PANEL_H
        parts.append(_check_panel(check, [m for m in measured if m.check == check], top, start, end))
    if not checks:
        parts.append(f'<text x="{LEFT}" y="{TOP + 14}" fill="{MUTED}">no analysis measured yet</text>')
    parts.append(_traffic_panel(rollout, measured, TOP + panels))
    parts.append("</svg>")
    return "".join(parts)


def _heading(rollout: Rollout) -> str:
    was = f" (stable {rollout.previous_version})" if rollout.previous_version else ""
    step = f"step {rollout.step_index + 1} of {len(rollout.steps)}"
    return f"version {rollout.version}{was}: {rollout.state}, {step}"


def _span(rollout: Rollout, measured: Sequence[Measurement]) -> tuple[float, float]:
    times = [m.measured_at.timestamp() for m in measured if m.measured_at is not None]
    start = min([rollout.created_at.timestamp(), *times])
    end = max([rollout.updated_at.timestamp(), *times])
    return start, end if end > start else start + 1.0


def _check_panel(check: str, points: list[Measurement], top: float, start: float, end: float) -> str:
    inner_top, inner_h = top + 18, PANEL_H - 46
    plot_w = WIDTH - LEFT - RIGHT
    bounds = [b for m in points for b in (m.min, m.max) if b is not None]
    values = [m.value for m in points if m.value is not None and math.isfinite(m.value)]
    low, high = _range([*values, *bounds])

    def x(moment: datetime | None) -> float:
        at = moment.timestamp() if moment is not None else end
        return LEFT + (at - start) / (end - start) * plot_w

    def y(value: float) -> float:
        return inner_top + inner_h - (value - low) / (high - low) * inner_h

    last = points[-1]
    limits = " ".join(
        part
        for part in (
            f"min {_num(last.min)}" if last.min is not None else "",
            f"max {_num(last.max)}" if last.max is not None else "",
        )
        if part
    )
    out = [
        f'<g class="check" data-check="{_attr(check)}">',
        f'<text x="{LEFT}" y="{top + 12}" font-weight="600" fill="{INK}">{escape(check)}</text>',
        f'<text x="{WIDTH - RIGHT}" y="{top + 12}" text-anchor="end" fill="{MUTED}">{escape(limits)}</text>',
        f'<rect x="{LEFT}" y="{inner_top}" width="{plot_w}" height="{inner_h}" '
        'fill="#f6f8fa" stroke="#d0d7de"/>',
        f'<text x="{LEFT - 6}" y="{inner_top + 4}" text-anchor="end" fill="{MUTED}">{_num(high)}</text>',
        f'<text x="{LEFT - 6}" y="{inner_top + inner_h}" text-anchor="end" fill="{MUTED}">{_num(low)}</text>',
    ]
    for name, bound in (("min", last.min), ("max", last.max)):
        if bound is not None:
            at = y(bound)
            out.append(
                f'<line class="threshold" data-bound="{name}" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{at:.1f}" '
                f'y2="{at:.1f}" stroke="{BOUND}" stroke-dasharray="5 4"/>'
            )
    for before, after in itertools.pairwise(points):
        if after.traffic_percent != before.traffic_percent or after.phase != before.phase:
            at = x(after.measured_at) - 3
            label = "guard" if after.phase == "guarding" else f"{after.traffic_percent}%"
            out.append(
                f'<line class="step-change" x1="{at:.1f}" x2="{at:.1f}" y1="{inner_top}" '
                f'y2="{inner_top + inner_h}" stroke="{MUTED}" stroke-dasharray="2 3"/>'
                f'<text x="{at + 3:.1f}" y="{inner_top + 11}" fill="{MUTED}">{escape(label)}</text>'
            )
    line = [(x(m.measured_at), y(m.value)) for m in points if m.value is not None and math.isfinite(m.value)]
    if len(line) > 1:
        path = " ".join(f"{px:.1f},{py:.1f}" for px, py in line)
        out.append(f'<polyline points="{path}" fill="none" stroke="{INK}" stroke-width="1.5"/>')
    for m in points:
        colour = PASS if m.passed else FAIL if m.passed is False else UNSURE
        shown = _num(m.value) if m.value is not None else "no data"
        verdict = "pass" if m.passed else "fail" if m.passed is False else "inconclusive"
        at_y = y(m.value) if m.value is not None and math.isfinite(m.value) else inner_top + inner_h
        out.append(
            f'<circle class="measurement {verdict}" cx="{x(m.measured_at):.1f}" cy="{at_y:.1f}" r="4" '
            f'fill="{colour}"><title>{escape(f"{check} = {shown} at {m.traffic_percent}% ({verdict})")}'
            "</title></circle>"
        )
    latest = points[-1]
    seen = _num(latest.value) if latest.value is not None else "no data"
    summary = f"{len(points)} measured; last {seen} at {latest.traffic_percent}%"
    span = f"{_clock(start)} to {_clock(end)} UTC"
    out.append(
        f'<text x="{LEFT}" y="{top + PANEL_H - 12}" fill="{MUTED}">{escape(summary)}</text>'
        f'<text x="{WIDTH - RIGHT}" y="{top + PANEL_H - 12}" text-anchor="end" fill="{MUTED}">'
        f"{span}</text></g>"
    )
    return "".join(out)


def _traffic_panel(rollout: Rollout, measured: Sequence[Measurement], top: float) -> str:
    """One bar per planned step: the candidate's share (reached steps filled) over the stable's."""
    inner_top, inner_h = top + 22, TRAFFIC_H - 52
    plot_w = WIDTH - LEFT - RIGHT
    slot = plot_w / max(1, len(rollout.steps))
    stable = rollout.previous_version or "stable"
    out = [
        f'<g class="traffic"><text x="{LEFT}" y="{top + 14}" font-weight="600" fill="{INK}">'
        f"traffic per step: version {escape(rollout.version)} / {escape(stable)}</text>"
    ]
    reached = rollout.step_index
    for index, percent in enumerate(rollout.steps):
        left = LEFT + index * slot + slot * 0.15
        width = slot * 0.7
        canary_h = inner_h * percent / 100
        done = index < reached or (index == reached and rollout.state != "failed")
        fill = "#0969da" if done else "none"
        stroke = "#0969da"
        out.append(
            f'<rect x="{left:.1f}" y="{inner_top}" width="{width:.1f}" height="{inner_h}" fill="#eaeef2" '
            'stroke="#d0d7de"/>'
        )
        out.append(
            f'<rect class="step{" reached" if done else ""}" data-percent="{percent}" x="{left:.1f}" '
            f'y="{inner_top + inner_h - canary_h:.1f}" width="{width:.1f}" height="{canary_h:.1f}" '
            f'fill="{fill}" stroke="{stroke}" stroke-dasharray="{"0" if done else "4 3"}"/>'
        )
        label = f"{percent}% / {100 - percent}%"
        count = sum(1 for m in measured if m.step_index == index and m.phase == "step")
        out.append(
            f'<text x="{left + width / 2:.1f}" y="{inner_top + inner_h + 14}" text-anchor="middle" '
            f'fill="{INK}">{escape(label)}</text>'
            f'<text x="{left + width / 2:.1f}" y="{inner_top + inner_h + 27}" text-anchor="middle" '
            f'fill="{MUTED}">{escape(f"step {index + 1}" + (f", {count} analyses" if count else ""))}</text>'
        )
    out.append("</g>")
    return "".join(out)


def _range(values: list[float]) -> tuple[float, float]:
    """The y range: every value and bound with a margin, never below 0 when nothing is negative."""
    if not values:
        return 0.0, 1.0
    low, high = min(values), max(values)
    pad = (high - low) * 0.1 if high != low else abs(high) * 0.1 or 1.0
    floor = 0.0 if low >= 0 else low - pad
    return max(floor, low - pad), high + pad


def _clock(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%H:%M:%S")


def _num(value: float | None) -> str:
    return "—" if value is None else f"{value:.4g}"


def _attr(text: str) -> str:
    return escape(text, {'"': "&quot;"})
