"""The data layer: every source form gives the same arrays; subsets, splits, cache, bad input."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import shutil
import stat
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnlab.data.datasets import (
    CLASS_NAMES,
    cache_dir,
    fetch_official,
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


# --- tiny sources of every form, from one array set -------------------------------------------

TRAIN_PER_CLASS, TEST_PER_CLASS = 5, 2


def tiny_arrays() -> dict[str, np.ndarray]:
    """Random images in class order (as image folders give them), 5 train and 2 test per class."""
    rng = np.random.default_rng(42)
    arrays = {}
    for split, per_class in (("train", TRAIN_PER_CLASS), ("test", TEST_PER_CLASS)):
        labels = np.repeat(np.arange(10, dtype=np.int64), per_class)
        arrays[f"{split}_images"] = rng.integers(0, 256, (labels.size, 32, 32, 3), dtype=np.uint8)
        arrays[f"{split}_labels"] = labels
    return arrays


def planes(images: np.ndarray) -> np.ndarray:
    """(N, 32, 32, 3) -> (N, 3072) R, G, B planes, as the official batches store them."""
    return images.transpose(0, 3, 1, 2).reshape(len(images), -1)


def batches(arrays: dict[str, np.ndarray]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The official batch names -> (images, labels): the training set in five equal parts."""
    parts = zip(
        np.array_split(arrays["train_images"], 5),
        np.array_split(arrays["train_labels"], 5),
        strict=True,
    )
    named = {f"data_batch_{number}": part for number, part in enumerate(parts, start=1)}
    named["test_batch"] = (arrays["test_images"], arrays["test_labels"])
    return named


def pickle_batch(images: np.ndarray, labels: np.ndarray, name: str) -> bytes:
    """A batch shaped like the official ones: bytes keys, uint8 planes, a list of int labels."""
    batch = {
        b"batch_label": name.encode(),
        b"labels": [int(label) for label in labels],
        b"data": planes(images),
        b"filenames": [f"{index}.png".encode() for index in range(len(labels))],
    }
    return pickle.dumps(batch, protocol=2)


