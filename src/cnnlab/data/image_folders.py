"""Image folders: `train/<class>/*` and `test/<class>/*` of PNG, JPEG, BMP or GIF files -> arrays.

Classes are the folder names, sorted (or a fixed list, for a named dataset such as CIFAR-10);
both splits must hold the same classes, each with at least one image. Within a class, files are
taken in a fixed order: by the number their name holds where the name (without its suffix) is
a number (`2.png` before `10.png`; MNIST's PNG copy names files by their official index, so this
is the official order), then the other names in code-point order. A named dataset may ask for
plain name order instead (CIFAR-10 does, as it always has).

Channels: a folder whose images are all grayscale (Pillow modes 1, L, LA, I, I;16, F) gives one
channel; any colour image makes every image RGB (3 channels; alpha is dropped). Sizes: without
`image_size` every image must have the same size (a mismatch names two files and their sizes);
with it, every image of another size is resized with the named Pillow filter.

Limits: an image file holds at most MAX_IMAGE_FILE_BYTES and its header may declare at most
MAX_IMAGE_PIXELS pixels (checked before decoding); all decoded pixels together stay within
sources.MAX_DECODED_BYTES (checked from the headers before each image is decoded).
"""

from __future__ import annotations

import contextlib
import functools
import io
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cnnlab.data import sources
from cnnlab.data.sources import SPLITS, Arrays, Kind, Members, read_source, shown
from cnnlab.errors import CnnlabError

# Pillow's resampling filters by the names cnnlab accepts.
RESAMPLING = ("nearest", "bilinear", "bicubic", "lanczos")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
# Pillow may only parse these formats (it knows dozens; some, like EPS, run external programs).
IMAGE_FORMATS = ("PNG", "JPEG", "MPO", "BMP", "GIF")
GRAY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")

# One image file: a 1024×1024 RGB PNG is at most about 3 MB.
MAX_IMAGE_FILE_BYTES = 8 << 20
# Pixels an image header may declare (checked before decoding).
MAX_IMAGE_SIDE = 1024
MAX_IMAGE_PIXELS = MAX_IMAGE_SIDE * MAX_IMAGE_SIDE
# Classes in one image-folder dataset.
MAX_CLASSES = 1000


@dataclass(frozen=True)
class Expected:
    """What a named dataset's image folders must hold: these classes, of this size and mode."""

    class_names: tuple[str, ...]
    size: tuple[int, int]  # (height, width)
    mode: str  # "RGB" or "L"
    suffixes: tuple[str, ...] = (".png", ".jpg", ".jpeg")
    numeric_order: bool = True  # False: plain name order within a class
    max_file_bytes: int = MAX_IMAGE_FILE_BYTES  # one image file

    def describe(self) -> str:
        return f"{self.size[1]}×{self.size[0]} {self.mode}"


@functools.cache
def _pillow() -> Any:
    """PIL.Image, imported on first use (once: an import statement per image costs 5 µs)."""
    from PIL import Image

    return Image


def _order_key(name: str) -> tuple[int, int, str]:
    stem = name.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    if stem.isascii() and stem.isdigit():
        return (0, int(stem), name)
    return (1, 0, name)


