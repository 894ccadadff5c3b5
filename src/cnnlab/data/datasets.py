"""Every small image-classification source -> one uint8 array pair per split, cached; subsets.

CONTRACT (other modules rely on these names):
- `Dataset` (alias `Dataset`): the in-memory dataset, with `input_shape` and `num_classes`.
- `DATASETS` (names) and `DESCRIPTIONS` (one line each, for --help).
- `load_dataset(name, data=None, *, image_size=None, resample="bilinear") -> Dataset`:
  `data` > the dataset's environment variable > the user cache > a download. The variables
  (ENVIRONMENT): CNNLAB_DATA (cifar10, as always), CNNLAB_DATA_CIFAR100 (cifar100 and
  cifar100-coarse), CNNLAB_DATA_MNIST, CNNLAB_DATA_FASHION_MNIST, CNNLAB_DATA_IMAGES (images,
  which has no official files: a path or this variable is required); digits reads no files.
- `load_cifar10(data=None)` is `load_dataset("cifar10", data)`.
- `stratified_order(labels, seed) -> indices` and `stratified_subset(labels, size, seed)`.
- `validation_split(indices, fraction) -> (train_indices, validation_indices)`.

Source checksum (`Dataset.source_sha256`): for a file, the sha256 of its bytes; for a folder, the
sha256 of its listing, one line "relative/name<TAB>size<TAB>mtime_ns" per file in sorted order
(so a touched or replaced file changes it; hashing 60,000 files' contents each load would not pay);
for `digits`, the sha256 of the arrays themselves.

Cache ($CNNLAB_CACHE, default ~/.cache/cnnlab):
- sources/<key>.json: (path, size, mtime_ns) -> the file's sha256, so a cached load need not
  re-hash a large archive;
- arrays/<key>/{train,test}_{images,labels}.npy and manifest.json (shapes, dtypes, class names,
  channel statistics; written last); a load memory-maps the arrays, and one that disagrees with
  its manifest is rebuilt. For `cifar10` without `image_size` the key is the source's sha256[:32]
  (as it always was); for anything else it is the sha256[:32] of the dataset name, the source's
  sha256 and the load options, so two datasets or two image sizes never share arrays.
- cifar-10-python.tar.gz, cifar-100-python.tar.gz, mnist/, fashion-mnist/: where
  `cnnlab data fetch --dataset NAME` puts the official files (OFFICIAL_FILES).

Loaded arrays are read-only memory maps of the cache (copy before writing into them); the cache
is replaced by atomic renames, so a map held by another process is never changed under it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cnnlab.atomic import atomic_path, write_json
from cnnlab.data.cifar import (
    CIFAR100_COARSE_NAMES,
    CIFAR100_FINE_NAMES,
    CLASS_NAMES,
    read_cifar10,
    read_cifar100,
)
from cnnlab.data.digits import read_digits
from cnnlab.data.idx import FASHION_MNIST_NAMES, MNIST_NAMES, read_mnist
from cnnlab.data.image_folders import RESAMPLING, read_image_folders, resize_arrays
from cnnlab.data.official import (
    DATASETS,
    DESCRIPTIONS,
    ENVIRONMENT,
    FETCH_AS,
    OFFICIAL_FILES,
    OfficialFile,
    cache_dir,
    check_name,
    fetch_official,
    fetched_source,
    file_digests,
)
from cnnlab.data.sources import MAX_ARCHIVE_BYTES, Arrays, folder_entries, shown
from cnnlab.errors import CnnlabError

__all__ = [
    "CIFAR100_COARSE_NAMES",
    "CIFAR100_FINE_NAMES",
    "CLASS_NAMES",
    "DATASETS",
    "DESCRIPTIONS",
    "ENVIRONMENT",
    "FASHION_MNIST_NAMES",
    "MNIST_NAMES",
    "OFFICIAL_FILES",
    "RESAMPLING",
    "Dataset",
    "LoadedDataset",
    "OfficialFile",
    "cache_dir",
    "channel_statistics",
    "fetch_official",
    "load_cifar10",
    "load_cifar10_with_cache_info",
    "load_dataset",
    "load_dataset_with_cache_info",
    "sample_images_per_class",
    "stratified_order",
    "stratified_subset",
    "validation_split",
]

_CACHE_FORMAT = 1  # bump when the cached arrays' meaning changes
_ARRAY_NAMES = ("train_images", "train_labels", "test_images", "test_labels")
_HASH_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class Dataset:
    """A dataset in memory: images uint8 (N, H, W, C) channels-last, labels int64 (N,)."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: tuple[str, ...] = CLASS_NAMES
    source: str = ""  # where it came from: a path, or a description for synthetic data
    source_sha256: str = ""  # checksum of the source file (or of the folder listing), "" if none
    name: str = "cifar10"  # the dataset's name (one of DATASETS, or free text for synthetic data)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(height, width, channels) of one image."""
        height, width, channels = self.train_images.shape[1:]
        return int(height), int(width), int(channels)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


