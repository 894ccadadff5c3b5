"""Every CIFAR-10 source -> one uint8 array pair per split, cached; subsets and splits.

CONTRACT (other modules rely on these names; the implementation fills in the rest):
- `Cifar10`: the in-memory dataset.
- `load_cifar10(data=None) -> Cifar10`: `data` > $CNNLAB_DATA > the user cache > download.
- `stratified_order(labels, seed) -> indices` and `stratified_subset(labels, size, seed)`.
- `validation_split(indices, fraction) -> (train_indices, validation_indices)`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CLASS_NAMES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)


@dataclass(frozen=True)
class Cifar10:
    """CIFAR-10 in memory: images uint8 (N, 32, 32, 3) channels-last, labels int64 (N,)."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: tuple[str, ...] = CLASS_NAMES
    source: str = ""  # where it came from: a path, or a description for synthetic data
    source_sha256: str = ""  # checksum of the source file (or of the folder listing), "" if none
