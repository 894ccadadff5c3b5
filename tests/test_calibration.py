"""The report's claims on studies whose answer is known: an A/A study finds nothing, a planted
harm is found with its sign, one run per point claims nothing. First with normal noise of a
known size (fast), then with real runs on scikit-learn's digits (slow)."""

from __future__ import annotations

import numpy as np
import pytest

import fake_runs
from cnnlab.config import RunConfig
from cnnlab.data.datasets import load_dataset
from cnnlab.execution.execute import train_all
from cnnlab.report import calibration
from cnnlab.training.metrics import RunResult


def _result(accuracy: float, seed: int, label_noise: float = 0.0) -> RunResult:
    """A finished run of known test accuracy (CIFAR-10's 10,000 test images)."""
    config = RunConfig(dataset="digits", seed=seed, label_noise=label_noise)
    metrics = {
        "test_accuracy": accuracy,
        "baseline_accuracy": 0.1,
        "confusion_matrix": {"test": fake_runs.test_matrix(accuracy)},
    }
    return RunResult(config, "done", [], metrics)


def _normal_pool(mean: float, spread: float, runs: int, seed: int, label_noise=0.0) -> list:
    values = np.random.default_rng(seed).normal(mean, spread, runs)
    return [_result(float(v), s, label_noise) for s, v in enumerate(values)]


def test_an_a_a_study_of_normal_noise_claims_a_difference_at_most_at_its_level():
    pool = _normal_pool(0.5, 0.01, 60, seed=1)
    rates = calibration.a_a_rate(pool, 6, 5, 100, np.random.default_rng(2))
    for design, rate in rates.items():
        low, _ = rate.interval
        assert low <= 0.05, (design, rate.show())  # at most its level, within its noise
        assert rate.value <= 0.08, (design, rate.show())


def test_a_planted_drop_of_three_spreads_is_found_with_its_sign():
    pools = {
        share: _normal_pool(0.6 - 0.03 * step, 0.01, 30, seed=10 + step, label_noise=share)
        for step, share in enumerate((0.0, 0.2, 0.4, 0.6))
    }
    detection = calibration.planted_rate(pools, 3, 100, np.random.default_rng(3))
    assert detection.trend.value >= 0.95, detection.trend.show()
    # Each 3-spread step alone, simultaneous over the 6 pairs with 3 runs a point, is found
    # about half the time (Tukey's half-width is 2.6 spreads); a 4-spread step, nearly always.
    assert 0.4 <= detection.steps.value < 0.8, detection.steps.show()
    wide = {
        share: _normal_pool(0.6 - 0.04 * step, 0.01, 30, seed=10 + step, label_noise=share)
        for step, share in enumerate((0.0, 0.2, 0.4, 0.6))
    }
    found = calibration.planted_rate(wide, 3, 100, np.random.default_rng(3)).steps
    assert found.value >= 0.8, found.show()
    # one run per point: no claim, however plain the drop
    assert calibration.single_run_rate(pools, 50, np.random.default_rng(4)).hits == 0


def test_a_planted_rise_is_not_called_a_drop():
    pools = {
        share: _normal_pool(0.5 + 0.03 * step, 0.01, 20, seed=20 + step, label_noise=share)
        for step, share in enumerate((0.0, 0.2, 0.4, 0.6))
    }
    detection = calibration.planted_rate(pools, 3, 50, np.random.default_rng(5))
    assert detection.trend.hits == 0 and detection.steps.hits == 0


@pytest.fixture(scope="module")
def digits_pools():
    """Real runs: the seed net on the digits, 10 epochs, clean and with planted label noise."""
    data = load_dataset("digits", None)

    def runs(seeds: int, label_noise: float) -> list[RunResult]:
        configs = [
            RunConfig(
                dataset="digits",
                arch="seed",
                train_size=len(data.train_labels),
                epochs=10,
                seed=seed,
                label_noise=label_noise,
            )
            for seed in range(seeds)
        ]
        return train_all(configs, data, device="cpu")

    return runs(18, 0.0), {share: runs(6, share) for share in (0.0, 0.2, 0.4, 0.6)}


def test_real_runs_of_one_configuration_under_six_names_establish_no_difference(digits_pools):
    pool, _ = digits_pools
    rates = calibration.a_a_rate(pool, 6, 3, 40, np.random.default_rng(0))
    for design, rate in rates.items():
        assert rate.value <= 0.1, (design, rate.show())


def test_real_planted_label_noise_is_found_as_a_drop(digits_pools):
    _, pools = digits_pools
    means = [np.mean([r.metrics["test_accuracy"] for r in pools[q]]) for q in sorted(pools)]
    assert means == sorted(means, reverse=True)  # the harm is monotone, as planted
    detection = calibration.planted_rate(pools, 3, 40, np.random.default_rng(0))
    assert detection.trend.value >= 0.8, detection.trend.show()
    assert calibration.single_run_rate(pools, 40, np.random.default_rng(1)).hits == 0
