"""Read CIFAR-10 from any of its forms into uint8 arrays: official pickles, official binary, images.

A source is a folder, a .zip, or a .tar / .tar.gz archive. Archives are read member by member,
never extracted; links, absolute paths, `..` and members outside the expected layout are refused.
One optional top-level folder may wrap the layout (`cifar-10-batches-py/...`, `cifar10/train/...`).

Batch sizes: the official pickle and binary batches hold 10,000 records each; these readers accept
any positive number of records per batch up to MAX_BATCH_IMAGES (so tests can build tiny
archives), but a binary batch whose length is not a whole number of 3,073-byte records is refused.

Hostile input: what a reader allocates is bounded by what the format can legitimately hold (the
MAX_* limits below), never by what the input declares. Sizes declared in tar and zip headers are
checked before a member is read, reads stop at the limit (declared sizes can lie), image headers
are checked before decoding, and pickles may only build arrays of a batch's size. Every refusal is
one CnnlabError line naming the file or member, what was wrong and what would be valid.
"""

from __future__ import annotations

import bz2
import codecs
import gzip
import io
import lzma
import os
import pickle
import pickletools
import re
import stat
import tarfile
import warnings
import zipfile
from collections.abc import Callable, Iterator
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

# --- limits: what a CIFAR-10 source can legitimately hold, with headroom ---------------------
# Records in one batch: the official batches hold 10,000; twice that is accepted.
MAX_BATCH_IMAGES = 20_000
# One binary batch file: MAX_BATCH_IMAGES records of 3,073 bytes (61,460,000 bytes).
MAX_BINARY_BATCH_BYTES = MAX_BATCH_IMAGES * RECORD_BYTES
# One pickled batch file: pixels plus 256 bytes a record for its label and file name (66,560,000
# bytes; the official data_batch_1 is 31,035,704 bytes for 10,000 records).
MAX_PICKLE_BATCH_BYTES = MAX_BATCH_IMAGES * (PIXEL_BYTES + 256)
# Opcodes in one pickled batch (the official ones have about 3 a record) and tuple-building
# opcodes (a dozen; bounding them bounds tuple nesting, which CPython hashes recursively).
MAX_PICKLE_OPCODES = MAX_BATCH_IMAGES * 8
MAX_PICKLE_TUPLES = 1_000
# batches.meta (the official one is 158 bytes).
MAX_META_BYTES = 1 << 20
# One .png/.jpg file: a 32×32 RGB image is about 3 KB; the rest is room for metadata.
MAX_IMAGE_FILE_BYTES = 1 << 20
# Pixels an image header may declare: image folders hold 32×32 images only, so a header is
# checked against this before anything is decoded.
MAX_IMAGE_PIXELS = IMAGE_SIDE * IMAGE_SIDE
# Entries (files and folders) in one source: CIFAR-10 has 60,000 images; twice that is accepted.
# It also bounds the decoded image arrays (120,000 × 3,072 bytes = 369 MB).
MAX_MEMBERS = 120_000
# All members' declared sizes together (the official archives hold about 180 MB).
MAX_SOURCE_BYTES = 1 << 30
# The archive file itself (it is hashed whole before it is read): the members plus their headers.
MAX_ARCHIVE_BYTES = MAX_SOURCE_BYTES + (256 << 20)
# One tar extended header (pax or GNU long name), which tarfile reads whole, and all of them.
MAX_TAR_HEADER_BYTES = 64 << 10
MAX_TAR_HEADERS_TOTAL_BYTES = 128 << 20
# A zip's central directory, which zipfile parses whole on opening (a 60,000-image zip's is ~8 MB).
MAX_ZIP_DIRECTORY_BYTES = 32 << 20
_READ_CHUNK_BYTES = 256 << 10  # members are read in chunks of this size
_SHOWN_CHARACTERS = 200  # longest name an error message repeats


