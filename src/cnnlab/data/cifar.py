"""CIFAR-10 and CIFAR-100 in their official forms: pickled batches (python) and binary records.

CIFAR-10: `data_batch_1..5` and `test_batch` pickles (+ `batches.meta`), or the same names with
`.bin` (records of a label byte and 3,072 pixel bytes), or image folders of its ten classes.
CIFAR-100: `train` and `test` pickles with `fine_labels` and `coarse_labels` (+ `meta`), or
`train.bin` and `test.bin` (records of a coarse label byte, a fine label byte, 3,072 pixels).
Pixels are stored as R, G, B planes of 32×32; the arrays come out (N, 32, 32, 3).

Batch sizes: the official CIFAR-10 batches hold 10,000 records each and CIFAR-100's train file
50,000; these readers accept any positive number of records per file up to MAX_BATCH_IMAGES /
MAX_CIFAR100_IMAGES (so tests can build tiny archives), but a binary file whose length is not a
whole number of records is refused.

Pickles are read by an unpickler that admits only NumPy's array rebuilders, and only for arrays
no larger than the file can hold; opcodes and tuples are counted before unpickling.
"""

from __future__ import annotations

import codecs
import io
import pickle
import pickletools
from pathlib import Path
from typing import Any

import numpy as np

from cnnlab.data.image_folders import Expected, ImageFolders, image_warnings_as_errors
from cnnlab.data.sources import Arrays, Kind, Members, read_source, shown
from cnnlab.errors import CnnlabError

# CIFAR-10's official label order.
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
# CIFAR-100's official fine and coarse label orders (as its `meta` file lists them).
# fmt: off
CIFAR100_FINE_NAMES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle",
    "bottle", "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar",
    "cattle", "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile",
    "cup", "dinosaur", "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster",
    "house", "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster",
    "man", "maple_tree", "motorcycle", "mountain", "mouse", "mushroom", "oak_tree", "orange",
    "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree", "plain", "plate", "poppy",
    "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket", "rose", "sea", "seal",
    "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider", "squirrel", "streetcar",
    "sunflower", "sweet_pepper", "table", "tank", "telephone", "television", "tiger", "tractor",
    "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman",
    "worm",
)
# fmt: on
CIFAR100_COARSE_NAMES = (
    "aquatic_mammals",
    "fish",
    "flowers",
    "food_containers",
    "fruit_and_vegetables",
    "household_electrical_devices",
    "household_furniture",
    "insects",
    "large_carnivores",
    "large_man-made_outdoor_things",
    "large_natural_outdoor_scenes",
    "large_omnivores_and_herbivores",
    "medium_mammals",
    "non-insect_invertebrates",
    "people",
    "reptiles",
    "small_mammals",
    "trees",
    "vehicles_1",
    "vehicles_2",
)
IMAGE_SIDE = 32
PIXEL_BYTES = IMAGE_SIDE * IMAGE_SIDE * 3  # one image as R, G, B planes
RECORD_BYTES = 1 + PIXEL_BYTES  # CIFAR-10 binary: a label byte, then the pixels
CIFAR100_RECORD_BYTES = 2 + PIXEL_BYTES  # CIFAR-100 binary: coarse and fine label bytes, pixels
TRAIN_BATCHES = tuple(f"data_batch_{number}" for number in range(1, 6))
TEST_BATCH = "test_batch"
CIFAR100_FILES = ("train", "test")
# Files the official archives ship beside the batches; read for nothing.
_PICKLE_EXTRAS = ("batches.meta", "readme.html")
_BINARY_EXTRAS = ("batches.meta.txt", "readme.html")
_CIFAR100_PICKLE_EXTRAS = ("meta", "file.txt~")
_CIFAR100_BINARY_EXTRAS = ("fine_label_names.txt", "coarse_label_names.txt")
# How a refusal names a pickle that is not what it should be.
_CIFAR10_PICKLE = "CIFAR-10 batch pickle"
_CIFAR100_PICKLE = "CIFAR-100 pickle"

