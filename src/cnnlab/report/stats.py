"""Statistics on repeats, with `scipy.stats`: intervals, Welch's t-test, effect sizes, Holm's
correction, and how many seeds a difference needs.

SciPy is a runtime dependency (declared, and required by scikit-learn anyway), so the report
uses its t-test rather than a copy of the t distribution of our own.
"""

from __future__ import annotations

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


def one_sample_t_test(values: Sequence[float], value: float) -> WelchResult:
    """The two-sided one-sample t-test of mean(values) - value (a point against a constant)."""
    if len(values) < 2:
        raise ValueError(f"a t-test needs at least two values, got {len(values)}")
    difference = statistics.fmean(values) - value
    if statistics.variance(values) == 0:  # as welch_t_test: equal, or apart beyond any noise
        difference = values[0] - value  # fmean of three 0.1s is not 0.1
        if difference == 0:
            return WelchResult(0.0, math.nan, math.nan, math.nan)
        return WelchResult(difference, math.copysign(math.inf, difference), math.nan, 0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = scipy_stats.ttest_1samp(values, value)
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
    """The share of (first, second) seed pairs where second beats first; a tie counts half."""
    first_values = np.asarray(first, dtype=np.float64)[:, None]
    second_values = np.asarray(second, dtype=np.float64)[None, :]
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
