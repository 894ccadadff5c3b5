"""The report's claims: every sentence that states a difference, a trend, a cause, a collapse or
over-fitting is a `Claim` built here, with its quantity, source, samples, test, effect and
interval, and p before and after adjustment. A claim is written as established only when its
evidence passes; otherwise its sentence says what was measured and why nothing follows.

The report (report.md, report.html) renders its findings, observations and mechanism sentences
from these claims, and writes them all to claims.json.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from cnnlab.report import stats
from cnnlab.report.design import QUANTITY, Analysis
from cnnlab.report.points import Point, point_name, stat_of
from cnnlab.report.stats import ALPHA
from cnnlab.report.tables import FIELD_LABELS
from cnnlab.store import FINISHED

# Named minimum effects: a claim of this kind needs its effect beyond these, by a test.
# Accuracy this far above the most-frequent class's: a point learned when its mean is above
# chance + CHANCE_MARGIN by a test, collapsed when below it by a test; neither in between.
CHANCE_MARGIN = 0.02
TAIL_SHARE = 3  # over-fitting is read over the last third of the epochs (at least TAIL_EPOCHS)
TAIL_EPOCHS = 3


@dataclass
class Claim:
    """One sentence of the report and the evidence behind it."""

    id: str  # stable within a report: "sizes/trend", "l1/pair/0.0001-1", "l1/collapse/10"
    kind: str  # trend, omnibus, difference, pair, learned, collapse, over-fitting, mechanism...
    experiment: str | None  # the experiment's name, None for report-wide claims
    section: str  # the heading the claim belongs under (an experiment's title)
    statement: str  # the sentence when established
    otherwise: str  # the sentence when not: what was measured and why nothing follows
    quantity: str  # test_accuracy, val_data_loss slope, dense kernel Hoyer sparsity, ...
    source: str  # metrics, history, measurements.json, layer specs
    samples: list[dict[str, Any]] = field(default_factory=list)  # {point, n, mean}
    test: str | None = None  # None: a measurement, stated without a verdict
    effect: float | None = None
    interval: tuple[float, float] | None = None
    interval_kind: str = ""  # "simultaneous 95% (Tukey–Kramer)", ...
    p: float | None = None
    adjusted: float | None = None
    adjustment: str = ""  # how p was adjusted and over how many tests
    minimum_effect: float | None = None  # the named minimum effect tested against, if any
    established: bool = False
    strength: float = 0.0  # orders the findings: -log10 of the adjusted p
    moot: bool = False  # answered by another claim on the same runs (a point that learned
    # is not said to be "not shown to collapse"); kept in claims.json, not in the text

    @property
    def sentence(self) -> str:
        return self.statement if self.established else self.otherwise

    def as_json(self) -> dict[str, Any]:
        """The claim as strict JSON (no NaN or infinity)."""
        data = asdict(self)
        data["sentence"] = self.sentence
        return {key: _finite(value) for key, value in data.items()}


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value


def show_p(p: float | None) -> str:
    if p is None or math.isnan(p):
        return "–"
    return "≈ 0" if p == 0 else f"{p:.2g}"


def _samples(experiment, points: Iterable[Point]) -> list[dict[str, Any]]:
    rows = []
    for point in points:
        values = stat_of(point.records, QUANTITY)
        rows.append({"point": point_name(experiment, point), "n": values.n, "mean": values.mean})
    return rows


def strength(p: float | None) -> float:
    if p is None or math.isnan(p):
        return 0.0
    return 300.0 if p == 0 else -math.log10(p)


# --- the experiment's own question -------------------------------------------------------------


def design_claims(analysis: Analysis, primaries: int) -> list[Claim]:
    """The experiment's primary question and its pairwise answers, as claims."""
    experiment = analysis.experiment
    title = f"**{experiment.title}**"
    if analysis.model is None:
        if len(analysis.points) < 2 or not analysis.measured:
            return []
        return [
            Claim(
                f"{experiment.name}/design",
                "untestable",
                experiment.name,
                experiment.title,
                "",
                f"{title}: {analysis.untestable}; no difference in test accuracy is claimed"
                " (run the study with `--repeats 3` or more).",
                QUANTITY,
                "metrics",
                _samples(experiment, analysis.points),
            )
        ]
    return [_primary_claim(analysis, primaries), *_pair_claims(analysis)]