@dataclass(frozen=True)
class Arrays:
    """Decoded CIFAR-10: images uint8 (N, 32, 32, 3), labels int64 (N,), per split."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


def shown(text: object) -> str:
    """`text` safe for a one-line message: control characters escaped, at most 200 characters."""
    text = str(text)
    if not text.isprintable():
        text = repr(text)[1:-1]
    if len(text) > _SHOWN_CHARACTERS:
        text = text[: _SHOWN_CHARACTERS - 1] + "…"
    return text


def read_source(path: Path) -> Arrays:
    """Decode the CIFAR-10 source at `path` (folder, .zip, .tar or .tar.gz) into arrays."""
    where = shown(path)
    if path.is_dir():
        members = _folder_members(path, where)
    elif path.is_file():
        members = _archive_members(path, where)
    else:
        raise CnnlabError(f"{where}: no such file or folder")
    return _assemble(_strip_wrapper(_read_members(members, where)), where)


# --- reading members --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Member:
    """One regular file of a source: its checked name, declared size, and a bounded reader."""

    name: str  # relative POSIX name
    size: int  # bytes, as the folder, tar header or zip directory declares them
    read: Callable[[int], bytes]  # the content, refused past `limit` bytes; valid while iterating


def _member_name(raw_name: str, source: str) -> str:
    """The member's relative POSIX name; absolute paths and `..` are refused."""
    if raw_name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", raw_name):
        raise CnnlabError(f"{source}: member '{shown(raw_name)}' has an absolute path; refused")
    if "\\" in raw_name:
        raise CnnlabError(
            f"{source}: member '{shown(raw_name)}' has a backslash in its name; refused"
        )
    parts = [part for part in PurePosixPath(raw_name).parts if part not in ("", ".")]
    if ".." in parts:
        raise CnnlabError(
            f"{source}: member '{shown(raw_name)}' points outside the archive; refused"
        )
    return "/".join(parts)


def _read_bounded(stream: Any, limit: int, where: str) -> bytes:
    """At most `limit` bytes from `stream`, read in chunks; more than that is refused."""
    chunks, total = [], 0
    while chunk := stream.read(min(_READ_CHUNK_BYTES, limit + 1 - total)):
        chunks.append(chunk)
        total += len(chunk)
        if total > limit:
            raise CnnlabError(f"{where} holds more than {limit:,} bytes (the most it may hold)")
    return b"".join(chunks)


def _too_many_members(where: str) -> CnnlabError:
    return CnnlabError(
        f"{where}: more than {MAX_MEMBERS:,} files and folders (CIFAR-10 has 60,000 images); "
        "not a CIFAR-10 source"
    )


def folder_entries(folder: Path) -> list[tuple[str, os.stat_result]]:
    """(relative POSIX name, lstat) of every entry under `folder`; refused past MAX_MEMBERS."""
    where = shown(folder)
    entries: list[tuple[str, os.stat_result]] = []
    pending = [folder]
    while pending:
        directory = pending.pop()
        try:
            with os.scandir(directory) as listing:
                for entry in listing:
                    if len(entries) == MAX_MEMBERS:
                        raise _too_many_members(where)
                    facts = entry.stat(follow_symlinks=False)
                    entries.append((Path(entry.path).relative_to(folder).as_posix(), facts))
                    if stat.S_ISDIR(facts.st_mode):
                        pending.append(Path(entry.path))
        except OSError as error:
            relative = shown(Path(directory).relative_to(folder).as_posix())
            raise CnnlabError(
                f"{where}: cannot list {relative} ({error.strerror or error})"
            ) from None
    return sorted(entries, key=lambda named: named[0])


def _folder_members(folder: Path, where: str) -> Iterator[_Member]:
    """Every regular file under `folder`; links and special files are refused."""
    for relative, facts in folder_entries(folder):
        if stat.S_ISLNK(facts.st_mode):
            raise CnnlabError(f"{where}: {shown(relative)} is a link; refused")
        if stat.S_ISDIR(facts.st_mode):
            continue
        if not stat.S_ISREG(facts.st_mode):
            raise CnnlabError(f"{where}: {shown(relative)} is not a regular file; refused")

        def read(limit: int, path: Path = folder / relative, relative: str = relative) -> bytes:
            try:
                with path.open("rb") as stream:
                    return _read_bounded(stream, limit, f"{where}: {shown(relative)}")
            except OSError as error:
                raise CnnlabError(
                    f"{where}: cannot read {shown(relative)} ({error.strerror or error})"
                ) from None

        yield _Member(relative, facts.st_size, read)


