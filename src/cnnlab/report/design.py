"""Inference that fits a study's design: each experiment's runs as one model, its own question
asked first, then the pairwise answers with the procedures made for them.

Per experiment, the test accuracies of its grid points form a one-way layout (`stats.OneWay`):
the run-to-run variance is pooled over the points unless Bartlett's test says the spreads
clearly differ, in which case each point keeps its own (Welch-type procedures). The primary
question is a linear trend over an ordered grid (in log values where all are positive, else in
the grid's order), an F test (or Alexander–Govern's) over unordered variants, or the one
difference of a two-point experiment; Holm's step runs across the experiments' primary questions.
The pairwise answers come only behind an established primary (serial gatekeeping): Tukey–Kramer
over all pairs of an ordered grid (Games–Howell with unequal spreads), Dunnett against the
baseline for variants, each with simultaneous 95% intervals that agree with its verdicts.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import warnings
from dataclasses import dataclass

from scipy import stats as scipy_stats

from cnnlab.config import RunConfig
from cnnlab.report import stats
from cnnlab.report.points import Point, grid_points, stat_of
from cnnlab.report.stats import ALPHA, Estimate, OneWay
from cnnlab.store import RunRecord
from cnnlab.study.studyfile import VARIANT, Experiment, Study

SPREAD_ALPHA = 0.05  # Bartlett's p below which the points' spreads clearly differ
QUANTITY = "test_accuracy"  # what the experiments' questions are asked of


@dataclass
class Primary:
    """An experiment's own question: a trend, an omnibus test or its one difference."""

    kind: str  # "trend", "omnibus" or "difference"
    method: str  # the test, as the methods note names it
    statistic: float
    df: str  # as shown: "8", "3, 8", "4.1"
    p: float
    adjusted: float = math.nan  # Holm's p over the report's primary questions
    estimate: Estimate | None = None  # the trend's slope per unit, or the difference
    unit: str = ""  # what the trend's slope is per ("per doubling of n", "per grid step")

    @property
    def established(self) -> bool:
        return self.adjusted < ALPHA


@dataclass
class Pair:
    """One pairwise answer: mean(second) - mean(first), simultaneous within its family."""

    first: int
    second: int
    roles: list[str]  # "neighbours" and/or "baseline"
    estimate: Estimate
    gated: bool = False  # its experiment's primary question is established

    @property
    def established(self) -> bool:
        return self.gated and self.estimate.tested and self.estimate.p < ALPHA


@dataclass
class Analysis:
    """One experiment's points and the answers its design allows."""

    experiment: Experiment
    points: list[Point]
    baseline: int  # the point the others are held against
    why: str  # how the baseline point was chosen
    ordered: bool  # a grid with an order: a trend first, then Tukey–Kramer pairs
    model: OneWay | None  # None: fewer than two points with runs, or no run-to-run spread
    untestable: str = ""  # why there is no model ("one run per point", ...)
    spread_p: float | None = None  # Bartlett's p that the spreads differ
    primary: Primary | None = None
    pairs: list[Pair] = dataclasses.field(default_factory=list)
    pair_method: str = ""  # "Tukey–Kramer over all 6 pairs of 4 points", ...

    @property
    def measured(self) -> list[Point]:
        return [p for p in self.points if stat_of(p.records, QUANTITY).n]


def analyse(study: Study, experiment: Experiment, records: list[RunRecord]) -> Analysis:
    """An experiment's model, primary question and pairwise answers (ungated, unadjusted)."""
    points = grid_points(experiment, records)
    baseline, why = _baseline_point(study, experiment, points)
    ordered = (
        len(experiment.grid) == 1
        and VARIANT not in experiment.grid
        and all(
            isinstance(v, int | float) and not isinstance(v, bool)
            for p in points
            for v in p.values.values()
        )
    )
    analysis = Analysis(experiment, points, baseline, why, ordered, None)
    samples = [tuple(stat_of(p.records, QUANTITY).values) for p in points]
    if len(points) < 2:
        analysis.untestable = "a single point: nothing to compare"
    elif any(not s for s in samples):
        analysis.untestable = "a point without a finished run"
    elif all(len(s) < 2 for s in samples):
        analysis.untestable = "one run per point: no run-to-run spread to test against"
    elif sum(len(s) for s in samples) - len(samples) < 2:
        analysis.untestable = "too few repeated runs to estimate the run-to-run spread"
    if analysis.untestable:
        return analysis
    analysis.spread_p = stats.spreads_differ(samples)
    equal = analysis.spread_p is None or analysis.spread_p >= SPREAD_ALPHA
    if not equal and any(len(s) < 2 for s in samples):
        equal = True
    analysis.model = OneWay(samples, equal_variances=equal)
    analysis.primary = _primary(analysis)
    _pairs(analysis)
    return analysis


