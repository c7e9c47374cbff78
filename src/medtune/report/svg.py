"""Inline SVG figures for report.html: interval rows, scatter with whiskers, line charts.

Plain strings, no plotting library: the page is one self-contained file, and a figure drawn
with a viewBox scales with the page from a 390 px phone to a wide screen. Labels arrive as
markup made by report.html (each number there carries the results.json path it came from);
only the axes' tick labels are made here, and they carry data-axis.
"""

from __future__ import annotations

import math
from html import escape

PALETTE = ("#3b6ea8", "#e0883b", "#4c9a5b", "#b8474f", "#7f63b8", "#8c6d46", "#d16aa8", "#5f6b7a")
INK, GRID, MUTED = "#222", "#e3e3e3", "#777"


def color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def linear_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """Ticks at 1, 2, 2.5 or 5 x 10^k steps covering [lo, hi], about n of them."""
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw * (1 - 1e-9))
    first, last = math.ceil(lo / step - 1e-9), math.floor(hi / step + 1e-9)
    return [round(k * step, 12) for k in range(first, last + 1)]


def log_ticks(lo: float, hi: float) -> list[float]:
    """Decades in [lo, hi]; with fewer than two, the 2 and 5 multiples join them, then more: an
    axis spanning 2.5x or more (Scale's least) has two numbers on it (neighbours at most 1.5x apart)."""
    for mantissas in ((1,), (1, 2, 5), (1, 2, 3, 5), (1, 1.5, 2, 3, 4, 5, 7)):
        ticks = [
            m * 10.0**e
            for e in range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1)
            for m in mantissas
            if lo * (1 - 1e-9) <= m * 10.0**e <= hi * (1 + 1e-9)
        ]
        if len(ticks) >= 2:
            return ticks
    return ticks


def tick_text(v: float, ticks: list[float], log: bool) -> str:
    if log:
        if 1e-2 <= v < 1e4:
            return f"{v:g}"
        mantissa, exponent = f"{v:.1e}".split("e")  # 1.5e-05 -> 1.5e-5, 1.0e-05 -> 1e-5
        return f"{mantissa.removesuffix('.0')}e{int(exponent)}"
    step = min((b - a for a, b in zip(ticks, ticks[1:])), default=1.0)
    decimals = max(0, -math.floor(math.log10(step) + 1e-9)) + (1 if f"{step:.1e}".startswith("2.5") else 0)
    return f"{v:.{decimals}f}"


class Scale:
    """Data to pixels on one axis; `log` for a log axis (positive values only)."""

    def __init__(self, values: list[float], a: float, b: float, log: bool = False, pad: float = 0.06):
        vals = [v for v in values if finite(v) and (v > 0 or not log)] or [1.0]
        lo, hi = min(vals), max(vals)
        self.log = log
        if log:
            lo, hi = math.log10(lo), math.log10(hi)
            if hi - lo < 0.4:  # a narrow range still spans about 2.5x, so some tick is in view
                mid = (lo + hi) / 2
                lo, hi = mid - 0.2, mid + 0.2
        elif hi == lo:
            lo, hi = lo - (abs(lo) or 1) * 0.1, hi + (abs(hi) or 1) * 0.1
        span = hi - lo
        self.lo, self.hi = lo - pad * span, hi + pad * span
        self.a, self.b = a, b

    def __call__(self, v: float) -> float:
        t = math.log10(v) if self.log else v
        return self.a + (t - self.lo) / (self.hi - self.lo) * (self.b - self.a)

    def ticks(self, n: int = 5) -> list[float]:
        if self.log:
            return log_ticks(10**self.lo, 10**self.hi)
        return linear_ticks(self.lo, self.hi, n)

    def clamp(self, v: float) -> float:
        return min(max(v, self.domain()[0]), self.domain()[1])

    def domain(self) -> tuple[float, float]:
        return (10**self.lo, 10**self.hi) if self.log else (self.lo, self.hi)


def _svg(width: int, height: int, title: str, body: list[str]) -> str:
    return (
        f'<svg viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}" '
        f'xmlns="http://www.w3.org/2000/svg" font-size="13">' + "".join(body) + "</svg>"
    )


