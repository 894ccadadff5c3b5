"""`cnnlab data info|show|fetch`: a dataset's facts, a grid of its images, its official files."""

from __future__ import annotations

import argparse

from cnnlab.cli.options import load_options
from cnnlab.errors import CnnlabError


def cmd_data_info(args: argparse.Namespace) -> int:
    import numpy as np

    from cnnlab.data.datasets import load_dataset_with_cache_info

    loaded = load_dataset_with_cache_info(args.dataset, args.data, **load_options(args))
    data = loaded.dataset
    train_counts = np.bincount(data.train_labels, minlength=len(data.class_names))
    test_counts = np.bincount(data.test_labels, minlength=len(data.class_names))
    width = max(len("class"), *(len(name) for name in data.class_names))
    print(f"dataset: {data.name}, {'x'.join(map(str, data.input_shape))} images")
    print(f"source: {data.source}")
    print(f"sha256: {data.source_sha256}")
    print(f"{'class':<{width}}  {'train':>6}  {'test':>6}")
    for name, train, test in zip(data.class_names, train_counts, test_counts, strict=True):
        print(f"{name:<{width}}  {train:>6,}  {test:>6,}")
    print(f"{'total':<{width}}  {train_counts.sum():>6,}  {test_counts.sum():>6,}")
    mean = " ".join(f"{value:.4f}" for value in loaded.train_channel_mean)
    std = " ".join(f"{value:.4f}" for value in loaded.train_channel_std)
    channels = "R G B" if len(loaded.train_channel_mean) == 3 else "gray"
    print(f"train mean ({channels}, 0..1): {mean}")
    print(f"train std  ({channels}, 0..1): {std}")
    how = "loaded from the cache" if loaded.from_cache else "decoded now and cached"
    print(f"cache: {loaded.cache_path} ({how})")
    return 0


def cmd_data_show(args: argparse.Namespace) -> int:
    from pathlib import Path

    from cnnlab.data.datasets import load_dataset, sample_images_per_class
    from cnnlab.plots import class_samples_figure, save_figure

    data = load_dataset(args.dataset, args.data, **load_options(args))
    images, labels = (
        (data.train_images, data.train_labels)
        if args.split == "train"
        else (data.test_images, data.test_labels)
    )
    samples = sample_images_per_class(images, labels, args.per_class)
    title = f"{data.name} {args.split}: {args.per_class} per class ({Path(data.source).name})"
    save_figure(class_samples_figure(samples, data.class_names, title), args.out)
    print(f"wrote {args.out}: {args.per_class} {args.split} images per class")
    return 0


def cmd_data_fetch(args: argparse.Namespace) -> int:
    from cnnlab.data.datasets import fetch_official

    if getattr(args, "image_size", None) is not None or getattr(args, "resample", None):
        raise CnnlabError("--image-size and --resample apply when data is loaded, not to fetch")
    path = fetch_official(args.dest, dataset=args.dataset)
    print(f"{path}: md5 and sha256 verified")
    return 0
