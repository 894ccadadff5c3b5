"""Is a difference real? Welch's t-tests on test accuracy between an experiment's grid points and
of each point against the most-frequent-class baseline, Holm-corrected over the whole report: the
experiment sections' tables and the comparisons.csv rows.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from dataclasses import dataclass
from typing import Any

from cnnlab.config import RunConfig
from cnnlab.report import stats
from cnnlab.report.document import Document
from cnnlab.report.points import Point, grid_points, point_name, stat_of
from cnnlab.report.stats import ALPHA, WelchResult, welch_t_test
from cnnlab.report.tables import FIELD_LABELS, show_value
from cnnlab.store import RunRecord
from cnnlab.study.studyfile import VARIANT, Experiment, Study

COLLAPSE_MARGIN = 0.02  # a point must beat the most-frequent-class accuracy by this much to learn


@dataclass
class _Comparison:
    first: Point
    second: Point
    roles: list[str]  # "neighbours" and/or "baseline"
    result: WelchResult | None  # None: a point with fewer than two runs
    interval: tuple[float, float] | None = None  # 95% interval of the difference
    effect: float = math.nan  # Hedges' g
    improvement: float = math.nan  # share of seed pairs where the second point beats the first
    adjusted: float = math.nan  # Holm's p over every comparison of the report

    @property
    def tested(self) -> bool:
        return self.result is not None and not math.isnan(self.result.p)

    @property
    def real(self) -> bool:
        return self.tested and self.adjusted < ALPHA


@dataclass
class _Chance:
    """A point against the most-frequent-class accuracy (a one-sample t-test)."""

    result: WelchResult
    adjusted: float = math.nan  # Holm's p, in the report's one family

    @property
    def tested(self) -> bool:
        return not math.isnan(self.result.p)


@dataclass
class Analysis:
    experiment: Experiment
    points: list[Point]
    baseline: int  # the point the others are held against
    why: str  # how the baseline point was chosen
    ordered: bool  # neighbours are compared too
    comparisons: list[_Comparison]
    chance: dict[int, _Chance]  # point index -> its test against chance_level
    chance_level: float  # the most-frequent-class test accuracy

    def above_chance(self, point: Point) -> bool:
        """Clearly above the most-frequent-class accuracy: by COLLAPSE_MARGIN, and by the test."""
        values = stat_of(point.records, "test_accuracy")
        if not values.n or values.mean <= self.chance_level + COLLAPSE_MARGIN:
            return False
        test = self.chance.get(self.points.index(point))
        if test is None:  # a single run: the margin is all there is
            return True
        return test.tested and test.adjusted < ALPHA and test.result.mean_difference > 0

    def chance_rule(self) -> str:
        if not self.chance:
            return f"one run per point: by the margin of {COLLAPSE_MARGIN:g} alone, untested"
        return (
            f"clearly above means by at least {COLLAPSE_MARGIN:g} and by a one-sample t-test,"
            f" Holm-corrected p < {ALPHA:g}"
        )


def analyse(study: Study, experiment: Experiment, records: list[RunRecord]) -> Analysis:
    """An experiment's points, its comparisons and its points against chance, uncorrected."""
    points = grid_points(experiment, records)
    baseline, why = _baseline_point(study, experiment, points)
    ordered = VARIANT not in experiment.grid  # variants (an ablation) have no order
    measured = [stat_of(p.records, "test_accuracy").n for p in points]
    comparisons = []
    if len(points) >= 2 and sum(n > 0 for n in measured) >= 2 and max(measured) >= 2:
        comparisons = _comparisons(points, baseline, ordered)
    chance_level = _baseline(points)
    chance = {
        index: _Chance(stats.one_sample_t_test(values, chance_level))
        for index, point in enumerate(points)
        if len(values := stat_of(point.records, "test_accuracy").values) > 1
    }
    return Analysis(experiment, points, baseline, why, ordered, comparisons, chance, chance_level)


def correct(analyses: list[Analysis]) -> int:
    """Holm's correction over every test of the report; returns how many tests it covered."""
    tests: list[_Comparison | _Chance] = [
        test
        for analysis in analyses
        for test in [*analysis.comparisons, *analysis.chance.values()]
        if test.tested
    ]
    for test, adjusted in zip(tests, stats.holm([t.result.p for t in tests]), strict=True):
        test.adjusted = adjusted
    return len(tests)


