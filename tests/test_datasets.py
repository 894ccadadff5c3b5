"""Datasets other than CIFAR-10: tiny official files of every format, built here, each loaded
through `load_dataset`; image folders of any classes and sizes; bad input; the cache keys."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import pickle
import struct
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnlab.data import sources
from cnnlab.data.datasets import (
    CIFAR100_COARSE_NAMES,
    CIFAR100_FINE_NAMES,
    CLASS_NAMES,
    DATASETS,
    DESCRIPTIONS,
    FASHION_MNIST_NAMES,
    MNIST_NAMES,
    Dataset,
    OfficialFile,
    cache_dir,
    fetch_official,
    load_cifar10,
    load_dataset,
    load_dataset_with_cache_info,
    stratified_subset,
)
from cnnlab.errors import CnnlabError
from test_data import make_source, planes, tar_folder, tiny_arrays, zip_folder


def assert_refused(name: str, source: Path | None, pattern: str, **options) -> CnnlabError:
    """Loading raises a one-line CnnlabError matching `pattern` and caches nothing."""
    with pytest.raises(CnnlabError, match=pattern) as refusal:
        load_dataset(name, source, **options)
    assert "\n" not in str(refusal.value)
    assert not (cache_dir() / "arrays").exists()
    return refusal.value


# --- the interface ----------------------------------------------------------------------------


def test_every_dataset_has_a_description_and_unknown_names_list_them():
    assert tuple(DESCRIPTIONS) == DATASETS
    assert {"cifar10", "cifar100", "cifar100-coarse", "mnist", "fashion-mnist"} <= set(DATASETS)
    assert {"digits", "images"} <= set(DATASETS)
    assert all(DESCRIPTIONS[name] and "\n" not in DESCRIPTIONS[name] for name in DATASETS)
    with pytest.raises(CnnlabError, match=r"unknown dataset 'svhn' \(known: cifar10, cifar100"):
        load_dataset("svhn")


def test_dataset_shape_properties_and_the_cifar10_alias(tmp_path: Path):
    assert Dataset is Dataset
    data = load_cifar10(make_source("binary folder", tmp_path, tiny_arrays()))
    assert data.name == "cifar10" and data.class_names == CLASS_NAMES
    assert data.input_shape == (32, 32, 3) and data.num_classes == 10
    gray = Dataset(*(np.zeros((2, 5, 7, 1), np.uint8), np.zeros(2, np.int64)) * 2, ("a", "b"))
    assert gray.input_shape == (5, 7, 1) and gray.num_classes == 2


@pytest.mark.parametrize(
    ("options", "pattern"),
    [
        ({"image_size": 0}, r"image size 0 is not a side or a \(height, width\) pair"),
        ({"image_size": (8, 8, 8)}, "image size"),
        ({"image_size": True}, "image size"),
        ({"image_size": 2000}, r"1\.\.1024"),
        ({"resample": "cubic"}, r"resample 'cubic' is not one of nearest, bilinear, bicubic"),
    ],
)
def test_bad_load_options_are_one_line(options: dict, pattern: str):
    assert_refused("digits", None, pattern, **options)


def test_the_stratified_subset_error_names_the_dataset_and_its_class_counts():
    labels = np.repeat(np.arange(3), [4, 5, 6])
    with pytest.raises(CnnlabError, match=r"1\.\.15 \(mnist holds 15 images: per class 4 5 6\)"):
        stratified_subset(labels, 20, seed=0, dataset="mnist")
    with pytest.raises(CnnlabError, match=r"\(the set holds 30 images: 10 in each of 3 classes\)"):
        stratified_subset(np.repeat(np.arange(3), 10), 31, seed=0)


# --- CIFAR-100 --------------------------------------------------------------------------------


def cifar100_arrays() -> dict[str, np.ndarray]:
    """A few random 32x32 images with fine labels 0..99 and the official coarse label of each."""
    rng = np.random.default_rng(7)
    arrays = {}
    for split, count in (("train", 12), ("test", 5)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)
        arrays[f"{split}_fine"] = rng.integers(0, 100, count).astype(np.int64)
        arrays[f"{split}_coarse"] = arrays[f"{split}_fine"] % 20
    return arrays


def write_cifar100_python(root: Path, arrays: dict[str, np.ndarray], meta: dict | None = None):
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for split in ("train", "test"):
        record = {
            b"filenames": [b"x.png"] * len(arrays[f"{split}_fine"]),
            b"batch_label": split.encode(),
            b"fine_labels": arrays[f"{split}_fine"].tolist(),
            b"coarse_labels": arrays[f"{split}_coarse"].tolist(),
            b"data": planes(arrays[f"{split}_images"]),
        }
        (folder / split).write_bytes(pickle.dumps(record, protocol=2))
    meta = meta or {
        b"fine_label_names": [name.encode() for name in CIFAR100_FINE_NAMES],
        b"coarse_label_names": [name.encode() for name in CIFAR100_COARSE_NAMES],
    }
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    (folder / "file.txt~").write_bytes(b"")
    return folder


def write_cifar100_binary(root: Path, arrays: dict[str, np.ndarray]) -> Path:
    folder = root / "cifar-100-binary"
    folder.mkdir(parents=True)
    for split in ("train", "test"):
        labels = np.stack([arrays[f"{split}_coarse"], arrays[f"{split}_fine"]], axis=1)
        records = np.concatenate([labels.astype(np.uint8), planes(arrays[f"{split}_images"])], 1)
        (folder / f"{split}.bin").write_bytes(records.tobytes())
    (folder / "fine_label_names.txt").write_text("\n".join(CIFAR100_FINE_NAMES) + "\n")
    (folder / "coarse_label_names.txt").write_text("\n".join(CIFAR100_COARSE_NAMES) + "\n")
    return folder


@pytest.mark.parametrize("form", ["python tar.gz", "python folder", "binary tar.gz", "binary zip"])
def test_cifar100_in_every_official_form_gives_fine_and_coarse_labels(form: str, tmp_path: Path):
    arrays = cifar100_arrays()
    write = write_cifar100_python if form.startswith("python") else write_cifar100_binary
    folder = write(tmp_path / "tree", arrays)
    if form.endswith("tar.gz"):
        source = tar_folder(folder.parent, tmp_path / "c.tar.gz")
    elif form.endswith("zip"):
        source = zip_folder(folder.parent, tmp_path / "c.zip")
    else:
        source = folder
    fine = load_dataset("cifar100", source)
    assert fine.name == "cifar100" and fine.class_names == CIFAR100_FINE_NAMES
    assert fine.num_classes == 100 and fine.input_shape == (32, 32, 3)
    assert np.array_equal(fine.train_images, arrays["train_images"])
    assert np.array_equal(fine.test_images, arrays["test_images"])
    assert np.array_equal(fine.train_labels, arrays["train_fine"])
    assert fine.test_labels.dtype == np.int64
    coarse = load_dataset("cifar100-coarse", source)
    assert coarse.class_names == CIFAR100_COARSE_NAMES and coarse.num_classes == 20
    assert np.array_equal(coarse.test_labels, arrays["test_coarse"])
    assert np.array_equal(coarse.train_images, fine.train_images)


def test_cifar100_bad_input_is_one_line(tmp_path: Path):
    arrays = cifar100_arrays()
    wrong_meta = {b"fine_label_names": [b"x"] * 100, b"coarse_label_names": []}
    folder = write_cifar100_python(tmp_path / "a", arrays, meta=wrong_meta)
    assert_refused("cifar100", folder, r"meta: fine_label_names differ from the official 100")
    arrays["test_fine"][1] = 100
    folder = write_cifar100_python(tmp_path / "b", arrays)
    assert_refused("cifar100", folder, r"test: label 100 out of range \(valid: 0\.\.99\)")
    folder = write_cifar100_binary(tmp_path / "c", cifar100_arrays())
    (folder / "test.bin").write_bytes((folder / "test.bin").read_bytes()[:-1])
    assert_refused("cifar100", folder, r"test\.bin: [\d,]+ bytes is not a whole number of 3,074")
    (folder / "test.bin").unlink()
    assert_refused("cifar100", folder, r"missing test\.bin")
    assert_refused(
        "cifar100", make_source("png folder", tmp_path / "d", tiny_arrays()), "no CIFAR-100 layout"
    )


def test_cifar100_pickles_that_would_run_code_are_refused(tmp_path: Path):
    folder = write_cifar100_python(tmp_path, cifar100_arrays())
    (folder / "train").write_bytes(b"\x80\x02cposix\nsystem\nX\x04\x00\x00\x00trueq\x85R.")
    assert_refused("cifar100", folder, r"train: not a CIFAR-100 pickle \(refused global posix")


# --- MNIST and Fashion-MNIST (IDX) -----------------------------------------------------------

IDX_FILES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}


def mnist_arrays(side: int = 28) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    return {
        "train_images": rng.integers(0, 256, (20, side, side), dtype=np.uint8),
        "train_labels": np.arange(20, dtype=np.int64) % 10,
        "test_images": rng.integers(0, 256, (7, side, side), dtype=np.uint8),
        "test_labels": np.arange(7, dtype=np.int64)[::-1] % 10,
    }


def idx_images(images: np.ndarray, magic: int = 0x803, count: int | None = None) -> bytes:
    count = len(images) if count is None else count
    return struct.pack(">4I", magic, count, *images.shape[1:]) + images.tobytes()


def idx_labels(labels: np.ndarray, magic: int = 0x801) -> bytes:
    return struct.pack(">2I", magic, len(labels)) + labels.astype(np.uint8).tobytes()


def write_idx(folder: Path, arrays: dict[str, np.ndarray], compress: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for (split, part), name in IDX_FILES.items():
        array = arrays[f"{split}_{part}"]
        content = idx_images(array) if part == "images" else idx_labels(array)
        if compress:
            (folder / f"{name}.gz").write_bytes(gzip.compress(content, mtime=0))
        else:
            (folder / name).write_bytes(content)
    return folder


@pytest.mark.parametrize("form", ["gz folder", "raw folder", "gz tar", "gz zip in a folder"])
def test_mnist_idx_files_load_in_every_form(form: str, tmp_path: Path):
    arrays = mnist_arrays()
    folder = write_idx(tmp_path / "mnist", arrays, compress=form.startswith("gz"))
    source = folder
    if form == "gz tar":
        source = tar_folder(folder, tmp_path / "mnist.tar")
    elif form == "gz zip in a folder":
        source = zip_folder(tmp_path, tmp_path.parent / f"{tmp_path.name}.zip")
    data = load_dataset("mnist", source)
    assert data.name == "mnist" and data.class_names == MNIST_NAMES
    assert data.input_shape == (28, 28, 1) and data.num_classes == 10
    assert data.train_images.shape == (20, 28, 28, 1)
    assert np.array_equal(data.train_images[..., 0], arrays["train_images"])
    assert np.array_equal(data.test_images[..., 0], arrays["test_images"])
    assert np.array_equal(data.test_labels, arrays["test_labels"])
    assert data.train_labels.dtype == np.int64


def test_fashion_mnist_has_its_class_names_and_a_variant_size_loads(tmp_path: Path):
    arrays = mnist_arrays(side=20)
    data = load_dataset("fashion-mnist", write_idx(tmp_path / "f", arrays))
    assert (
        data.class_names
        == FASHION_MNIST_NAMES
        == (
            *("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt"),
            *("Sneaker", "Bag", "Ankle boot"),
        )
    )
    assert data.input_shape == (20, 20, 1)


def rewrite(folder: Path, split: str, part: str, content: bytes) -> None:
    name = IDX_FILES[(split, part)]
    (folder / f"{name}.gz").write_bytes(gzip.compress(content, mtime=0))


def test_idx_files_with_bad_headers_are_refused(tmp_path: Path):
    arrays = mnist_arrays()
    folder = write_idx(tmp_path / "m", arrays)
    images = arrays["train_images"]
    rewrite(folder, "train", "images", idx_images(images, magic=0x801))
    assert_refused(
        "mnist",
        folder,
        r"train-images-idx3-ubyte\.gz: magic number 0x00000801, expected 0x00000803",
    )
    rewrite(folder, "train", "images", idx_images(images, count=21))  # one image short
    assert_refused(
        "mnist",
        folder,
        r"images-idx3-ubyte\.gz: decompresses to 15,696 bytes, but its header declares 16,480",
    )
    rewrite(folder, "train", "images", idx_images(images, count=19))  # one image too many
    assert_refused(
        "mnist", folder, r"decompresses to more than the 14,912 bytes its header declares"
    )
    rewrite(folder, "train", "images", idx_images(images, count=10**6))
    assert_refused("mnist", folder, r"declares 1,000,000 images of 28×28; at most 100,000 images")
    rewrite(folder, "train", "images", idx_images(images))
    rewrite(folder, "test", "labels", idx_labels(np.array([0, 1, 12, 3, 4, 5, 6])))
    assert_refused(
        "mnist", folder, r"t10k-labels-idx1-ubyte\.gz: label 12 out of range \(valid: 0\.\.9\)"
    )
    rewrite(folder, "test", "labels", idx_labels(np.arange(6)))
    assert_refused("mnist", folder, r"holds 7 images but .*t10k-labels-idx1-ubyte\.gz 6 labels")
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    assert_refused("mnist", folder, r"missing t10k-labels-idx1-ubyte")


def test_a_raw_idx_file_shorter_than_its_header_says_and_a_broken_gzip_are_refused(tmp_path: Path):
    folder = write_idx(tmp_path / "m", mnist_arrays(), compress=False)
    name = folder / "t10k-images-idx3-ubyte"
    name.write_bytes(name.read_bytes()[:-5])
    assert_refused(
        "mnist", folder, r"t10k-images-idx3-ubyte: 5,499 bytes, but its header declares 5,504"
    )
    folder = write_idx(tmp_path / "g", mnist_arrays())
    name = folder / "train-labels-idx1-ubyte.gz"
    name.write_bytes(name.read_bytes()[:-12])
    assert_refused("mnist", folder, r"train-labels-idx1-ubyte\.gz: .*truncated")


# --- digits -----------------------------------------------------------------------------------


def test_digits_come_from_scikit_learn_split_four_to_one_within_each_class():
    from sklearn.datasets import load_digits

    first = load_dataset_with_cache_info("digits")
    data = first.dataset
    assert data.name == "digits" and data.source == "sklearn.datasets.load_digits"
    assert data.train_images.shape == (1442, 8, 8, 1) and data.test_images.shape == (355, 8, 8, 1)
    assert data.class_names == MNIST_NAMES and data.input_shape == (8, 8, 1)
    assert np.bincount(data.test_labels).tolist() == [35, 36, 35, 36, 36, 36, 36, 35, 34, 36]
    bundled = load_digits()
    zeros = np.flatnonzero(bundled.target == 0)
    # The fifth 0 in the bundled order is the first test 0; the first four are training images.
    expected = np.rint(bundled.images[zeros[4]] * 255 / 16).astype(np.uint8)
    assert np.array_equal(data.test_images[data.test_labels == 0][0, :, :, 0], expected)
    assert np.array_equal(
        data.train_images[data.train_labels == 0][:4, :, :, 0],
        np.rint(bundled.images[zeros[:4]] * 255 / 16).astype(np.uint8),
    )
    assert data.train_images.max() == 255 and len(data.source_sha256) == 64
    again = load_dataset_with_cache_info("digits")
    assert again.from_cache and again.dataset.source_sha256 == data.source_sha256
    assert len(first.train_channel_mean) == 1 and 0 < first.train_channel_std[0] < 1
    assert_refused_digits_with_a_path()


def assert_refused_digits_with_a_path():
    with pytest.raises(CnnlabError, match="digits comes with scikit-learn and reads no files"):
        load_dataset("digits", "somewhere")


def test_image_size_resizes_an_array_dataset_and_keys_its_own_cache():
    plain = load_dataset_with_cache_info("digits")
    larger = load_dataset_with_cache_info("digits", image_size=16, resample="nearest")
    assert larger.dataset.input_shape == (16, 16, 1)
    assert larger.cache_path != plain.cache_path
    # Nearest-neighbour doubling repeats each pixel twice in each direction.
    assert np.array_equal(larger.dataset.test_images[:, ::2, ::2], plain.dataset.test_images)
    wide = load_dataset("digits", image_size=(8, 12))
    assert wide.input_shape == (8, 12, 1)


# --- image folders ----------------------------------------------------------------------------


def write_images(root: Path, layout: dict[str, list[tuple[str, tuple[int, int], str]]]) -> Path:
    """`layout`: 'split/class' -> [(file name, (width, height), mode)], each a distinct image."""
    for index, (folder, files) in enumerate(sorted(layout.items())):
        for number, (name, size, mode) in enumerate(files):
            path = root / folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            value = (index * 40 + number * 7) % 256
            color = value if mode == "L" else (value, 255 - value, 3)
            Image.new(mode, size, color).save(path)
    return root


def gray_layout(size=(6, 4)) -> dict[str, list[tuple[str, tuple[int, int], str]]]:
    return {
        "train/cats": [("10.png", size, "L"), ("2.png", size, "L"), ("b.png", size, "L")],
        "train/ants": [("0.png", size, "L")],
        "test/cats": [("1.png", size, "L")],
        "test/ants": [("5.png", size, "L"), ("3.png", size, "L")],
    }


def test_grayscale_folders_give_one_channel_sorted_classes_and_numeric_file_order(tmp_path: Path):
    root = write_images(tmp_path / "img", gray_layout())
    data = load_dataset("images", root)
    assert data.name == "images" and data.class_names == ("ants", "cats")
    assert data.input_shape == (4, 6, 1) and data.num_classes == 2
    assert data.train_labels.tolist() == [0, 1, 1, 1] and data.test_labels.tolist() == [0, 0, 1]
    # cats in train: 2.png, then 10.png (by number), then b.png (names that are no number last)
    cats = [
        np.asarray(Image.open(root / "train/cats" / name)) for name in ("2.png", "10.png", "b.png")
    ]
    assert [int(image[0, 0, 0]) for image in data.train_images[1:]] == [int(c[0, 0]) for c in cats]


def test_any_colour_image_makes_every_image_rgb(tmp_path: Path):
    layout = gray_layout()
    layout["test/cats"] = [("1.jpg", (6, 4), "RGB")]
    root = write_images(tmp_path / "img", layout)
    data = load_dataset("images", root)
    assert data.input_shape == (4, 6, 3)
    gray = data.train_images[0]  # ants/0.png, grayscale, replicated into R, G and B
    assert np.array_equal(gray[..., 0], gray[..., 1]) and np.array_equal(gray[..., 0], gray[..., 2])


def test_mixed_sizes_need_an_image_size(tmp_path: Path):
    layout = gray_layout()
    layout["test/ants"] = [("5.png", (9, 9), "L")]
    root = write_images(tmp_path / "img", layout)
    error = assert_refused("images", root, r"images differ in size: .*test/ants/5\.png is 9×9")
    assert "is 6×4" in str(error) and "image size" in str(error)
    for resample in ("nearest", "bilinear", "bicubic", "lanczos"):
        data = load_dataset("images", root, image_size=(5, 3), resample=resample)
        assert data.input_shape == (5, 3, 1)
    assert load_dataset("images", root, image_size=8).input_shape == (8, 8, 1)


@pytest.mark.parametrize("form", ["zip", "tar", "tar.gz", "nested tar.gz"])
def test_image_folders_as_archives_with_or_without_a_top_folder(form: str, tmp_path: Path):
    root = write_images(tmp_path / "img", gray_layout())
    expected = load_dataset("images", root)
    if form == "zip":
        source = zip_folder(root, tmp_path / "i.zip")
    elif form == "nested tar.gz":
        source = tar_folder(root, tmp_path / "i.tar.gz", wrapper="my-set")
    else:
        source = tar_folder(root, tmp_path / f"i.{form}")
    data = load_dataset("images", source)
    assert data.class_names == expected.class_names
    assert np.array_equal(data.train_images, expected.train_images)
    assert np.array_equal(data.test_labels, expected.test_labels)


def test_a_class_missing_from_one_split_or_empty_is_one_line(tmp_path: Path):
    layout = gray_layout()
    layout["train/bees"] = [("0.png", (6, 4), "L")]
    root = write_images(tmp_path / "a", layout)
    assert_refused("images", root, r"class folder train/bees/ has no test/bees/")
    assert_refused(
        "images",
        zip_folder(root, tmp_path / "a.zip"),
        r"class folder train/bees/ has no test/bees/",
    )
    layout["test/bees"] = []  # an empty class folder
    root = write_images(tmp_path / "b", layout)
    (root / "test" / "bees").mkdir()
    assert_refused("images", root, r"no images in test/bees/")
    assert_refused("images", tar_folder(root, tmp_path / "b.tar"), r"no images in test/bees/")


def test_images_need_a_path_and_refuse_non_images_and_too_many_pixels(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("CNNLAB_DATA_IMAGES", raising=False)
    assert_refused("images", None, r"the images dataset needs a folder or archive: give --data")
    root = write_images(tmp_path / "img", gray_layout())
    (root / "train/ants/notes.txt").write_text("hello")
    assert_refused("images", root, r"train/ants/notes\.txt is not a \.png, \.jpg, \.bmp or \.gif")
    (root / "train/ants/notes.txt").unlink()
    Image.new("L", (1100, 1000)).save(root / "train/ants/big.png")
    assert_refused("images", root, r"train/ants/big\.png declares too many pixels \(1100×1000\)")


def test_the_decoded_pixel_budget_is_checked_from_the_headers(tmp_path: Path, monkeypatch):
    root = write_images(tmp_path / "img", gray_layout())
    monkeypatch.setattr(sources, "MAX_DECODED_BYTES", 100)  # 7 images of 24 pixels: 168
    assert_refused("images", root, r"hold more than 100 bytes of pixels")


def test_one_folder_as_cifar10_and_as_images_never_shares_the_cache(tmp_path: Path):
    source = make_source("png folder", tmp_path, tiny_arrays())
    as_cifar = load_dataset_with_cache_info("cifar10", source)
    as_images = load_dataset_with_cache_info("images", source)
    assert as_cifar.cache_path != as_images.cache_path
    assert as_cifar.cache_path.name == as_cifar.dataset.source_sha256[:32]  # as it always was
    assert as_images.dataset.name == "images"
    # The classes sorted by name are not CIFAR-10's official order.
    assert as_images.dataset.class_names == tuple(sorted(CLASS_NAMES))
    assert not load_dataset_with_cache_info("images", source, image_size=16).from_cache
    assert load_dataset_with_cache_info("images", source).from_cache


def test_mnist_from_image_folders_needs_its_ten_digit_classes_in_28x28_gray(tmp_path: Path):
    layout = {
        f"{split}/{digit}": [(f"{digit * 10 + number}.png", (28, 28), "L") for number in range(2)]
        for split in ("train", "test")
        for digit in range(10)
    }
    root = write_images(tmp_path / "mnist-png", layout)
    data = load_dataset("mnist", tar_folder(root, tmp_path / "m.tar.gz", wrapper="mnist-png"))
    assert data.input_shape == (28, 28, 1) and data.class_names == MNIST_NAMES
    assert np.bincount(data.train_labels).tolist() == [2] * 10
    Image.new("L", (28, 27)).save(root / "train/3/31.png")
    with pytest.raises(CnnlabError, match=r"train/3/31\.png is 28×27 L, expected 28×28 L"):
        load_dataset("mnist", root)


# --- where the data comes from: variables, the fetched files, downloads ------------------------


def served_idx(tmp_path: Path) -> list[OfficialFile]:
    """The four IDX files served from file:// URLs, with their checksums."""
    served = write_idx(tmp_path / "served", mnist_arrays())
    files = []
    for path in sorted(served.iterdir()):
        content = path.read_bytes()
        files.append(
            OfficialFile(
                "mnist",
                path.name,
                (str(tmp_path / "nowhere" / path.name), path.as_uri()),  # a dead mirror first
                hashlib.md5(content).hexdigest(),
                hashlib.sha256(content).hexdigest(),
                "mnist",
            )
        )
    return files