def write_pickle_folder(root: Path, arrays: dict[str, np.ndarray]) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name, (images, labels) in batches(arrays).items():
        (folder / name).write_bytes(pickle_batch(images, labels, name))
    meta = {b"label_names": [name.encode() for name in CLASS_NAMES], b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    (folder / "readme.html").write_text("<p>CIFAR-10</p>")
    return folder


def binary_batch(images: np.ndarray, labels: np.ndarray) -> bytes:
    return np.concatenate([labels.astype(np.uint8)[:, None], planes(images)], axis=1).tobytes()


def write_binary_folder(root: Path, arrays: dict[str, np.ndarray]) -> Path:
    folder = root / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    for name, (images, labels) in batches(arrays).items():
        (folder / f"{name}.bin").write_bytes(binary_batch(images, labels))
    (folder / "batches.meta.txt").write_text("\n".join(CLASS_NAMES) + "\n")
    return folder


def write_image_folders(root: Path, arrays: dict[str, np.ndarray]) -> Path:
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        for index, (image, label) in enumerate(zip(images, labels, strict=True)):
            path = root / split / CLASS_NAMES[label] / f"{index:04d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(path)
    return root


def tar_folder(folder: Path, archive: Path, wrapper: str | None = None) -> Path:
    """Pack `folder`'s contents (under `wrapper`/ if given) into a .tar or .tar.gz."""
    mode = "w:gz" if archive.name.endswith(".gz") else "w"
    with tarfile.open(archive, mode) as packed:
        for path in sorted(folder.rglob("*")):
            relative = path.relative_to(folder).as_posix()
            packed.add(path, f"{wrapper}/{relative}" if wrapper else relative, recursive=False)
    return archive


def zip_folder(folder: Path, archive: Path) -> Path:
    with zipfile.ZipFile(archive, "w") as packed:
        for path in sorted(folder.rglob("*")):
            packed.write(path, path.relative_to(folder).as_posix())
    return archive


def make_source(form: str, root: Path, arrays: dict[str, np.ndarray]) -> Path:
    """A tiny CIFAR-10 source of the named form under `root`."""
    if form.startswith("pickle"):
        folder = write_pickle_folder(root / "tree", arrays)
    elif form.startswith("binary"):
        folder = write_binary_folder(root / "tree", arrays)
    else:
        folder = write_image_folders(root / "tree", arrays)
    if form.endswith("tar.gz"):
        return tar_folder(folder.parent if form != "png tar.gz" else folder, root / "s.tar.gz")
    if form.endswith(".tar"):
        return tar_folder(folder, root / "source.tar", wrapper="cifar10")
    if form.endswith(".zip"):
        return zip_folder(folder, root / "source.zip")
    return folder


FORMS = [
    "pickle tar.gz",
    "pickle folder",
    "binary tar.gz",
    "binary folder",
    "png folder",
    "png .zip",
    "png .tar",
    "png tar.gz",
]


@pytest.mark.parametrize("form", FORMS)
def test_every_form_gives_the_same_arrays(form: str, tmp_path: Path):
    arrays = tiny_arrays()
    source = make_source(form, tmp_path, arrays)
    data = load_cifar10(source)
    for name, expected in arrays.items():
        loaded = getattr(data, name)
        assert loaded.dtype == expected.dtype, name
        assert np.array_equal(loaded, expected), name
    assert data.class_names == CLASS_NAMES
    assert data.source == str(source.resolve())
    assert len(data.source_sha256) == 64
    if source.is_file():
        assert data.source_sha256 == hashlib.sha256(source.read_bytes()).hexdigest()


def test_official_layout_wrapped_in_a_parent_folder_is_found(tmp_path: Path):
    """Pointing at the folder that holds cifar-10-batches-py/ works, as for the archive."""
    arrays = tiny_arrays()
    write_pickle_folder(tmp_path / "download", arrays)
    data = load_cifar10(tmp_path / "download")
    assert np.array_equal(data.train_images, arrays["train_images"])


def test_pickles_naming_numpy_1_modules_load_as_the_official_python_2_batches_do(tmp_path: Path):
    """The official batches name numpy.core.multiarray; NumPy 2 calls it numpy._core.multiarray."""
    arrays = tiny_arrays()
    folder = write_pickle_folder(tmp_path, arrays)
    for name in [*(f"data_batch_{number}" for number in range(1, 6)), "test_batch"]:
        content = (folder / name).read_bytes()
        assert b"numpy._core.multiarray\n_reconstruct" in content  # protocol 2: text GLOBALs
        old_names = content.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
        (folder / name).write_bytes(old_names)
    assert np.array_equal(load_cifar10(folder).train_images, arrays["train_images"])


def test_pickles_of_the_newest_protocol_load(tmp_path: Path):
    arrays = tiny_arrays()
    folder = write_pickle_folder(tmp_path, arrays)
    for name, (images, labels) in batches(arrays).items():
        batch = {"data": planes(images), "labels": labels}  # str keys, an int64 label array
        (folder / name).write_bytes(pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL))
    assert np.array_equal(load_cifar10(folder).test_images, arrays["test_images"])


def test_a_folder_checksum_follows_its_listing(tmp_path: Path):
    source = write_binary_folder(tmp_path, tiny_arrays())
    before = load_cifar10(source).source_sha256
    assert load_cifar10(source).source_sha256 == before
    batch = source / "test_batch.bin"
    os.utime(batch, ns=(0, batch.stat().st_mtime_ns + 10**9))
    assert load_cifar10(source).source_sha256 != before


# --- bad input: one clear error, nothing cached -----------------------------------------------