def _baseline_point(study: Study, experiment: Experiment, points: list[Point]) -> tuple[int, str]:
    """The point the others are held against, and why it was chosen.

    The point whose grid values are the study's defaults (the seed model's configuration), else
    the experiment's first point.
    """
    if VARIANT in experiment.grid:
        return 0, "the experiment's first variant"
    defaults = {field.name: field.default for field in dataclasses.fields(RunConfig)}
    defaults |= study.defaults | experiment.fixed
    for index, point in enumerate(points):
        if point.values and all(defaults.get(k) == v for k, v in point.values.items()):
            return index, "the point that matches the study's defaults"
    return 0, "the experiment's first point: no point matches the study's defaults"


def _baseline(points: list[Point]) -> float:
    """The most-frequent-class test accuracy the runs recorded (0.10 on CIFAR-10's test set)."""
    values = [
        r.metrics["baseline_accuracy"]
        for p in points
        for r in p.records
        if isinstance(r.metrics.get("baseline_accuracy"), int | float)
    ]
    return statistics.fmean(values) if values else 0.1


def _comparisons(points: list[Point], baseline: int, ordered: bool) -> list[_Comparison]:
    """Neighbouring points if `ordered`, then each point against the baseline; a pair once."""
    pairs: dict[tuple[int, int], list[str]] = {}
    for index in range(1, len(points) if ordered else 0):
        pairs.setdefault((index - 1, index), []).append("neighbours")
    for index in range(len(points)):
        if index != baseline:
            pairs.setdefault(tuple(sorted((baseline, index))), []).append("baseline")
    comparisons = []
    for (first, second), roles in pairs.items():
        a = stat_of(points[first].records, "test_accuracy").values
        b = stat_of(points[second].records, "test_accuracy").values
        comparison = _Comparison(points[first], points[second], roles, None)
        if len(a) > 1 and len(b) > 1:
            comparison.result = welch_t_test(a, b)
            comparison.interval = stats.difference_interval(a, b)
            comparison.effect = stats.hedges_g(a, b)
            comparison.improvement = stats.probability_of_improvement(a, b)
        comparisons.append(comparison)
    return comparisons


TEST_COLUMNS = ("t", "df", "p", "Holm p", "verdict")


def _verdict(comparison: _Comparison) -> str:
    """A short verdict on Holm's p (the text above the table states the tests)."""
    result = comparison.result
    if result is None:
        return "one run: no test"
    if math.isnan(result.p):
        return "identical: no test"
    if not comparison.real:
        return "not distinguishable"
    return "**real** (no spread)" if math.isinf(result.t) else "**real**"


def _show_p(p: float) -> str:
    return "–" if math.isnan(p) else f"{p:.2g}"


def _show_number(value: float | None, form: str) -> str:
    return "–" if value is None or math.isnan(value) else format(value, form)


