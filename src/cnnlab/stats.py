"""Welch's t-test in plain Python: is a difference between two sets of repeats larger than noise?

SciPy is only a development dependency, so the report cannot lean on `scipy.stats`: the t
distribution's tail comes from the regularized incomplete beta function, evaluated by its
continued fraction (Lentz's method, as in Numerical Recipes' `betacf`). The tests hold every
function here to `scipy.stats.ttest_ind(equal_var=False)` and `scipy.special.betainc` (to 1e-9
relative for a, b and the degrees of freedom up to 1000; beyond that `lgamma`'s cancellation
costs digits, far past what a handful of repeats per point produces).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

_CONTINUED_FRACTION_STEPS = 10_000  # converges in O(sqrt(max(a, b))) steps; this is never reached
_RELATIVE_TOLERANCE = 1e-15
_TINY = 1e-300  # keeps Lentz's denominators away from zero


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
    first_part = statistics.variance(first) / len(first)
    second_part = statistics.variance(second) / len(second)
    squared_error = first_part + second_part
    if squared_error == 0:  # two constant samples: equal (no test) or apart beyond any noise
        if difference == 0:
            return WelchResult(0.0, math.nan, math.nan, math.nan)
        return WelchResult(difference, math.copysign(math.inf, difference), math.nan, 0.0)
    t = difference / math.sqrt(squared_error)
    # Welch–Satterthwaite, written with shares of the squared error so that nothing underflows.
    first_share, second_share = first_part / squared_error, second_part / squared_error
    df = 1.0 / (first_share**2 / (len(first) - 1) + second_share**2 / (len(second) - 1))
    return WelchResult(difference, t, df, student_t_two_sided(t, df))


def student_t_two_sided(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t distribution with `df` (> 0, real) degrees of freedom."""
    if not df > 0:
        raise ValueError(f"degrees of freedom must be positive, got {df}")
    if math.isnan(t):
        return math.nan
    if math.isinf(t):
        return 0.0
    # P(|T| >= |t|) = I_x(df/2, 1/2) with x = df / (df + t^2); 1 - x is computed on its own,
    # so that a small t/sqrt(df) keeps its digits.
    ratio = (t / math.sqrt(df)) ** 2
    return _incomplete_beta(1.0 / (1.0 + ratio), ratio / (1.0 + ratio), df / 2, 0.5)


def regularized_incomplete_beta(x: float, a: float, b: float) -> float:
    """I_x(a, b) for a, b > 0 and 0 <= x <= 1 (scipy.special.betainc takes a, b, x)."""
    if not (a > 0 and b > 0):
        raise ValueError(f"a and b must be positive, got a={a}, b={b}")
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"x must lie in [0, 1], got {x}")
    return _incomplete_beta(x, 1.0 - x, a, b)


def _incomplete_beta(x: float, complement: float, a: float, b: float) -> float:
    """I_x(a, b) given x and 1 - x (each as exact as the caller can make it)."""
    if x == 0.0 or complement == 0.0:
        return 0.0 if x == 0.0 else 1.0
    # The continued fraction converges fast for x < (a + 1) / (a + b + 2); else use symmetry.
    if x > (a + 1) / (a + b + 2):
        return 1.0 - _incomplete_beta(complement, x, b, a)
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x)
    ) + b * math.log(complement)
    return math.exp(log_front) * _beta_continued_fraction(x, a, b) / a


def _beta_continued_fraction(x: float, a: float, b: float) -> float:
    """The continued fraction of I_x(a, b) (modified Lentz), without its front factor."""
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    fraction = d
    for step in range(1, _CONTINUED_FRACTION_STEPS + 1):
        twice = 2 * step
        # The even term, then the odd term of the fraction.
        for numerator in (
            step * (b - step) * x / ((a + twice - 1) * (a + twice)),
            -(a + step) * (a + b + step) * x / ((a + twice) * (a + twice + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > _TINY else _TINY)
            c = 1.0 + numerator / c
            c = c if abs(c) > _TINY else _TINY
            fraction *= c * d
        if abs(c * d - 1.0) <= _RELATIVE_TOLERANCE:
            return fraction
    raise ArithmeticError(f"the incomplete beta fraction did not converge (x={x}, a={a}, b={b})")
