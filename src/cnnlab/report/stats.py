"""Welch's t-test on repeats, with `scipy.stats`: is a difference between two points noise?

SciPy is a runtime dependency (declared, and required by scikit-learn anyway), so the report
uses its t-test rather than a copy of the t distribution of our own.
"""

from __future__ import annotations

import math
import statistics
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

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