def significance_section(
    document: Document, analysis: Analysis, family: int, observations: list[str]
) -> None:
    """Welch's t-test on test accuracy between neighbouring points and against the baseline."""
    experiment, points = analysis.experiment, analysis.points
    measured = [p for p in points if stat_of(p.records, "test_accuracy").n]
    if len(points) < 2 or len(measured) < 2:
        return
    if not analysis.comparisons:
        document.paragraph(
            "Each point has a single run, so there is no run-to-run spread to measure and no"
            " statement is possible about which differences are real; run the study with"
            " `--repeats 3` or more."
        )
        return
    baseline, ordered = analysis.baseline, analysis.ordered
    document.paragraph(
        "Is a difference larger than the run-to-run noise? Welch's t-test (two-sided, unequal"
        " variances) on the test accuracy of the repeats, "
        + ("between neighbouring points and against" if ordered else "each point against")
        + f" the baseline **{point_name(experiment, points[baseline])}** ({analysis.why}). Each"
        " difference is the later point's mean minus the earlier one's, with its 95% Welch"
        " interval, Hedges' g (the difference in pooled standard deviations, small-sample"
        " corrected) and P(improve), the share of seed pairs in which the later point wins."
        f" A difference counts as **real** when its Holm-adjusted p is below {ALPHA:g}: Holm's"
        f" correction runs over all **{family} tests of this report** (every comparison of every"
        " experiment and each point against the most-frequent-class baseline), so the chance"
        f" that any truly equal pair is called real stays below {ALPHA:g}; with few repeats a"
        " small real difference can still go unseen."
    )
    if len(experiment.grid) == 1:  # the field names the column; the rows show its values
        (field,) = experiment.grid
        heading = FIELD_LABELS.get(field, field)

        def name(point: Point) -> str:
            return show_value(point.values[field])
    else:
        heading = "comparison"

        def name(point: Point) -> str:
            return point_name(experiment, point)

    rows = []
    for comparison in analysis.comparisons:
        result = comparison.result
        difference = "–"
        if result is not None:
            low, high = comparison.interval
            difference = f"{result.mean_difference:+.3f} [{low:+.3f}, {high:+.3f}]"
        rows.append(
            [
                f"{name(comparison.first)} → {name(comparison.second)}",
                ", ".join(comparison.roles),
                difference,
                _show_number(comparison.effect, ".2f"),
                _show_number(comparison.improvement, ".2f"),
                "–" if result is None or math.isnan(result.t) else f"{result.t:.2f}",
                "–" if result is None or math.isnan(result.df) else f"{result.df:.1f}",
                "–" if result is None else _show_p(result.p),
                _show_p(comparison.adjusted),
                _verdict(comparison),
            ]
        )
    document.table(
        [heading, "against", "difference [95% CI]", "Hedges' g", "P(improve)", *TEST_COLUMNS],
        rows,
    )
    tested = [c for c in analysis.comparisons if c.tested]
    real = [c for c in tested if c.real]
    if tested:
        which = "; ".join(
            f"{point_name(experiment, c.first)} → {point_name(experiment, c.second)}"
            f" ({c.result.mean_difference:+.3f} [{c.interval[0]:+.3f}, {c.interval[1]:+.3f}])"
            for c in real
        )
        observations.append(
            f"**{experiment.title}**: {len(real)} of {len(tested)} tested differences in test"
            " accuracy are larger than the run-to-run noise (Welch's t-test, Holm-corrected over"
            f" the report's {family} tests, p < {ALPHA:g})" + (f": {which}." if which else ".")
        )


COMPARISON_FIELDS = (
    "experiment", "first", "second", "against", "first_runs", "second_runs", "first_mean",
    "second_mean", "difference", "difference_low", "difference_high", "hedges_g",
    "p_improvement", "t", "df", "p", "holm_p", "tests_corrected", "verdict",
)  # fmt: skip


def comparison_rows(analysis: Analysis, family: int) -> list[dict[str, Any]]:
    """The analysis's comparisons and tests against chance as comparisons.csv rows."""

    def number(value: float | None) -> float | None:
        return None if value is None or not math.isfinite(value) else value

    def test_fields(result: WelchResult | None, adjusted: float) -> dict[str, Any]:
        return {
            "difference": number(result and result.mean_difference),
            "t": number(result and result.t),
            "df": number(result and result.df),
            "p": number(result and result.p),
            "holm_p": number(adjusted),
            "tests_corrected": family,
        }

    experiment, rows = analysis.experiment, []
    for comparison in analysis.comparisons:
        first = stat_of(comparison.first.records, "test_accuracy")
        second = stat_of(comparison.second.records, "test_accuracy")
        low, high = comparison.interval or (None, None)
        rows.append(
            {
                "experiment": experiment.name,
                "first": point_name(experiment, comparison.first),
                "second": point_name(experiment, comparison.second),
                "against": ", ".join(comparison.roles),
                "first_runs": first.n,
                "second_runs": second.n,
                "first_mean": number(first.mean),
                "second_mean": number(second.mean),
                "difference_low": low,
                "difference_high": high,
                "hedges_g": number(comparison.effect),
                "p_improvement": number(comparison.improvement),
                **test_fields(comparison.result, comparison.adjusted),
                "verdict": _verdict(comparison).replace("**", ""),
            }
        )
    for index, test in analysis.chance.items():
        point = analysis.points[index]
        values = stat_of(point.records, "test_accuracy")
        rows.append(
            {
                "experiment": experiment.name,
                "first": f"most-frequent-class baseline {analysis.chance_level:g}",
                "second": point_name(experiment, point),
                "against": "most-frequent-class baseline",
                "second_runs": values.n,
                "first_mean": analysis.chance_level,
                "second_mean": number(values.mean),
                **test_fields(test.result, test.adjusted),
                "verdict": "clearly above" if analysis.above_chance(point) else "not clearly above",
            }
        )
    return [{field: row.get(field) for field in COMPARISON_FIELDS} for row in rows]