def gatekeep(analyses: list[Analysis]) -> int:
    """Holm's step over the experiments' primary questions, then each experiment's pairs open
    only behind its established primary. Returns how many primary questions were tested."""
    tested = [a.primary for a in analyses if a.primary is not None and not math.isnan(a.primary.p)]
    for primary, adjusted in zip(tested, stats.holm([p.p for p in tested]), strict=True):
        primary.adjusted = adjusted
    for analysis in analyses:
        gate = analysis.primary is not None and analysis.primary.established
        for pair in analysis.pairs:
            pair.gated = gate
    return len(tested)


def _scores(analysis: Analysis) -> tuple[list[float], str]:
    """The trend's x: log2 of the grid's values where all are positive numbers, else its order."""
    (field,) = analysis.experiment.grid
    values = [p.values[field] for p in analysis.points]
    if all(v > 0 for v in values) and max(values) / min(values) >= 4:
        name = "n" if field == "train_size" else field
        return [math.log2(v) for v in values], f"per doubling of {name}"
    return [float(i) for i in range(len(values))], "per grid step"


def _primary(analysis: Analysis) -> Primary:
    model = analysis.model
    count = len(analysis.points)
    if count == 2:
        estimate = model.contrast([-1.0, 1.0])
        method = "Student's t-test" if model.equal_variances else "Welch's t-test"
        return Primary("difference", method, estimate.statistic, _df(estimate.df), estimate.p,
                       estimate=estimate)  # fmt: skip
    if analysis.ordered:
        scores, unit = _scores(analysis)
        centre = statistics.fmean(scores)
        spread = sum((s - centre) ** 2 for s in scores)
        weights = [(s - centre) / spread for s in scores]  # the least-squares slope over means
        estimate = model.contrast(weights)
        kind = "pooled variance" if model.equal_variances else "Welch–Satterthwaite df"
        method = f"linear trend contrast ({unit.removeprefix('per ')}, {kind})"
        return Primary("trend", method, estimate.statistic, _df(estimate.df), estimate.p,
                       estimate=estimate, unit=unit)  # fmt: skip
    return _omnibus(model)


def _omnibus(model: OneWay) -> Primary:
    samples = model.samples
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        if model.equal_variances:
            if model.pooled_variance == 0:
                p = math.nan if len(set(model.means)) == 1 else 0.0
                return Primary("omnibus", "one-way ANOVA F test", math.inf, "–", p)
            result = scipy_stats.f_oneway(*samples)
            df = f"{len(samples) - 1}, {model.error_df}"
            return Primary("omnibus", "one-way ANOVA F test", float(result.statistic), df,
                           float(result.pvalue))  # fmt: skip
        if all(v > 0 for v in model.variances):
            result = scipy_stats.alexandergovern(*samples)
            return Primary("omnibus", "Alexander–Govern test (unequal spreads)",
                           float(result.statistic), "–", float(result.pvalue))  # fmt: skip
    # A point without spread: the largest Games–Howell difference is the omnibus test.
    count = len(samples)
    pairs = [model.pair(i, j, count) for i in range(count) for j in range(i + 1, count)]
    tested = [e for e in pairs if e.tested]
    if not tested:
        return Primary("omnibus", "Games–Howell range test", math.nan, "–", math.nan)
    best = min(tested, key=lambda e: e.p)
    return Primary("omnibus", "Games–Howell range test (unequal spreads)", best.statistic,
                   _df(best.df), best.p)  # fmt: skip


def _pairs(analysis: Analysis) -> None:
    """Tukey–Kramer (Games–Howell) pairs of an ordered grid, Dunnett against the baseline for
    variants; a two-point experiment's one pair is its primary question."""
    model, count, baseline = analysis.model, len(analysis.points), analysis.baseline
    wanted: dict[tuple[int, int], list[str]] = {}
    for index in range(1, count if analysis.ordered else 0):
        wanted.setdefault((index - 1, index), []).append("neighbours")
    for index in range(count):
        if index != baseline:
            wanted.setdefault(tuple(sorted((baseline, index))), []).append("baseline")
    if count == 2:
        analysis.pair_method = "the experiment's one difference (its primary question)"
        (first, second), roles = next(iter(wanted.items()))
        analysis.pairs = [Pair(first, second, roles, analysis.primary.estimate)]
        return
    if analysis.ordered or not model.equal_variances:
        name = "Tukey–Kramer" if model.equal_variances else "Games–Howell"
        analysis.pair_method = f"{name}, simultaneous over all {count * (count - 1) // 2} pairs"
        analysis.pairs = [
            Pair(first, second, roles, model.pair(first, second, count))
            for (first, second), roles in wanted.items()
        ]
        return
    analysis.pair_method = f"Dunnett against the baseline, simultaneous over {count - 1}"
    against = stats.dunnett(model.samples, baseline)
    for (first, second), roles in wanted.items():
        estimate = against[second if first == baseline else first]
        if first != baseline:  # the pair reads first → second; Dunnett's is other − baseline
            estimate = dataclasses.replace(
                estimate, estimate=-estimate.estimate, low=-estimate.high, high=-estimate.low
            )
        analysis.pairs.append(Pair(first, second, roles, estimate))


def _df(df: float) -> str:
    if math.isnan(df):
        return "–"
    return f"{df:.0f}" if float(df).is_integer() else f"{df:.1f}"


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
