"""cnnlab.stats: Welch's t-test and the incomplete beta function, held to SciPy's own."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cnnlab.stats import (
    regularized_incomplete_beta,
    student_t_two_sided,
    welch_t_test,
)

scipy_stats = pytest.importorskip("scipy.stats")
scipy_special = pytest.importorskip("scipy.special")

accuracies = st.floats(0.0, 1.0, allow_nan=False, allow_subnormal=False)
samples = st.lists(accuracies, min_size=2, max_size=12)


@pytest.mark.filterwarnings("ignore:Precision loss occurred:RuntimeWarning")
@settings(max_examples=300, deadline=None)
@given(samples, samples)
def test_welch_matches_scipy_ttest_ind_unequal_variances(first, second):
    ours = welch_t_test(first, second)
    if len(set(first)) == len(set(second)) == 1:  # two constant samples
        if first[0] == second[0]:
            assert math.isnan(ours.t) and math.isnan(ours.p)
        else:
            assert ours.t == math.copysign(math.inf, second[0] - first[0]) and ours.p == 0.0
        return
    if min(_spread(first), _spread(second)) < 1e-6:
        return  # near-constant: NumPy's rounded variance and our exact one part ways
    reference = scipy_stats.ttest_ind(second, first, equal_var=False)
    assert ours.t == pytest.approx(float(reference.statistic), rel=1e-9, abs=1e-12)
    assert ours.df == pytest.approx(float(reference.df), rel=1e-9)
    assert ours.p == pytest.approx(float(reference.pvalue), rel=1e-9, abs=1e-300)


def _spread(values):
    """The range of a sample that varies (a constant one has no rounding to disagree on)."""
    return max(values) - min(values) if len(set(values)) > 1 else math.inf


@pytest.mark.filterwarnings("ignore:Precision loss occurred:RuntimeWarning")  # SciPy's, on 0.3 x 3
@pytest.mark.parametrize(
    ("first", "second"),
    [
        ([0.50, 0.51, 0.49], [0.60, 0.61, 0.59]),  # clearly apart
        ([0.60, 0.61, 0.59], [0.605, 0.58, 0.62]),  # overlapping
        ([0.1, 0.2], [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]),  # unequal sizes
        ([0.3, 0.3, 0.3], [0.1, 0.5, 0.2]),  # one sample without spread
        ([1e-6, 2e-6], [3e-6, 5e-6]),  # small numbers
    ],
)
def test_welch_on_chosen_samples(first, second):
    reference = scipy_stats.ttest_ind(second, first, equal_var=False)
    ours = welch_t_test(first, second)
    difference = sum(second) / len(second) - sum(first) / len(first)
    assert ours.mean_difference == pytest.approx(difference)
    assert ours.t == pytest.approx(float(reference.statistic), rel=1e-10)
    assert ours.df == pytest.approx(float(reference.df), rel=1e-10)
    assert ours.p == pytest.approx(float(reference.pvalue), rel=1e-10)


@settings(max_examples=300, deadline=None)
@given(
    st.floats(1e-3, 1e3, allow_nan=False),
    st.floats(1e-3, 1e3, allow_nan=False),
    # Subnormal x and x within 1e-9 of 1 are left out: there SciPy's Boost rounds differently
    # (the closed forms below check that corner).
    st.floats(0.0, 1.0 - 1e-9, allow_nan=False, allow_subnormal=False),
)
def test_incomplete_beta_matches_scipy(a, b, x):
    expected = float(scipy_special.betainc(a, b, x))
    assert regularized_incomplete_beta(x, a, b) == pytest.approx(expected, rel=1e-9, abs=1e-14)


@pytest.mark.parametrize("x", [1e-300, 1e-12, 0.3, 0.5, 0.97, 1 - 1e-12, 1 - 2**-53])
def test_incomplete_beta_closed_forms(x):
    # I_x(1/2, 1/2) = 2/pi asin(sqrt(x)) = 1 - 2/pi asin(sqrt(1 - x)); 1 - x is exact here.
    arcsine = 2 / math.pi * math.asin(math.sqrt(x))
    complement = 2 / math.pi * math.asin(math.sqrt(1 - x))
    expected = arcsine if x <= 0.5 else 1 - complement
    assert regularized_incomplete_beta(x, 0.5, 0.5) == pytest.approx(expected, rel=1e-12)
    assert 1 - regularized_incomplete_beta(x, 0.5, 0.5) == pytest.approx(complement, rel=1e-6)
    assert regularized_incomplete_beta(x, 2.5, 1.0) == pytest.approx(x**2.5, rel=1e-12)


@pytest.mark.parametrize("df", [0.5, 1.0, 1.7, 2.0, 3.0, 7.5, 30.0, 1000.0])
@pytest.mark.parametrize("t", [0.0, 0.1, 1.0, 2.0, 4.3, 12.0, 80.0, -3.0])
def test_two_sided_tail_matches_the_t_distribution(t, df):
    expected = 2 * float(scipy_stats.t.sf(abs(t), df))
    assert student_t_two_sided(t, df) == pytest.approx(expected, rel=1e-9, abs=1e-300)


def test_edges_and_errors():
    assert student_t_two_sided(math.inf, 3.0) == 0.0
    assert student_t_two_sided(0.0, 3.0) == 1.0
    assert regularized_incomplete_beta(0.0, 2.0, 3.0) == 0.0
    assert regularized_incomplete_beta(1.0, 2.0, 3.0) == 1.0
    with pytest.raises(ValueError, match="at least two values"):
        welch_t_test([0.5], [0.4, 0.6])
    with pytest.raises(ValueError, match="positive"):
        student_t_two_sided(1.0, 0.0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        regularized_incomplete_beta(1.5, 1.0, 1.0)