def _axes(x: Scale | None, y: Scale | None, box: tuple, xlabel: str, ylabel: str) -> list[str]:
    """Grid lines and tick labels (data-axis) of a plot area box = (left, top, right, bottom)."""
    left, top, right, bottom = box
    out = [f'<rect x="{left}" y="{top}" width="{right - left}" height="{bottom - top}" fill="none" stroke="{GRID}"/>']
    if x is not None:
        ticks = x.ticks()
        for t in ticks:
            px = x(t)
            if left - 0.5 <= px <= right + 0.5:
                out.append(f'<line x1="{px:.1f}" x2="{px:.1f}" y1="{top}" y2="{bottom}" stroke="{GRID}"/>')
                out.append(
                    f'<text x="{px:.1f}" y="{bottom + 16}" text-anchor="middle" fill="{MUTED}" data-axis="x">'
                    f"{tick_text(t, ticks, x.log)}</text>"
                )
        out.append(f'<text x="{(left + right) / 2:.1f}" y="{bottom + 34}" text-anchor="middle">{xlabel}</text>')
    if y is not None:
        ticks = y.ticks()
        for t in ticks:
            py = y(t)
            if top - 0.5 <= py <= bottom + 0.5:
                out.append(f'<line x1="{left}" x2="{right}" y1="{py:.1f}" y2="{py:.1f}" stroke="{GRID}"/>')
                out.append(
                    f'<text x="{left - 6}" y="{py + 4:.1f}" text-anchor="end" fill="{MUTED}" data-axis="y">'
                    f"{tick_text(t, ticks, y.log)}</text>"
                )
        out.append(
            f'<text transform="translate(14 {(top + bottom) / 2:.1f}) rotate(-90)" text-anchor="middle">{ylabel}</text>'
        )
    return out


