"""Image folders for the data tests: a CIFAR look-alike written as PNGs."""

from __future__ import annotations

from pathlib import Path


def write_png_folder(root: Path) -> Path:
    """An image-folder CIFAR look-alike: 20 train and 10 test PNGs per class, coloured by class."""
    import numpy as np
    from PIL import Image

    from cnnlab.data.datasets import CLASS_NAMES

    rng = np.random.default_rng(0)
    for split, count in (("train", 20), ("test", 10)):
        for label, name in enumerate(CLASS_NAMES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for index in range(count):
                pixels = rng.integers(0, 96, size=(32, 32, 3), dtype=np.uint8)
                pixels[..., label % 3] += np.uint8(16 * label)
                Image.fromarray(pixels).save(folder / f"{index:03d}.png")
    return root
