"""Statistics on repeats, with `scipy.stats`: intervals, Welch's t-test, effect sizes, Holm's
correction, and how many seeds a difference needs.

SciPy is a runtime dependency (declared, and required by scikit-learn anyway), so the report
uses its t-test rather than a copy of the t distribution of our own.
"""

from __future__ import annotations

import functools
import math
import statistics
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as scipy_stats


@dataclass(frozen=True)
class WelchResult:
    """Welch's two-sided t-test of mean(second) - mean(first)."""

    mean_difference: float  # mean(second) - mean(first)
    t: float  # the difference over its standard error; ±inf when neither sample varies
    df: float  # Welch–Satterthwaite degrees of freedom; nan when neither sample varies
    p: float  # two-sided p-value; nan when the samples are constant and equal


def welch_t_test(first: Sequence[float], second: Sequence[float]) -> WelchResult:
    """Welch's unequal-variance t-test, two-sided; each sample needs at least two values."""
    if len(first) < 2 or len(second) < 2:
        raise ValueError(
            f"Welch's t-test needs at least two values per sample, got {len(first)} and"
            f" {len(second)}"
        )
    difference = statistics.fmean(second) - statistics.fmean(first)
    if statistics.variance(first) == 0 and statistics.variance(second) == 0:
        # Two constant samples: equal (no test), or apart beyond any noise. SciPy answers nan
        # for both; the report needs to tell them apart.
        if difference == 0:
            return WelchResult(0.0, math.nan, math.nan, math.nan)
        return WelchResult(difference, math.copysign(math.inf, difference), math.nan, 0.0)
    with (
        warnings.catch_warnings()
    ):  # near-equal values: SciPy warns of its rounding, a report must not
        warnings.simplefilter("ignore", RuntimeWarning)
        result = scipy_stats.ttest_ind(second, first, equal_var=False)
    return WelchResult(difference, float(result.statistic), float(result.df), float(result.pvalue))


CONFIDENCE = 0.95  # every interval of the report
ALPHA = 0.05  # a comparison is real when its Holm-adjusted p is below this
POWER = 0.8  # the chance of seeing a true difference that `repeats_needed` plans for
MOST_REPEATS = 1000  # `repeats_needed` gives up beyond this
QUADRATURE = 100  # quantiles per sample variance in `welch_power`


def mean_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The t confidence interval of the mean of `values`; (mean, mean) for a constant sample.

    The t interval, not a bootstrap: with 2-5 seeds a percentile bootstrap of the mean has only
    C(2n-1, n) distinct resamples (3 with 2 seeds, 10 with 3) and is known to cover the true
    mean far less often than it claims, while the t interval is exact for normal noise.
    """
    if len(values) < 2:
        raise ValueError(f"an interval needs at least two values, got {len(values)}")
    mean = statistics.fmean(values)
    error = scipy_stats.sem(values)
    if error == 0:
        return mean, mean
    low, high = scipy_stats.t.interval(confidence, len(values) - 1, loc=mean, scale=error)
    return float(low), float(high)


def positive_interval(
    values: Sequence[float], confidence: float = CONFIDENCE
) -> tuple[float, float, float]:
    """The geometric mean of positive `values` (times) and its t interval: the mean interval of
    their logarithms, carried back. Never below 0, as a plain t interval of times can be."""
    if any(value <= 0 for value in values):
        raise ValueError(f"a positive interval needs positive values, got {min(values)}")
    logs = [math.log(value) for value in values]
    low, high = mean_interval(logs, confidence)
    return math.exp(statistics.fmean(logs)), math.exp(low), math.exp(high)


def difference_interval(
    first: Sequence[float], second: Sequence[float], confidence: float = CONFIDENCE
) -> tuple[float, float]:
    """Welch's confidence interval of mean(second) - mean(first)."""
    difference = statistics.fmean(second) - statistics.fmean(first)
    if statistics.variance(first) == 0 and statistics.variance(second) == 0:
        return difference, difference
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = scipy_stats.ttest_ind(second, first, equal_var=False)
        interval = result.confidence_interval(confidence)
    return float(interval.low), float(interval.high)