def _whisker(x1: float, y1: float, x2: float, y2: float, c: str, cap: float = 5) -> str:
    """A line from (x1, y1) to (x2, y2) with caps across it at both ends."""
    parts = [f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="{c}" stroke-width="2"/>']
    for px, py in ((x1, y1), (x2, y2)):
        if x1 == x2:
            parts.append(f'<line x1="{px - cap:.1f}" x2="{px + cap:.1f}" y1="{py:.1f}" y2="{py:.1f}" stroke="{c}"/>')
        else:
            parts.append(f'<line x1="{px:.1f}" x2="{px:.1f}" y1="{py - cap:.1f}" y2="{py + cap:.1f}" stroke="{c}"/>')
    return "".join(parts)


def interval_rows(rows: list[dict], *, xlabel: str, title: str, width: int = 420) -> str:
    """One row per model: its label, a dot at the value and a line across its interval.
    rows: {label (markup), value, lo, hi, color}; a missing end draws no line on that side."""
    left, right, row_h = 110, width - 16, 30
    top, bottom = 8, 8 + row_h * len(rows)
    x = Scale([v for r in rows for v in (r["value"], r["lo"], r["hi"])], left, right)
    body = _axes(x, None, (left, top, right, bottom), xlabel, "")
    for i, r in enumerate(rows):
        cy = top + row_h * (i + 0.5)
        body.append(f'<text x="{left - 8}" y="{cy + 4:.1f}" text-anchor="end">{r["label"]}</text>')
        if not finite(r["value"]):
            continue
        v = x(r["value"])
        lo = x(x.clamp(r["lo"])) if finite(r["lo"]) else v
        hi = x(x.clamp(r["hi"])) if finite(r["hi"]) else v
        body.append(_whisker(lo, cy, hi, cy, r["color"]))
        body.append(f'<circle cx="{v:.1f}" cy="{cy:.1f}" r="5" fill="{r["color"]}"/>')
    return _svg(width, bottom + 44, title, body)


def scatter(points: list[dict], *, xlabel: str, ylabel: str, title: str, log_x: bool, hline=None, width=420) -> str:
    """Points with vertical interval whiskers, named beside them; those on the front filled and
    joined by a dashed line, the others hollow. points: {label, x, y, lo, hi, color, front};
    hline: (y, label markup), e.g. the base model."""
    left, top, right, bottom = 64, 12, width - 12, 250
    pts = [p for p in points if finite(p["x"]) and finite(p["y"])]
    ys = [v for p in pts for v in (p["y"], p["lo"], p["hi"])] + ([hline[0]] if hline else [])
    x = Scale([p["x"] for p in pts], left, right, log=log_x, pad=0.12)
    y = Scale(ys, bottom, top)
    body = _axes(x, y, (left, top, right, bottom), xlabel, ylabel)
    if hline and finite(hline[0]):
        py = y(hline[0])
        body.append(
            f'<line x1="{left}" x2="{right}" y1="{py:.1f}" y2="{py:.1f}" stroke="{MUTED}" stroke-dasharray="6 4"/>'
        )
        body.append(f'<text x="{right - 4}" y="{py - 5:.1f}" text-anchor="end" fill="{MUTED}">{hline[1]}</text>')
    front = sorted((p for p in pts if p["front"]), key=lambda p: p["x"])
    if len(front) > 1:
        path = " ".join(f"{x(p['x']):.1f},{y(p['y']):.1f}" for p in front)
        body.append(f'<polyline points="{path}" fill="none" stroke="{INK}" stroke-dasharray="3 3"/>')
    for p in pts:
        px, py = x(p["x"]), y(p["y"])
        lo = y(y.clamp(p["lo"])) if finite(p["lo"]) else py
        hi = y(y.clamp(p["hi"])) if finite(p["hi"]) else py
        body.append(_whisker(px, lo, px, hi, p["color"]))
        fill = p["color"] if p["front"] else "#fff"
        body.append(f'<circle cx="{px:.1f}" cy="{py:.1f}" r="6" fill="{fill}" stroke="{p["color"]}" stroke-width="2"/>')
        anchor, dx = ("end", -9) if px > (left + right) / 2 else ("start", 9)
        body.append(f'<text x="{px + dx:.1f}" y="{py - 8:.1f}" text-anchor="{anchor}">{p["label"]}</text>')
    return _svg(width, bottom + 44, title, body)


def lines(series: list[dict], *, xlabel: str, ylabel: str, title: str, log_x=False, vlines=(), width=480) -> str:
    """Line charts. series: {points [(x, y)], color, joined (bool), marker ('dot', 'ring', 'star'
    or None)}; vlines: x positions drawn dotted (a default learning rate). A y axis that some
    points reach far above the rest is cut (`clip_above`) and those points sit on the top edge
    as triangles."""
    left, top, right, bottom = 64, 12, width - 12, 230
    xs = [px for s in series for px, _ in s["points"]] + [v for v in vlines if finite(v)]
    ys = [py for s in series for _, py in s["points"] if finite(py)]
    cut = series[0].get("clip_above") if series else None
    if cut is not None and ys and max(ys) > min(ys) + cut:
        ys = [v for v in ys if v <= min(ys) + cut] + [min(ys) + cut]
    x = Scale(xs, left, right, log=log_x, pad=0.04 if not log_x else 0.12)
    y = Scale(ys, bottom, top)
    ceiling = y.domain()[1]
    body = _axes(x, y, (left, top, right, bottom), xlabel, ylabel)
    for v in vlines:
        if finite(v):
            body.append(
                f'<line x1="{x(v):.1f}" x2="{x(v):.1f}" y1="{top}" y2="{bottom}" stroke="{MUTED}" '
                'stroke-dasharray="2 3"/>'
            )
    for s in series:
        pts = [(px, py) for px, py in s["points"] if finite(px) and finite(py)]
        c = s["color"]
        if s.get("joined", True) and len(pts) > 1:
            path = " ".join(f"{x(px):.1f},{y(min(py, ceiling)):.1f}" for px, py in pts)
            dash = ' stroke-dasharray="5 3"' if s.get("dashed") else ""
            body.append(f'<polyline points="{path}" fill="none" stroke="{c}" stroke-width="1.6"{dash}/>')
        for px, py in pts if s.get("marker") else []:
            cx, cy = x(px), y(min(py, ceiling))
            if py > ceiling:
                tri = f"M{cx - 6:.1f},{cy + 5:.1f} L{cx + 6:.1f},{cy + 5:.1f} L{cx:.1f},{cy - 5:.1f} Z"
                body.append(f'<path d="{tri}" fill="{c}"/>')
            elif s["marker"] == "star":
                body.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="9" fill="none" stroke="{c}" stroke-width="2.5"/>')
            else:
                fill = c if s["marker"] == "dot" else "#fff"
                body.append(
                    f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="4" fill="{fill}" stroke="{c}" stroke-width="1.6"/>'
                )
    return _svg(width, bottom + 44, title, body)
