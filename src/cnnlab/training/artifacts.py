"""A run folder's NumPy files read back, each checked to be what `runfolder.save_run` writes.

Read by the report and by `cnnlab explain`, from folders a user may have edited: every file is
read as a regular file within a size (`atomic.read_regular`), and its arrays' kinds, shapes,
lengths and label ranges are checked before use, so a tampered file is one CnnlabError line.
No torch import.
"""

from __future__ import annotations

import io
import os
import zipfile

import numpy as np

from cnnlab import atomic
from cnnlab.errors import CnnlabError

# 32 images of at most 1024 x 1024 x 3 bytes, with room to spare.
MAX_MISCLASSIFIED_BYTES = 256 << 20
MAX_KERNELS_BYTES = 64 << 20  # first-layer kernels are kilobytes
MISCLASSIFIED_KEYS = ("images", "index", "true", "predicted")


def read_misclassified(
    path: str | os.PathLike[str], classes: int | None = None
) -> dict[str, np.ndarray]:
    """misclassified_test.npz's arrays: uint8 images (count x H x W x 1 or 3), and `index`,
    `true` and `predicted`, integers of that count (labels in 0..classes-1 where known)."""
    content = atomic.read_regular(path, MAX_MISCLASSIFIED_BYTES, "a run's misclassified sample")
    if not zipfile.is_zipfile(io.BytesIO(content)):
        raise CnnlabError(f"{path}: not a NumPy .npz archive; not a run's misclassified sample")
    try:
        with np.load(io.BytesIO(content), allow_pickle=False) as archive:
            unpacked = sum(info.file_size for info in archive.zip.infolist())
            if unpacked > MAX_MISCLASSIFIED_BYTES:  # a compressed member would unpack to this
                raise CnnlabError(
                    f"{path}: unpacks to {unpacked:,} bytes; not a run's misclassified sample"
                )
            missing = [key for key in MISCLASSIFIED_KEYS if key not in archive.files]
            if missing:
                raise CnnlabError(f"{path}: holds no {', '.join(missing)} array")
            arrays = {key: archive[key] for key in MISCLASSIFIED_KEYS}
    except CnnlabError:
        raise
    except Exception as error:  # a damaged archive fails in zipfile, zlib or NumPy's reader
        reason = str(error).splitlines()[0] if str(error).strip() else type(error).__name__
        raise CnnlabError(f"{path}: not a run's misclassified sample ({reason})") from None
    _check_misclassified(path, arrays, classes)
    return arrays


def _check_misclassified(
    path: str | os.PathLike[str], arrays: dict[str, np.ndarray], classes: int | None
) -> None:
    images = arrays["images"]
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] not in (1, 3):
        raise CnnlabError(
            f"{path}: images are {images.dtype} of shape {images.shape}; expected uint8"
            " count x height x width x 1 or 3"
        )
    count = images.shape[0]
    for key in ("index", "true", "predicted"):
        array = arrays[key]
        if array.dtype.kind not in "iu" or array.shape != (count,):
            raise CnnlabError(
                f"{path}: {key} is {array.dtype} of shape {array.shape}; expected {count}"
                f" integers, one per image"
            )
        low = int(array.min()) if count else 0
        high = int(array.max()) if count else 0
        top = classes if key != "index" and classes is not None else None
        if low < 0 or (top is not None and high >= top):
            valid = "0 or more" if top is None else f"0 to {top - 1}"
            raise CnnlabError(f"{path}: {key} holds {low if low < 0 else high}; expected {valid}")


def read_kernels(path: str | os.PathLike[str]) -> np.ndarray:
    """kernels_first.npy: finite float filters x in x height x width, as float64."""
    content = atomic.read_regular(path, MAX_KERNELS_BYTES, "a run's first-layer kernels")
    try:
        kernels = np.load(io.BytesIO(content), allow_pickle=False)
    except Exception as error:  # not .npy, a pickle, truncated: NumPy's reader fails variously
        raise CnnlabError(f"{path}: not a run's kernels ({type(error).__name__})") from None
    if not isinstance(kernels, np.ndarray) or kernels.ndim != 4 or kernels.dtype.kind != "f":
        raise CnnlabError(f"{path}: not a run's kernels (filters x in x height x width floats)")
    if not np.isfinite(kernels).all():
        raise CnnlabError(f"{path}: kernels hold values that are not finite")
    return kernels.astype(np.float64)