def hedges_g(first: Sequence[float], second: Sequence[float]) -> float:
    """Hedges' g of second over first: the difference in pooled standard deviations, unbiased.

    nan when neither sample varies (no scale to measure the difference in).
    """
    size_first, size_second = len(first), len(second)
    df = size_first + size_second - 2
    pooled = (
        (size_first - 1) * statistics.variance(first)
        + (size_second - 1) * statistics.variance(second)
    ) / df
    if pooled == 0:
        return math.nan
    cohen = (statistics.fmean(second) - statistics.fmean(first)) / math.sqrt(pooled)
    # Hedges' exact small-sample correction J(df) = Γ(df/2) / (√(df/2) Γ((df-1)/2)).
    correction = math.exp(math.lgamma(df / 2) - math.lgamma((df - 1) / 2)) / math.sqrt(df / 2)
    return cohen * correction


def probability_of_improvement(first: Sequence[float], second: Sequence[float]) -> float:
    """The share of (first, second) seed pairs where second beats first; a tie counts half.
    NaN (undefined) where a value is not finite: a NaN neither wins nor loses."""
    first_values = np.asarray(first, dtype=np.float64)[:, None]
    second_values = np.asarray(second, dtype=np.float64)[None, :]
    if not (np.isfinite(first_values).all() and np.isfinite(second_values).all()):
        return math.nan
    wins = (second_values > first_values).sum() + 0.5 * (second_values == first_values).sum()
    return float(wins / (first_values.size * second_values.size))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the given order (SciPy has none, only BH and BY).

    The i-th smallest p of m is multiplied by m - i + 1, and the products made non-decreasing in
    that order and capped at 1: an adjusted p below alpha is a hypothesis Holm rejects at alpha.
    """
    order = np.argsort(np.asarray(p_values, dtype=np.float64), kind="stable")
    count = len(order)
    adjusted = [0.0] * count
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (count - rank) * float(p_values[index])))
        adjusted[index] = running
    return adjusted


def welch_power(spread: float, difference: float, repeats: int, alpha: float = ALPHA) -> float:
    """Power of Welch's two-sided test, `repeats` normal runs a side, each with std `spread`.

    Exact up to quadrature: given the two sample variances (scaled chi-square, independent of
    the means), the test's standard error and degrees of freedom are fixed and the mean
    difference is normal; the power is that rejection chance averaged over the variances, on a
    grid of their quantiles. (The noncentral t with 2(n - 1) df, the textbook shortcut, is the
    equal-variance t-test's power and overstates Welch's by 0.1 with 3 runs a side.)
    """
    if repeats < 2:
        return 0.0
    each = repeats - 1
    quantiles = (np.arange(QUADRATURE) + 0.5) / QUADRATURE
    ratio = scipy_stats.chi2.ppf(quantiles, each) / each  # sample variance / true variance
    first, second = np.meshgrid(ratio, ratio)
    error = np.sqrt((first + second) / repeats)  # in units of `spread`
    df = (first + second) ** 2 / ((first**2 + second**2) / each)
    critical = scipy_stats.t.ppf(1 - alpha / 2, df)
    shift = abs(difference) / spread
    deviation = math.sqrt(2 / repeats)  # of the mean difference, in units of `spread`
    rejected = scipy_stats.norm.cdf((shift - critical * error) / deviation)
    rejected += scipy_stats.norm.cdf((-shift - critical * error) / deviation)
    return float(rejected.mean())


def repeats_needed(
    spread: float, difference: float, power: float = POWER, alpha: float = ALPHA
) -> int | None:
    """The fewest runs per point for Welch's test to see `difference` with `power`.

    None beyond MOST_REPEATS; 2 when the runs do not vary (any difference is then plain).
    """
    if spread == 0:
        return 2

    def enough(repeats: int) -> bool:
        return welch_power(spread, difference, repeats, alpha) >= power

    if not enough(MOST_REPEATS):
        return None
    low, high = 1, MOST_REPEATS  # the power grows with the repeats: bisect
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if enough(middle) else (middle, high)
    return high


def pooled_spread(samples: Sequence[Sequence[float]]) -> float | None:
    """The within-point standard deviation pooled over points of two runs or more."""
    used = [sample for sample in samples if len(sample) > 1]
    if not used:
        return None
    squares = sum((len(s) - 1) * statistics.variance(s) for s in used)
    return math.sqrt(squares / sum(len(s) - 1 for s in used))


# --- one experiment as a one-way layout -------------------------------------------------------


@dataclass(frozen=True)
class Estimate:
    """A contrast or difference of means: its estimate, interval, statistic, df and p."""

    estimate: float
    low: float
    high: float
    statistic: float  # t (contrasts) or the studentized range q (pairs); ±inf: no spread
    df: float  # nan when there is no spread
    p: float  # nan when the compared runs are constant and equal

    @property
    def tested(self) -> bool:
        return not math.isnan(self.p)


def _no_spread(estimate: float) -> Estimate:
    """Runs that do not vary: equal (no test), or apart beyond any noise (p = 0)."""
    if estimate == 0:
        return Estimate(0.0, 0.0, 0.0, math.nan, math.nan, math.nan)
    return Estimate(estimate, estimate, estimate, math.copysign(math.inf, estimate), math.nan, 0.0)


@dataclass(frozen=True)
class OneWay:
    """An experiment's runs of one quantity, one sample per grid point, as a one-way layout.

    `equal_variances`: the error variance is pooled over the points (the classical model, N - k
    df); otherwise each point keeps its own (Welch-type: Welch–Satterthwaite df, Games–Howell
    pairs), for experiments whose points clearly differ in spread.
    """

    samples: tuple[tuple[float, ...], ...]
    equal_variances: bool = True

    @property
    def sizes(self) -> list[int]:
        return [len(s) for s in self.samples]

    @property
    def means(self) -> list[float]:
        return [statistics.fmean(s) for s in self.samples]

    @property
    def variances(self) -> list[float]:
        return [statistics.variance(s) if len(s) > 1 else math.nan for s in self.samples]

    @property
    def error_df(self) -> int:
        return sum(self.sizes) - len(self.samples)

    @property
    def pooled_variance(self) -> float:
        squares = sum((n - 1) * v for n, v in zip(self.sizes, self.variances, strict=True) if n > 1)
        return squares / self.error_df if self.error_df > 0 else math.nan

    def _error(self, weights: Sequence[float]) -> tuple[float, float]:
        """The standard error of sum(weights · means) and its degrees of freedom."""
        terms = [w * w / n for w, n in zip(weights, self.sizes, strict=True)]
        if self.equal_variances:
            return math.sqrt(self.pooled_variance * sum(terms)), float(self.error_df)
        parts = [t * v for t, v in zip(terms, self.variances, strict=True) if t]
        shares = [
            (t * v) ** 2 / (n - 1)
            for t, v, n in zip(terms, self.variances, self.sizes, strict=True)
            if t and v
        ]
        error = math.sqrt(sum(parts))
        return error, (sum(parts) ** 2 / sum(shares) if shares else math.nan)

    def contrast(self, weights: Sequence[float], confidence: float = CONFIDENCE) -> Estimate:
        """The two-sided t-test and interval of sum(weights · means) (a trend, a difference)."""
        estimate = float(np.dot(weights, self.means))
        error, df = self._error(weights)
        if error == 0:
            return _no_spread(estimate)
        t = estimate / error
        half = scipy_stats.t.ppf(0.5 + confidence / 2, df) * error
        p = 2 * scipy_stats.t.sf(abs(t), df)
        return Estimate(estimate, float(estimate - half), float(estimate + half), t, df, float(p))

    def pair(self, first: int, second: int, points: int, confidence: float = CONFIDENCE):
        """mean(second) - mean(first), simultaneous over all pairs of `points` means: Tukey–
        Kramer (pooled) or Games–Howell (Welch), by the studentized range."""
        weights = [0.0] * len(self.samples)
        weights[first], weights[second] = -1.0, 1.0
        estimate = float(np.dot(weights, self.means))
        error, df = self._error(weights)
        if error == 0:
            return _no_spread(estimate)
        q = abs(estimate) / error * math.sqrt(2)
        p = float(scipy_stats.studentized_range.sf(q, points, df))
        half = _range_quantile(confidence, points, df) / math.sqrt(2) * error
        return Estimate(
            estimate, float(estimate - half), float(estimate + half), q, df, min(p, 1.0)
        )


@functools.lru_cache(maxsize=256)
def _range_quantile(confidence: float, points: int, df: float) -> float:
    """The studentized range's quantile (a numerical integral: Tukey's pairs share one)."""
    return float(scipy_stats.studentized_range.ppf(confidence, points, df))


def spreads_differ(samples: Sequence[Sequence[float]]) -> float | None:
    """Bartlett's test's p that the points' spreads differ (`scipy.stats.bartlett`).

    Bartlett's, not Levene's or Brown–Forsythe's: with the 2-5 runs a point has, the median-
    centred deviations carry almost no information (one of three is always 0), while Bartlett's
    still sees a spread a thousand times another's; its sensitivity to non-normal noise errs
    towards the Welch-type procedures, the cautious side. A point without spread beside points
    with it differs plainly (p = 0). None where it cannot be asked: a point with fewer than two
    runs, or no run deviating at all.
    """
    if len(samples) < 2 or any(len(s) < 2 for s in samples):
        return None
    variances = [statistics.variance(s) for s in samples]
    if all(v == 0 for v in variances):
        return None
    if any(v == 0 for v in variances):
        return 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        p = float(scipy_stats.bartlett(*samples).pvalue)
    return None if math.isnan(p) else p


def welch_one_sided(
    first: Sequence[float], second: Sequence[float], margin: float, *, below: bool
) -> float:
    """Welch's one-sided p that mean(second) - mean(first) is below (or above) `margin`, a named
    minimum effect: the null hypothesis is the difference on the other side of it."""
    shifted = [value - margin for value in second]
    if statistics.variance(first) == 0 and statistics.variance(shifted) == 0:
        difference = statistics.fmean(shifted) - statistics.fmean(first)
        return 0.0 if (difference < 0 if below else difference > 0) else 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        alternative = "less" if below else "greater"
        result = scipy_stats.ttest_ind(shifted, first, equal_var=False, alternative=alternative)
    return float(result.pvalue)


# Dunnett's p integrates a multivariate t by quasi-Monte Carlo: a fixed seed keeps a report (and
# its verdicts) the same on every rebuild.
DUNNETT_SEED = 0


def dunnett(
    samples: Sequence[Sequence[float]], control: int, confidence: float = CONFIDENCE
) -> dict[int, Estimate]:
    """Dunnett's many-to-one test (`scipy.stats.dunnett`): each point minus the control, with
    simultaneous intervals and adjusted p; the pooled model's."""
    others = [index for index in range(len(samples)) if index != control]
    model = OneWay(tuple(tuple(s) for s in samples))
    if model.pooled_variance == 0:
        return {i: _no_spread(model.means[i] - model.means[control]) for i in others}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = scipy_stats.dunnett(
            *(samples[i] for i in others), control=samples[control], random_state=DUNNETT_SEED
        )
        interval = result.confidence_interval(confidence)
    return {
        index: Estimate(
            model.means[index] - model.means[control],
            float(interval.low[place]),
            float(interval.high[place]),
            float(result.statistic[place]),
            float(model.error_df),
            float(result.pvalue[place]),
        )
        for place, index in enumerate(others)
    }