def _archive_members(path: Path, where: str) -> Iterator[_Member]:
    """Every regular member of a .zip or .tar(.gz) archive, read one by one."""
    if path.stat().st_size > MAX_ARCHIVE_BYTES:
        raise CnnlabError(
            f"{where}: {path.stat().st_size:,} bytes is larger than any CIFAR-10 archive "
            f"(at most {MAX_ARCHIVE_BYTES:,}); refused"
        )
    name = path.name.lower()
    if name.endswith(".zip") or (not name.endswith((".tar", ".tar.gz", ".tgz")) and _is_zip(path)):
        return _zip_members(path, where)
    if name.endswith((".tar", ".tar.gz", ".tgz")) or _is_tar(path):
        return _tar_members(path, where)
    raise CnnlabError(
        f"{where}: not a folder, .zip, .tar or .tar.gz archive (expected a CIFAR-10 source)"
    )


def _is_zip(path: Path) -> bool:
    try:
        return zipfile.is_zipfile(path)
    except Exception:  # a file is_zipfile cannot parse is not a zip
        return False


def _is_tar(path: Path) -> bool:
    try:
        with _tar_stream(path, "") as stream:
            return tarfile.open(fileobj=stream, mode="r:") is not None
    except Exception:  # anything tarfile cannot open is not a tar
        return False


class _TarStream(io.RawIOBase):
    """A tar's (decompressed) bytes, refusing the huge single reads a hostile header asks for.

    tarfile reads a pax header or GNU long name whole; member content is read through
    `content_reads`, in chunks, and bounded by the member's limit.
    """

    def __init__(self, raw: Any, stream: Any, where: str) -> None:
        self.raw, self.stream, self.where = raw, stream, where
        self.content_reads = False
        self.header_bytes = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        if not self.content_reads:
            if size is None or size < 0 or size > MAX_TAR_HEADER_BYTES:
                raise CnnlabError(
                    f"{self.where}: a tar header declares {size or 0:,} bytes of names or "
                    f"attributes (at most {MAX_TAR_HEADER_BYTES:,}); refused"
                )
            self.header_bytes += size
            if self.header_bytes > MAX_TAR_HEADERS_TOTAL_BYTES:
                raise CnnlabError(
                    f"{self.where}: tar headers hold more than {MAX_TAR_HEADERS_TOTAL_BYTES:,} "
                    "bytes; not a CIFAR-10 archive"
                )
        return self.stream.read(size)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self.stream.seek(offset, whence)

    def tell(self) -> int:
        return self.stream.tell()

    def close(self) -> None:
        self.stream.close()
        self.raw.close()
        super().close()


def _tar_stream(path: Path, where: str) -> _TarStream:
    """The tar inside `path`, decompressed on the fly (gzip, bzip2 or xz, by magic bytes)."""
    raw = path.open("rb")
    magic = raw.read(6)
    raw.seek(0)
    opener: Callable[[Any], Any] = lambda stream: stream  # noqa: E731
    if magic.startswith(b"\x1f\x8b"):
        opener = lambda stream: gzip.GzipFile(fileobj=stream)  # noqa: E731
    elif magic.startswith(b"BZh"):
        opener = bz2.BZ2File
    elif magic.startswith(b"\xfd7zXZ\x00"):
        opener = lzma.LZMAFile
    return _TarStream(raw, opener(raw), where)


def _corrupt(where: str, kind: str, error: BaseException) -> CnnlabError:
    return CnnlabError(f"{where}: truncated or corrupt {kind} archive ({shown(error)})")


