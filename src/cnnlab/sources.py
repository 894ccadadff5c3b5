"""Read CIFAR-10 from any of its forms into uint8 arrays: official pickles, official binary, images.

A source is a folder, a .zip, or a .tar / .tar.gz archive. Archives are read member by member,
never extracted; links, absolute paths, `..` and members outside the expected layout are refused.
One optional top-level folder may wrap the layout (`cifar-10-batches-py/...`, `cifar10/train/...`).

Batch sizes: the official pickle and binary batches hold 10,000 records each; these readers accept
any positive number of records per batch (so tests can build tiny archives), but a binary batch
whose length is not a whole number of 3,073-byte records is refused.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import stat
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from cnnlab.errors import CnnlabError

# The official label order; cnnlab.data re-exports it.
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
IMAGE_SIDE = 32
PIXEL_BYTES = IMAGE_SIDE * IMAGE_SIDE * 3  # one image as R, G, B planes
RECORD_BYTES = 1 + PIXEL_BYTES  # binary format: a label byte, then the pixels
TRAIN_BATCHES = tuple(f"data_batch_{number}" for number in range(1, 6))
TEST_BATCH = "test_batch"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
SPLITS = ("train", "test")
# Files the official archives ship beside the batches; read for nothing.
_PICKLE_EXTRAS = ("batches.meta", "readme.html")
_BINARY_EXTRAS = ("batches.meta.txt", "readme.html")


@dataclass(frozen=True)
class Arrays:
    """Decoded CIFAR-10: images uint8 (N, 32, 32, 3), labels int64 (N,), per split."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


def read_source(path: Path) -> Arrays:
    """Decode the CIFAR-10 source at `path` (folder, .zip, .tar or .tar.gz) into arrays."""
    if path.is_dir():
        members = _folder_members(path)
    elif path.is_file():
        members = _archive_members(path)
    else:
        raise CnnlabError(f"{path}: no such file or folder")
    return _decode(_strip_wrapper(members), str(path))


# --- reading members --------------------------------------------------------------------------


def _member_name(raw_name: str, source: Path) -> str:
    """The member's relative POSIX name; absolute paths and `..` are refused."""
    if raw_name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", raw_name):
        raise CnnlabError(f"{source}: member {raw_name!r} has an absolute path; refused")
    if "\\" in raw_name:
        raise CnnlabError(f"{source}: member {raw_name!r} has a backslash in its name; refused")
    parts = [part for part in PurePosixPath(raw_name).parts if part not in ("", ".")]
    if ".." in parts:
        raise CnnlabError(f"{source}: member {raw_name!r} points outside the archive; refused")
    return "/".join(parts)


def _folder_members(folder: Path) -> dict[str, bytes]:
    """Every regular file under `folder`, by relative name; links and special files are refused."""
    members: dict[str, bytes] = {}
    for directory, subdirectories, files in os.walk(folder):
        for name in subdirectories + files:
            entry = Path(directory, name)
            relative = entry.relative_to(folder).as_posix()
            mode = entry.lstat().st_mode
            if stat.S_ISLNK(mode):
                raise CnnlabError(f"{folder}: {relative} is a link; refused")
            if stat.S_ISREG(mode):
                members[relative] = entry.read_bytes()
            elif not stat.S_ISDIR(mode):
                raise CnnlabError(f"{folder}: {relative} is not a regular file; refused")
    return members


def _archive_members(path: Path) -> dict[str, bytes]:
    """Every regular member of a .zip or .tar(.gz) archive, read one by one."""
    name = path.name.lower()
    if name.endswith(".zip") or (not name.endswith((".tar", ".tar.gz", ".tgz")) and _is_zip(path)):
        return _zip_members(path)
    if name.endswith((".tar", ".tar.gz", ".tgz")) or tarfile.is_tarfile(path):
        return _tar_members(path)
    raise CnnlabError(
        f"{path}: not a folder, .zip, .tar or .tar.gz archive (expected a CIFAR-10 source)"
    )


def _is_zip(path: Path) -> bool:
    return zipfile.is_zipfile(path)


def _tar_members(path: Path) -> dict[str, bytes]:
    members: dict[str, bytes] = {}
    try:
        with tarfile.open(path, "r:*") as archive:
            for member in archive:
                name = _member_name(member.name, path)
                if member.issym() or member.islnk():
                    raise CnnlabError(f"{path}: member {member.name!r} is a link; refused")
                if member.isdir():
                    continue
                if not member.isreg():
                    raise CnnlabError(f"{path}: member {member.name!r} is not a regular file")
                content = archive.extractfile(member)
                assert content is not None  # regular members always have content
                members[name] = content.read()
    except CnnlabError:
        raise
    except (tarfile.TarError, EOFError, OSError) as error:
        raise CnnlabError(f"{path}: truncated or corrupt tar archive ({error})") from None
    return members


