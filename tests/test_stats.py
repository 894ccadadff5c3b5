"""cnnlab.report.stats: Welch's t-test, held to its formulas and to the hand-written version it
replaced."""

from __future__ import annotations

import math
import statistics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as scipy_stats

from cnnlab.report.stats import welch_t_test

accuracies = st.floats(0.0, 1.0, allow_nan=False, allow_subnormal=False)
samples = st.lists(accuracies, min_size=2, max_size=12)


def by_hand(first, second):
    """t, Welch–Satterthwaite df and the two-sided p, from their textbook formulas."""
    first_part = statistics.variance(first) / len(first)
    second_part = statistics.variance(second) / len(second)
    t = (statistics.fmean(second) - statistics.fmean(first)) / math.sqrt(first_part + second_part)
    df = (first_part + second_part) ** 2 / (
        first_part**2 / (len(first) - 1) + second_part**2 / (len(second) - 1)
    )
    return t, df, 2 * float(scipy_stats.t.sf(abs(t), df))


@settings(max_examples=300, deadline=None)
@given(samples, samples)
def test_welch_follows_its_formulas(first, second):
    ours = welch_t_test(first, second)
    if len(set(first)) == len(set(second)) == 1:  # two constant samples
        if first[0] == second[0]:
            assert math.isnan(ours.t) and math.isnan(ours.p)
        else:
            assert ours.t == math.copysign(math.inf, second[0] - first[0]) and ours.p == 0.0
        return
    if min(_spread(first), _spread(second)) < 1e-6:
        return  # near-constant: NumPy's rounded variance and the exact one part ways
    t, df, p = by_hand(first, second)
    assert ours.t == pytest.approx(t, rel=1e-9, abs=1e-12)
    assert ours.df == pytest.approx(df, rel=1e-9)
    assert ours.p == pytest.approx(p, rel=1e-9, abs=1e-300)


def _spread(values):
    """The range of a sample that varies (a constant one has no rounding to disagree on)."""
    return max(values) - min(values) if len(set(values)) > 1 else math.inf


# (first, second) -> (t, df, p) as the report's own hand-written test (a continued fraction,
# replaced by scipy.stats) computed them: the report's verdicts are unchanged to rounding.
HAND_WRITTEN = [
    (([0.50, 0.51, 0.49], [0.60, 0.61, 0.59]), (12.247448713915876, 4.0, 0.0002552167494419277)),
    (
        ([0.60, 0.61, 0.59], [0.605, 0.58, 0.62]),
        (0.1280368799328988, 2.924165029469549, 0.9064156098746561),
    ),
    (
        ([0.1, 0.2], [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]),
        (3.703280399090206, 8.732673267326732, 0.005158667105292838),
    ),
    (([0.3, 0.3, 0.3], [0.1, 0.5, 0.2]), (-0.27735009811261446, 2.0, 0.8075499102701249)),
    (([1e-6, 2e-6], [3e-6, 5e-6]), (2.23606797749979, 1.4705882352941173, 0.1987273889345263)),
]


@pytest.mark.parametrize(("samples", "expected"), HAND_WRITTEN)
def test_welch_gives_what_the_hand_written_test_gave(samples, expected):
    first, second = samples
    ours = welch_t_test(first, second)
    difference = sum(second) / len(second) - sum(first) / len(first)
    assert ours.mean_difference == pytest.approx(difference)
    assert (ours.t, ours.df, ours.p) == pytest.approx(expected, rel=1e-10)


def test_near_equal_samples_print_no_warning(recwarn):
    welch_t_test([0.3, 0.3, 0.3 + 1e-17], [0.3, 0.3, 0.3 + 2e-17])
    assert not [warning for warning in recwarn if issubclass(warning.category, RuntimeWarning)]


def test_too_few_values():
    with pytest.raises(ValueError, match="at least two values"):
        welch_t_test([0.5], [0.4, 0.6])
