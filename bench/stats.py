"""Pure parts of the bench: summaries of repeated runs, percentiles, targets, the table."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any


def percentile(samples: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``samples`` by linear interpolation; NaN when empty."""
    if not samples:
        return math.nan
    ordered = sorted(samples)
    pos = (len(ordered) - 1) * q
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


@dataclass(frozen=True, slots=True)
class Summary:
    """The median of repeated runs of one figure, with its range."""

    median: float
    low: float
    high: float
    runs: tuple[float, ...]

    @classmethod
    def of(cls, runs: Iterable[float]) -> Summary:
        values = tuple(float(v) for v in runs)
        if not values:
            return cls(math.nan, math.nan, math.nan, ())
        return cls(statistics.median(values), min(values), max(values), values)

    def to_json(self) -> dict[str, Any]:
        return {"median": _finite(self.median), "min": _finite(self.low),
                "max": _finite(self.high), "runs": [_finite(v) for v in self.runs]}


def _finite(value: float) -> float | None:
    # JSON has no NaN: a figure that was not measured is null.
    return None if math.isnan(value) else round(value, 6)


@dataclass(frozen=True, slots=True)
class Target:
    """A bound a figure should meet: ``>=`` or ``<=`` ``limit``."""

    op: str
    limit: float

    def met(self, value: float) -> bool | None:
        if math.isnan(value):
            return None
        return value >= self.limit if self.op == ">=" else value <= self.limit

    def __str__(self) -> str:
        return f"{self.op} {_num(self.limit)}"


@dataclass(slots=True)
class Figure:
    """One row of the result table."""

    key: str
    label: str
    unit: str
    summary: Summary
    target: Target | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"label": self.label, "unit": self.unit, **self.summary.to_json()}
        if self.target is not None:
            out["target"] = str(self.target)
            out["met"] = self.target.met(self.summary.median)
        if self.note:
            out["note"] = self.note
        if self.extra:
            out["extra"] = self.extra
        return out


def _num(value: float) -> str:
    """A compact human number: 3 significant digits, thousands separated."""
    if math.isnan(value):
        return "-"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def format_table(figures: Sequence[Figure]) -> str:
    """A fixed-width table: figure, median, range, unit, target, verdict."""
    head = ("figure", "median", "range (min-max)", "unit", "target", "")
    rows = [head]
    for f in figures:
        s = f.summary
        rng = "-" if not s.runs else f"{_num(s.low)} - {_num(s.high)}"
        verdict = ""
        if f.target is not None:
            met = f.target.met(s.median)
            verdict = {True: "met", False: "NOT MET", None: "-"}[met]
        rows.append((f.label, _num(s.median), rng, f.unit,
                     str(f.target) if f.target else "", verdict))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = []
    for n, row in enumerate(rows):
        cells = [row[0].ljust(widths[0]), row[1].rjust(widths[1]), row[2].rjust(widths[2]),
                 row[3].ljust(widths[3]), row[4].ljust(widths[4]), row[5]]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths).rstrip())
    return "\n".join(lines)


def format_markdown(figures: Sequence[Figure]) -> str:
    """The same table as Markdown (for docs/benchmarks.md)."""
    lines = ["| figure | median | range | unit | target | |", "|---|---:|---:|---|---|---|"]
    for f in figures:
        s = f.summary
        rng = "-" if not s.runs else f"{_num(s.low)} - {_num(s.high)}"
        verdict = ""
        if f.target is not None:
            verdict = {True: "met", False: "**not met**", None: "-"}[f.target.met(s.median)]
        lines.append(f"| {f.label} | {_num(s.median)} | {rng} | {f.unit} | "
                     f"{f.target or ''} | {verdict} |")
    return "\n".join(lines)


def ratios(numerators: Sequence[float], denominators: Sequence[float]) -> list[float]:
    """Pairwise ratios of runs measured side by side (NaN where a denominator is 0)."""
    return [n / d if d else math.nan for n, d in zip(numerators, denominators, strict=True)]