def _tar_members(path: Path, where: str) -> Iterator[_Member]:
    stream = _tar_stream(path, where)
    try:
        with stream, tarfile.open(fileobj=stream, mode="r:") as archive:
            while (member := archive.next()) is not None:
                if len(archive.members) > MAX_MEMBERS:
                    raise _too_many_members(where)
                name = _member_name(member.name, where)
                if member.issym() or member.islnk():
                    raise CnnlabError(f"{where}: member '{shown(member.name)}' is a link; refused")
                if member.isdir():
                    continue
                if not member.isreg():
                    raise CnnlabError(
                        f"{where}: member '{shown(member.name)}' is not a regular file"
                    )

                def read(limit: int, member: tarfile.TarInfo = member, name: str = name) -> bytes:
                    stream.content_reads = True
                    try:
                        content = archive.extractfile(member)
                        assert content is not None  # regular members always have content
                        return _read_bounded(content, limit, f"{where}: {shown(name)}")
                    except CnnlabError:
                        raise
                    except Exception as error:  # a damaged archive can fail in any way
                        raise _corrupt(where, "tar", error) from None
                    finally:
                        stream.content_reads = False

                yield _Member(name, member.size, read)
    except CnnlabError:
        raise
    except Exception as error:  # tarfile and the decompressors fail in many ways on bad input
        raise _corrupt(where, "tar", error) from None


def _zip_members(path: Path, where: str) -> Iterator[_Member]:
    try:
        with path.open("rb") as raw:
            # zipfile's own reader of the end record: it tells the directory's size before
            # ZipFile parses (and keeps in memory) every entry of it.
            end_record = zipfile._EndRecData(raw)  # type: ignore[attr-defined]
        directory_bytes = end_record[zipfile._ECD_SIZE] if end_record else 0  # type: ignore[attr-defined]
        if directory_bytes > MAX_ZIP_DIRECTORY_BYTES:
            raise CnnlabError(
                f"{where}: its zip directory declares {directory_bytes:,} bytes "
                f"(at most {MAX_ZIP_DIRECTORY_BYTES:,}); not a CIFAR-10 archive"
            )
        with zipfile.ZipFile(path) as archive:
            if len(archive.infolist()) > MAX_MEMBERS:
                raise _too_many_members(where)
            for info in archive.infolist():
                name = _member_name(info.filename, where)
                if stat.S_ISLNK(info.external_attr >> 16):
                    raise CnnlabError(
                        f"{where}: member '{shown(info.filename)}' is a link; refused"
                    )
                if info.is_dir():
                    continue

                def read(limit: int, info: zipfile.ZipInfo = info, name: str = name) -> bytes:
                    try:
                        with archive.open(info) as content:
                            return _read_bounded(content, limit, f"{where}: {shown(name)}")
                    except CnnlabError:
                        raise
                    except Exception as error:  # a damaged archive can fail in any way
                        raise _corrupt(where, "zip", error) from None

                yield _Member(name, info.file_size, read)
    except CnnlabError:
        raise
    except Exception as error:  # zipfile and the decompressors fail in many ways on bad input
        raise _corrupt(where, "zip", error) from None


def _member_kind(name: str) -> str | None:
    """What `name` holds in some CIFAR-10 layout (below one optional wrapper folder), or None."""
    candidates = [name] + ([name.split("/", 1)[1]] if "/" in name else [])
    for candidate in candidates:
        if candidate in (*TRAIN_BATCHES, TEST_BATCH):
            return "pickle batch"
        if candidate == "batches.meta":
            return "meta"
        if candidate.endswith(".bin") and candidate[: -len(".bin")] in (*TRAIN_BATCHES, TEST_BATCH):
            return "binary batch"
        parts = candidate.split("/")
        if (
            len(parts) == 3
            and parts[0] in SPLITS
            and parts[1] in CLASS_NAMES
            and parts[2].lower().endswith(IMAGE_SUFFIXES)
        ):
            return "image"
    return None


def _read_members(members: Iterator[_Member], source: str) -> dict[str, Any]:
    """Each member's decoded content by name (None for members no layout reads), read in order.

    A member is read only when its name belongs to a layout, and only after its declared size is
    checked against what that kind of file can hold; the layout itself is checked afterwards.
    """
    decoded: dict[str, Any] = {}
    total_bytes = 0
    for member in members:
        where = f"{source}: {shown(member.name)}"
        if member.name in decoded:
            raise CnnlabError(f"{where} appears twice; refused")
        kind = _member_kind(member.name)
        limit, what, decode = _KINDS[kind] if kind else (0, "", None)
        if decode is not None and member.size > limit:
            raise CnnlabError(
                f"{where} declares {member.size:,} bytes; {what} holds at most {limit:,}"
            )
        total_bytes += member.size
        if total_bytes > MAX_SOURCE_BYTES:
            raise CnnlabError(
                f"{source}: its files declare more than {MAX_SOURCE_BYTES:,} bytes in all (at "
                f"{shown(member.name)}, {member.size:,} bytes); not a CIFAR-10 source"
            )
        # A member no layout reads stays unread; the layout check names it.
        decoded[member.name] = decode(member.read(limit), where) if decode else None
    return decoded