@dataclass
class ImageFolders:
    """The image-folder layout, generic (classes from the folders) or as a named dataset expects.

    Decoding keeps state: the first image's size (to name two files of different sizes) and the
    decoded bytes so far (against the budget). Use one instance per load.
    """

    spec: Expected | None = None
    image_size: tuple[int, int] | None = None  # (height, width) to resize to
    resample: str = "bilinear"
    tops: tuple[str, ...] = SPLITS
    _first: tuple[str, tuple[int, int]] | None = field(default=None, init=False)
    _decoded_bytes: int = field(default=0, init=False)

    expected: str = "train/<class>/ and test/<class>/ image folders"

    @property
    def suffixes(self) -> tuple[str, ...]:
        return self.spec.suffixes if self.spec else IMAGE_SUFFIXES

    def kind(self, name: str) -> Kind | None:
        parts = name.split("/")
        if (
            len(parts) != 3
            or parts[0] not in SPLITS
            or not parts[2].lower().endswith(self.suffixes)
        ):
            return None
        if self.spec is not None and parts[1] not in self.spec.class_names:
            return None
        limit = self.spec.max_file_bytes if self.spec else MAX_IMAGE_FILE_BYTES
        return Kind(limit, "an image file", self.decode)

    def found(self, members: Members) -> bool:
        return any(name.split("/", 1)[0] in SPLITS for name in members.decoded)

    def decode(self, content: bytes, where: str) -> np.ndarray:
        """One image as uint8 (H, W) gray or (H, W, 3) RGB, checked from its header first."""
        Image = _pillow()

        try:
            with Image.open(io.BytesIO(content), formats=IMAGE_FORMATS) as image:
                pixels = self._checked_pixels(image, where)
        except CnnlabError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
            raise CnnlabError(
                f"{where} declares too many pixels ({error}); expected {self._wanted()}"
            ) from None
        except Exception as error:  # a malformed image can fail in any way inside Pillow
            raise CnnlabError(f"{where} is not a readable image ({shown(error)})") from None
        return pixels

    def _wanted(self) -> str:
        if self.spec is not None:
            return self.spec.describe()
        return f"at most {MAX_IMAGE_SIDE}×{MAX_IMAGE_SIDE} pixels"

    def _checked_pixels(self, image: Any, where: str) -> np.ndarray:
        Image = _pillow()

        width, height = image.size
        gray = image.mode in GRAY_MODES
        if self.spec is not None:
            wanted_height, wanted_width = self.spec.size
            right_mode = image.mode == self.spec.mode
            if (height, width) != (wanted_height, wanted_width) or not right_mode:
                raise CnnlabError(
                    f"{where} is {width}×{height} {image.mode}, expected {self.spec.describe()}"
                )
        elif width * height > MAX_IMAGE_PIXELS:
            raise CnnlabError(
                f"{where} declares too many pixels ({width}×{height}); an image may have at most "
                f"{MAX_IMAGE_PIXELS:,} ({MAX_IMAGE_SIDE}×{MAX_IMAGE_SIDE})"
            )
        out_height, out_width = self.image_size or (height, width)
        self._decoded_bytes += out_height * out_width * (1 if gray else 3)
        if self._decoded_bytes > sources.MAX_DECODED_BYTES:
            raise CnnlabError(
                f"{where}: the images decoded so far hold more than "
                f"{sources.MAX_DECODED_BYTES:,} bytes of pixels (the most a dataset may hold); "
                "use fewer or smaller images, or a smaller image_size"
            )
        if self.image_size is None and self.spec is None:
            if self._first is None:
                self._first = (where, (height, width))
            elif self._first[1] != (height, width):
                first_where, (first_height, first_width) = self._first
                raise CnnlabError(
                    f"images differ in size: {first_where} is {first_width}×{first_height}, "
                    f"{where} is {width}×{height}; give an image size (and a resample filter, "
                    f"one of {', '.join(RESAMPLING)}) to resize them"
                )
        if image.mode != ("L" if gray else "RGB"):
            image = image.convert("L" if gray else "RGB")
        if self.image_size is not None and (height, width) != self.image_size:
            filter_ = getattr(Image.Resampling, self.resample.upper())
            image = image.resize((self.image_size[1], self.image_size[0]), filter_)
        pixels = np.asarray(image)
        expected_shape = (out_height, out_width) if gray else (out_height, out_width, 3)
        if pixels.shape != expected_shape or pixels.dtype != np.uint8:
            raise CnnlabError(
                f"{where} decodes to {pixels.dtype} {pixels.shape}, expected {expected_shape}"
            )
        return pixels

    def assemble(self, members: Members, source: str) -> Arrays:
        by_class: dict[tuple[str, str], list[str]] = {}
        classes: set[str] = set()
        if self.spec is not None:
            classes = set(self.spec.class_names)
            by_class = {(split, name): [] for split in SPLITS for name in classes}
        for folder in members.folders:
            parts = folder.split("/")
            if len(parts) == 2 and parts[0] in SPLITS and self.spec is None:
                by_class.setdefault((parts[0], parts[1]), [])
        for name, content in members.decoded.items():
            parts = name.split("/")
            known = (
                len(parts) == 3
                and parts[0] in SPLITS
                and (self.spec is None or parts[1] in classes)
            )
            if not known:
                listed = f", classes: {' '.join(self.spec.class_names)}" if self.spec else ""
                raise CnnlabError(
                    f"{source}: unexpected member '{shown(name)}' (expected "
                    f"train/<class>/<image> or test/<class>/<image>{listed})"
                )
            if content is None:
                kinds = [suffix for suffix in self.suffixes if suffix != ".jpeg"]  # as .jpg
                listed = ", ".join(kinds[:-1]) + " or " + kinds[-1] if len(kinds) > 1 else kinds[0]
                raise CnnlabError(f"{source}: {shown(name)} is not a {listed} image")
            by_class.setdefault((parts[0], parts[1]), []).append(name)
        class_names = self.spec.class_names if self.spec else self._class_names(by_class, source)
        for split in SPLITS:
            for class_name in class_names:
                if not by_class.get((split, class_name)):
                    raise CnnlabError(
                        f"{source}: no images in {split}/{shown(class_name)}/ (every class needs "
                        "some in both splits)"
                    )
        decoded = members.decoded
        color = any(decoded[name].ndim == 3 for names in by_class.values() for name in names)
        channels = 3 if color else 1
        total = sum(decoded[name].size for names in by_class.values() for name in names)
        if color and total * 3 > sources.MAX_DECODED_BYTES:  # grayscale ones become RGB
            raise CnnlabError(
                f"{source}: as RGB the images hold more than {sources.MAX_DECODED_BYTES:,} bytes "
                "of pixels (the most a dataset may hold); use fewer or smaller images"
            )
        numeric = self.spec.numeric_order if self.spec else True
        arrays: list[np.ndarray] = []
        for split in SPLITS:
            names: list[str] = []
            counts = []
            for class_name in class_names:
                in_class = by_class[(split, class_name)]
                names += sorted(in_class, key=_order_key) if numeric else sorted(in_class)
                counts.append(len(in_class))
            height, width = decoded[names[0]].shape[:2]
            images = np.empty((len(names), height, width, channels), dtype=np.uint8)
            for index, name in enumerate(names):
                pixels = decoded[name]
                if pixels.shape[:2] != (height, width):  # only when sizes differ across splits
                    raise CnnlabError(
                        f"images differ in size: {source}: {shown(names[0])} is {width}×{height}, "
                        f"{shown(name)} is {pixels.shape[1]}×{pixels.shape[0]}; give an image "
                        "size to resize them"
                    )
                images[index] = pixels if pixels.ndim == 3 else pixels[:, :, None]
            labels = np.repeat(np.arange(len(class_names), dtype=np.int64), counts)
            arrays += [images, labels]
        return Arrays(*arrays, class_names=tuple(class_names))

    def _class_names(self, by_class: dict[tuple[str, str], list[str]], source: str) -> list[str]:
        """Sorted folder names; a class folder in one split only is refused, naming it."""
        per_split = {split: {name for (s, name) in by_class if s == split} for split in SPLITS}
        for split, other in (("train", "test"), ("test", "train")):
            missing = sorted(per_split[split] - per_split[other])
            if missing:
                raise CnnlabError(
                    f"{source}: class folder {split}/{shown(missing[0])}/ has no {other}/"
                    f"{shown(missing[0])}/ (both splits need the same classes)"
                )
        names = sorted(per_split["train"])
        if not names:
            raise CnnlabError(f"{source}: no class folders under train/ and test/")
        if len(names) > MAX_CLASSES:
            raise CnnlabError(f"{source}: {len(names):,} class folders (at most {MAX_CLASSES:,})")
        for name in names:  # a class name is one line of plain text wherever it is shown
            # Unicode's C (control, format) and Z (separators: U+2028 breaks a line in some
            # renderers, a no-break space looks like nothing) except the plain space.
            if not name.isprintable():
                raise CnnlabError(
                    f"{source}: class folder '{shown(name)}' has a control character or a space"
                    " other than ' ' (a line break, a tab, a no-break space, ...) in its name;"
                    " rename it"
                )
        return names


