"""cnnlab.report.stats: Welch's t-test, held to its formulas and to the hand-written version it
replaced."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as scipy_stats

from cnnlab.report import stats
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


# --- intervals, effect sizes, Holm, seeds needed ------------------------------------------------

varied = samples.filter(lambda values: _spread(values) > 1e-3 and _spread(values) != math.inf)


@settings(max_examples=200, deadline=None)
@given(varied)
def test_the_mean_interval_is_scipys_one_sample_t_interval(values):
    reference = scipy_stats.ttest_1samp(values, 0.0).confidence_interval(0.95)
    assert stats.mean_interval(values) == pytest.approx((reference.low, reference.high), rel=1e-9)


@settings(max_examples=200, deadline=None)
@given(varied, varied)
def test_the_difference_interval_follows_welchs_formula(first, second):
    _, df, _ = by_hand(first, second)
    error = math.sqrt(
        statistics.variance(first) / len(first) + statistics.variance(second) / len(second)
    )
    difference = statistics.fmean(second) - statistics.fmean(first)
    half = float(scipy_stats.t.ppf(0.975, df)) * error
    low, high = stats.difference_interval(first, second)
    assert (low, high) == pytest.approx((difference - half, difference + half), rel=1e-8, abs=1e-12)


def test_constant_samples_have_a_point_interval():
    assert stats.mean_interval([0.1, 0.1, 0.1]) == pytest.approx((0.1, 0.1), abs=1e-15)
    assert stats.difference_interval([0.1, 0.1], [0.3, 0.3]) == pytest.approx((0.2, 0.2))
    assert math.isnan(stats.hedges_g([0.1, 0.1], [0.3, 0.3]))
    with pytest.raises(ValueError, match="at least two values"):
        stats.mean_interval([0.5])


def test_hedges_g_of_a_known_case():
    # pooled sd 1 (both variances 1), difference 1, df 4: g = J(4) = Γ(2) / (√2 Γ(1.5)) = 0.7979
    g = stats.hedges_g([0.0, 1.0, 2.0], [1.0, 2.0, 3.0])
    assert g == pytest.approx(1 / (math.sqrt(2) * math.gamma(1.5)), rel=1e-12)
    assert g == pytest.approx(1 - 3 / (4 * 4 - 1), abs=0.01)  # Hedges' approximation


@settings(max_examples=200, deadline=None)
@given(samples, samples)
def test_the_probability_of_improvement_is_mann_whitneys_u_over_the_pairs(first, second):
    u = scipy_stats.mannwhitneyu(second, first, method="asymptotic").statistic
    assert stats.probability_of_improvement(first, second) == pytest.approx(
        u / (len(first) * len(second)), abs=1e-12
    )


def holm_rejects(p_values, alpha):
    """Holm's procedure by its definition: reject in order while p_(i) <= alpha / (m - i + 1)."""
    rejected = set()
    for rank, index in enumerate(sorted(range(len(p_values)), key=p_values.__getitem__)):
        if p_values[index] > alpha / (len(p_values) - rank):
            break
        rejected.add(index)
    return rejected


def test_holm_on_known_cases():
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([0.5]) == [0.5]
    assert stats.holm([0.2, 0.9, 0.6]) == pytest.approx([0.6, 1.0, 1.0])
    assert stats.holm([]) == []


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.one_of(st.floats(0.0, 1.0), st.floats(0.0, 0.06)), min_size=1, max_size=25),
    st.sampled_from([0.01, 0.05, 0.1]),
)
def test_holm_adjusted_p_rejects_what_the_step_down_procedure_rejects(p_values, alpha):
    adjusted = stats.holm(p_values)
    assert {i for i, p in enumerate(adjusted) if p <= alpha} == holm_rejects(p_values, alpha)
    assert all(p <= q <= 1.0 for p, q in zip(p_values, adjusted, strict=True))


@pytest.mark.parametrize(("spread", "difference"), [(0.01, 0.01), (0.004, 0.01), (0.02, 0.03)])
def test_the_power_and_the_repeats_needed_match_a_simulation(spread, difference):
    needed = stats.repeats_needed(spread, difference)
    generator = np.random.default_rng(0)
    for repeats in (needed - 1, needed):
        if repeats < 2:
            continue
        first = generator.normal(0.5, spread, (20_000, repeats))
        second = generator.normal(0.5 + difference, spread, (20_000, repeats))
        result = scipy_stats.ttest_ind(second, first, axis=1, equal_var=False)
        simulated = float(np.mean(result.pvalue < 0.05))
        predicted = stats.welch_power(spread, difference, repeats)
        assert simulated == pytest.approx(predicted, abs=0.012), repeats  # 3.5 standard errors
    assert stats.welch_power(spread, difference, needed) >= 0.8
    assert stats.welch_power(spread, difference, needed - 1) < 0.8 or needed == 2


def test_the_repeats_needed_of_known_cases():
    assert stats.repeats_needed(0.01, 0.01) == 17  # d = 1: the t-test's 17 a side, Welch's too
    assert stats.repeats_needed(0.0, 0.01) == 2
    assert stats.repeats_needed(1.0, 0.001) is None
    assert stats.pooled_spread([[0.1, 0.3], [0.5], [0.2, 0.4, 0.6]]) == pytest.approx(
        math.sqrt((0.02 + 0.08) / 3)
    )
    assert stats.pooled_spread([[0.1], [0.2]]) is None


@settings(max_examples=200, deadline=None)
@given(varied, accuracies)
def test_the_one_sided_test_is_scipys(values, value):
    for above, alternative in ((True, "greater"), (False, "less")):
        reference = scipy_stats.ttest_1samp(values, value, alternative=alternative).pvalue
        assert stats.one_sided_t(values, value, above) == pytest.approx(reference, rel=1e-9)


def test_the_one_sided_test_of_a_constant_sample():
    assert stats.one_sided_t([0.1, 0.1, 0.1], 0.12, above=False) == 0.0  # below, no spread
    assert stats.one_sided_t([0.1, 0.1, 0.1], 0.12, above=True) == 1.0
    assert math.isnan(stats.one_sided_t([0.3], 0.1, above=True))  # one run: no test


def test_a_positive_interval_is_the_log_t_interval_and_never_below_zero():
    times = [1.0, 100.0]
    plain_low, _ = stats.mean_interval(times)
    assert plain_low < 0  # what the time column showed before
    middle, low, high = stats.positive_interval(times)
    logs = np.log(times)
    reference = scipy_stats.t.interval(0.95, 1, loc=logs.mean(), scale=scipy_stats.sem(logs))
    assert (middle, low, high) == pytest.approx((10.0, *np.exp(reference)), rel=1e-12)
    assert 0 < low < middle < high
    assert stats.positive_interval([0.03, 0.03, 0.03]) == pytest.approx((0.03, 0.03, 0.03))
    with pytest.raises(ValueError, match="positive values"):
        stats.positive_interval([0.0, 1.0])


def test_a_times_interval_never_reaches_below_zero():
    from cnnlab import plots
    from cnnlab.report.points import Stat

    times = Stat([1.0, 100.0])  # the plain t interval: 50.5 ± 629, below -578 s
    centre, low, high = times.time_interval()
    assert centre == pytest.approx(10.0) and 0 < low < centre < high
    assert times.show("fit_seconds") == f"10.0 [{low:.1f}, {high:.1f}] (2)"
    lower, upper = plots._time_errors([(centre, low, high)])
    assert centre - lower[0] == pytest.approx(low) and low > 0 and upper[0] > 0