def _primary_claim(analysis: Analysis, primaries: int) -> Claim:
    experiment, primary = analysis.experiment, analysis.primary
    title = f"**{experiment.title}**"
    adjustment = f"Holm over the report's {primaries} primary questions"
    evidence = (
        f"{primary.method}; statistic {_show(primary.statistic)}, df {primary.df},"
        f" p = {show_p(primary.p)}, Holm p = {show_p(primary.adjusted)}; runs per point"
        f" {_counts(analysis)}"
    )
    estimate = primary.estimate
    effect = interval = None
    if primary.kind == "trend":
        (name,) = experiment.grid
        label = FIELD_LABELS.get(name, name)
        effect, interval = estimate.estimate, (estimate.low, estimate.high)
        slope = f"{effect:+.3f} {primary.unit} [{interval[0]:+.3f}, {interval[1]:+.3f}]"
        if primary.unit == "per grid step":  # the grid's order is no scale: a summary only
            slope += " (a linear summary over the grid's order; the pairs below say where)"
        way = "rises" if effect > 0 else "falls"
        statement = f"{title}: test accuracy {way} along {label}: {slope} ({evidence})."
        otherwise = (
            f"{title}: no trend in test accuracy along {name} is established: {slope} ({evidence})."
        )
    elif primary.kind == "difference":
        first, second = analysis.points
        effect, interval = estimate.estimate, (estimate.low, estimate.high)
        names = f"{point_name(experiment, first)} → {point_name(experiment, second)}"
        change = f"{effect:+.3f} [{interval[0]:+.3f}, {interval[1]:+.3f}]"
        statement = f"{title}: {names} changes test accuracy by {change} ({evidence})."
        otherwise = (
            f"{title}: {names} changes test accuracy by {change}; not established ({evidence})."
        )
    else:
        statement = f"{title}: the points' test accuracies differ ({evidence})."
        otherwise = f"{title}: no difference between the points is established ({evidence})."
    return Claim(
        f"{experiment.name}/{primary.kind}",
        primary.kind,
        experiment.name,
        experiment.title,
        statement,
        otherwise,
        QUANTITY,
        "metrics",
        _samples(experiment, analysis.points),
        primary.method,
        effect,
        interval,
        "95%, per question" if interval else "",
        primary.p,
        primary.adjusted,
        adjustment,
        established=primary.established,
        strength=strength(primary.adjusted),
    )


def _pair_claims(analysis: Analysis) -> list[Claim]:
    experiment = analysis.experiment
    if len(analysis.points) == 2:
        return []  # the one difference is the primary claim
    gate = "" if analysis.primary.established else "; its experiment's own question is not"
    claims = []
    for pair in analysis.pairs:
        first, second = analysis.points[pair.first], analysis.points[pair.second]
        names = f"{point_name(experiment, first)} → {point_name(experiment, second)}"
        estimate = pair.estimate
        change = f"{estimate.estimate:+.3f} [{estimate.low:+.3f}, {estimate.high:+.3f}]"
        runs = " and ".join(str(stat_of(p.records, QUANTITY).n) for p in (first, second))
        evidence = f"{analysis.pair_method}, adjusted p = {show_p(estimate.p)}, {runs} runs"
        claims.append(
            Claim(
                f"{experiment.name}/pair/{pair.first}-{pair.second}",
                "pair",
                experiment.name,
                experiment.title,
                f"**{experiment.title}**: {names} changes test accuracy by {change} ({evidence}).",
                f"**{experiment.title}**: {names}: {change}, not established ({evidence}{gate}).",
                QUANTITY,
                "metrics",
                _samples(experiment, (first, second)),
                analysis.pair_method,
                estimate.estimate,
                (estimate.low, estimate.high),
                "simultaneous 95%",
                None,
                estimate.p,
                analysis.pair_method,
                established=pair.established,
                strength=strength(estimate.p) if pair.established else 0.0,
            )
        )
    return claims


def _show(value: float) -> str:
    if math.isnan(value):
        return "–"
    return "∞ (no spread)" if math.isinf(value) else f"{value:.3g}"


def _counts(analysis: Analysis) -> str:
    counts = analysis.model.sizes
    return (
        str(counts[0]) if len(set(counts)) == 1 else "–".join(map(str, (min(counts), max(counts))))
    )


# --- above chance, at chance -------------------------------------------------------------------


