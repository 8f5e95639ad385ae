"""Small inline SVG line plots, rendered as text. Pure: points in, markup out.

Each data point is a `<circle class="{point_class}" data-target=... data-x=... data-y=...>`
so that a browser test (or a curious reader) can count and inspect them; an optional cap is
a dashed horizontal line (`class="cap"`), or a note when it is far above the data (drawing
it would flatten the line). The dashboard's JavaScript draws the same shapes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from html import escape

_PAD_LEFT, _PAD_RIGHT, _PAD_TOP, _PAD_BOTTOM = 56.0, 12.0, 22.0, 26.0
_CAP_IN_VIEW = 2.0  # draw the cap line when it is at most this many times the largest value


def _span(values: Sequence[float]) -> tuple[float, float]:
    low, high = min(values), max(values)
    if math.isclose(low, high):
        pad = abs(low) * 0.1 or 1.0
        return low - pad, high + pad
    return low, high


def line_plot(
    points: Sequence[tuple[float, float]],
    *,
    target: str,
    title: str,
    point_class: str = "point",
    cap: float | None = None,
    y_format: Callable[[float], str] = lambda v: f"{v:.3g}",
    x_format: Callable[[float], str] = lambda v: f"{v:g}",
    width: int = 480,
    height: int = 200,
) -> str:
    """An SVG plot of `points` (x, y) joined by a line, with min/max labels on both axes."""
    attr_target = escape(target, quote=True)
    head = _head(attr_target, point_class, title, width, height)
    if not points:
        return (
            f'{head}<text class="empty" x="{width / 2}" y="{height / 2}" '
            'text-anchor="middle">no data yet</text></svg>'
        )
    xs = [float(x) for x, _ in points]
    ys = [float(y) for _, y in points]
    cap_drawn = cap is not None and math.isfinite(cap) and cap <= _CAP_IN_VIEW * max(ys)
    x_low, x_high = _span(xs)
    y_low, y_high = _span([*ys, cap, 0.0] if cap_drawn and cap is not None else ys)
    inner_w = width - _PAD_LEFT - _PAD_RIGHT
    inner_h = height - _PAD_TOP - _PAD_BOTTOM

    def sx(x: float) -> float:
        return round(_PAD_LEFT + (x - x_low) / (x_high - x_low) * inner_w, 2)

    def sy(y: float) -> float:
        return round(_PAD_TOP + (1 - (y - y_low) / (y_high - y_low)) * inner_h, 2)

    bottom, right = height - _PAD_BOTTOM, width - _PAD_RIGHT
    parts = [
        head,
        f'<line class="axis" x1="{_PAD_LEFT}" y1="{bottom}" x2="{right}" y2="{bottom}"/>',
        f'<line class="axis" x1="{_PAD_LEFT}" y1="{_PAD_TOP}" x2="{_PAD_LEFT}" y2="{bottom}"/>',
        f'<text class="tick" x="{_PAD_LEFT - 4}" y="{_PAD_TOP + 4}" text-anchor="end">'
        f"{escape(y_format(y_high))}</text>",
        f'<text class="tick" x="{_PAD_LEFT - 4}" y="{bottom}" text-anchor="end">'
        f"{escape(y_format(y_low))}</text>",
    ]
    parts += [
        f'<text class="tick" x="{sx(x)}" y="{height - 8}" text-anchor="middle">'
        f"{escape(x_format(x))}</text>"
        for x in sorted({min(xs), max(xs)})
    ]
    parts += _cap_marks(cap, cap_drawn, right, sy, y_format)
    path = " ".join(f"{sx(x)},{sy(y)}" for x, y in points)
    parts.append(f'<polyline class="series" fill="none" points="{path}"/>')
    parts += [
        f'<circle class="{escape(point_class)}" data-target="{attr_target}" '
        f'data-x="{x:g}" data-y="{y:.6g}" cx="{sx(x)}" cy="{sy(y)}" r="3">'
        f"<title>{escape(x_format(x))}: {escape(y_format(y))}</title></circle>"
        for x, y in points
    ]
    parts.append("</svg>")
    return "".join(parts)


def _cap_marks(
    cap: float | None,
    drawn: bool,
    right: float,
    sy: Callable[[float], float],
    y_format: Callable[[float], str],
) -> list[str]:
    """The cap as a line across the plot, or a note when it lies far above the data."""
    if cap is None or not math.isfinite(cap):
        return []
    if not drawn:
        return [
            f'<text class="cap-note" x="{right}" y="14" text-anchor="end">'
            f"cap {escape(y_format(cap))} (off the chart)</text>"
        ]
    return [
        f'<line class="cap" x1="{_PAD_LEFT}" y1="{sy(cap)}" x2="{right}" y2="{sy(cap)}">'
        f"<title>cap {escape(y_format(cap))}</title></line>"
    ]


def _head(attr_target: str, point_class: str, title: str, width: int, height: int) -> str:
    """The plot's opening tag and its title."""
    return (
        f'<svg class="plot" data-target="{attr_target}" data-kind="{escape(point_class)}" '
        f'xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title, quote=True)}">'
        f'<text class="title" x="{_PAD_LEFT}" y="14">{escape(title)}</text>'
    )