def assert_refused(source: Path, pattern: str) -> CnnlabError:
    """Loading `source` raises a one-line CnnlabError matching `pattern` and caches nothing."""
    with pytest.raises(CnnlabError, match=pattern) as refusal:
        load_cifar10(source)
    assert "\n" not in str(refusal.value)
    assert not (cache_dir() / "arrays").exists()
    return refusal.value


def test_missing_path_is_named(tmp_path: Path):
    assert_refused(tmp_path / "nowhere.tar.gz", r"--data .*nowhere\.tar\.gz: no such file")


@pytest.mark.parametrize("form", ["pickle tar.gz", "png .zip", "png .tar"])
def test_truncated_archive_is_refused(form: str, tmp_path: Path):
    source = make_source(form, tmp_path, tiny_arrays())
    source.write_bytes(source.read_bytes()[: source.stat().st_size * 2 // 3])
    assert_refused(source, "truncated or corrupt")


def test_a_file_that_is_no_archive_is_refused(tmp_path: Path):
    source = tmp_path / "cifar.dat"
    source.write_bytes(b"not an archive at all" * 100)
    assert_refused(source, r"not a folder, \.zip, \.tar or \.tar\.gz")


class RunsACommand:
    """A pickle payload that would run a shell command when loaded by a trusting unpickler."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def replace_member(folder: Path, name: str, content: bytes) -> None:
    (folder / name).write_bytes(content)


def test_a_pickle_that_would_run_a_command_is_refused_before_running(tmp_path: Path):
    folder = write_pickle_folder(tmp_path, tiny_arrays())
    marker = tmp_path / "marker"
    replace_member(folder, "data_batch_2", pickle.dumps({b"data": RunsACommand(marker)}))
    assert_refused(folder, r"data_batch_2: not a CIFAR-10 batch pickle \(refused global (posix|os)")
    assert not marker.exists()
    # The same payload in the archive form, and in meta.
    replace_member(
        folder, "data_batch_2", pickle_batch(*batches(tiny_arrays())["data_batch_2"], "")
    )
    replace_member(folder, "batches.meta", pickle.dumps(RunsACommand(marker), protocol=2))
    assert_refused(tar_folder(folder, tmp_path / "evil.tar.gz"), "batches.meta: .*refused global")
    assert not marker.exists()


@pytest.mark.parametrize(
    ("payload", "pattern"),
    [
        (["a", "list"], "expected a dict with 'data' and 'labels', got list"),
        ({b"data": np.zeros((2, 3072), np.uint8)}, "expected keys 'data' and 'labels'"),
        ({b"data": np.zeros((2, 3000), np.uint8), b"labels": [0, 1]}, r"shape \(2, 3000\)"),
        ({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}, "must be a uint8 array"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, "'labels' must be 2 integers"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, r"label 10 out of range"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [-1, 0]}, r"label -1 out of range"),
    ],
)
def test_a_pickle_batch_of_the_wrong_shape_is_refused(payload, pattern: str, tmp_path: Path):
    folder = write_pickle_folder(tmp_path, tiny_arrays())
    replace_member(folder, "test_batch", pickle.dumps(payload, protocol=2))
    assert_refused(folder, "test_batch: .*" + pattern)


def test_a_truncated_pickle_batch_is_refused(tmp_path: Path):
    folder = write_pickle_folder(tmp_path, tiny_arrays())
    content = (folder / "data_batch_1").read_bytes()
    replace_member(folder, "data_batch_1", content[: len(content) // 2])
    assert_refused(folder, "data_batch_1: truncated or corrupt pickle")


def test_a_missing_batch_is_named(tmp_path: Path):
    folder = write_pickle_folder(tmp_path, tiny_arrays())
    (folder / "data_batch_4").unlink()
    assert_refused(folder, "missing batch data_batch_4")


@pytest.mark.parametrize("extra_bytes", [1, -1, 3073 * 2 - 1])
def test_a_binary_batch_of_the_wrong_length_is_refused(extra_bytes: int, tmp_path: Path):
    folder = write_binary_folder(tmp_path, tiny_arrays())
    content = (folder / "data_batch_3.bin").read_bytes()
    changed = content + b"\0" * extra_bytes if extra_bytes > 0 else content[:extra_bytes]
    replace_member(folder, "data_batch_3.bin", changed)
    assert_refused(folder, r"data_batch_3\.bin: [\d,]+ bytes is not a whole number of 3,073-byte")


def test_an_empty_binary_batch_is_refused(tmp_path: Path):
    folder = write_binary_folder(tmp_path, tiny_arrays())
    replace_member(folder, "test_batch.bin", b"")
    assert_refused(folder, r"test_batch\.bin: 0 bytes")


def test_a_binary_label_out_of_range_is_refused(tmp_path: Path):
    folder = write_binary_folder(tmp_path, tiny_arrays())
    content = bytearray((folder / "test_batch.bin").read_bytes())
    content[3073] = 12  # the second record's label byte
    replace_member(folder, "test_batch.bin", bytes(content))
    assert_refused(folder, r"test_batch\.bin: label 12 out of range \(valid: 0\.\.9\)")


def test_an_image_folder_with_a_missing_class_is_refused(tmp_path: Path):
    root = write_image_folders(tmp_path / "images", tiny_arrays())
    shutil.rmtree(root / "train" / "cat")
    assert_refused(root, r"no images in train/cat/")
    assert_refused(zip_folder(root, tmp_path / "images.zip"), r"no images in train/cat/")


def test_an_image_folder_with_an_empty_class_is_refused(tmp_path: Path):
    root = write_image_folders(tmp_path / "images", tiny_arrays())
    for image in (root / "test" / "ship").iterdir():
        image.unlink()
    assert_refused(root, r"no images in test/ship/")


def test_an_image_not_32_by_32_rgb_is_named(tmp_path: Path):
    root = write_image_folders(tmp_path / "images", tiny_arrays())
    Image.new("RGB", (32, 31)).save(root / "train" / "dog" / "0003.png")
    assert_refused(root, r"train/dog/0003\.png is 32×31 RGB, expected 32×32 RGB")
    Image.new("L", (32, 32)).save(root / "train" / "dog" / "0003.png")
    assert_refused(tar_folder(root, tmp_path / "i.tar"), r"train/dog/0003\.png is 32×32 L")


def test_a_file_that_is_not_an_image_is_named(tmp_path: Path):
    root = write_image_folders(tmp_path / "images", tiny_arrays())
    (root / "test" / "frog" / "0013.png").write_bytes(b"plain text, not a PNG")
    assert_refused(root, r"test/frog/0013\.png is not a readable image")
    (root / "test" / "frog" / "0013.png").unlink()
    (root / "test" / "frog" / "notes.txt").write_text("hello")
    assert_refused(root, r"test/frog/notes\.txt is not a \.png or \.jpg image")


@pytest.mark.parametrize(
    "member",
    ["extra.txt", "train/unicorn/0000.png", "train/cat/deeper/0000.png", "validation/cat/0.png"],
)
def test_an_unexpected_member_is_refused(member: str, tmp_path: Path):
    root = write_image_folders(tmp_path / "images", tiny_arrays())
    (root / member).parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 32)).save(root / member, format="PNG")
    assert_refused(tar_folder(root, tmp_path / "i.tar.gz"), f"unexpected member '{member}'")


def test_an_unexpected_member_beside_the_batches_is_refused(tmp_path: Path):
    folder = write_binary_folder(tmp_path, tiny_arrays())
    (folder / "data_batch_6.bin").write_bytes(b"")
    assert_refused(folder, r"unexpected member 'data_batch_6\.bin' beside the batches")


def tar_with(tmp_path: Path, member: tarfile.TarInfo, content: bytes = b"") -> Path:
    """The tiny PNG tree as a .tar, plus one hand-made member."""
    archive = tar_folder(
        write_image_folders(tmp_path / "images", tiny_arrays()), tmp_path / "a.tar"
    )
    with tarfile.open(archive, "a") as packed:
        packed.addfile(member, io.BytesIO(content) if content else None)
    return archive


@pytest.mark.parametrize(
    ("name", "kind", "pattern"),
    [
        ("train/cat/link.png", tarfile.SYMTYPE, "is a link; refused"),
        ("train/cat/hard.png", tarfile.LNKTYPE, "is a link; refused"),
        ("/etc/evil.png", tarfile.REGTYPE, "has an absolute path; refused"),
        ("train/../../evil.png", tarfile.REGTYPE, "points outside the archive; refused"),
        ("train/cat/fifo.png", tarfile.FIFOTYPE, "is not a regular file"),
    ],
)
def test_dangerous_tar_members_are_refused(name: str, kind: bytes, pattern: str, tmp_path: Path):
    member = tarfile.TarInfo(name)
    member.type = kind
    member.linkname = "train/cat/0000.png" if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE) else ""
    content = b"x" * 10 if kind == tarfile.REGTYPE else b""
    member.size = len(content)
    assert_refused(tar_with(tmp_path, member, content), pattern)
    assert not (tmp_path / "evil.png").exists()


def test_dangerous_zip_members_are_refused(tmp_path: Path):
    archive = zip_folder(
        write_image_folders(tmp_path / "images", tiny_arrays()), tmp_path / "a.zip"
    )
    with zipfile.ZipFile(archive, "a") as packed:
        packed.writestr("../evil.png", b"x")
    assert_refused(archive, "points outside the archive")
    link = zipfile.ZipInfo("train/cat/link.png")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    with zipfile.ZipFile(zip_folder(tmp_path / "images", tmp_path / "b.zip"), "a") as packed:
        packed.writestr(link, "0000.png")
    assert_refused(tmp_path / "b.zip", "is a link; refused")


def test_an_archive_with_a_backslash_name_is_refused(tmp_path: Path):
    archive = zip_folder(
        write_image_folders(tmp_path / "images", tiny_arrays()), tmp_path / "a.zip"
    )
    with zipfile.ZipFile(archive, "a") as packed:
        packed.writestr("train\\cat\\0000.png", b"x")
    assert_refused(archive, "has a backslash in its name")


def test_an_empty_archive_has_no_layout(tmp_path: Path):
    with zipfile.ZipFile(tmp_path / "empty.zip", "w"):
        pass
    assert_refused(tmp_path / "empty.zip", "no CIFAR-10 layout found")


def test_a_symlink_in_a_folder_source_is_refused(tmp_path: Path):
    root = write_image_folders(tmp_path / "images", tiny_arrays())
    (root / "train" / "cat" / "9999.png").symlink_to(root / "train" / "cat" / "0030.png")
    assert_refused(root, r"train/cat/9999\.png is a link; refused")


# --- where data comes from, and the cache -----------------------------------------------------


@pytest.fixture
def tiny_source(tmp_path: Path) -> Path:
    return make_source("binary tar.gz", tmp_path, tiny_arrays())


def test_data_argument_beats_the_environment(tiny_source: Path, monkeypatch, tmp_path: Path):
    monkeypatch.setenv("CNNLAB_DATA", str(tmp_path / "elsewhere"))
    assert load_cifar10(tiny_source).source == str(tiny_source.resolve())
    with pytest.raises(CnnlabError, match=r"CNNLAB_DATA .*elsewhere: no such file"):
        load_cifar10()
    monkeypatch.setenv("CNNLAB_DATA", str(tiny_source))
    assert load_cifar10().source == str(tiny_source.resolve())


def test_a_fetched_archive_in_the_cache_is_used(monkeypatch, tmp_path: Path):
    monkeypatch.delenv("CNNLAB_DATA", raising=False)
    fetched = make_source("pickle tar.gz", tmp_path, tiny_arrays())
    fetched.rename(cache_dir() / "cifar-10-python.tar.gz")
    assert load_cifar10().source == str((cache_dir() / "cifar-10-python.tar.gz").resolve())


def refuse_network(url: str, timeout: float):
    raise urllib.error.URLError(OSError(-2, "Name or service not known"))


def test_offline_without_any_source_says_how_to_point_at_one(monkeypatch):
    monkeypatch.delenv("CNNLAB_DATA", raising=False)
    monkeypatch.setattr(urllib.request, "urlopen", refuse_network)
    with pytest.raises(CnnlabError, match=r"cannot download .*--data PATH or CNNLAB_DATA") as error:
        load_cifar10()
    assert "\n" not in str(error.value)


def test_a_truncated_cache_file_is_detected_and_rebuilt(tiny_source: Path):
    first = load_cifar10_with_cache_info(tiny_source)
    assert not first.from_cache and load_cifar10_with_cache_info(tiny_source).from_cache
    cached = first.cache_path / "train_images.npy"
    del first  # drop the memory map before cutting the file under it
    cached.write_bytes(cached.read_bytes()[:-100])
    again = load_cifar10_with_cache_info(tiny_source)
    assert not again.from_cache
    assert np.array_equal(again.dataset.train_images, tiny_arrays()["train_images"])
    assert load_cifar10_with_cache_info(tiny_source).from_cache


def test_a_cache_file_that_disagrees_with_the_manifest_is_rebuilt(tiny_source: Path):
    first = load_cifar10_with_cache_info(tiny_source)
    np.save(first.cache_path / "test_labels.npy", np.zeros(3, np.int64))  # whole, but wrong
    again = load_cifar10_with_cache_info(tiny_source)
    assert not again.from_cache
    assert np.array_equal(again.dataset.test_labels, tiny_arrays()["test_labels"])


def test_cached_arrays_are_memory_mapped_and_read_only(tiny_source: Path):
    load_cifar10(tiny_source)
    data = load_cifar10(tiny_source)
    assert isinstance(data.train_images, np.memmap)
    assert not data.train_images.flags.writeable


# --- downloading ------------------------------------------------------------------------------


def fake_official(tmp_path: Path) -> tuple[str, str, str]:
    """A file:// URL standing in for the official archive, with its md5 and sha256."""
    served = tmp_path / "served" / "cifar-10-python.tar.gz"
    served.parent.mkdir()
    served.write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    content = served.read_bytes()
    return served.as_uri(), hashlib.md5(content).hexdigest(), hashlib.sha256(content).hexdigest()


def test_fetch_verifies_then_renames(tmp_path: Path):
    url, md5, sha256 = fake_official(tmp_path)
    dest = tmp_path / "dest"
    path = fetch_official(dest, url=url, md5=md5, sha256=sha256)
    assert path == (dest / "cifar-10-python.tar.gz").resolve()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == sha256
    assert [entry.name for entry in dest.iterdir()] == ["cifar-10-python.tar.gz"]
    # Already there and verified: no second download.
    assert fetch_official(dest, url=url, md5=md5, sha256=sha256, opener=refuse_network) == path


@pytest.mark.parametrize("wrong", ["md5", "sha256"])
def test_fetch_with_a_checksum_mismatch_keeps_nothing(wrong: str, tmp_path: Path):
    url, md5, sha256 = fake_official(tmp_path)
    checksums = {"md5": md5, "sha256": sha256, wrong: "0" * (32 if wrong == "md5" else 64)}
    dest = tmp_path / "dest"
    with pytest.raises(CnnlabError, match=r"checksum mismatch .* nothing was kept"):
        fetch_official(dest, url=url, **checksums)
    assert list(dest.iterdir()) == []


def test_fetch_offline_says_so(tmp_path: Path):
    with pytest.raises(CnnlabError, match=r"no network\? .*--data PATH or CNNLAB_DATA"):
        fetch_official(tmp_path, opener=refuse_network)
    assert list(tmp_path.iterdir()) == []
