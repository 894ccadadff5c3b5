"""MNIST and Fashion-MNIST: the four official IDX files (gzipped or not), or MNIST image folders.

IDX: a big-endian header, then the values. Images: magic 0x00000803, count, rows, columns, then
count·rows·columns bytes. Labels: magic 0x00000801, count, then count bytes. The files are
`train-images-idx3-ubyte`, `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte` and
`t10k-labels-idx1-ubyte`, each optionally `.gz` (a `.` before `idx` is accepted too, as some
copies spell it). The header is read first and checked (magic, at most MAX_IDX_IMAGES of at most
MAX_IDX_SIDE×MAX_IDX_SIDE), then the file's size must be exactly what the header declares; a
gzipped file is decompressed only up to that size. Images come out (N, rows, columns, 1).

MNIST given image folders (train/<digit>/*.png, as the MNIST PNG copy has them) needs classes
"0".."9" of 28×28 grayscale images, taken in the official order (files named by their index).
"""

from __future__ import annotations

import re
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from cnnlab.data.image_folders import Expected, ImageFolders, image_warnings_as_errors
from cnnlab.data.sources import Arrays, Kind, Members, read_source
from cnnlab.errors import CnnlabError

MNIST_NAMES = tuple(str(digit) for digit in range(10))
FASHION_MNIST_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension
MNIST_SIDE = 28

# --- limits: the official files hold 60,000 / 10,000 images of 28×28; variants are accepted up
# to these (a file declaring more is refused before anything that size is read) -----------------
MAX_IDX_IMAGES = 100_000
MAX_IDX_SIDE = 64
MAX_IDX_IMAGES_BYTES = 16 + MAX_IDX_IMAGES * MAX_IDX_SIDE * MAX_IDX_SIDE  # 409,600,016
MAX_IDX_LABELS_BYTES = 8 + MAX_IDX_IMAGES
_IDX_NAME = re.compile(r"^(train|t10k)-(images|labels)[-.](idx[13])-ubyte(\.gz)?$")
_SPLIT_OF = {"train": "train", "t10k": "test"}


def read_mnist(path: Path, dataset: str, class_names: tuple[str, ...]) -> Arrays:
    """MNIST or Fashion-MNIST from its four IDX files (or, for MNIST, from image folders)."""
    layouts: list = [_IdxFiles(dataset, class_names)]
    if dataset == "mnist":
        expected = Expected(class_names, (MNIST_SIDE, MNIST_SIDE), "L", suffixes=(".png",))
        layouts.append(ImageFolders(expected))
    what = "MNIST" if dataset == "mnist" else "Fashion-MNIST"
    with image_warnings_as_errors():
        arrays = read_source(path, layouts, what)
    return Arrays(
        arrays.train_images,
        arrays.train_labels,
        arrays.test_images,
        arrays.test_labels,
        class_names,
    )


class _IdxFiles:
    """The four IDX files, side by side."""

    tops = ()
    expected = (
        "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte and "
        "t10k-labels-idx1-ubyte, each optionally .gz"
    )

    def __init__(self, dataset: str, class_names: tuple[str, ...]) -> None:
        self.dataset, self.class_names = dataset, class_names

    def kind(self, name: str) -> Kind | None:
        match = _IDX_NAME.match(name)
        if match is None or (match[2] == "images") != (match[3] == "idx3"):
            return None
        if match[2] == "images":
            what = f"an IDX image file of at most {MAX_IDX_IMAGES:,} images"
            return Kind(MAX_IDX_IMAGES_BYTES, what, _read_images)
        what = f"an IDX label file of at most {MAX_IDX_IMAGES:,} labels"
        return Kind(MAX_IDX_LABELS_BYTES, what, _read_labels)

    def found(self, members: Members) -> bool:
        return any(_IDX_NAME.match(name) for name in members.decoded)

    def assemble(self, members: Members, source: str) -> Arrays:
        found: dict[tuple[str, str], str] = {}
        for name in members.decoded:
            match = _IDX_NAME.match(name)
            if match is None or members.decoded[name] is None:
                raise CnnlabError(
                    f"{source}: unexpected member '{name}' beside the IDX files ({self.expected})"
                )
            key = (_SPLIT_OF[match[1]], match[2])
            if key in found:
                raise CnnlabError(f"{source}: both {found[key]} and {name} hold {key[0]} {key[1]}")
            found[key] = name
        arrays = []
        for split, prefix in (("train", "train"), ("test", "t10k")):
            for part, idx in (("images", "idx3"), ("labels", "idx1")):
                if (split, part) not in found:
                    raise CnnlabError(f"{source}: missing {prefix}-{part}-{idx}-ubyte(.gz)")
            images = members.decoded[found[(split, "images")]]
            labels = members.decoded[found[(split, "labels")]]
            if len(images) != len(labels):
                raise CnnlabError(
                    f"{source}: {found[(split, 'images')]} holds {len(images):,} images but "
                    f"{found[(split, 'labels')]} {len(labels):,} labels (they must match)"
                )
            if labels.size and labels.max() >= len(self.class_names):
                bad = int(labels[labels >= len(self.class_names)][0])
                raise CnnlabError(
                    f"{source}: {found[(split, 'labels')]}: label {bad} out of range "
                    f"(valid: 0..{len(self.class_names) - 1})"
                )
            arrays += [images[:, :, :, None], labels.astype(np.int64)]
        shapes = {
            found[("train", "images")]: arrays[0].shape,
            found[("test", "images")]: arrays[2].shape,
        }
        if arrays[0].shape[1:] != arrays[2].shape[1:]:
            (train_name, train_shape), (test_name, test_shape) = shapes.items()
            raise CnnlabError(
                f"{source}: {train_name} holds {train_shape[2]}×{train_shape[1]} images, "
                f"{test_name} {test_shape[2]}×{test_shape[1]} (both splits need one size)"
            )
        return Arrays(*arrays, class_names=self.class_names)