@dataclass
class ChanceTests:
    """Each distinct set of runs (a point shared by experiments counts once) against the most-
    frequent-class accuracy: above it (it learned) and within CHANCE_MARGIN of it (collapsed),
    one Holm family per question."""

    level: float
    learned: dict[frozenset[str], tuple[float, float]]  # runs -> (p, Holm p)
    collapsed: dict[frozenset[str], tuple[float, float]]

    def of(self, point: Point, question: str) -> tuple[float, float] | None:
        table = self.learned if question == "learned" else self.collapsed
        return table.get(_runs(point))


def _runs(point: Point) -> frozenset[str]:
    """The ids of a point's runs that measured the quantity (what its tests are made of)."""
    return frozenset(
        r.id
        for r in point.records
        if r.status in FINISHED
        and isinstance(value := r.metrics.get(QUANTITY), int | float)
        and math.isfinite(value)
    )


def chance_tests(analyses: list[Analysis]) -> ChanceTests:
    levels = [
        r.metrics["baseline_accuracy"]
        for a in analyses
        for p in a.points
        for r in p.records
        if isinstance(r.metrics.get("baseline_accuracy"), int | float)
    ]
    level = statistics.fmean(levels) if levels else 0.1
    unique: dict[frozenset[str], Point] = {}
    for analysis in analyses:
        for point in analysis.points:
            if stat_of(point.records, QUANTITY).n > 1:
                unique[_runs(point)] = point
    keys = list(unique)
    threshold = level + CHANCE_MARGIN
    above = [stats.one_sided_t(stat_of(unique[k].records, QUANTITY).values, threshold, True)
             for k in keys]  # fmt: skip
    at_chance = [_collapse_p(unique[k], threshold) for k in keys]
    tables = [
        dict(zip(keys, zip(raw, stats.holm(raw), strict=True), strict=True))
        for raw in (above, at_chance)
    ]
    return ChanceTests(level, *tables)


def _collapse_p(point: Point, threshold: float) -> float:
    """That every run of the point is below `threshold` on its own test images: each run's
    one-sided binomial test on its confusion matrix, the largest p
    taken (an intersection-union test, so no run is spared). nan without the matrices."""
    tests = []
    for record in point.records:
        value = record.metrics.get(QUANTITY)
        if record.status not in FINISHED or not isinstance(value, int | float):
            continue
        images = _test_images(record)
        if images is None or not 0 <= value <= 1:  # a store edited by hand: no test
            return math.nan
        tests.append(stats.binomial_below(round(value * images), images, threshold))
    return max(tests) if len(tests) > 1 else math.nan


def _test_images(record) -> int | None:
    """How many test images a run was scored on, from its test confusion matrix (None: none
    readable: a store from before cnnlab kept one, or edited by hand)."""
    matrices = record.metrics.get("confusion_matrix")
    matrix = matrices.get("test") if isinstance(matrices, dict) else None
    if not isinstance(matrix, list) or not all(isinstance(row, list) for row in matrix):
        return None
    cells = [cell for row in matrix for cell in row]
    if not cells or not all(
        isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in cells
    ):
        return None
    return sum(cells) or None


def chance_claims(analysis: Analysis, chance: ChanceTests) -> list[Claim]:
    """Per point: collapsed to the most-frequent class, or not shown to have learned."""
    experiment, claims = analysis.experiment, []
    count = len(chance.learned)
    for index, point in enumerate(analysis.points):
        values = stat_of(point.records, QUANTITY)
        if not values.n:
            continue
        name = point_name(experiment, point)
        at = f"{values.mean:.3f} ({values.n} run{'s' if values.n > 1 else ''})"
        collapse = chance.of(point, "collapsed")
        learned = chance.of(point, "learned")
        if collapse is None:
            claims.append(_collapse_claim(analysis, index, at, None, count, chance.level))
            continue
        collapsed = _collapse_claim(analysis, index, at, collapse, count, chance.level)
        claims.append(collapsed)
        claims.append(
            Claim(
                f"{experiment.name}/learned/{index}",
                "learned",
                experiment.name,
                experiment.title,
                f"**{experiment.title}**: {name} learned: test accuracy {at} is above"
                f" {chance.level + CHANCE_MARGIN:.2f} (the most-frequent-class {chance.level:.2f}"
                f" plus the margin {CHANCE_MARGIN:g}; one-sided t-test, Holm p ="
                f" {show_p(learned[1])} over {count} distinct points).",
                f"**{experiment.title}**: {name} is not shown to learn: test accuracy {at}"
                f" against {chance.level + CHANCE_MARGIN:.2f} (the most-frequent-class"
                f" {chance.level:.2f} plus the margin {CHANCE_MARGIN:g}; one-sided t-test, Holm"
                f" p = {show_p(learned[1])} over {count} distinct points).",
                QUANTITY,
                "metrics",
                _samples(experiment, [point]),
                "one-sided one-sample t-test against chance + margin",
                values.mean - chance.level,
                None,
                "",
                learned[0],
                learned[1],
                f"Holm over {count} distinct points",
                CHANCE_MARGIN,
                established=learned[1] < ALPHA,
                moot=collapsed.established,
            )
        )
        collapsed.moot = claims[-1].established
    return claims


