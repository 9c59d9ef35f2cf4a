"""Small statistics helpers: percentiles and min/median/max over repetitions."""

# Ranges are typeset with an en dash, as in the report.
# ruff: noqa: RUF001, RUF002

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    position = (len(ordered) - 1) * q / 100.0
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def median(values: Iterable[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return statistics.median(finite) if finite else math.nan


def spread(values: Iterable[float | None]) -> tuple[float, float, float]:
    """(min, median, max) of the repetitions' values, ignoring missing ones; NaNs if none."""
    finite = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not finite:
        return (math.nan, math.nan, math.nan)
    return (min(finite), statistics.median(finite), max(finite))


def fmt(value: float | None, digits: int = 1) -> str:
    if value is None or math.isnan(value):
        return "–"
    if math.isinf(value):
        return "∞"
    return f"{value:,.{digits}f}"


def fmt_spread(values: Iterable[float | None], digits: int = 1) -> str:
    """'median (min–max)', the way every repeated figure is shown in the report."""
    low, mid, high = spread(values)
    if math.isnan(mid):
        return "–"
    if fmt(low, digits) == fmt(high, digits):
        return fmt(mid, digits)
    return f"{fmt(mid, digits)} ({fmt(low, digits)}–{fmt(high, digits)})"