# --- limits: what a CIFAR source can legitimately hold, with headroom -------------------------
# Records in one CIFAR-10 batch: the official batches hold 10,000; twice that is accepted.
MAX_BATCH_IMAGES = 20_000
# Records in one CIFAR-100 file: the official train file holds 50,000; twice that is accepted.
MAX_CIFAR100_IMAGES = 100_000
# A pickled record: its pixels plus 256 bytes for its labels and file name (the official
# data_batch_1 is 31,035,704 bytes for 10,000 records; CIFAR-100's train 155,249,918 for 50,000).
_PICKLE_RECORD_BYTES = PIXEL_BYTES + 256
# Opcodes a pickled record may take (the official ones take about 3) and tuple-building opcodes
# in one file (a dozen; bounding them bounds tuple nesting, which CPython hashes recursively).
_PICKLE_OPCODES_PER_RECORD = 8
MAX_PICKLE_TUPLES = 1_000
# batches.meta / meta (the official ones are 158 and 1,758 bytes); label-name text files.
MAX_META_BYTES = 1 << 20
# One CIFAR-10 image file: a 32×32 RGB image is about 3 KB; the rest is room for metadata.
MAX_CIFAR_IMAGE_FILE_BYTES = 1 << 20


def read_cifar10(path: Path) -> Arrays:
    """CIFAR-10 from its python or binary batches, or from image folders of its ten classes."""
    layouts = [
        _Cifar10Batches(binary=False),
        _Cifar10Batches(binary=True),
        ImageFolders(
            Expected(
                CLASS_NAMES,
                (IMAGE_SIDE, IMAGE_SIDE),
                "RGB",
                numeric_order=False,  # plain name order, as CIFAR-10 folders were always read
                max_file_bytes=MAX_CIFAR_IMAGE_FILE_BYTES,
            )
        ),
    ]
    with image_warnings_as_errors():
        arrays = read_source(path, layouts, "CIFAR-10")
    return Arrays(*_four(arrays), class_names=CLASS_NAMES)


def read_cifar100(path: Path, *, coarse: bool = False) -> Arrays:
    """CIFAR-100 from its python (`train`, `test`, `meta`) or binary (`.bin`) files."""
    layouts = [
        _Cifar100Files(binary=False, coarse=coarse),
        _Cifar100Files(binary=True, coarse=coarse),
    ]
    return read_source(path, layouts, "CIFAR-100")


def _four(arrays: Arrays) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    return arrays.train_images, arrays.train_labels, arrays.test_images, arrays.test_labels


# --- CIFAR-10 ---------------------------------------------------------------------------------


class _Cifar10Batches:
    """data_batch_1..5 and test_batch, pickled or (with .bin) binary."""

    tops = ()

    def __init__(self, *, binary: bool) -> None:
        self.suffix = ".bin" if binary else ""
        self.extras = _BINARY_EXTRAS if binary else _PICKLE_EXTRAS
        self.expected = "their .bin forms" if binary else "data_batch_1..5 and test_batch"
        self.binary = binary

    def kind(self, name: str) -> Kind | None:
        if self.suffix and not name.endswith(self.suffix):
            return None
        stem = name[: -len(self.suffix)] if self.suffix else name
        if stem in (*TRAIN_BATCHES, TEST_BATCH):
            if self.binary:
                return Kind(
                    MAX_BATCH_IMAGES * RECORD_BYTES,
                    f"a binary batch of at most {MAX_BATCH_IMAGES:,} records",
                    _read_binary_batch,
                )
            return Kind(
                MAX_BATCH_IMAGES * _PICKLE_RECORD_BYTES,
                f"a pickled batch of at most {MAX_BATCH_IMAGES:,} images",
                _read_pickle_batch,
            )
        if not self.binary and name == "batches.meta":
            return Kind(MAX_META_BYTES, "batches.meta", _check_meta)
        return None

    def found(self, members: Members) -> bool:
        return any(batch + self.suffix in members.decoded for batch in (*TRAIN_BATCHES, TEST_BATCH))

    def assemble(self, members: Members, source: str) -> Arrays:
        decoded = members.decoded
        expected = [batch + self.suffix for batch in (*TRAIN_BATCHES, TEST_BATCH)]
        _refuse_unexpected(decoded, expected, self.extras, source)
        missing = [name for name in expected if name not in decoded]
        if missing:
            raise CnnlabError(f"{source}: missing batch {', '.join(missing)}")
        train = [decoded[name + self.suffix] for name in TRAIN_BATCHES]
        test_images, test_labels = decoded[TEST_BATCH + self.suffix]
        return Arrays(
            np.concatenate([images for images, _ in train]),
            np.concatenate([labels for _, labels in train]),
            test_images,
            test_labels,
            CLASS_NAMES,
        )