def _collapse_claim(analysis, index, at, tested, count, level) -> Claim:
    experiment, point = analysis.experiment, analysis.points[index]
    name = point_name(experiment, point)
    runs = ", ".join(f"{v:.3f}" for v in stat_of(point.records, QUANTITY).values)
    threshold = f"{level + CHANCE_MARGIN:.2f} (the most-frequent-class {level:.2f} plus the margin"
    if tested is None or math.isnan(tested[0]):
        otherwise = (
            f"**{experiment.title}**: {name}: test accuracy {at}; a collapse to chance needs two"
            " runs or more with their test confusion matrices."
        )
        p = adjusted = None
    else:
        p, adjusted = tested
        otherwise = (
            f"**{experiment.title}**: {name}: not every run is shown to sit below {threshold}"
            f" {CHANCE_MARGIN:g}): test accuracy {runs} (Holm p = {show_p(adjusted)})."
        )
    statement = (
        f"**{experiment.title}**: {name} collapses the net to chance in each of its runs: test"
        f" accuracy {runs}, each below {threshold} {CHANCE_MARGIN:g}; one-sided binomial test"
        f" on each run's test images, the largest p taken; Holm p = {show_p(adjusted)} over"
        f" {count} distinct points)."
    )
    return Claim(
        f"{experiment.name}/collapse/{index}",
        "collapse",
        experiment.name,
        experiment.title,
        statement,
        otherwise,
        QUANTITY,
        "metrics (test confusion matrices)",
        _samples(experiment, [point]),
        None
        if p is None
        else "one-sided binomial test per run against chance + margin,"
        " intersection-union over the runs",
        None,
        None,
        "",
        p,
        adjusted,
        f"Holm over {count} distinct points",
        CHANCE_MARGIN,
        established=adjusted is not None and adjusted < ALPHA,
        strength=strength(adjusted) if adjusted is not None and adjusted < ALPHA else 0.0,
    )


# --- over-fitting, from the data loss ----------------------------------------------------------


