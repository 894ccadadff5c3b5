"""Read a dataset source's files: a folder, a .zip, or a .tar / .tar.gz archive, never extracted.

A format module (formats_cifar, formats_idx, formats_images) describes its layouts: which member
names it reads, how many bytes each kind of member may hold, how a member is decoded and how the
decoded members become arrays. `read_source` walks the members once, in archive order, decoding
each as it is read. Links, absolute paths, `..` and special files are refused; one optional
top-level folder may wrap the layout (`cifar-10-batches-py/...`, `mnist-png/train/...`).

Hostile input: what a reader allocates is bounded by what the format can legitimately hold (the
MAX_* limits here and in each format module), never by what the input declares. Sizes declared in
tar and zip headers are checked before a member is read and reads stop at the limit (declared
sizes can lie). Every refusal is one CnnlabError line naming the file or member, what was wrong
and what would be valid.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import re
import stat
import struct
import tarfile
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import numpy as np

from cnnlab.errors import CnnlabError

SPLITS = ("train", "test")

# --- limits: what any source cnnlab reads can legitimately hold, with headroom ---------------
# Entries (files and folders) in one source: CIFAR-10 has 60,000 images, MNIST 70,000; a quarter
# million is accepted.
MAX_MEMBERS = 250_000
# All members' declared sizes together (the official CIFAR archives hold about 180 MB).
MAX_SOURCE_BYTES = 1 << 30
# The archive file itself (it is hashed whole before it is read): the members plus their headers.
MAX_ARCHIVE_BYTES = MAX_SOURCE_BYTES + (256 << 20)
# One tar extended header (pax or GNU long name), which tarfile reads whole, and all of them.
MAX_TAR_HEADER_BYTES = 64 << 10
MAX_TAR_HEADERS_TOTAL_BYTES = 128 << 20
# A zip's central directory, which zipfile parses whole on opening (a 60,000-image zip's is ~8 MB).
MAX_ZIP_DIRECTORY_BYTES = 32 << 20
# Decoded pixels of one dataset, train and test together (uint8 bytes); checked from headers
# before anything that size is allocated.
MAX_DECODED_BYTES = 2 << 30
_READ_CHUNK_BYTES = 256 << 10  # members are read in chunks of this size
_SHORT_SKIP_BYTES = 64 << 10  # a tar's forward seeks up to this are reads (past padding)
_SHOWN_CHARACTERS = 200  # longest name an error message repeats


@dataclass(frozen=True)
class Arrays:
    """Decoded images uint8 (N, H, W, C) and labels int64 (N,) per split, and the class names."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: tuple[str, ...] = ()


def shown(text: object) -> str:
    """`text` safe for a one-line message: control characters escaped, at most 200 characters."""
    text = str(text)
    if not text.isprintable():
        text = repr(text)[1:-1]
    if len(text) > _SHOWN_CHARACTERS:
        text = text[: _SHOWN_CHARACTERS - 1] + "…"
    return text


@dataclass(frozen=True)
class Kind:
    """A kind of member a layout reads: the most bytes it may hold, and how it is decoded."""

    limit: int  # bytes, checked against the declared size before reading and while reading
    what: str  # how a refusal names it: "a binary batch of at most 20,000 records"
    decode: Callable[[bytes, str], Any]  # (content, "source: member") -> decoded value


@dataclass
class Members:
    """A source's members once read: decoded content by name (None: not read), and its folders."""

    decoded: dict[str, Any]
    folders: set[str]


class Layout(Protocol):
    """One way a dataset can be laid out in a source."""

    tops: tuple[str, ...]  # top-level names of the layout itself (never taken for a wrapper)
    expected: str  # what the layout holds, for "no layout found"

    def kind(self, name: str) -> Kind | None: ...  # what `name` holds here, or None

    def found(self, members: Members) -> bool: ...  # whether these members use this layout

    def assemble(self, members: Members, source: str) -> Arrays: ...


def read_source(path: Path, layouts: Sequence[Layout], what: str) -> Arrays:
    """Decode the source at `path` (folder, .zip, .tar or .tar.gz) in the first layout it uses."""
    where = shown(path)
    if path.is_dir():
        members = _folder_members(path, where)
    elif path.is_file():
        members = _archive_members(path, where)
    else:
        raise CnnlabError(f"{where}: no such file or folder")

    def kind_of(name: str) -> Kind | None:
        # The name as it is, then below one wrapper folder.
        for candidate in [name] + ([name.split("/", 1)[1]] if "/" in name else []):
            for layout in layouts:
                kind = layout.kind(candidate)
                if kind is not None:
                    return kind
        return None

    tops = {top for layout in layouts for top in layout.tops}
    read = strip_wrapper(_read_members(members, kind_of, where), tops)
    for layout in layouts:
        if layout.found(read):
            return layout.assemble(read, where)
    expectations = [layout.expected for layout in layouts]
    listed = expectations[0]
    if len(expectations) > 1:
        listed = ", ".join(expectations[:-1]) + ", or " + expectations[-1]
    raise CnnlabError(f"{where}: no {what} layout found (expected {listed})")