def refuse_non_file_urls(url: str, timeout: float):
    if not url.startswith("file://"):
        raise urllib.error.URLError(OSError(-2, "Name or service not known"))
    return urllib.request.urlopen(url, timeout=timeout)


def test_fetch_mnist_then_load_it_from_the_cache(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("CNNLAB_DATA_MNIST", raising=False)
    files = served_idx(tmp_path)
    fetched = fetch_official(dataset="mnist", files=files, opener=refuse_non_file_urls)
    assert fetched == (cache_dir() / "mnist").resolve()
    assert sorted(path.name for path in fetched.iterdir()) == sorted(file.name for file in files)
    data = load_dataset("mnist")
    assert data.source == str(fetched)
    assert np.array_equal(data.test_labels, mnist_arrays()["test_labels"])
    # Verified files already there are kept without asking the network.
    assert fetch_official(dataset="mnist", files=files, opener=refuse_non_file_urls) == fetched


def test_fetch_with_a_wrong_md5_keeps_nothing(tmp_path: Path):
    files = served_idx(tmp_path)
    files[2] = dataclasses.replace(files[2], md5="0" * 32)
    dest = tmp_path / "dest"
    with pytest.raises(
        CnnlabError, match=r"checksum mismatch .*expected md5 0{32}.*nothing was kept"
    ):
        fetch_official(dest, dataset="mnist", files=files, opener=refuse_non_file_urls)
    assert sorted(path.name for path in (dest / "mnist").iterdir()) == sorted(
        file.name for file in files[:2]
    )


def test_offline_mnist_names_its_own_variable(monkeypatch):
    monkeypatch.delenv("CNNLAB_DATA_MNIST", raising=False)

    def offline(url: str, timeout: float):
        raise urllib.error.URLError(OSError(-3, "Temporary failure in name resolution"))

    with pytest.raises(CnnlabError, match=r"cannot download .*CNNLAB_DATA_MNIST=PATH") as error:
        fetch_official(dataset="mnist", opener=offline)
    assert "\n" not in str(error.value)
    with pytest.raises(CnnlabError, match=r"digits has no official files to fetch"):
        fetch_official(dataset="digits")


def test_the_official_table_holds_the_published_checksums():
    from cnnlab.data.datasets import OFFICIAL_FILES

    md5 = {(file.dataset, file.name): file.md5 for file in OFFICIAL_FILES}
    assert md5[("cifar100", "cifar-100-python.tar.gz")] == "eb9058c3a382ffc7106e4002c42a8d85"
    assert md5[("cifar100", "cifar-100-binary.tar.gz")] == "03b5dce01913d631647c71ecec9e9cb8"
    assert md5[("mnist", "t10k-labels-idx1-ubyte.gz")] == "ec29112dd5afa0611ce80d1b7f02629c"
    assert (
        md5[("fashion-mnist", "train-images-idx3-ubyte.gz")] == "8d4fb7e6c68d591d4c3dfef9ec88bf0d"
    )


def test_each_dataset_reads_its_own_variable(tmp_path: Path, monkeypatch):
    mnist = write_idx(tmp_path / "m", mnist_arrays())
    monkeypatch.setenv("CNNLAB_DATA_FASHION_MNIST", str(mnist))
    monkeypatch.setenv("CNNLAB_DATA_MNIST", str(tmp_path / "elsewhere"))
    assert load_dataset("fashion-mnist").source == str(mnist.resolve())
    with pytest.raises(CnnlabError, match=r"CNNLAB_DATA_MNIST .*elsewhere: no such file"):
        load_dataset("mnist")
    assert load_dataset("mnist", mnist).name == "mnist"  # the path beats the variable


# --- the real MNIST PNG archive ---------------------------------------------------------------

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(scope="session")
def shared_mnist_path() -> Path:
    """The workplace's PNG copy of MNIST: missing it fails under CI, skips elsewhere."""
    path = Path(__file__).parents[2] / "shared/datasets/mnist-png.tar.gz"
    if not path.is_file():
        if os.environ.get("CI"):
            pytest.fail(f"CI promises the shared MNIST archive, but {path} is not there")
        pytest.skip("the shared MNIST PNG archive is not on this machine")
    return path


@pytest.mark.slow
@pytest.mark.parametrize("name", ["images", "mnist"])
def test_the_shared_mnist_png_archive_loads_with_the_official_counts(name: str, shared_mnist_path):
    first = load_dataset_with_cache_info(name, shared_mnist_path)
    data = first.dataset
    assert not first.from_cache and data.name == name
    assert data.class_names == MNIST_NAMES and data.input_shape == (28, 28, 1)
    assert data.train_images.shape == (60_000, 28, 28, 1) and data.test_images.shape[0] == 10_000
    assert np.bincount(data.train_labels).tolist() == MNIST_TRAIN_COUNTS
    assert np.bincount(data.test_labels).tolist() == MNIST_TEST_COUNTS
    assert 0.12 < first.train_channel_mean[0] < 0.14  # MNIST's well-known mean, 0.1307
    started = time.perf_counter()
    again = load_dataset_with_cache_info(name, shared_mnist_path)
    assert time.perf_counter() - started < 1.0 and again.from_cache
    assert np.array_equal(again.dataset.test_images, data.test_images)