def _refuse_unexpected(
    decoded: dict[str, Any], expected: list[str], extras: tuple[str, ...], source: str
) -> None:
    for name in decoded:
        if name not in expected and name not in extras:
            raise CnnlabError(f"{source}: unexpected member '{shown(name)}' beside the batches")


def _planes_to_images(pixels: np.ndarray) -> np.ndarray:
    """(N, 3072) R, G, B planes -> (N, 32, 32, 3) channels-last, contiguous."""
    planes = pixels.reshape(-1, 3, IMAGE_SIDE, IMAGE_SIDE)
    return np.ascontiguousarray(planes.transpose(0, 2, 3, 1))


def _check_labels(labels: np.ndarray, where: str, class_count: int = 10) -> np.ndarray:
    if labels.size and (labels.min() < 0 or labels.max() >= class_count):
        bad = labels[(labels < 0) | (labels >= class_count)][0]
        raise CnnlabError(f"{where}: label {bad} out of range (valid: 0..{class_count - 1})")
    return labels.astype(np.int64)


def _binary_records(content: bytes, where: str, record_bytes: int, most: int) -> np.ndarray:
    """The records of a binary file as uint8 (N, record_bytes); a partial record is refused."""
    if len(content) == 0 or len(content) % record_bytes:
        labels = "1 label byte" if record_bytes == RECORD_BYTES else "2 label bytes"
        raise CnnlabError(
            f"{where}: {len(content):,} bytes is not a whole number of {record_bytes:,}-byte "
            f"records ({labels} + 3,072 pixel bytes; at most {most:,} records)"
        )
    return np.frombuffer(content, dtype=np.uint8).reshape(-1, record_bytes)