@dataclass(frozen=True)
class LoadedDataset:
    """A load and where its arrays live: `from_cache` is False when this load decoded the source."""

    dataset: Dataset
    cache_path: Path  # the folder holding this load's .npy arrays
    from_cache: bool
    # Per-channel statistics of the training images on the [0, 1] scale (one value per channel),
    # computed once when the cache is built (a pass over 150 M values takes about a second here).
    train_channel_mean: tuple[float, ...]
    train_channel_std: tuple[float, ...]


# --- loading ----------------------------------------------------------------------------------


def load_cifar10(data: str | os.PathLike[str] | None = None) -> Dataset:
    """CIFAR-10 from `data`, else $CNNLAB_DATA, else the fetched archive, else a download."""
    return load_dataset("cifar10", data)


def load_cifar10_with_cache_info(data: str | os.PathLike[str] | None = None) -> LoadedDataset:
    """`load_cifar10`, also telling where the cached arrays are and whether they were reused."""
    return load_dataset_with_cache_info("cifar10", data)


def load_dataset(
    name: str = "cifar10",
    data: str | os.PathLike[str] | None = None,
    *,
    image_size: int | Sequence[int] | None = None,
    resample: str = "bilinear",
) -> Dataset:
    """The dataset `name` from `data`, else its environment variable, the cache, a download.

    `image_size` (a side, or (height, width)) resizes every image of another size with the
    `resample` filter (one of RESAMPLING); without it, an image folder of mixed sizes is refused.
    """
    return load_dataset_with_cache_info(
        name, data, image_size=image_size, resample=resample
    ).dataset


def load_dataset_with_cache_info(
    name: str = "cifar10",
    data: str | os.PathLike[str] | None = None,
    *,
    image_size: int | Sequence[int] | None = None,
    resample: str = "bilinear",
) -> LoadedDataset:
    """`load_dataset`, also telling where the cached arrays are and whether they were reused."""
    check_name(name)
    size = _checked_image_size(image_size)
    if resample not in RESAMPLING:
        raise CnnlabError(f"resample {resample!r} is not one of {', '.join(RESAMPLING)}")
    options: dict[str, Any] = {"image_size": list(size) if size else None}
    if size is not None:
        options["resample"] = resample
    if name == "digits":
        if data is not None and str(data) != "":
            raise CnnlabError(
                f"digits comes with scikit-learn and reads no files; got --data {shown(data)}"
            )
        arrays = read_digits()
        checksum = _arrays_sha256(arrays)
        source: Path | str = "sklearn.datasets.load_digits"
        decode: Callable[[], Arrays] = lambda: arrays  # noqa: E731
        remembered = True
    else:
        source = _resolve_source(name, data)
        checksum, remembered = _source_sha256(source)
        path = source

        def decode() -> Arrays:
            return _read(name, path, size, resample)

    if name == "cifar10" and size is None:
        key = checksum[:32]  # as before datasets had names: a CIFAR-10 cache stays valid
    else:
        described = json.dumps({"dataset": name, "source_sha256": checksum, **options})
        key = hashlib.sha256(described.encode()).hexdigest()[:32]
    arrays_dir = cache_dir() / "arrays" / key
    cached = _read_cached_arrays(arrays_dir, checksum)
    from_cache = cached is not None
    if cached is None:
        decoded = decode()
        if size is not None and name != "images":  # image folders resize as they decode
            decoded = resize_arrays(decoded, size, resample, str(source))
        _write_cached_arrays(arrays_dir, checksum, str(source), name, options, decoded)
        cached = _read_cached_arrays(arrays_dir, checksum)
        assert cached is not None, f"the cache just written in {arrays_dir} does not read back"
    if not remembered and isinstance(source, Path):
        _remember_sha256(source, checksum)
    arrays, manifest = cached
    dataset = Dataset(
        arrays.train_images,
        arrays.train_labels,
        arrays.test_images,
        arrays.test_labels,
        tuple(manifest.get("class_names", CLASS_NAMES)),
        str(source),
        checksum,
        name,
    )
    return LoadedDataset(
        dataset,
        arrays_dir,
        from_cache,
        tuple(manifest["train_channel_mean"]),
        tuple(manifest["train_channel_std"]),
    )


