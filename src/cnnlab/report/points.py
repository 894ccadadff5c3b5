"""The numbers of each grid point: its runs per metric (mean, 95% t interval) and its report row.

Shared by the report (report.py), its tests of differences (significance.py) and its costs
(cost.py).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

from cnnlab.report import stats
from cnnlab.report.tables import point_label
from cnnlab.store import FINISHED, RunRecord
from cnnlab.study.studyfile import Experiment


@dataclass
class Stat:
    values: list[float]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values) if self.values else math.nan

    @property
    def std(self) -> float:
        return statistics.stdev(self.values) if len(self.values) > 1 else 0.0

    @property
    def half(self) -> float:
        """Half the width of the mean's 95% t interval (0 for one run: nothing to show)."""
        if self.n < 2:
            return 0.0
        low, high = stats.mean_interval(self.values)
        return (high - low) / 2

    def show(self, metric: str) -> str:
        if not self.values:
            return "–"
        if metric == "parameters" and len(set(self.values)) == 1:
            return f"{int(self.values[0]):,}"
        digits = {"fit_seconds": 1, "parameters": 0}.get(metric, 3)
        if self.n == 1:  # one run has no spread to show
            return f"{self.mean:.{digits}f} (1)"
        if metric == "fit_seconds":
            centre, low, high = self.time_interval()
            return f"{centre:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}] ({self.n})"
        low, high = stats.mean_interval(self.values)
        return f"{self.mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}] ({self.n})"

    def time_interval(self) -> tuple[float, float, float]:
        """A time's geometric mean and 95% interval from the log scale: never below zero."""
        if self.n < 2 or min(self.values) <= 0:
            return self.mean, self.mean, self.mean
        return stats.positive_interval(self.values)


def stat_of(records: list[RunRecord], metric: str) -> Stat:
    values = []
    for record in records:
        value = record.metrics.get(metric)
        if record.status in FINISHED and isinstance(value, int | float) and math.isfinite(value):
            values.append(float(value))
    return Stat(values)


def show_reference(value: Any, metric: str) -> str:
    if value is None:
        return "–"
    if metric == "parameters":
        return f"{int(value):,}"
    return f"{value:.1f}" if metric == "fit_seconds" else f"{value:.2f}"


def point_name(experiment: Experiment, point: Point) -> str:
    """A grid point's fields, or for an experiment without a grid, its fixed fields."""
    return point_label(point.values or experiment.fixed) or experiment.name


@dataclass
class Point:
    values: dict[str, Any]  # grid field -> value
    records: list[RunRecord]
    reference: dict[str, Any]


def grid_points(experiment: Experiment, records: list[RunRecord]) -> list[Point]:
    """The experiment's grid points in declaration order, each with its runs and report row."""
    mine = [r for r in records if experiment.name in r.experiments]
    points = []
    for place, _ in experiment.points():
        point = {name: place[name] for name in experiment.grid}
        runs = [
            r
            for r in mine
            if all(r.experiments[experiment.name].get(k) == v for k, v in point.items())
        ]
        runs.sort(key=lambda r: r.seed)
        reference = next(
            (
                row
                for row in experiment.reference
                if all(row.get(k) == v for k, v in point.items() if k in row)
            ),
            {},
        )
        points.append(Point(point, runs, reference))
    return points
