"""Plots as inline SVG strings: a report stays one self-contained HTML file, with no plotting
library to install and nothing fetched when it is opened."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f")
WIDTH, HEIGHT, LEFT, RIGHT, TOP, BOTTOM = 560, 320, 52, 150, 16, 44


def _frame(x_label: str, y_label: str, x_ticks: Sequence[tuple[float, str]], sx, sy) -> list[str]:
    parts = [f'<rect x="{LEFT}" y="{TOP}" width="{WIDTH - LEFT - RIGHT}" height="{HEIGHT - TOP - BOTTOM}" '
             'fill="none" stroke="#999"/>']
    for value in (0, 0.2, 0.4, 0.6, 0.8, 1.0):
        y = sy(value)
        parts.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>'
                     f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11">{value:.1f}</text>')
    for value, label in x_ticks:
        x = sx(value)
        parts.append(f'<text x="{x:.1f}" y="{HEIGHT - BOTTOM + 16}" text-anchor="middle" font-size="11">'
                     f'{escape(label)}</text>')
    parts.append(f'<text x="{(LEFT + WIDTH - RIGHT) / 2}" y="{HEIGHT - 8}" text-anchor="middle" font-size="12">'
                 f'{escape(x_label)}</text>')
    parts.append(f'<text x="14" y="{(TOP + HEIGHT - BOTTOM) / 2}" text-anchor="middle" font-size="12" '
                 f'transform="rotate(-90 14 {(TOP + HEIGHT - BOTTOM) / 2})">{escape(y_label)}</text>')
    return parts


def _svg(parts: Sequence[str], title: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" role="img" '
            f'aria-label="{escape(title)}" font-family="sans-serif">' + "".join(parts) + "</svg>")


def line_chart(series: Mapping[str, Sequence[Mapping[str, float]]], *, x_label: str, y_label: str, title: str) -> str:
    """Lines of ``{"x", "y", "low", "high"}`` points (the band between low and high shaded), on a
    log-spaced x axis when it spans more than a factor 4 (pool sizes 10..100)."""
    import math

    xs = sorted({p["x"] for points in series.values() for p in points})
    if not xs:
        return _svg(_frame(x_label, y_label, [], lambda v: LEFT, lambda v: TOP), title)
    log = xs[0] > 0 and xs[-1] / xs[0] > 4
    f = math.log if log else float
    lo, hi = f(xs[0]), f(xs[-1])

    def sx(v: float) -> float:
        return LEFT + 10 + (f(v) - lo) / ((hi - lo) or 1) * (WIDTH - LEFT - RIGHT - 20)

    def sy(v: float) -> float:
        return TOP + (1 - v) * (HEIGHT - TOP - BOTTOM)

    parts = _frame(x_label, y_label, [(x, f"{x:g}") for x in xs], sx, sy)
    for n, (name, points) in enumerate(series.items()):
        color = PALETTE[n % len(PALETTE)]
        points = sorted(points, key=lambda p: p["x"])
        band = [(sx(p["x"]), sy(p.get("high", p["y"]))) for p in points] + \
               [(sx(p["x"]), sy(p.get("low", p["y"]))) for p in reversed(points)]
        parts.append(f'<polygon points="{" ".join(f"{x:.1f},{y:.1f}" for x, y in band)}" fill="{color}" '
                     'fill-opacity="0.12" stroke="none"/>')
        line = [(sx(p["x"]), sy(p["y"])) for p in points]
        parts.append(f'<polyline points="{" ".join(f"{x:.1f},{y:.1f}" for x, y in line)}" '
                     f'fill="none" stroke="{color}" stroke-width="2"/>')
        parts.extend(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{color}"/>' for x, y in line)
        y = TOP + 14 + 18 * n
        parts.append(f'<line x1="{WIDTH - RIGHT + 10}" x2="{WIDTH - RIGHT + 28}" y1="{y - 4}" y2="{y - 4}" '
                     f'stroke="{color}" stroke-width="2"/><text x="{WIDTH - RIGHT + 32}" y="{y}" font-size="11">'
                     f'{escape(name)}</text>')
    return _svg(parts, title)


def reliability_chart(bins: Sequence[Mapping[str, float]], *, title: str,
                      calibrated: Sequence[Mapping[str, float]] = ()) -> str:
    """Accuracy per confidence bin (bars: raw scores, outlined bars: calibrated) against the
    diagonal of perfect calibration."""
    def sx(v: float) -> float:
        return LEFT + v * (WIDTH - LEFT - RIGHT)

    def sy(v: float) -> float:
        return TOP + (1 - v) * (HEIGHT - TOP - BOTTOM)

    parts = _frame("confidence", "accuracy", [(v / 5, f"{v / 5:.1f}") for v in range(6)], sx, sy)
    for series, style in ((bins, f'fill="{PALETTE[0]}" fill-opacity="0.6"'),
                          (calibrated, f'fill="none" stroke="{PALETTE[1]}" stroke-width="2"')):
        for b in series:
            if b["count"]:
                x0, x1 = sx(b["low"]) + 2, sx(b["high"]) - 2
                parts.append(f'<rect x="{x0:.1f}" y="{sy(b["accuracy"]):.1f}" width="{x1 - x0:.1f}" '
                             f'height="{sy(0) - sy(b["accuracy"]):.1f}" {style}/>')
    parts.append(f'<line x1="{sx(0)}" y1="{sy(0)}" x2="{sx(1)}" y2="{sy(1)}" stroke="#333" stroke-dasharray="4 3"/>')
    legend = [("raw", f'fill="{PALETTE[0]}" fill-opacity="0.6"')]
    if calibrated:
        legend.append(("calibrated", f'fill="none" stroke="{PALETTE[1]}" stroke-width="2"'))
    for n, (name, style) in enumerate(legend):
        y = TOP + 14 + 18 * n
        parts.append(f'<rect x="{WIDTH - RIGHT + 10}" y="{y - 10}" width="14" height="10" {style}/>'
                     f'<text x="{WIDTH - RIGHT + 30}" y="{y}" font-size="11">{name}</text>')
    return _svg(parts, title)
