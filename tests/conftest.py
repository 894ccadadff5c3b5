"""Shared fixtures: an isolated cache, tiny synthetic CIFAR-like data, the shared archive."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from cnnlab.data.datasets import CLASS_NAMES, Dataset


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """No test reads or writes the user's cache."""
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture
def tiny_cifar() -> Dataset:
    """20 train and 10 test images per class, with a class-dependent colour so nets can learn."""
    rng = np.random.default_rng(0)

    def split(per_class: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.repeat(np.arange(10), per_class)
        images = rng.integers(0, 64, size=(labels.size, 32, 32, 3), dtype=np.uint8)
        # One channel per image (chosen by its label) brightened by a label-dependent amount.
        brightness = (labels * 19).astype(np.uint8)[:, None, None]
        images[np.arange(labels.size), :, :, labels % 3] += brightness
        return images, labels.astype(np.int64)

    train_images, train_labels = split(20)
    test_images, test_labels = split(10)
    return Dataset(train_images, train_labels, test_images, test_labels, CLASS_NAMES, "synthetic")


def shared_archive() -> Path | None:
    """The workplace's JPEG copy of CIFAR-10, if this machine has it."""
    candidates = [os.environ.get("CNNLAB_DATA", "")]
    candidates.append(str(Path(__file__).parents[2] / "shared/datasets/cifar10-jpeg.tar.gz"))
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


@pytest.fixture(scope="session")
def shared_archive_path() -> Path:
    """The shared archive: missing it fails under CI (which promises it), skips elsewhere."""
    path = shared_archive()
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("CI sets CNNLAB_DATA but the shared CIFAR-10 archive is not there")
        pytest.skip("the shared CIFAR-10 archive is not on this machine")
    return path