# --- reading members --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Member:
    """One entry of a source: its checked name, declared size, and a bounded reader."""

    name: str  # relative POSIX name
    size: int  # bytes, as the folder, tar header or zip directory declares them
    read: Callable[[int], bytes]  # the content, refused past `limit` bytes; valid while iterating
    is_folder: bool = False


def _member_name(raw_name: str, source: str) -> str:
    """The member's relative POSIX name; absolute paths and `..` are refused."""
    if raw_name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", raw_name):
        raise CnnlabError(f"{source}: member '{shown(raw_name)}' has an absolute path; refused")
    if "\\" in raw_name:
        raise CnnlabError(
            f"{source}: member '{shown(raw_name)}' has a backslash in its name; refused"
        )
    # As PurePosixPath(raw_name).parts once the leading "/" is refused, several times quicker.
    parts = [part for part in raw_name.split("/") if part not in ("", ".")]
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
        f"{where}: more than {MAX_MEMBERS:,} files and folders (the most a dataset source may "
        "hold); not a dataset source"
    )


def _no_content(limit: int) -> bytes:
    return b""


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
            yield _Member(relative, 0, _no_content, is_folder=True)
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
            f"{where}: {path.stat().st_size:,} bytes is larger than any source cnnlab reads "
            f"(at most {MAX_ARCHIVE_BYTES:,}); refused"
        )
    name = path.name.lower()
    if name.endswith(".zip") or (not name.endswith((".tar", ".tar.gz", ".tgz")) and _is_zip(path)):
        return _zip_members(path, where)
    if name.endswith((".tar", ".tar.gz", ".tgz")) or _is_tar(path):
        return _tar_members(path, where)
    raise CnnlabError(
        f"{where}: not a folder, .zip, .tar or .tar.gz archive (expected a dataset source)"
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
        self.position = 0  # where the stream stands, kept here: asking it costs a Python call

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
                    "bytes; not a dataset archive"
                )
        data = self.stream.read(size)
        self.position += len(data)
        return data

    def read_content(self, size: int) -> bytes:
        """`size` bytes of a member's content (bounded by the caller), read straight through."""
        content = self.stream.read(size)
        self.position += len(content)
        return content

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        # tarfile seeks to where it already is, or past a member's padding, several times a
        # member; a decompressor's own seek costs far more than reading those few bytes.
        if whence == io.SEEK_SET and 0 <= offset - self.position <= _SHORT_SKIP_BYTES:
            skipped = self.stream.read(offset - self.position) if offset > self.position else b""
            self.position += len(skipped)
            return self.position
        self.position = self.stream.seek(offset, whence)
        return self.position

    def tell(self) -> int:
        return self.position

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
    """Every member of a tar, in one sequential pass.

    A regular member's content is read straight from the (decompressed) stream, which stands at
    its first byte right after its header; tarfile's per-member file objects, which seek for every
    read, made a first load of 60,000 small images much slower.
    """
    stream = _tar_stream(path, where)
    try:
        with stream, tarfile.open(fileobj=stream, mode="r:") as archive:
            count = 0
            while (member := archive.next()) is not None:
                count += 1
                if count > MAX_MEMBERS:
                    raise _too_many_members(where)
                # tarfile keeps every header it read; this pass never looks back.
                archive.members.clear()
                name = _member_name(member.name, where)
                if member.issym() or member.islnk():
                    raise CnnlabError(f"{where}: member '{shown(member.name)}' is a link; refused")
                if member.isdir():
                    yield _Member(name, 0, _no_content, is_folder=True)
                    continue
                if not member.isreg():
                    raise CnnlabError(
                        f"{where}: member '{shown(member.name)}' is not a regular file"
                    )

                def read(limit: int, member: tarfile.TarInfo = member, name: str = name) -> bytes:
                    stream.content_reads = True
                    try:
                        if member.issparse():  # rare: let tarfile expand the sparse map
                            content = archive.extractfile(member)
                            assert content is not None  # regular members always have content
                            return _read_bounded(content, limit, f"{where}: {shown(name)}")
                        if member.size > limit:
                            raise CnnlabError(
                                f"{where}: {shown(name)} holds more than {limit:,} bytes "
                                "(the most it may hold)"
                            )
                        stream.seek(member.offset_data)
                        content = stream.read_content(member.size)
                        if len(content) != member.size:
                            raise EOFError("unexpected end of data")
                        return content
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