def _checked_image_size(image_size: int | Sequence[int] | None) -> tuple[int, int] | None:
    """(height, width) from a side or a pair, each in 1..1024; None stays None."""
    if image_size is None:
        return None
    sides = (image_size, image_size) if isinstance(image_size, int | np.integer) else image_size
    try:
        height, width = sides  # type: ignore[misc]
    except (TypeError, ValueError):
        height = width = None
    valid = all(
        not isinstance(side, bool) and isinstance(side, int | np.integer) and 1 <= side <= 1024
        for side in (height, width)
    )
    if not valid:
        raise CnnlabError(
            f"image size {image_size!r} is not a side or a (height, width) pair of integers in "
            "1..1024"
        )
    return int(height), int(width)  # type: ignore[arg-type]


def _read(name: str, source: Path, size: tuple[int, int] | None, resample: str) -> Arrays:
    """Decode `source` as the dataset `name` (every reader checks its own layout)."""
    if name == "cifar10":
        return read_cifar10(source)
    if name in ("cifar100", "cifar100-coarse"):
        return read_cifar100(source, coarse=name == "cifar100-coarse")
    if name in ("mnist", "fashion-mnist"):
        names = MNIST_NAMES if name == "mnist" else FASHION_MNIST_NAMES
        return read_mnist(source, name, names)
    assert name == "images", name
    return read_image_folders(source, image_size=size, resample=resample)


def check_source(name: str, data: str | os.PathLike[str] | None = None) -> None:
    """The source `load_dataset(name, data)` would read exists: checked without reading it and
    without downloading anything (what a dry run can promise)."""
    variable = ENVIRONMENT.get(name)
    if variable is None:  # digits: scikit-learn's copy
        return
    for value, origin in ((data, "--data"), (os.environ.get(variable), variable)):
        if value is not None and str(value) != "":
            _checked_source(value, f"{origin} {shown(value)}")
            return
    if name == "images":
        _resolve_source(name, None)  # no default source: says what to give


def _resolve_source(name: str, data: str | os.PathLike[str] | None) -> Path:
    """The first of: `data`, the dataset's variable, the fetched official files, a download."""
    variable = ENVIRONMENT[name]
    for value, origin in ((data, "--data"), (os.environ.get(variable), variable)):
        if value is not None and str(value) != "":
            return _checked_source(value, f"{origin} {shown(value)}")
    if name == "images":
        raise CnnlabError(
            "the images dataset needs a folder or archive: give --data PATH or "
            f"{variable}=PATH (train/<class>/* and test/<class>/*)"
        )
    fetched = fetched_source(FETCH_AS.get(name, name), cache_dir())
    if fetched is not None:
        return fetched
    return fetch_official(dataset=name)