def read_image_folders(
    path: Path,
    *,
    expected: Expected | None = None,
    image_size: tuple[int, int] | None = None,
    resample: str = "bilinear",
    what: str = "image-folder",
) -> Arrays:
    """Decode image folders at `path` (folder, .zip, .tar or .tar.gz)."""
    layout = ImageFolders(expected, image_size, resample)
    with image_warnings_as_errors():
        return read_source(path, [layout], what)


@contextlib.contextmanager
def image_warnings_as_errors() -> Iterator[None]:
    """Pillow's decompression-bomb warning raised as an error, around a whole read (cheaper than
    around each of 60,000 images)."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        yield


def resize_arrays(
    arrays: Arrays, image_size: tuple[int, int], resample: str, source: str
) -> Arrays:
    """Every image resized to (height, width) with the named Pillow filter (same size: as is)."""
    from PIL import Image

    filter_ = getattr(Image.Resampling, resample.upper())
    height, width = image_size

    def resized(images: np.ndarray) -> np.ndarray:
        if images.shape[1:3] == (height, width):
            return images
        channels = images.shape[3]
        if images.shape[0] * height * width * channels > sources.MAX_DECODED_BYTES:
            raise CnnlabError(
                f"{source}: resized to {width}×{height} the images would hold more than "
                f"{sources.MAX_DECODED_BYTES:,} bytes (the most a dataset may hold)"
            )
        out = np.empty((images.shape[0], height, width, channels), dtype=np.uint8)
        for index, image in enumerate(images):
            picture = Image.fromarray(image[:, :, 0] if channels == 1 else image)
            pixels = np.asarray(picture.resize((width, height), filter_))
            out[index] = pixels if pixels.ndim == 3 else pixels[:, :, None]
        return out

    return Arrays(
        resized(arrays.train_images),
        arrays.train_labels,
        resized(arrays.test_images),
        arrays.test_labels,
        arrays.class_names,
    )
