"""Sync failures over time as a bar chart drawn server-side (inline SVG, no script)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from services.console.fmt import parse_time

WIDTH, HEIGHT, LEFT, BOTTOM, TOP = 640, 200, 36, 28, 12


@dataclass(frozen=True)
class Bar:
    label: str
    start: datetime
    count: int
    x: float
    y: float
    width: float
    height: float


@dataclass(frozen=True)
class Chart:
    bars: list[Bar]
    peak: int
    total: int
    width: int = WIDTH
    height: int = HEIGHT
    left: int = LEFT
    bottom: int = BOTTOM
    top: int = TOP

    @property
    def baseline(self) -> int:
        return self.height - self.bottom

    @property
    def ticks(self) -> list[tuple[int, float]]:
        """Y-axis labels: 0, half and the peak (distinct whole numbers)."""
        values = sorted({0, self.peak // 2, self.peak})
        plot = self.baseline - self.top
        return [(v, self.baseline - plot * v / max(self.peak, 1)) for v in values]

    def show_label(self, index: int) -> bool:
        step = max(1, len(self.bars) // 8)
        return index % step == 0


def failures_chart(events: list[dict[str, Any]], days: int, now: datetime | None = None) -> Chart:
    """Count the events (``time`` of each) in hourly buckets for one day, daily otherwise."""
    now = (now or datetime.now(UTC)).astimezone(UTC)
    if days <= 1:
        size, count = timedelta(hours=1), 24
        end = now.replace(minute=0, second=0, microsecond=0) + size
        fmt = "%H:00"
    else:
        size, count = timedelta(days=1), days
        end = now.replace(hour=0, minute=0, second=0, microsecond=0) + size
        fmt = "%d %b"
    start = end - size * count
    counts = [0] * count
    for e in events:
        at = parse_time(e.get("time"))
        if at is None or not start <= at < end:
            continue
        counts[int((at - start) / size)] += 1
    peak = max(counts) if counts else 0
    plot_w = WIDTH - LEFT - 8
    plot_h = HEIGHT - BOTTOM - TOP
    slot = plot_w / count
    bars = []
    for i, n in enumerate(counts):
        h = plot_h * n / peak if peak else 0.0
        begin = start + size * i
        bars.append(
            Bar(
                label=begin.strftime(fmt),
                start=begin,
                count=n,
                x=round(LEFT + i * slot + slot * 0.15, 1),
                y=round(HEIGHT - BOTTOM - h, 1),
                width=round(slot * 0.7, 1),
                height=round(h, 1),
            )
        )
    return Chart(bars=bars, peak=peak, total=sum(counts))
