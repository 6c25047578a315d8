"""Usage charts as data for server-rendered SVG: no plotting library, no script, no external service.

:func:`columns` (one column per day) and :func:`bars` (one bar per model or principal) give each shape's
coordinates and its label; the template draws them as ``<rect>`` and ``<text>`` with a ``<title>`` for each
(what a screen reader and a hover read), and a table beside each chart carries the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from ..store import UsageTotal

WIDTH = 640
HEIGHT = 200
BAR_ROW = 24
LABEL_W = 220
MAX_BARS = 20


@dataclass(frozen=True)
class Shape:
    x: float
    y: float
    width: float
    height: float
    label: str
    value: float
    text: str
    """The value as people read it (``$0.0123``)."""


@dataclass(frozen=True)
class Chart:
    title: str
    width: int
    height: int
    shapes: list[Shape]
    peak: float
    kind: str
    """``columns`` (days across) or ``bars`` (names down)."""


def _usd(value: float) -> str:
    return f"${value:.4f}" if value < 1 else f"${value:,.2f}"


def days(totals: list[UsageTotal], since: float, count: int) -> list[tuple[str, float]]:
    """Spend per UTC day from ``since`` on, ``count`` days, a day without usage as 0."""
    spent = {t.key: t.cost for t in totals}
    first = datetime.fromtimestamp(since, UTC).date()
    keys = [(first + timedelta(days=i + 1)).isoformat() for i in range(count)]
    return [(k, spent.get(k, 0.0)) for k in keys]


def columns(values: list[tuple[str, float]], title: str) -> Chart:
    """One column per value, left to right (days)."""
    peak = max((v for _, v in values), default=0.0) or 1.0
    step = WIDTH / max(1, len(values))
    shapes = []
    for i, (label, value) in enumerate(values):
        height = round((HEIGHT - 20) * value / peak, 2)
        shapes.append(
            Shape(
                round(i * step + 1, 2),
                round(HEIGHT - 20 - height, 2),
                max(1.0, round(step - 2, 2)),
                height,
                label,
                value,
                _usd(value),
            )
        )
    return Chart(title, WIDTH, HEIGHT, shapes, peak if any(v for _, v in values) else 0.0, "columns")


def bars(values: list[tuple[str, float]], title: str) -> Chart:
    """One bar per value, largest first, at most :data:`MAX_BARS` (the table lists them all)."""
    ordered = sorted(values, key=lambda kv: -kv[1])[:MAX_BARS]
    peak = max((v for _, v in ordered), default=0.0) or 1.0
    room = WIDTH - LABEL_W - 90
    shapes = [
        Shape(LABEL_W, i * BAR_ROW + 4, max(1.0, round(room * value / peak, 2)), BAR_ROW - 8, label, value, _usd(value))
        for i, (label, value) in enumerate(ordered)
    ]
    return Chart(title, WIDTH, max(BAR_ROW, len(shapes) * BAR_ROW), shapes, peak, "bars")