def _strip_wrapper(members: dict[str, Any]) -> dict[str, Any]:
    """Drop one top-level folder that wraps everything (as the official archives have)."""
    tops = {name.split("/", 1)[0] for name in members}
    if len(tops) == 1 and all("/" in name for name in members):
        (top,) = tops
        if top not in SPLITS:
            return {name.split("/", 1)[1]: content for name, content in members.items()}
    return members


# --- the three layouts ------------------------------------------------------------------------


def _assemble(members: dict[str, Any], source: str) -> Arrays:
    if TEST_BATCH in members or any(batch in members for batch in TRAIN_BATCHES):
        return _assemble_batches(members, source, "", _PICKLE_EXTRAS)
    if f"{TEST_BATCH}.bin" in members or any(f"{batch}.bin" in members for batch in TRAIN_BATCHES):
        return _assemble_batches(members, source, ".bin", _BINARY_EXTRAS)
    if any(name.split("/", 1)[0] in SPLITS for name in members):
        return _assemble_image_folders(members, source)
    raise CnnlabError(
        f"{source}: no CIFAR-10 layout found (expected data_batch_1..5 and test_batch, "
        "their .bin forms, or train/<class>/ and test/<class>/ image folders)"
    )


def _assemble_batches(
    members: dict[str, Any], source: str, suffix: str, extras: tuple[str, ...]
) -> Arrays:
    expected = [batch + suffix for batch in (*TRAIN_BATCHES, TEST_BATCH)]
    for name in members:
        if name not in expected and name not in extras:
            raise CnnlabError(f"{source}: unexpected member '{shown(name)}' beside the batches")
    missing = [name for name in expected if name not in members]
    if missing:
        raise CnnlabError(f"{source}: missing batch {', '.join(missing)}")
    train = [members[name + suffix] for name in TRAIN_BATCHES]
    test_images, test_labels = members[TEST_BATCH + suffix]
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
_TUPLE_OPCODES = {"TUPLE", "TUPLE1", "TUPLE2", "TUPLE3"}


class _RefusedGlobal(pickle.UnpicklingError):
    """A pickle asked for a global outside the NumPy array rebuilders, or misused one."""


class _TooLarge(pickle.UnpicklingError):
    """A pickle declared an array larger than a batch can hold."""


def _array_bytes(shape: Any, dtype: Any) -> int:
    """Bytes an array of `shape` and `dtype` takes; a shape that is not a tuple of sizes raises."""
    shape = (shape,) if type(shape) is int else shape
    if not isinstance(shape, tuple) or not all(type(side) is int and side >= 0 for side in shape):
        raise _RefusedGlobal("refused an array shape that is not a tuple of sizes")
    size = np.dtype(dtype).itemsize
    for side in shape:
        size *= side
    if size > MAX_PICKLE_BATCH_BYTES:
        raise _TooLarge(
            f"an array of {size:,} bytes is declared; "
            f"a batch holds at most {MAX_PICKLE_BATCH_BYTES:,}"
        )
    return size


class _BoundedArray(np.ndarray):
    """An array while it is unpickled: its state may not declare more than a batch holds."""

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise _RefusedGlobal("refused an array state of an unknown form")
        shape, dtype = state[-4], state[-3]
        _array_bytes(shape, dtype)
        super().__setstate__(state)