def _read_binary_batch(content: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    records = _binary_records(content, where, RECORD_BYTES, MAX_BATCH_IMAGES)
    return _planes_to_images(records[:, 1:]), _check_labels(records[:, 0], where)


def _read_pickle_batch(content: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    fields = _pickled_dict(content, where, MAX_BATCH_IMAGES, ("data", "labels"), _CIFAR10_PICKLE)
    data = _pixel_array(fields["data"], where, MAX_BATCH_IMAGES)
    labels = _label_array(fields["labels"], data.shape[0], where, "labels", 10)
    return _planes_to_images(data), labels


def _check_meta(content: bytes, where: str) -> bool:
    _check_names(content, where, {"label_names": CLASS_NAMES}, _CIFAR10_PICKLE)
    return True


# --- CIFAR-100 --------------------------------------------------------------------------------


class _Cifar100Files:
    """`train` and `test` pickles, or `train.bin` and `test.bin` records; fine or coarse labels."""

    tops = ()

    def __init__(self, *, binary: bool, coarse: bool) -> None:
        self.binary, self.coarse = binary, coarse
        self.suffix = ".bin" if binary else ""
        self.extras = _CIFAR100_BINARY_EXTRAS if binary else _CIFAR100_PICKLE_EXTRAS
        self.expected = "train.bin and test.bin" if binary else "train, test and meta pickles"

    def kind(self, name: str) -> Kind | None:
        if name in (file + self.suffix for file in CIFAR100_FILES):
            if self.binary:
                return Kind(
                    MAX_CIFAR100_IMAGES * CIFAR100_RECORD_BYTES,
                    f"a CIFAR-100 binary file of at most {MAX_CIFAR100_IMAGES:,} records",
                    self._read_binary,
                )
            return Kind(
                MAX_CIFAR100_IMAGES * _PICKLE_RECORD_BYTES,
                f"a CIFAR-100 pickle of at most {MAX_CIFAR100_IMAGES:,} images",
                self._read_pickle,
            )
        if not self.binary and name == "meta":
            return Kind(MAX_META_BYTES, "meta", _check_cifar100_meta)
        if self.binary and name in _CIFAR100_BINARY_EXTRAS:
            return Kind(MAX_META_BYTES, name, _check_cifar100_names)
        return None

    def found(self, members: Members) -> bool:
        return any(file + self.suffix in members.decoded for file in CIFAR100_FILES)

    def assemble(self, members: Members, source: str) -> Arrays:
        decoded = members.decoded
        expected = [file + self.suffix for file in CIFAR100_FILES]
        _refuse_unexpected(decoded, expected, self.extras, source)
        missing = [name for name in expected if name not in decoded]
        if missing:
            raise CnnlabError(f"{source}: missing {', '.join(missing)}")
        train_images, train_labels = decoded["train" + self.suffix]
        test_images, test_labels = decoded["test" + self.suffix]
        names = CIFAR100_COARSE_NAMES if self.coarse else CIFAR100_FINE_NAMES
        return Arrays(train_images, train_labels, test_images, test_labels, names)

    def _read_binary(self, content: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
        records = _binary_records(content, where, CIFAR100_RECORD_BYTES, MAX_CIFAR100_IMAGES)
        coarse = _check_labels(records[:, 0], where + " (coarse label)", 20)
        fine = _check_labels(records[:, 1], where + " (fine label)", 100)
        return _planes_to_images(records[:, 2:]), coarse if self.coarse else fine

    def _read_pickle(self, content: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
        keys = ("data", "fine_labels", "coarse_labels")
        fields = _pickled_dict(content, where, MAX_CIFAR100_IMAGES, keys, _CIFAR100_PICKLE)
        data = _pixel_array(fields["data"], where, MAX_CIFAR100_IMAGES)
        count = data.shape[0]
        fine = _label_array(fields["fine_labels"], count, where, "fine_labels", 100)
        coarse = _label_array(fields["coarse_labels"], count, where, "coarse_labels", 20)
        return _planes_to_images(data), coarse if self.coarse else fine


def _check_cifar100_meta(content: bytes, where: str) -> bool:
    expected = {
        "fine_label_names": CIFAR100_FINE_NAMES,
        "coarse_label_names": CIFAR100_COARSE_NAMES,
    }
    _check_names(content, where, expected, _CIFAR100_PICKLE)
    return True


def _check_cifar100_names(content: bytes, where: str) -> bool:
    """fine_label_names.txt / coarse_label_names.txt: one official name a line."""
    official = CIFAR100_FINE_NAMES if "fine" in where.rsplit("/", 1)[-1] else CIFAR100_COARSE_NAMES
    names = tuple(line.strip() for line in content.decode("latin-1").splitlines() if line.strip())
    if names != official:
        raise CnnlabError(f"{where}: the names differ from CIFAR-100's official {len(official)}")
    return True


# --- pickles ----------------------------------------------------------------------------------


def _pickled_dict(
    content: bytes, where: str, most_images: int, keys: tuple[str, ...], what: str
) -> dict[str, Any]:
    """The unpickled dict with text keys; a pickle of anything else, or missing keys, is refused."""
    batch = _unpickle(content, where, most_images, what)
    if not isinstance(batch, dict):
        wanted = " and ".join(f"'{key}'" for key in keys)
        raise CnnlabError(f"{where}: expected a dict with {wanted}, got {type(batch).__name__}")
    fields = _text_keys(batch)
    if any(key not in fields for key in keys):
        found = sorted(fields)
        listed = ", ".join(shown(key) for key in found[:10]) + (", …" if len(found) > 10 else "")
        wanted = " and ".join(f"'{key}'" for key in keys)
        raise CnnlabError(f"{where}: expected keys {wanted}, got [{listed}]")
    return fields


def _pixel_array(data: Any, where: str, most_images: int) -> np.ndarray:
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2):
        raise CnnlabError(
            f"{where}: 'data' must be a uint8 array (N, {PIXEL_BYTES}), got {_describe(data)}"
        )
    data = np.asarray(data)  # a plain ndarray again
    if data.shape[1] != PIXEL_BYTES or not 0 < data.shape[0] <= most_images:
        raise CnnlabError(
            f"{where}: 'data' has shape {data.shape}, expected (N, {PIXEL_BYTES}) with N in "
            f"1..{most_images:,} (32×32×3 pixels an image)"
        )
    return data


def _check_names(
    content: bytes, where: str, expected: dict[str, tuple[str, ...]], what: str
) -> None:
    """A meta pickle's name lists must be the official ones."""
    meta = _unpickle(content, where, 1, what)
    fields = _text_keys(meta) if isinstance(meta, dict) else {}
    for key, official in expected.items():
        names = fields.get(key)
        if not isinstance(names, list):
            raise CnnlabError(f"{where}: expected a dict with '{key}'")
        decoded = tuple(
            name.decode("latin-1") if isinstance(name, bytes) else name for name in names
        )
        if decoded != official:
            if len(official) <= 10:
                raise CnnlabError(f"{where}: {key} differ from {list(official)}")
            raise CnnlabError(f"{where}: {key} differ from the official {len(official)} names")


# The only globals a pickled CIFAR batch needs: NumPy's array rebuilders, under their NumPy 1
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
_TUPLE_OPCODES = {"TUPLE", "TUPLE1", "TUPLE2", "TUPLE3"}


class _RefusedGlobal(pickle.UnpicklingError):
    """A pickle asked for a global outside the NumPy array rebuilders, or misused one."""


class _TooLarge(pickle.UnpicklingError):
    """A pickle declared an array larger than its file can hold."""


def _array_bytes(shape: Any, dtype: Any, limit: int) -> int:
    """Bytes an array of `shape` and `dtype` takes; a shape that is not a tuple of sizes raises."""
    shape = (shape,) if type(shape) is int else shape
    if not isinstance(shape, tuple) or not all(type(side) is int and side >= 0 for side in shape):
        raise _RefusedGlobal("refused an array shape that is not a tuple of sizes")
    size = np.dtype(dtype).itemsize
    for side in shape:
        size *= side
    if size > limit:
        raise _TooLarge(f"an array of {size:,} bytes is declared; a batch holds at most {limit:,}")
    return size


class _ArrayType:
    """Stands in for numpy.ndarray in a pickle: `_reconstruct` takes it; calling it is refused."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        raise _RefusedGlobal("refused a direct call of numpy.ndarray")


def _latin1_encode(text: Any, encoding: Any = "utf-8", errors: Any = "strict") -> bytes:
    """`_codecs.encode` as protocol 2 uses it for bytes (latin-1, which keeps the length)."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise _RefusedGlobal("refused _codecs.encode other than of text to latin-1")
    return codecs.encode(text, "latin-1")


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that builds only NumPy arrays and plain containers; other globals raise.

    Every array it builds may hold at most `limit` bytes, checked before its memory is taken.
    """

    def __init__(self, content: bytes, limit: int) -> None:
        super().__init__(io.BytesIO(content), encoding="bytes")

        class BoundedArray(np.ndarray):
            """An array while it is unpickled: its state may not declare more than `limit`."""

            def __setstate__(self, state: Any) -> None:
                if not isinstance(state, tuple) or len(state) not in (4, 5):
                    raise _RefusedGlobal("refused an array state of an unknown form")
                _array_bytes(state[-4], state[-3], limit)
                super().__setstate__(state)

        def reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
            if subtype is not _ArrayType:
                raise _RefusedGlobal("refused an array of a type other than numpy.ndarray")
            _array_bytes(shape, dtype, limit)
            return np.ndarray.__new__(BoundedArray, shape, dtype)

        def frombuffer(buffer: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
            _array_bytes(shape, dtype, limit)
            return np.frombuffer(buffer, dtype=dtype).reshape(shape, order=order)

        self._admitted = {
            "_reconstruct": reconstruct,
            "_frombuffer": frombuffer,
            "ndarray": _ArrayType,
            "dtype": np.dtype,
            "encode": _latin1_encode,
        }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ARRAY_GLOBALS:
            raise _RefusedGlobal(f"refused global {shown(module)}.{shown(name)}")
        return self._admitted[name]


def _check_opcodes(content: bytes, where: str, most_opcodes: int, what: str) -> None:
    """Refuse a pickle with more opcodes than its records need, or deeply nestable tuples.

    CPython hashes nested tuples recursively without a depth guard: a million nested tuples used
    as a dict key crash the interpreter, so they are refused before unpickling.
    """
    opcodes = tuples = 0
    try:
        for opcode, _argument, _position in pickletools.genops(content):
            opcodes += 1
            tuples += opcode.name in _TUPLE_OPCODES
            if opcodes > most_opcodes or tuples > MAX_PICKLE_TUPLES:
                raise CnnlabError(
                    f"{where}: not a {what} (more than {most_opcodes:,} "
                    f"opcodes or {MAX_PICKLE_TUPLES:,} tuples)"
                )
    except CnnlabError:
        raise
    except Exception as error:  # a malformed pickle can fail in any way; none is a crash
        raise CnnlabError(f"{where}: truncated or corrupt pickle ({shown(error)})") from None


def _unpickle(content: bytes, where: str, most_images: int, what: str) -> Any:
    """Unpickle a file of at most `most_images` records (meta files: 1) with the bounds above."""
    records = max(most_images, 1_000)  # meta files hold a few hundred names
    _check_opcodes(content, where, records * _PICKLE_OPCODES_PER_RECORD, what)
    try:
        return _RestrictedUnpickler(content, most_images * _PICKLE_RECORD_BYTES).load()
    except _RefusedGlobal as error:
        raise CnnlabError(
            f"{where}: not a {what} ({error}; only NumPy arrays are admitted)"
        ) from None
    except _TooLarge as error:
        raise CnnlabError(f"{where}: not a {what} ({error})") from None
    except Exception as error:  # a malformed pickle can fail in any way; none is a crash
        raise CnnlabError(f"{where}: truncated or corrupt pickle ({shown(repr(error))})") from None


def _text_keys(batch: dict[Any, Any]) -> dict[str, Any]:
    """Python 2 pickles read with encoding='bytes' have bytes keys; compare them as text."""
    fields = {}
    for key, value in batch.items():
        if isinstance(key, bytes):
            fields[key.decode("latin-1")] = value
        elif isinstance(key, str):
            fields[key] = value
        else:
            fields[f"<a {type(key).__name__}>"] = value
    return fields


def _describe(value: Any) -> str:
    """A short description of an unpickled value (never its repr, which may be huge)."""
    if isinstance(value, np.ndarray):
        return f"a {value.dtype} array of shape {value.shape}"
    if isinstance(value, list | tuple | dict):
        return f"a {type(value).__name__} of {len(value):,}"
    return f"a {type(value).__name__}"


def _label_array(labels: Any, count: int, where: str, key: str, class_count: int) -> np.ndarray:
    """The labels as int64 (count,), each in 0..class_count-1; anything else is refused."""
    wrong = CnnlabError(f"{where}: '{key}' must be {count} integers, got {_describe(labels)}")
    if isinstance(labels, np.ndarray):
        if labels.ndim != 1 or labels.dtype.kind not in "iu" or labels.shape[0] != count:
            raise wrong
        return _check_labels(labels, where, class_count)
    if not isinstance(labels, list | tuple) or len(labels) != count:
        raise wrong
    if not all(type(label) is int for label in labels):
        raise wrong
    for label in labels:
        if not 0 <= label < class_count:
            value = str(label) if abs(label) < 10**12 else f"of {label.bit_length()} bits"
            raise CnnlabError(f"{where}: label {value} out of range (valid: 0..{class_count - 1})")
    return np.array(labels, dtype=np.int64)