def one_sided_t(values: Sequence[float], value: float, above: bool) -> float:
    """The one-sided one-sample t-test's p that mean(values) is above (or below) `value`."""
    if len(values) < 2:
        return math.nan
    difference = statistics.fmean(values) - value
    if statistics.variance(values) == 0:
        difference = values[0] - value
        return 0.0 if (difference > 0 if above else difference < 0) else 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        alternative = "greater" if above else "less"
        return float(scipy_stats.ttest_1samp(values, value, alternative=alternative).pvalue)


def hoyer(l1: float, l2: float, count: int) -> float:
    """Hoyer's sparsity (2004) from a tensor's norms: 0 for equal magnitudes, 1 for one non-zero
    entry; scale-free, so a shrunken kernel is not sparse for being small."""
    if count < 2 or l2 <= 0:
        return math.nan
    root = math.sqrt(count)
    return (root - l1 / l2) / (root - 1)


def anova_p(samples: Sequence[Sequence[float]]) -> float:
    """The one-way ANOVA F test's p (`scipy.stats.f_oneway`); 0 or nan without any spread."""
    if all(statistics.variance(s) == 0 for s in samples):
        return math.nan if len({statistics.fmean(s) for s in samples}) == 1 else 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(scipy_stats.f_oneway(*samples).pvalue)


def binomial_below(correct: int, trials: int, rate: float) -> float:
    """The exact one-sided binomial test's p (`scipy.stats.binomtest`) that the success rate
    behind `correct` of `trials` is below `rate`."""
    return float(scipy_stats.binomtest(correct, trials, rate, alternative="less").pvalue)