class _ArrayType:
    """Stands in for numpy.ndarray in a pickle: `_reconstruct` takes it; calling it is refused."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        raise _RefusedGlobal("refused a direct call of numpy.ndarray")


def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    if subtype is not _ArrayType:
        raise _RefusedGlobal("refused an array of a type other than numpy.ndarray")
    _array_bytes(shape, dtype)
    return np.ndarray.__new__(_BoundedArray, shape, dtype)


def _frombuffer(buffer: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    _array_bytes(shape, dtype)
    return np.frombuffer(buffer, dtype=dtype).reshape(shape, order=order)


def _latin1_encode(text: Any, encoding: Any = "utf-8", errors: Any = "strict") -> bytes:
    """`_codecs.encode` as protocol 2 uses it for bytes (latin-1, which keeps the length)."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise _RefusedGlobal("refused _codecs.encode other than of text to latin-1")
    return codecs.encode(text, "latin-1")


_ADMITTED = {
    "_reconstruct": _reconstruct,
    "_frombuffer": _frombuffer,
    "ndarray": _ArrayType,
    "dtype": np.dtype,
    "encode": _latin1_encode,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that builds only NumPy arrays and plain containers; other globals raise."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ARRAY_GLOBALS:
            raise _RefusedGlobal(f"refused global {shown(module)}.{shown(name)}")
        return _ADMITTED[name]


def _check_opcodes(content: bytes, where: str) -> None:
    """Refuse a pickle with more opcodes than a batch needs, or deeply nestable tuples.

    CPython hashes nested tuples recursively without a depth guard: a million nested tuples used
    as a dict key crash the interpreter, so they are refused before unpickling.
    """
    opcodes = tuples = 0
    try:
        for opcode, _argument, _position in pickletools.genops(content):
            opcodes += 1
            tuples += opcode.name in _TUPLE_OPCODES
            if opcodes > MAX_PICKLE_OPCODES or tuples > MAX_PICKLE_TUPLES:
                raise CnnlabError(
                    f"{where}: not a CIFAR-10 batch pickle (more than {MAX_PICKLE_OPCODES:,} "
                    f"opcodes or {MAX_PICKLE_TUPLES:,} tuples)"
                )
    except CnnlabError:
        raise
    except Exception as error:  # a malformed pickle can fail in any way; none is a crash
        raise CnnlabError(f"{where}: truncated or corrupt pickle ({shown(error)})") from None


def _unpickle(content: bytes, where: str) -> Any:
    _check_opcodes(content, where)
    try:
        return _RestrictedUnpickler(io.BytesIO(content), encoding="bytes").load()
    except _RefusedGlobal as error:
        raise CnnlabError(
            f"{where}: not a CIFAR-10 batch pickle ({error}; only NumPy arrays are admitted)"
        ) from None
    except _TooLarge as error:
        raise CnnlabError(f"{where}: not a CIFAR-10 batch pickle ({error})") from None
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


def _label_array(labels: Any, count: int, where: str) -> np.ndarray:
    """The labels as int64 (count,), each in 0..9; anything else is refused."""
    wrong = CnnlabError(f"{where}: 'labels' must be {count} integers, got {_describe(labels)}")
    if isinstance(labels, np.ndarray):
        if labels.ndim != 1 or labels.dtype.kind not in "iu" or labels.shape[0] != count:
            raise wrong
        return _check_labels(labels, where)
    if not isinstance(labels, list | tuple) or len(labels) != count:
        raise wrong
    if not all(type(label) is int for label in labels):
        raise wrong
    for label in labels:
        if not 0 <= label < len(CLASS_NAMES):
            value = str(label) if abs(label) < 10**12 else f"of {label.bit_length()} bits"
            raise CnnlabError(
                f"{where}: label {value} out of range (valid: 0..{len(CLASS_NAMES) - 1})"
            )
    return np.array(labels, dtype=np.int64)


def _read_pickle_batch(content: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    batch = _unpickle(content, where)
    if not isinstance(batch, dict):
        raise CnnlabError(
            f"{where}: expected a dict with 'data' and 'labels', got {type(batch).__name__}"
        )
    fields = _text_keys(batch)
    if "data" not in fields or "labels" not in fields:
        keys = sorted(fields)
        listed = ", ".join(shown(key) for key in keys[:10]) + (", …" if len(keys) > 10 else "")
        raise CnnlabError(f"{where}: expected keys 'data' and 'labels', got [{listed}]")
    data = fields["data"]
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2):
        raise CnnlabError(
            f"{where}: 'data' must be a uint8 array (N, {PIXEL_BYTES}), got {_describe(data)}"
        )
    data = np.asarray(data)  # a plain ndarray again
    if data.shape[1] != PIXEL_BYTES or not 0 < data.shape[0] <= MAX_BATCH_IMAGES:
        raise CnnlabError(
            f"{where}: 'data' has shape {data.shape}, expected (N, {PIXEL_BYTES}) with N in "
            f"1..{MAX_BATCH_IMAGES:,} (32×32×3 pixels an image)"
        )
    labels = _label_array(fields["labels"], data.shape[0], where)
    return _planes_to_images(data), labels


def _check_meta(content: bytes, where: str) -> bool:
    meta = _unpickle(content, where)
    names = _text_keys(meta).get("label_names") if isinstance(meta, dict) else None
    if not isinstance(names, list):
        raise CnnlabError(f"{where}: expected a dict with 'label_names'")
    decoded = tuple(name.decode("latin-1") if isinstance(name, bytes) else name for name in names)
    if decoded != CLASS_NAMES:
        raise CnnlabError(f"{where}: label_names differ from {list(CLASS_NAMES)}")
    return True


def _assemble_image_folders(members: dict[str, Any], source: str) -> Arrays:
    by_class: dict[tuple[str, str], list[str]] = {
        (split, class_name): [] for split in SPLITS for class_name in CLASS_NAMES
    }
    for name in members:
        parts = name.split("/")
        if len(parts) != 3 or (parts[0], parts[1]) not in by_class:
            raise CnnlabError(
                f"{source}: unexpected member '{shown(name)}' (expected train/<class>/<image> or "
                f"test/<class>/<image>, classes: {' '.join(CLASS_NAMES)})"
            )
        if not parts[2].lower().endswith(IMAGE_SUFFIXES):
            raise CnnlabError(f"{source}: {shown(name)} is not a .png or .jpg image")
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
            images[index] = members[name]
        labels = np.repeat(np.arange(len(CLASS_NAMES), dtype=np.int64), counts)
        arrays += [images, labels]
    return Arrays(*arrays)


# Pillow may only parse these formats (it knows dozens; some, like EPS, run external programs).
_IMAGE_FORMATS = ("PNG", "JPEG", "MPO")


def _decode_image(content: bytes, where: str) -> np.ndarray:
    """A 32×32 RGB image; the header's size is checked before any pixel is decoded."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(content), formats=_IMAGE_FORMATS) as image:
                width, height = image.size
                too_many = width * height > MAX_IMAGE_PIXELS
                if too_many or image.size != (IMAGE_SIDE, IMAGE_SIDE) or image.mode != "RGB":
                    raise CnnlabError(
                        f"{where} is {width}×{height} {image.mode}, expected 32×32 RGB"
                    )
                pixels = np.asarray(image)
    except CnnlabError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise CnnlabError(
            f"{where} declares too many pixels ({error}); expected 32×32 RGB"
        ) from None
    except Exception as error:  # a malformed image can fail in any way inside Pillow
        raise CnnlabError(f"{where} is not a readable image ({shown(error)})") from None
    if pixels.shape != (IMAGE_SIDE, IMAGE_SIDE, 3) or pixels.dtype != np.uint8:
        raise CnnlabError(f"{where} decodes to {pixels.dtype} {pixels.shape}, expected 32×32 RGB")
    return pixels


BatchReader = Callable[[bytes, str], Any]
# What each kind of member may hold, in bytes, and how it is decoded.
_KINDS: dict[str, tuple[int, str, BatchReader]] = {
    "pickle batch": (
        MAX_PICKLE_BATCH_BYTES,
        f"a pickled batch of at most {MAX_BATCH_IMAGES:,} images",
        _read_pickle_batch,
    ),
    "binary batch": (
        MAX_BINARY_BATCH_BYTES,
        f"a binary batch of at most {MAX_BATCH_IMAGES:,} records",
        _read_binary_batch,
    ),
    "meta": (MAX_META_BYTES, "batches.meta", _check_meta),
    "image": (MAX_IMAGE_FILE_BYTES, "an image file", _decode_image),
}
