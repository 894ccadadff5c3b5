"""scikit-learn's bundled 8x8 digits (real data shipped inside a dependency; works offline).

`sklearn.datasets.load_digits` holds 1,797 images of 8×8 pixels valued 0..16, 10 classes. They
become uint8 by round(v · 255 / 16) and (N, 8, 8, 1). The split is fixed and stratified: within
each class, in the bundled order, every fifth image (the 5th, 10th, ... of that class) goes to
the test set, the others to the training set, each set kept in the bundled order. Per class
0..9 that is 178 182 177 183 181 182 181 179 174 180 images, of which 35 36 35 36 36 36 36 35 34
36 are test: 1,442 training and 355 test images.
"""

from __future__ import annotations

import numpy as np

from cnnlab.data.sources import Arrays

DIGIT_NAMES = tuple(str(digit) for digit in range(10))
TEST_EVERY = 5  # within a class, every fifth image is a test image


def read_digits() -> Arrays:
    """The digits as arrays, split as the module says."""
    from sklearn.datasets import load_digits

    bundled = load_digits()
    values = np.asarray(bundled.images, dtype=np.float64)
    labels = np.asarray(bundled.target, dtype=np.int64)
    images = np.rint(values * 255.0 / 16.0).astype(np.uint8)[:, :, :, None]
    rank_in_class = np.empty(labels.size, dtype=np.int64)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        rank_in_class[members] = np.arange(members.size)
    test = rank_in_class % TEST_EVERY == TEST_EVERY - 1
    return Arrays(
        np.ascontiguousarray(images[~test]),
        labels[~test],
        np.ascontiguousarray(images[test]),
        labels[test],
        DIGIT_NAMES,
    )
