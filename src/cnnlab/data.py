"""Every CIFAR-10 source -> one uint8 array pair per split, cached; subsets and splits.

CONTRACT (other modules rely on these names):
- `Cifar10`: the in-memory dataset.
- `load_cifar10(data=None) -> Cifar10`: `data` > $CNNLAB_DATA > the user cache > download.
- `stratified_order(labels, seed) -> indices` and `stratified_subset(labels, size, seed)`.
- `validation_split(indices, fraction) -> (train_indices, validation_indices)`.

Source checksum (`Cifar10.source_sha256`): for a file, the sha256 of its bytes; for a folder, the
sha256 of its listing, one line "relative/name<TAB>size<TAB>mtime_ns" per file in sorted order
(so a touched or replaced file changes it; hashing 60,000 files' contents each load would not pay).

Cache ($CNNLAB_CACHE, default ~/.cache/cnnlab):
- sources/<key>.json: (path, size, mtime_ns) -> the file's sha256, so a cached load need not
  re-hash a large archive;
- arrays/<sha256[:32]>/{train,test}_{images,labels}.npy and manifest.json (shapes and dtypes,
  written last); a load memory-maps the arrays, and one that disagrees with its manifest is rebuilt.
- cifar-10-python.tar.gz: where `cnnlab data fetch` puts the official archive.

Loaded arrays are read-only memory maps of the cache (copy before writing into them); the cache
is replaced by atomic renames, so a map held by another process is never changed under it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cnnlab.atomic import atomic_path, write_json
from cnnlab.errors import CnnlabError
from cnnlab.sources import (
    CLASS_NAMES,
    MAX_ARCHIVE_BYTES,
    Arrays,
    folder_entries,
    read_source,
    shown,
)

__all__ = [
    "CLASS_NAMES",
    "Cifar10",
    "LoadedCifar10",
    "cache_dir",
    "channel_statistics",
    "fetch_official",
    "load_cifar10",
    "load_cifar10_with_cache_info",
    "sample_images_per_class",
    "stratified_order",
    "stratified_subset",
    "validation_split",
]

OFFICIAL_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
OFFICIAL_NAME = "cifar-10-python.tar.gz"
OFFICIAL_MD5 = "c58f30108f718f92721af3b95e74349a"
OFFICIAL_SHA256 = "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"
_CACHE_FORMAT = 1  # bump when the cached arrays' meaning changes
_ARRAY_NAMES = ("train_images", "train_labels", "test_images", "test_labels")
_HASH_CHUNK_BYTES = 1 << 20
_LOCAL_COPY_HINT = (
    "point cnnlab at a local copy with --data PATH or CNNLAB_DATA=PATH "
    "(an official python/binary archive or folder, or train/ and test/ image folders)"
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


@dataclass(frozen=True)
class LoadedCifar10:
    """A load and where its arrays live: `from_cache` is False when this load decoded the source."""

    dataset: Cifar10
    cache_path: Path  # the folder holding this source's .npy arrays
    from_cache: bool
    # Per-channel (R, G, B) statistics of the training images on the [0, 1] scale, computed once
    # when the cache is built (a pass over 150 M values takes about a second here).
    train_channel_mean: tuple[float, ...]
    train_channel_std: tuple[float, ...]


# --- loading ----------------------------------------------------------------------------------


def cache_dir() -> Path:
    """The user cache: $CNNLAB_CACHE, else ~/.cache/cnnlab."""
    return Path(os.environ.get("CNNLAB_CACHE") or "~/.cache/cnnlab").expanduser()


def load_cifar10(data: str | os.PathLike[str] | None = None) -> Cifar10:
    """CIFAR-10 from `data`, else $CNNLAB_DATA, else the fetched archive, else a download."""
    return load_cifar10_with_cache_info(data).dataset


def load_cifar10_with_cache_info(data: str | os.PathLike[str] | None = None) -> LoadedCifar10:
    """`load_cifar10`, also telling where the cached arrays are and whether they were reused."""
    source = _resolve_source(data)
    checksum, remembered = _source_sha256(source)
    arrays_dir = cache_dir() / "arrays" / checksum[:32]
    cached = _read_cached_arrays(arrays_dir, checksum)
    from_cache = cached is not None
    if cached is None:
        _write_cached_arrays(arrays_dir, checksum, source, read_source(source))
        cached = _read_cached_arrays(arrays_dir, checksum)
        assert cached is not None, f"the cache just written in {arrays_dir} does not read back"
    if not remembered:
        _remember_sha256(source, checksum)
    arrays, manifest = cached
    dataset = Cifar10(
        arrays.train_images,
        arrays.train_labels,
        arrays.test_images,
        arrays.test_labels,
        CLASS_NAMES,
        str(source),
        checksum,
    )
    return LoadedCifar10(
        dataset,
        arrays_dir,
        from_cache,
        tuple(manifest["train_channel_mean"]),
        tuple(manifest["train_channel_std"]),
    )


def _resolve_source(data: str | os.PathLike[str] | None) -> Path:
    """The first of: `data`, $CNNLAB_DATA, the fetched official archive, a fresh download."""
    for value, origin in ((data, "--data"), (os.environ.get("CNNLAB_DATA"), "CNNLAB_DATA")):
        if value is not None and str(value) != "":
            return _checked_source(value, f"{origin} {shown(value)}")
    fetched = cache_dir() / OFFICIAL_NAME
    if fetched.is_file():
        return fetched.resolve()
    return fetch_official()


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
        raise CnnlabError(f"{where}: not a regular file or folder (expected a CIFAR-10 source)")
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
            f"{where}: {facts.st_size:,} bytes is larger than any CIFAR-10 archive "
            f"(at most {MAX_ARCHIVE_BYTES:,}); refused"
        )
    try:
        remembered = json.loads(_memo_path(source, facts).read_text())["sha256"]
        if isinstance(remembered, str) and len(remembered) == 64:
            return remembered, True
    except (OSError, ValueError, KeyError, TypeError):
        pass  # not remembered yet, or a damaged memo: hash again
    try:
        return _file_digests(source)["sha256"], False
    except OSError as error:
        raise CnnlabError(f"{where}: cannot be read ({error.strerror or error})") from None


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


def _file_digests(path: Path) -> dict[str, str]:
    """md5 and sha256 of a file, read once."""
    md5, sha256 = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(_HASH_CHUNK_BYTES):
            md5.update(chunk)
            sha256.update(chunk)
    return {"md5": md5.hexdigest(), "sha256": sha256.hexdigest()}


def _write_cached_arrays(arrays_dir: Path, checksum: str, source: Path, arrays: Arrays) -> None:
    """Store each array as .npy atomically, then the manifest that vouches for them.

    If the cache cannot be written (disk full, no permission, a file where a folder should be),
    whatever this call wrote is removed and the load is refused with one line: running on
    without the cache would silently decode the source again on every load.
    """
    mean, std = channel_statistics(arrays.train_images)
    manifest: dict[str, Any] = {
        "format": _CACHE_FORMAT,
        "source": str(source),
        "source_sha256": checksum,
        "train_channel_mean": mean.tolist(),
        "train_channel_std": std.tolist(),
        "arrays": {},
    }
    written: list[Path] = []
    try:
        (arrays_dir / "manifest.json").unlink(missing_ok=True)  # never vouch for a partial set
        for name in _ARRAY_NAMES:
            array = getattr(arrays, name)
            with atomic_path(arrays_dir / f"{name}.npy") as tmp:
                np.save(tmp, array, allow_pickle=False)
            written.append(arrays_dir / f"{name}.npy")
            manifest["arrays"][name] = {"shape": list(array.shape), "dtype": array.dtype.str}
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
        for field in ("train_channel_mean", "train_channel_std"):
            if len(manifest[field]) != 3:
                return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # missing, truncated or damaged: the caller decodes the source again
    return Arrays(**loaded), manifest


# --- downloading ------------------------------------------------------------------------------


def fetch_official(
    dest: str | os.PathLike[str] | None = None,
    *,
    url: str = OFFICIAL_URL,
    md5: str = OFFICIAL_MD5,
    sha256: str = OFFICIAL_SHA256,
    opener: Callable[..., Any] | None = None,
) -> Path:
    """Download the official python archive into `dest` (default: the cache), verified, or fail.

    The download goes to a temporary file that is renamed only when both checksums match; an
    archive already there with the right checksums is kept without downloading.
    """
    target = Path(dest if dest is not None else cache_dir()).expanduser() / OFFICIAL_NAME
    if target.is_file() and _file_digests(target) == {"md5": md5, "sha256": sha256}:
        return target.resolve()
    open_url = opener if opener is not None else urllib.request.urlopen
    try:
        response = open_url(url, timeout=30)
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise CnnlabError(
            f"cannot download {url} (no network? {reason}); {_LOCAL_COPY_HINT}"
        ) from None
    with atomic_path(target) as tmp:
        got = _download(response, tmp, url)
        if got != {"md5": md5, "sha256": sha256}:
            raise CnnlabError(
                f"{url}: checksum mismatch (md5 {got['md5']}, sha256 {got['sha256']}; expected "
                f"md5 {md5}, sha256 {sha256}); nothing was kept"
            )
    return target.resolve()


def _download(response: Any, tmp: Path, url: str) -> dict[str, str]:
    """Copy `response` into `tmp` with a progress bar on stderr; the md5 and sha256 of what came."""
    from rich.console import Console
    from rich.progress import DownloadColumn, Progress, TransferSpeedColumn

    md5, sha256 = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    length = response.headers.get("Content-Length") if hasattr(response, "headers") else None
    try:
        with (
            response,
            tmp.open("wb") as stream,
            Progress(
                *Progress.get_default_columns(),
                DownloadColumn(),
                TransferSpeedColumn(),
                console=Console(stderr=True),  # stdout is for results
            ) as progress,
        ):
            task = progress.add_task(f"{OFFICIAL_NAME}", total=int(length) if length else None)
            while chunk := response.read(_HASH_CHUNK_BYTES):
                stream.write(chunk)
                md5.update(chunk)
                sha256.update(chunk)
                progress.update(task, advance=len(chunk))
    except OSError as error:
        raise CnnlabError(f"{url}: download interrupted ({error}); nothing was kept") from None
    return {"md5": md5.hexdigest(), "sha256": sha256.hexdigest()}


# --- subsets and statistics -------------------------------------------------------------------


def stratified_order(labels: np.ndarray, seed: int) -> np.ndarray:
    """All indices, shuffled within each class by `seed`, then dealt round-robin over the classes.

    With balanced classes every prefix of length 10·k holds exactly k images of each class.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    ranks = np.empty(labels.shape[0], dtype=np.int64)
    for class_index in np.unique(labels):
        members = np.flatnonzero(labels == class_index)
        ranks[rng.permutation(members)] = np.arange(members.size)
    # Sort by rank within the class first, then by class: one image of each class per round.
    return np.lexsort((labels, ranks))


def stratified_subset(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """The first `size` indices of `stratified_order(labels, seed)`."""
    total = np.asarray(labels).shape[0]
    if isinstance(size, bool) or not isinstance(size, int | np.integer) or not 1 <= size <= total:
        raise CnnlabError(f"subset size {size!r} is not an integer in 1..{total}")
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
    """Per-channel mean and std of uint8 images (..., 3) on the [0, 1] scale."""
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
    images: np.ndarray, labels: np.ndarray, per_class: int, seed: int = 0
) -> list[list[np.ndarray]]:
    """`per_class` images of each class, the first of that class in the stratified order."""
    class_count = len(CLASS_NAMES)
    smallest = int(np.bincount(labels, minlength=class_count).min())
    if isinstance(per_class, bool) or not 1 <= per_class <= min(smallest, 100):
        raise CnnlabError(
            f"images per class {per_class} is not in 1..{min(smallest, 100)} for this split"
        )
    order = stratified_order(labels, seed)[: per_class * class_count]
    return [
        [images[index] for index in order[labels[order] == label]] for label in range(class_count)
    ]