# The zip format's end records (PKWARE's APPNOTE 4.3.14-4.3.16): zipfile reads them only through
# private names, so the declared size of the central directory is read here from the format.
_END_RECORD = struct.Struct("<4s4H2LH")  # signature, disks, entries, directory size/offset, comment
_ZIP64_LOCATOR = struct.Struct("<4sLQL")  # signature, disk, offset of the zip64 end record
_ZIP64_END_RECORD = struct.Struct("<4sQ2H2L4Q")  # ..., entries, directory size, directory offset
_LARGEST_COMMENT = 0xFFFF


def zip_directory_size(raw: BinaryIO) -> int:
    """The central directory's size that a zip file's end record declares (0 if it has none)."""
    raw.seek(0, os.SEEK_END)
    length = raw.tell()
    tail_start = max(0, length - _END_RECORD.size - _LARGEST_COMMENT)
    raw.seek(tail_start)
    tail = raw.read()
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < _END_RECORD.size:
        return 0  # not a zip file: ZipFile says so in its own words
    directory_bytes = _END_RECORD.unpack_from(tail, at)[5]
    locator_at = at - _ZIP64_LOCATOR.size
    if directory_bytes == 0xFFFFFFFF and locator_at >= 0:
        signature, _, offset, _ = _ZIP64_LOCATOR.unpack_from(tail, locator_at)
        if signature == b"PK\x06\x07" and offset + _ZIP64_END_RECORD.size <= length:
            raw.seek(offset)
            record = raw.read(_ZIP64_END_RECORD.size)
            if record[:4] == b"PK\x06\x06":
                directory_bytes = _ZIP64_END_RECORD.unpack(record)[8]
    return directory_bytes


def _zip_members(path: Path, where: str) -> Iterator[_Member]:
    try:
        with path.open("rb") as raw:
            # The directory's size, before ZipFile parses (and keeps in memory) every entry.
            directory_bytes = zip_directory_size(raw)
        if directory_bytes > MAX_ZIP_DIRECTORY_BYTES:
            raise CnnlabError(
                f"{where}: its zip directory declares {directory_bytes:,} bytes "
                f"(at most {MAX_ZIP_DIRECTORY_BYTES:,}); not a dataset archive"
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
                    yield _Member(name, 0, _no_content, is_folder=True)
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


def _read_members(
    members: Iterator[_Member], kind_of: Callable[[str], Kind | None], source: str
) -> Members:
    """Each member's decoded content by name (None for members no layout reads), read in order.

    A member is read only when its name belongs to a layout, and only after its declared size is
    checked against what that kind of file can hold; the layout itself is checked afterwards.
    """
    decoded: dict[str, Any] = {}
    folders: set[str] = set()
    total_bytes = 0
    for member in members:
        if member.is_folder:
            folders.add(member.name)
            continue
        where = f"{source}: {shown(member.name)}"
        if member.name in decoded:
            raise CnnlabError(f"{where} appears twice; refused")
        kind = kind_of(member.name)
        if kind is not None and member.size > kind.limit:
            raise CnnlabError(
                f"{where} declares {member.size:,} bytes; {kind.what} holds at most {kind.limit:,}"
            )
        total_bytes += member.size
        if total_bytes > MAX_SOURCE_BYTES:
            raise CnnlabError(
                f"{source}: its files declare more than {MAX_SOURCE_BYTES:,} bytes in all (at "
                f"{shown(member.name)}, {member.size:,} bytes); not a dataset source"
            )
        # A member no layout reads stays unread; the layout check names it.
        decoded[member.name] = kind.decode(member.read(kind.limit), where) if kind else None
    return Members(decoded, folders)


def strip_wrapper(members: Members, tops: set[str] | frozenset[str]) -> Members:
    """Drop one top-level folder that wraps everything (as the official archives have)."""
    wrapped = {name.split("/", 1)[0] for name in members.decoded}
    if len(wrapped) == 1 and all("/" in name for name in members.decoded):
        (top,) = wrapped
        if top not in tops:
            return Members(
                {name.split("/", 1)[1]: value for name, value in members.decoded.items()},
                {name.split("/", 1)[1] for name in members.folders if name.startswith(top + "/")},
            )
    return members
