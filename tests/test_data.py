"""The data layer: every source form gives the same arrays; subsets, splits, cache, bad input."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from cnnlab.data import (
    CLASS_NAMES,
    load_cifar10,
    load_cifar10_with_cache_info,
    stratified_order,
    stratified_subset,
    validation_split,
)
from cnnlab.errors import CnnlabError

# --- subsets and splits -----------------------------------------------------------------------


def balanced_labels(per_class: int) -> np.ndarray:
    return np.tile(np.arange(10, dtype=np.int64), per_class)


def test_every_prefix_of_ten_k_holds_k_of_each_class():
    labels = balanced_labels(50)
    order = stratified_order(labels, seed=3)
    assert sorted(order.tolist()) == list(range(labels.size))
    for k in range(1, 51):
        assert np.bincount(labels[order[: 10 * k]], minlength=10).tolist() == [k] * 10


def test_subset_is_fixed_per_seed_and_nested():
    labels = balanced_labels(100)
    small, large = stratified_subset(labels, 200, seed=7), stratified_subset(labels, 400, seed=7)
    assert np.array_equal(small, stratified_subset(labels, 200, seed=7))
    assert set(small.tolist()) <= set(large.tolist())
    assert np.array_equal(small, large[:200])
    assert not np.array_equal(small, stratified_subset(labels, 200, seed=8))


@pytest.mark.parametrize("size", [0, -1, 1001, 2.5, True])
def test_subset_size_out_of_range_is_refused(size):
    with pytest.raises(CnnlabError, match=r"subset size .* 1\.\.1000"):
        stratified_subset(balanced_labels(100), size, seed=0)


def test_validation_split_takes_the_last_fraction_as_keras_does():
    indices = np.arange(100, 110)
    train, validation = validation_split(indices, 0.25)  # int(10 * 0.75) = 7
    assert train.tolist() == list(range(100, 107))
    assert validation.tolist() == [107, 108, 109]
    train, validation = validation_split(np.arange(5000), 0.1)
    assert (train.size, validation.size) == (4500, 500)
    train, validation = validation_split(indices, 0.0)
    assert np.array_equal(train, indices) and validation.size == 0


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5, float("nan")])
def test_validation_fraction_out_of_range_is_refused(fraction):
    with pytest.raises(CnnlabError, match=r"validation fraction .* \[0, 1\)"):
        validation_split(np.arange(10), fraction)


def test_validation_split_that_empties_a_side_is_refused():
    with pytest.raises(CnnlabError, match="empty"):
        validation_split(np.arange(1), 0.5)  # int(1 * 0.5) = 0 training images
    with pytest.raises(CnnlabError, match="empty"):
        validation_split(np.arange(10), 1e-17)  # int(10 * 1.0) = 10: no validation image


# --- the shared archive -----------------------------------------------------------------------


@pytest.mark.slow
def test_shared_jpeg_archive_loads_and_then_comes_from_the_cache(shared_archive_path: Path):
    first = load_cifar10_with_cache_info(shared_archive_path)
    data = first.dataset
    assert not first.from_cache
    assert data.train_images.shape == (50_000, 32, 32, 3) and data.train_images.dtype == np.uint8
    assert data.test_images.shape == (10_000, 32, 32, 3)
    assert data.train_labels.dtype == np.int64 and data.test_labels.dtype == np.int64
    assert np.bincount(data.train_labels).tolist() == [5000] * 10
    assert np.bincount(data.test_labels).tolist() == [1000] * 10
    assert data.class_names == CLASS_NAMES
    assert np.allclose(first.train_channel_mean, (0.491, 0.482, 0.447), atol=0.01)
    started = time.perf_counter()
    second = load_cifar10_with_cache_info(shared_archive_path)
    assert time.perf_counter() - started < 1.0
    assert second.from_cache
    assert second.dataset.source_sha256 == data.source_sha256
    assert np.array_equal(second.dataset.test_images, data.test_images)
    assert load_cifar10(shared_archive_path).source == data.source