def _zip_members(path: Path) -> dict[str, bytes]:
    members: dict[str, bytes] = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                name = _member_name(info.filename, path)
                if stat.S_ISLNK(info.external_attr >> 16):
                    raise CnnlabError(f"{path}: member {info.filename!r} is a link; refused")
                if info.is_dir():
                    continue
                members[name] = archive.read(info)
    except CnnlabError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError) as error:
        raise CnnlabError(f"{path}: truncated or corrupt zip archive ({error})") from None
    return members


def _strip_wrapper(members: dict[str, bytes]) -> dict[str, bytes]:
    """Drop one top-level folder that wraps everything (as the official archives have)."""
    tops = {name.split("/", 1)[0] for name in members}
    if len(tops) == 1 and all("/" in name for name in members):
        (top,) = tops
        if top not in SPLITS:
            return {name.split("/", 1)[1]: content for name, content in members.items()}
    return members


# --- the three layouts ------------------------------------------------------------------------


def _decode(members: dict[str, bytes], source: str) -> Arrays:
    if TEST_BATCH in members or any(batch in members for batch in TRAIN_BATCHES):
        return _decode_batches(members, source, "", _PICKLE_EXTRAS, _read_pickle_batch)
    if f"{TEST_BATCH}.bin" in members or any(f"{batch}.bin" in members for batch in TRAIN_BATCHES):
        return _decode_batches(members, source, ".bin", _BINARY_EXTRAS, _read_binary_batch)
    if any(name.split("/", 1)[0] in SPLITS for name in members):
        return _decode_image_folders(members, source)
    raise CnnlabError(
        f"{source}: no CIFAR-10 layout found (expected data_batch_1..5 and test_batch, "
        "their .bin forms, or train/<class>/ and test/<class>/ image folders)"
    )


BatchReader = Callable[[bytes, str], tuple[np.ndarray, np.ndarray]]


def _decode_batches(
    members: dict[str, bytes],
    source: str,
    suffix: str,
    extras: tuple[str, ...],
    read_batch: BatchReader,
) -> Arrays:
    expected = [batch + suffix for batch in (*TRAIN_BATCHES, TEST_BATCH)]
    for name in members:
        if name not in expected and name not in extras:
            raise CnnlabError(f"{source}: unexpected member {name!r} beside the batches")
    missing = [name for name in expected if name not in members]
    if missing:
        raise CnnlabError(f"{source}: missing batch {', '.join(missing)}")
    if "batches.meta" in extras and "batches.meta" in members:
        _check_meta(members["batches.meta"], f"{source}: batches.meta")
    train = [
        read_batch(members[name + suffix], f"{source}: {name + suffix}") for name in TRAIN_BATCHES
    ]
    test_images, test_labels = read_batch(
        members[TEST_BATCH + suffix], f"{source}: {TEST_BATCH + suffix}"
    )
    return Arrays(
        np.concatenate([images for images, _ in train]),
        np.concatenate([labels for _, labels in train]),
        test_images,
        test_labels,
    )


def _planes_to_images(pixels: np.ndarray) -> np.ndarray:
    """(N, 3072) R, G, B planes -> (N, 32, 32, 3) channels-last, contiguous."""
    planes = pixels.reshape(-1, 3, IMAGE_SIDE, IMAGE_SIDE)
    return np.ascontiguousarray(planes.transpose(0, 2, 3, 1))


def _check_labels(labels: np.ndarray, where: str) -> np.ndarray:
    if labels.size and (labels.min() < 0 or labels.max() >= len(CLASS_NAMES)):
        bad = labels[(labels < 0) | (labels >= len(CLASS_NAMES))][0]
        raise CnnlabError(f"{where}: label {bad} out of range (valid: 0..{len(CLASS_NAMES) - 1})")
    return labels.astype(np.int64)