def _checked_source(value: str | os.PathLike[str], where: str) -> Path:
    """`value` as an existing regular file or folder, resolved; anything else is refused."""
    try:
        path = Path(value).expanduser()
    except RuntimeError:  # "~user" naming no user
        path = Path(value)
    try:
        facts = path.stat()
        path = path.resolve()
    except FileNotFoundError:
        raise CnnlabError(f"{where}: no such file or folder") from None
    except (OSError, RuntimeError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else error
        raise CnnlabError(f"{where}: cannot be read ({reason})") from None
    if not (stat.S_ISREG(facts.st_mode) or stat.S_ISDIR(facts.st_mode)):
        raise CnnlabError(f"{where}: not a regular file or folder (expected a dataset source)")
    return path


def _memo_path(source: Path, facts: os.stat_result) -> Path:
    """Where the sha256 of `source` is remembered for its (path, size, mtime)."""
    quick_key = hashlib.sha256(f"{source}\t{facts.st_size}\t{facts.st_mtime_ns}".encode())
    return cache_dir() / "sources" / f"{quick_key.hexdigest()[:32]}.json"


def _source_sha256(source: Path) -> tuple[str, bool]:
    """sha256 of a file or of a folder's listing, and whether it was remembered already.

    Nothing is written here: a source is remembered only once it has loaded (a refused one
    leaves nothing in the cache).
    """
    where = shown(source)
    if source.is_dir():
        listing = hashlib.sha256()
        # Sorted as os.walk visits them (by folder, then by name), so checksums stay as they were.
        files = [
            (relative, facts)
            for relative, facts in folder_entries(source)
            if not stat.S_ISDIR(facts.st_mode)
        ]
        files.sort(key=lambda named: (str(source / named[0]).rsplit("/", 1)[0], named[0]))
        for relative, facts in files:
            line = f"{relative}\t{facts.st_size}\t{facts.st_mtime_ns}\n"
            listing.update(line.encode("utf-8", "surrogateescape"))  # names need not be UTF-8
        return listing.hexdigest(), True
    facts = source.stat()
    if facts.st_size > MAX_ARCHIVE_BYTES:
        raise CnnlabError(
            f"{where}: {facts.st_size:,} bytes is larger than any source cnnlab reads "
            f"(at most {MAX_ARCHIVE_BYTES:,}); refused"
        )
    try:
        remembered = json.loads(_memo_path(source, facts).read_text())["sha256"]
        if isinstance(remembered, str) and len(remembered) == 64:
            return remembered, True
    except (OSError, ValueError, KeyError, TypeError):
        pass  # not remembered yet, or a damaged memo: hash again
    try:
        return file_digests(source)["sha256"], False
    except OSError as error:
        raise CnnlabError(f"{where}: cannot be read ({error.strerror or error})") from None


def _arrays_sha256(arrays: Arrays) -> str:
    """sha256 over the four arrays' shapes, dtypes and bytes (for sources that are no file)."""
    digest = hashlib.sha256()
    for name in _ARRAY_NAMES:
        array = np.ascontiguousarray(getattr(arrays, name))
        digest.update(f"{name}\t{array.dtype.str}\t{array.shape}\n".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def _remember_sha256(source: Path, checksum: str) -> None:
    """Remember a loaded file's sha256 by (path, size, mtime); failing costs only a re-hash."""
    if source.is_dir():
        return
    facts = source.stat()
    remembered_facts = {"size": facts.st_size, "mtime_ns": facts.st_mtime_ns}
    # The arrays are cached; without the memo the next load only hashes the file again.
    with contextlib.suppress(OSError):
        write_json(
            _memo_path(source, facts), {"path": str(source), **remembered_facts, "sha256": checksum}
        )


def _write_cached_arrays(
    arrays_dir: Path,
    checksum: str,
    source: str,
    name: str,
    options: dict[str, Any],
    arrays: Arrays,
) -> None:
    """Store each array as .npy atomically, then the manifest that vouches for them.

    If the cache cannot be written (disk full, no permission, a file where a folder should be),
    whatever this call wrote is removed and the load is refused with one line: running on
    without the cache would silently decode the source again on every load.
    """
    mean, std = channel_statistics(arrays.train_images)
    manifest: dict[str, Any] = {
        "format": _CACHE_FORMAT,
        "source": source,
        "source_sha256": checksum,
        "dataset": name,
        "options": options,
        "class_names": list(arrays.class_names),
        "train_channel_mean": mean.tolist(),
        "train_channel_std": std.tolist(),
        "arrays": {},
    }
    written: list[Path] = []
    try:
        (arrays_dir / "manifest.json").unlink(missing_ok=True)  # never vouch for a partial set
        for array_name in _ARRAY_NAMES:
            array = getattr(arrays, array_name)
            with atomic_path(arrays_dir / f"{array_name}.npy") as tmp:
                np.save(tmp, array, allow_pickle=False)
            written.append(arrays_dir / f"{array_name}.npy")
            manifest["arrays"][array_name] = {"shape": list(array.shape), "dtype": array.dtype.str}
        write_json(arrays_dir / "manifest.json", manifest)
    except OSError as error:
        for path in written:
            path.unlink(missing_ok=True)
        for folder in (arrays_dir, arrays_dir.parent):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if this call left it empty
        raise CnnlabError(
            f"cannot write the cache {shown(arrays_dir)} ({error.strerror or error}); free some "
            "space there or set CNNLAB_CACHE to a writable folder (nothing was kept)"
        ) from None


def _read_cached_arrays(arrays_dir: Path, checksum: str) -> tuple[Arrays, dict[str, Any]] | None:
    """The memory-mapped cached arrays and manifest, or None if absent or not as it says."""
    try:
        manifest = json.loads((arrays_dir / "manifest.json").read_text())
        if manifest.get("format") != _CACHE_FORMAT or manifest.get("source_sha256") != checksum:
            return None
        loaded = {}
        for name in _ARRAY_NAMES:
            expected = manifest["arrays"][name]
            array = np.load(arrays_dir / f"{name}.npy", mmap_mode="r", allow_pickle=False)
            if list(array.shape) != expected["shape"] or array.dtype.str != expected["dtype"]:
                return None
            loaded[name] = array
        channels = loaded["train_images"].shape[-1]
        for field in ("train_channel_mean", "train_channel_std"):
            if len(manifest[field]) != channels:
                return None
        # Manifests written before datasets had names hold CIFAR-10 and no class names.
        class_names = tuple(manifest.get("class_names", CLASS_NAMES))
        if not all(isinstance(class_name, str) for class_name in class_names):
            return None
        labels_top = max(
            (
                int(loaded[name].max())
                for name in ("train_labels", "test_labels")
                if loaded[name].size
            ),
            default=-1,
        )
        if labels_top >= len(class_names):
            return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # missing, truncated or damaged: the caller decodes the source again
    return Arrays(**loaded, class_names=class_names), manifest


# --- subsets and statistics -------------------------------------------------------------------


def stratified_order(labels: np.ndarray, seed: int) -> np.ndarray:
    """All indices, shuffled within each class by `seed`, then dealt round-robin over the classes.

    With balanced classes every prefix of length (classes)·k holds exactly k images of each class.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    ranks = np.empty(labels.shape[0], dtype=np.int64)
    for class_index in np.unique(labels):
        members = np.flatnonzero(labels == class_index)
        ranks[rng.permutation(members)] = np.arange(members.size)
    # Sort by rank within the class first, then by class: one image of each class per round.
    return np.lexsort((labels, ranks))


def stratified_subset(
    labels: np.ndarray, size: int, seed: int, *, dataset: str | None = None
) -> np.ndarray:
    """The first `size` indices of `stratified_order(labels, seed)`."""
    labels = np.asarray(labels)
    total = labels.shape[0]
    if isinstance(size, bool) or not isinstance(size, int | np.integer) or not 1 <= size <= total:
        counts = np.bincount(labels) if labels.size else np.zeros(0, np.int64)
        if counts.size and counts.min() == counts.max():
            per_class = f"{counts[0]:,} in each of {counts.size} classes"
        elif counts.size <= 20:
            per_class = "per class " + " ".join(f"{count:,}" for count in counts)
        else:
            per_class = f"{counts.min():,} to {counts.max():,} per class over {counts.size}"
        whose = f"{dataset} holds" if dataset else "the set holds"
        raise CnnlabError(
            f"subset size {size!r} is not an integer in 1..{total} ({whose} {total:,} images: "
            f"{per_class})"
        )
    return stratified_order(labels, seed)[:size]


def validation_split(indices: np.ndarray, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Keras's validation_split: the last `fraction` of `indices` is held out, before shuffling."""
    indices = np.asarray(indices)
    if isinstance(fraction, bool) or not isinstance(fraction, float | int) or not 0 <= fraction < 1:
        raise CnnlabError(f"validation fraction {fraction!r} is not a number in [0, 1)")
    if fraction == 0:
        return indices, indices[:0]
    split_at = int(len(indices) * (1 - fraction))  # Keras floors, as here
    if split_at == 0 or split_at == len(indices):
        raise CnnlabError(
            f"validation fraction {fraction} of {len(indices)} images leaves an empty training or "
            "validation set; use more images or a fraction in (0, 1) that splits them"
        )
    return indices[:split_at], indices[split_at:]


def channel_statistics(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of uint8 images (..., C) on the [0, 1] scale."""
    # A histogram per channel is exact and needs no float copy of the 150 M values.
    channels = images.shape[-1]
    flat = np.asarray(images).reshape(-1, channels)
    values = np.arange(256, dtype=np.float64) / 255.0
    means, stds = np.empty(channels), np.empty(channels)
    for channel in range(channels):
        counts = np.bincount(flat[:, channel], minlength=256).astype(np.float64)
        total = counts.sum()
        means[channel] = counts @ values / total
        stds[channel] = np.sqrt(max(counts @ values**2 / total - means[channel] ** 2, 0.0))
    return means, stds


def sample_images_per_class(
    images: np.ndarray,
    labels: np.ndarray,
    per_class: int,
    seed: int = 0,
    *,
    class_count: int | None = None,
) -> list[list[np.ndarray]]:
    """`per_class` images of each class, the first of that class in the stratified order."""
    labels = np.asarray(labels)
    if class_count is None:
        class_count = int(labels.max()) + 1 if labels.size else 0
    smallest = int(np.bincount(labels, minlength=class_count).min()) if class_count else 0
    if isinstance(per_class, bool) or not 1 <= per_class <= min(smallest, 100):
        raise CnnlabError(
            f"images per class {per_class} is not in 1..{min(smallest, 100)} for this split"
        )
    order = stratified_order(labels, seed)[: per_class * class_count]
    return [
        [images[index] for index in order[labels[order] == label]] for label in range(class_count)
    ]