def _content(
    content: bytes, where: str, header_bytes: int, size_of: Callable[[bytes], int]
) -> bytes:
    """The file's bytes, decompressed if gzipped, never past the size its header declares."""
    if not content.startswith(b"\x1f\x8b"):
        if len(content) < header_bytes:
            raise CnnlabError(f"{where}: {len(content)} bytes is shorter than an IDX header")
        expected = size_of(content[:header_bytes])
        if len(content) != expected:
            raise CnnlabError(
                f"{where}: {len(content):,} bytes, but its header declares {expected:,} "
                "(header plus values); truncated or not an IDX file"
            )
        return content
    decompressor = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    out, pending, expected = bytearray(), content, None
    try:
        while True:
            wanted = (header_bytes if expected is None else expected + 1) - len(out)
            chunk = decompressor.decompress(pending, wanted)
            out += chunk
            pending = decompressor.unconsumed_tail
            if expected is None and len(out) >= header_bytes:
                expected = size_of(bytes(out[:header_bytes]))
            elif not chunk or (expected is not None and len(out) > expected):
                break
    except zlib.error as error:
        raise CnnlabError(f"{where}: truncated or corrupt gzip ({error})") from None
    if expected is None:
        raise CnnlabError(f"{where}: decompresses to less than an IDX header")
    if len(out) > expected:
        raise CnnlabError(
            f"{where}: decompresses to more than the {expected:,} bytes its header declares "
            "(header plus values); not an IDX file"
        )
    if len(out) < expected or not decompressor.eof:
        raise CnnlabError(
            f"{where}: decompresses to {len(out):,} bytes, but its header declares {expected:,} "
            "(header plus values); truncated"
        )
    return bytes(out)


def _images_size(header: bytes, where: str) -> int:
    magic, count, rows, columns = struct.unpack(">4I", header)
    if magic != IMAGES_MAGIC:
        raise CnnlabError(
            f"{where}: magic number 0x{magic:08x}, expected 0x{IMAGES_MAGIC:08x} (IDX images)"
        )
    if not (
        1 <= count <= MAX_IDX_IMAGES and 1 <= rows <= MAX_IDX_SIDE and 1 <= columns <= MAX_IDX_SIDE
    ):
        raise CnnlabError(
            f"{where}: its header declares {count:,} images of {rows}×{columns}; at most "
            f"{MAX_IDX_IMAGES:,} images of at most {MAX_IDX_SIDE}×{MAX_IDX_SIDE} are read"
        )
    return 16 + count * rows * columns


def _labels_size(header: bytes, where: str) -> int:
    magic, count = struct.unpack(">2I", header)
    if magic != LABELS_MAGIC:
        raise CnnlabError(
            f"{where}: magic number 0x{magic:08x}, expected 0x{LABELS_MAGIC:08x} (IDX labels)"
        )
    if not 1 <= count <= MAX_IDX_IMAGES:
        raise CnnlabError(
            f"{where}: its header declares {count:,} labels; at most {MAX_IDX_IMAGES:,} are read"
        )
    return 8 + count


def _read_images(content: bytes, where: str) -> np.ndarray:
    data = _content(content, where, 16, lambda header: _images_size(header, where))
    _, count, rows, columns = struct.unpack(">4I", data[:16])
    return np.frombuffer(data, dtype=np.uint8, offset=16).reshape(count, rows, columns)


def _read_labels(content: bytes, where: str) -> np.ndarray:
    data = _content(content, where, 8, lambda header: _labels_size(header, where))
    return np.frombuffer(data, dtype=np.uint8, offset=8)