def _read_binary_batch(content: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    if len(content) == 0 or len(content) % RECORD_BYTES:
        raise CnnlabError(
            f"{where}: {len(content):,} bytes is not a whole number of {RECORD_BYTES:,}-byte "
            "records (1 label byte + 3,072 pixel bytes; the official batches hold 10,000)"
        )
    records = np.frombuffer(content, dtype=np.uint8).reshape(-1, RECORD_BYTES)
    return _planes_to_images(records[:, 1:]), _check_labels(records[:, 0], where)


# The only globals a pickled CIFAR-10 batch needs: NumPy's array rebuilders, under their NumPy 1
# and NumPy 2 module names, and `_codecs.encode`, which protocol 2 uses for bytes under Python 3.
_ARRAY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


def _allowed_global(module: str, name: str) -> Any:
    """The object for an admitted global, resolved without importing NumPy 1's deprecated names."""
    import codecs

    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # NumPy 1
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    objects = {
        "_reconstruct": multiarray._reconstruct,
        "_frombuffer": numeric._frombuffer,
        "ndarray": np.ndarray,
        "dtype": np.dtype,
        "encode": codecs.encode,
    }
    return objects[name]


class _RefusedGlobal(pickle.UnpicklingError):
    """A pickle asked for a global outside the NumPy array rebuilders."""


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that builds only NumPy arrays and plain containers; other globals raise."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ARRAY_GLOBALS:
            raise _RefusedGlobal(f"refused global {module}.{name}")
        return _allowed_global(module, name)


def _unpickle(content: bytes, where: str) -> Any:
    try:
        return _RestrictedUnpickler(io.BytesIO(content), encoding="bytes").load()
    except _RefusedGlobal as error:
        raise CnnlabError(
            f"{where}: not a CIFAR-10 batch pickle ({error}; only NumPy arrays are admitted)"
        ) from None
    except Exception as error:  # a malformed pickle can fail in any way; none is a crash
        raise CnnlabError(f"{where}: truncated or corrupt pickle ({error!r})") from None


def _text_keys(batch: dict[Any, Any]) -> dict[str, Any]:
    """Python 2 pickles read with encoding='bytes' have bytes keys; compare them as text."""
    return {
        key.decode("latin-1") if isinstance(key, bytes) else str(key): value
        for key, value in batch.items()
    }


def _read_pickle_batch(content: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    batch = _unpickle(content, where)
    if not isinstance(batch, dict):
        raise CnnlabError(
            f"{where}: expected a dict with 'data' and 'labels', got {type(batch).__name__}"
        )
    fields = _text_keys(batch)
    if "data" not in fields or "labels" not in fields:
        raise CnnlabError(f"{where}: expected keys 'data' and 'labels', got {sorted(fields)}")
    data = fields["data"]
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2):
        shape = getattr(data, "shape", type(data).__name__)
        raise CnnlabError(f"{where}: 'data' must be a uint8 array (N, {PIXEL_BYTES}), got {shape}")
    if data.shape[1] != PIXEL_BYTES:
        raise CnnlabError(
            f"{where}: 'data' has shape {data.shape}, expected (N, {PIXEL_BYTES}) (32×32×3 pixels)"
        )
    labels = np.asarray(fields["labels"])
    if labels.ndim != 1 or labels.dtype.kind not in "iu" or labels.shape[0] != data.shape[0]:
        raise CnnlabError(
            f"{where}: 'labels' must be {data.shape[0]} integers, got {labels.dtype} {labels.shape}"
        )
    return _planes_to_images(data), _check_labels(labels, where)


def _check_meta(content: bytes, where: str) -> None:
    meta = _unpickle(content, where)
    names = _text_keys(meta).get("label_names") if isinstance(meta, dict) else None
    if not isinstance(names, list):
        raise CnnlabError(f"{where}: expected a dict with 'label_names'")
    decoded = tuple(name.decode("latin-1") if isinstance(name, bytes) else name for name in names)
    if decoded != CLASS_NAMES:
        raise CnnlabError(f"{where}: label_names {list(decoded)} differ from {list(CLASS_NAMES)}")


def _decode_image_folders(members: dict[str, bytes], source: str) -> Arrays:
    by_class: dict[tuple[str, str], list[str]] = {
        (split, class_name): [] for split in SPLITS for class_name in CLASS_NAMES
    }
    for name in members:
        parts = name.split("/")
        if len(parts) != 3 or (parts[0], parts[1]) not in by_class:
            raise CnnlabError(
                f"{source}: unexpected member {name!r} (expected train/<class>/<image> or "
                f"test/<class>/<image>, classes: {' '.join(CLASS_NAMES)})"
            )
        if not parts[2].lower().endswith(IMAGE_SUFFIXES):
            raise CnnlabError(f"{source}: {name} is not a .png or .jpg image")
        by_class[(parts[0], parts[1])].append(name)
    for (split, class_name), names in by_class.items():
        if not names:
            raise CnnlabError(
                f"{source}: no images in {split}/{class_name}/ (every class needs some)"
            )
    arrays = []
    for split in SPLITS:
        names = [
            name for class_name in CLASS_NAMES for name in sorted(by_class[(split, class_name)])
        ]
        counts = [len(by_class[(split, class_name)]) for class_name in CLASS_NAMES]
        images = np.empty((len(names), IMAGE_SIDE, IMAGE_SIDE, 3), dtype=np.uint8)
        for index, name in enumerate(names):
            images[index] = _decode_image(members[name], f"{source}: {name}")
        labels = np.repeat(np.arange(len(CLASS_NAMES), dtype=np.int64), counts)
        arrays += [images, labels]
    return Arrays(*arrays)


def _decode_image(content: bytes, where: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(content)) as image:
            if image.size != (IMAGE_SIDE, IMAGE_SIDE) or image.mode != "RGB":
                width, height = image.size
                raise CnnlabError(f"{where} is {width}×{height} {image.mode}, expected 32×32 RGB")
            return np.asarray(image)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        if isinstance(error, CnnlabError):
            raise
        raise CnnlabError(f"{where} is not a readable image ({error})") from None