def tail_slope(history: list[dict[str, Any]], key: str) -> float | None:
    """The least-squares slope per epoch of `key` over the run's last third of epochs."""
    values = [row.get(key) for row in history]
    if not values or not all(isinstance(v, int | float) and math.isfinite(v) for v in values):
        return None
    tail = max(TAIL_EPOCHS, len(values) // TAIL_SHARE)
    if len(values) < tail + 1:
        return None
    window = values[-tail:]
    epochs = list(range(len(values) - tail + 1, len(values) + 1))
    return statistics.linear_regression(epochs, window).slope


@dataclass
class SlopeTests:
    """Each distinct set of runs that learned: the slopes of one history column over the last
    third of the epochs, the one-sided t-test's p that they rise, and Holm's p over the distinct
    points tested (a point shared by experiments is tested once)."""

    slopes: dict[frozenset[str], list[float]]
    tests: dict[frozenset[str], tuple[float, float]]  # runs -> (p, Holm p)

    def of(self, point: Point) -> frozenset[str]:
        return _runs(point)


def slope_tests(analyses: list[Analysis], chance: ChanceTests, column: str) -> SlopeTests:
    """The rise of `column` (val_data_loss: over-fitting; val_accuracy: still improving) at
    every point that learned; a point at chance has no such claim worth making."""
    slopes: dict[frozenset[str], list[float]] = {}
    for analysis in analyses:
        for point in analysis.measured:
            learned = chance.of(point, "learned")
            if learned is None or learned[1] >= ALPHA:
                continue
            values = [tail_slope(r.history, column) for r in point.records if r.history]
            slopes[_runs(point)] = [v for v in values if v is not None]
    keys = [key for key, values in slopes.items() if len(values) > 1]
    raw = [stats.one_sided_t(slopes[key], 0.0, above=True) for key in keys]
    return SlopeTests(slopes, dict(zip(keys, zip(raw, stats.holm(raw), strict=True), strict=True)))


def overfitting_claims(analysis: Analysis, tests: SlopeTests, seen: set) -> list[Claim]:
    """Per point that learned: does its validation data loss (cross-entropy without the penalty)
    still rise over the last third of the epochs? A point shared with an earlier experiment is
    moot here (said once). One run per point: not testable."""
    experiment, claims = analysis.experiment, []
    for point in analysis.measured:
        key = _runs(point)
        if key not in tests.slopes:
            continue
        values, name = tests.slopes[key], point_name(experiment, point)
        base = dict(
            id=f"{experiment.name}/over-fitting/{analysis.points.index(point)}",
            kind="over-fitting",
            experiment=experiment.name,
            section=experiment.title,
            quantity="slope of the validation data loss over the last third of the epochs",
            source="history (val_data_loss)",
            samples=[{"point": name, "n": len(values), "mean": mean(values)}],
            moot=key in seen,
        )
        seen.add(key)
        if not values:
            why = "its runs recorded no data loss (saved before cnnlab recorded it)"
            claims.append(
                Claim(**base, statement="", otherwise=f"{title(experiment)}: {name}: {why}.")
            )
            continue
        if len(values) < 2:
            claims.append(
                Claim(
                    **base,
                    statement="",
                    otherwise=f"{title(experiment)}: {name}: one run; its validation data loss"
                    f" changed by {values[0]:+.3f} per epoch over the last epochs, not testable.",
                    effect=values[0],
                )
            )
            continue
        p, holm = tests.tests[key]
        low, high = stats.mean_interval(values)
        slope = f"{mean(values):+.4f} per epoch [{low:+.4f}, {high:+.4f}] ({len(values)} runs)"
        count = len(tests.tests)
        evidence = f"one-sided t-test, Holm p = {show_p(holm)} over {count} distinct points"
        claims.append(
            Claim(
                **base,
                statement=f"{title(experiment)}: {name} over-fits: its validation data loss"
                f" (without the kernel penalty) still rises over the last epochs, {slope};"
                f" {evidence}.",
                otherwise=f"{title(experiment)}: {name}: the validation data loss is not shown to"
                f" rise over the last epochs ({slope}; {evidence}); no over-fitting is claimed.",
                test="one-sided one-sample t-test of the runs' slopes",
                effect=mean(values),
                interval=(low, high),
                interval_kind="95% t",
                p=p,
                adjusted=holm,
                adjustment=f"Holm over {count} distinct points",
                established=holm < ALPHA,
                strength=strength(holm) if holm < ALPHA else 0.0,
            )
        )
    return claims


def title(experiment) -> str:
    return f"**{experiment.title}**"


def mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else math.nan


# --- measured, not tested ----------------------------------------------------------------------


def measured_claim(
    experiment, key: str, sentence: str, quantity: str, source: str, kind: str = "measured"
) -> Claim:
    """A sentence that states a measurement only: no test, no verdict."""
    return Claim(f"{experiment.name}/{key}", kind, experiment.name, experiment.title,
                 "", sentence, quantity, source)  # fmt: skip


def tested_family(claims: list[Claim], minimum: float | None = None) -> list[Claim]:
    """Holm over `claims` whose raw p is set; each established where its Holm p < ALPHA (and its
    |effect| reaches `minimum`, the named minimum effect, where one is given)."""
    tested = [c for c in claims if c.p is not None and not math.isnan(c.p)]
    for claim, adjusted in zip(tested, stats.holm([c.p for c in tested]), strict=True):
        claim.adjusted = adjusted
        claim.adjustment = f"Holm over {len(tested)} tests" if len(tested) > 1 else "one test"
        big = minimum is None or (claim.effect is not None and abs(claim.effect) >= minimum)
        claim.established = adjusted < ALPHA and big
        claim.minimum_effect = minimum
        claim.strength = strength(adjusted) if claim.established else 0.0
    return claims
