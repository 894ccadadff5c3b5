"""Hostile input to the data readers: one line on stderr, exit code 2, bounded memory, no debris.

A corpus of bad sources is generated (pickle and binary batches, tar/tar.gz/zip archives, folders,
image files) and each is given to the real CLI in a subprocess under an address-space limit, with
its peak resident memory measured; then property-based mutations of valid tiny archives go
through the library in-process. Bombs are built sparse or streamed, so building them is cheap.
"""

from __future__ import annotations

import errno
import io
import os
import pickle
import re
import resource
import struct
import subprocess
import sys
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from cnnlab.data import cifar, sources
from cnnlab.data.datasets import cache_dir, load_cifar10, load_dataset
from cnnlab.errors import CnnlabError
from test_data import (
    make_source,
    tar_folder,
    tiny_arrays,
    write_binary_folder,
    write_image_folders,
    write_pickle_folder,
)

ADDRESS_SPACE_LIMIT = 2 << 30  # a normal `data info` on a tiny source runs in 256 MiB
PEAK_RSS_LIMIT_KB = 400 * 1024  # a normal `data info` on a tiny source peaks near 50 MB
CPU_SECONDS_LIMIT = 60
GIB = 1 << 30

# --- hand-made pickles ------------------------------------------------------------------------


def op_global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def op_text(text: str) -> bytes:
    data = text.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def op_int(value: int) -> bytes:
    return b"J" + struct.pack("<i", value)


def op_bytes(data: bytes) -> bytes:
    return b"C" + bytes([len(data)]) + data


def batch_pickle(data_ops: bytes, labels_ops: bytes = b"]") -> bytes:
    """{'data': <data_ops>, 'labels': <labels_ops>} in raw pickle opcodes."""
    return b"\x80\x03}(" + op_text("data") + data_ops + op_text("labels") + labels_ops + b"u."


RECONSTRUCT = op_global("numpy.core.multiarray", "_reconstruct") + op_global("numpy", "ndarray")
UINT8 = op_global("numpy", "dtype") + op_text("u1") + b"\x89\x88\x87R"  # dtype('u1', False, True)
HUGE_SHAPE = op_int(100_000) + op_int(3072) + b"\x86"  # 100,000 images: 307 MB declared

PICKLES: dict[str, tuple[bytes, str]] = {
    "reconstruct_declares_100000_images": (
        batch_pickle(RECONSTRUCT + HUGE_SHAPE + op_bytes(b"B") + b"\x87R"),
        r"array of 307,200,000 bytes is declared",
    ),
    "ndarray_called_directly": (
        batch_pickle(op_global("numpy", "ndarray") + HUGE_SHAPE + op_bytes(b"B") + b"\x86R"),
        "direct call of numpy.ndarray",
    ),
    "setstate_declares_100000_images": (
        batch_pickle(
            RECONSTRUCT
            + op_int(0)
            + b"\x85"
            + op_bytes(b"b")
            + b"\x87R"
            + b"("
            + op_int(1)
            + HUGE_SHAPE
            + UINT8
            + b"\x89"
            + op_bytes(b"")
            + b"tb"
        ),
        r"array of 307,200,000 bytes is declared",
    ),
    "codecs_encode_chain": (
        batch_pickle(op_global("_codecs", "encode") + op_bytes(b"ab") + op_text("hex") + b"\x86R"),
        r"_codecs\.encode other than",
    ),
    "deeply_nested_tuple_key": (
        b"\x80\x02}K\x01" + b"\x85" * 1_000_000 + b"K\x02s.",
        "more than .* tuples",
    ),
    "ragged_labels": (
        pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [[1, 2], [3]]}),
        "'labels' must be 2 integers, got a list of 2",
    ),
    "deeply_nested_labels": (
        batch_pickle(
            RECONSTRUCT + op_int(0) + b"\x85" + op_bytes(b"b") + b"\x87R",
            b"(" * 50_000 + b"]" + b"l" * 50_000,
        ),
        "'data' must be a uint8 array",
    ),
    "huge_integer_label": (
        pickle.dumps({"data": np.zeros((1, 3072), np.uint8), "labels": [10**5000]}),
        r"label of 16610 bits out of range",
    ),
    "global_os_system": (
        b"\x80\x02cposix\nsystem\nX\x04\x00\x00\x00trueq\x85R.",
        r"refused global posix\.system",
    ),
    "truncated": (
        pickle.dumps({"data": np.zeros((3, 3072), np.uint8), "labels": [0, 1, 2]})[:5000],
        "truncated or corrupt pickle",
    ),
    "a_list": (pickle.dumps([1, 2, 3]), "expected a dict with 'data' and 'labels', got list"),
    "not_a_pickle": (b"\x00" * 64, "truncated or corrupt pickle"),
}


def pickle_folder_with(root: Path, content: bytes) -> Path:
    folder = write_pickle_folder(root, tiny_arrays())
    (folder / "test_batch").write_bytes(content)
    return folder


# --- hand-made archives and images ------------------------------------------------------------


def sparse_file(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as stream:
        stream.truncate(size)
    return path


def octal(value: int) -> bytes:
    return tarfile.itn(value, 12, tarfile.GNU_FORMAT)


def with_checksum(header: bytearray) -> bytes:
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header)


def sparse_tar(path: Path, name: str, real_size: int) -> Path:
    """A GNU sparse member declaring `real_size` bytes, stored in 512: a 2.5 KB tar."""
    info = tarfile.TarInfo(name)
    header = bytearray(info.tobuf(format=tarfile.GNU_FORMAT))
    header[156:157] = tarfile.GNUTYPE_SPARSE
    header[124:136] = octal(512)  # stored bytes
    header[386:398], header[398:410] = octal(real_size - 512), octal(512)
    header[482] = 0  # no extended sparse headers
    header[483:495] = octal(real_size)
    path.write_bytes(with_checksum(header) + b"x" * 512 + b"\0" * 1024)
    return path


def tar_header_only(path: Path, name: str, kind: bytes, size: int) -> Path:
    """One header declaring `size` bytes of content that the file does not hold."""
    info = tarfile.TarInfo(name)
    info.type, info.size = kind, size
    path.write_bytes(info.tobuf(format=tarfile.GNU_FORMAT) + b"\0" * 1024)
    return path


def png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header declares width × height RGB pixels, with almost no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\0" * 100)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


def image_folder_with(root: Path, name: str, content: bytes) -> Path:
    folder = write_image_folders(root / "images", tiny_arrays())
    (folder / name).write_bytes(content)
    return folder


def zip_of_zeros(path: Path, name: str, size: int, declared: int | None = None) -> Path:
    """A deflated member of `size` zero bytes (about 1 MB a GB), streamed; optionally lying."""
    chunk = bytes(1 << 20)
    with (
        zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as packed,
        packed.open(name, "w") as stream,
    ):
        for _ in range(size // len(chunk)):
            stream.write(chunk)
    if declared is not None:  # rewrite the central directory's uncompressed size
        content = bytearray(path.read_bytes())
        entry = content.rindex(b"PK\x01\x02")
        content[entry + 24 : entry + 28] = struct.pack("<I", declared)
        path.write_bytes(bytes(content))
    return path


def zip_declaring_directory(path: Path, directory_bytes: int) -> Path:
    end_record = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 1, 1, directory_bytes, 0, 0)
    path.write_bytes(end_record)
    return path


def tar_with_member(path: Path, name: str, kind: bytes = tarfile.REGTYPE) -> Path:
    with tarfile.open(path, "w") as packed:
        member = tarfile.TarInfo(name)
        member.type = kind
        member.linkname = "elsewhere" if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE) else ""
        packed.addfile(member, io.BytesIO(b""))
    return path


def zip_with_member(path: Path, name: str) -> Path:
    with zipfile.ZipFile(path, "w") as packed:
        packed.writestr(name, b"x")
    return path


def damaged(path: Path, cut: float | None = None, flip_at: float | None = None) -> Path:
    content = bytearray(path.read_bytes())
    if flip_at is not None:
        start = int(len(content) * flip_at)
        content[start : start + 64] = bytes(byte ^ 0x5A for byte in content[start : start + 64])
    if cut is not None:
        content = content[: int(len(content) * cut)]
    path.write_bytes(bytes(content))
    return path


def fifo_folder(root: Path) -> Path:
    folder = write_image_folders(root / "images", tiny_arrays())
    os.mkfifo(folder / "train" / "cat" / "fifo.png")
    return folder


def symlink_folder(root: Path) -> Path:
    folder = write_binary_folder(root, tiny_arrays())
    (folder / "data_batch_1.bin").unlink()
    (folder / "data_batch_1.bin").symlink_to("/etc/passwd")
    return folder


def oddly_named_folder(root: Path) -> bytes:
    """An image folder holding a file whose name is not UTF-8 and has a newline in it."""
    folder = write_image_folders(root / "images", tiny_arrays())
    odd = os.fsencode(folder / "train" / "cat") + b"/\xff\nnotes.txt"
    with open(odd, "wb") as stream:
        stream.write(b"hello")
    return os.fsencode(folder)


# Every case: a builder of the bad source under a folder, and what its one-line error says.
Builder = Callable[[Path], "Path | bytes"]
CASES: dict[str, tuple[Builder, str]] = {
    **{
        f"pickle_{name}": (lambda root, content=content: pickle_folder_with(root, content), pattern)
        for name, (content, pattern) in PICKLES.items()
    },
    "binary_wrong_length": (
        lambda root: (
            damaged(write_binary_folder(root, tiny_arrays()) / "test_batch.bin", cut=0.52).parent
        ),
        r"test_batch\.bin: [\d,]+ bytes is not a whole number",
    ),
    "binary_sparse_3_gib": (
        lambda root: sparse_file(root / "bin" / "data_batch_1.bin", 3 * GIB).parent,
        r"data_batch_1\.bin declares 3,221,225,472 bytes; a binary batch .* at most 61,460,000",
    ),
    "tar_gnu_sparse_declaring_3_gib": (
        lambda root: sparse_tar(root / "s.tar", "cifar-10-batches-py/data_batch_1", 3 * GIB),
        r"data_batch_1 declares 3,221,225,472 bytes; a pickled batch",
    ),
    "tar_header_declaring_3_gib": (
        lambda root: tar_header_only(root / "h.tar", "test_batch.bin", tarfile.REGTYPE, 3 * GIB),
        r"test_batch\.bin declares 3,221,225,472 bytes",
    ),
    "tar_pax_header_of_10_mib": (
        lambda root: tar_header_only(root / "p.tar", "pax", tarfile.XHDTYPE, 10 << 20),
        r"a tar header declares 10,485,760 bytes",
    ),
    "tar_absolute_path": (
        lambda root: tar_with_member(root / "a.tar", "/etc/passwd"),
        "has an absolute path; refused",
    ),
    "tar_dot_dot": (
        lambda root: tar_with_member(root / "d.tar", "train/../../x"),
        "points outside the archive",
    ),
    "tar_symlink": (
        lambda root: tar_with_member(root / "l.tar", "train/cat/0.png", tarfile.SYMTYPE),
        "is a link; refused",
    ),
    "tar_gz_flipped_bytes": (
        lambda root: damaged(make_source("pickle tar.gz", root, tiny_arrays()), flip_at=0.5),
        "truncated or corrupt (tar archive|pickle)",  # gzip checks its CRC only at the end
    ),
    "tar_gz_truncated": (
        lambda root: damaged(make_source("binary tar.gz", root, tiny_arrays()), cut=0.6),
        "truncated or corrupt tar archive",
    ),
    "zip_of_1_gib_of_zeros": (
        lambda root: zip_of_zeros(root / "z.zip", "train/cat/0000.png", GIB),
        r"0000\.png declares 1,073,741,824 bytes; an image file holds at most 1,048,576",
    ),
    "zip_of_1_gib_declaring_3_kb": (
        lambda root: zip_of_zeros(root / "z.zip", "test_batch", GIB, declared=3_000),
        "truncated or corrupt zip archive",
    ),
    "zip_directory_of_100_mib": (
        lambda root: zip_declaring_directory(root / "d.zip", 100 << 20),
        r"zip directory declares 104,857,600 bytes",
    ),
    "zip_dot_dot": (lambda root: zip_with_member(root / "z.zip", "../x.png"), "points outside"),
    "zip_truncated": (
        lambda root: damaged(make_source("png .zip", root, tiny_arrays()), cut=0.5),
        "truncated or corrupt zip archive",
    ),
    "png_declaring_30000_square": (
        lambda root: image_folder_with(root, "train/dog/0001.png", png_declaring(30_000, 30_000)),
        r"train/dog/0001\.png declares too many pixels",
    ),
    "png_declaring_10000_square": (
        lambda root: image_folder_with(root, "train/dog/0001.png", png_declaring(10_000, 10_000)),
        r"train/dog/0001\.png declares too many pixels",
    ),
    "png_declaring_1000_square": (
        lambda root: image_folder_with(root, "test/ship/0001.png", png_declaring(1000, 1000)),
        r"test/ship/0001\.png is 1000×1000 RGB, expected 32×32 RGB",
    ),
    "png_truncated": (
        lambda root: image_folder_with(root, "train/cat/0010.png", png_declaring(32, 32)[:40]),
        r"train/cat/0010\.png is not a readable image",
    ),
    "folder_with_a_fifo": (fifo_folder, "is not a regular file; refused"),
    "folder_with_a_symlink": (symlink_folder, r"data_batch_1\.bin is a link; refused"),
    "folder_with_a_non_utf8_newline_name": (
        oddly_named_folder,
        r"train/cat/\\udcff\\nnotes\.txt is not a \.png or \.jpg image",
    ),
    "large_folder_that_is_no_dataset": (
        lambda root: sparse_file(root / "home" / "disk.img", 3 * GIB).parent,
        r"declare more than 1,073,741,824 bytes in all",
    ),
    "archive_larger_than_any_cifar": (
        lambda root: sparse_file(root / "big.tar", 2 * GIB),
        "larger than any source cnnlab reads",
    ),
    "dev_zero": (lambda root: Path("/dev/zero"), "not a regular file or folder"),
    "empty_file": (lambda root: sparse_file(root / "e.tar.gz", 0), "truncated or corrupt tar"),
    "empty_folder": (lambda root: sparse_file(root / "x", 0).parent, "no CIFAR-10 layout"),
}


# --- running the CLI --------------------------------------------------------------------------


def run_data_info(
    source: Path | bytes, cache: Path, file_size_limit: int | None = None
) -> tuple[int, str, str, int]:
    """`cnnlab data info --data source` in a subprocess: exit code, stdout, stderr, peak RSS KB."""

    # A small launcher sets the limits and runs the command as its own child: a process forked
    # from this (large) test process would report this process's peak RSS as its own, even
    # after its exec, so the command's peak is measured by the launcher, one level down.
    limits = [(resource.RLIMIT_AS, ADDRESS_SPACE_LIMIT), (resource.RLIMIT_CPU, CPU_SECONDS_LIMIT)]
    if file_size_limit is not None:  # writes past it fail with EFBIG, as a full disk would
        limits.append((resource.RLIMIT_FSIZE, file_size_limit))
    launcher = (
        "import os, resource, signal, sys\n"
        f"for kind, value in {limits!r}:\n"
        "    resource.setrlimit(kind, (value, value))\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    os.execv(sys.executable, [sys.executable, *sys.argv[2:]])\n"
        "_, status, usage = os.wait4(pid, 0)\n"
        "open(sys.argv[1], 'w').write(str(usage.ru_maxrss))\n"
        "code = os.waitstatus_to_exitcode(status)\n"
        "sys.exit(code if code >= 0 else 128 - code)\n"
    )
    environment = {**os.environ, "CNNLAB_CACHE": str(cache)}
    environment.pop("CNNLAB_DATA", None)
    with tempfile.TemporaryDirectory() as scratch:
        peak_file = Path(scratch) / "peak"
        command = [sys.executable, "-c", launcher, str(peak_file), "-m", "cnnlab"]
        command += ["data", "info", "--data", source]
        done = subprocess.run(command, capture_output=True, env=environment, timeout=300)
        peak = int(peak_file.read_text())
    stdout = done.stdout.decode(errors="replace")
    stderr = done.stderr.decode(errors="replace")
    return done.returncode, stdout, stderr, peak


def files_under(folder: Path) -> list[str]:
    if not folder.exists():
        return []
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if not path.is_dir())


def assert_one_line_refusal(code: int, stderr: str, pattern: str, peak_kb: int) -> None:
    assert code == 2, f"exit {code}: {stderr[-2000:]}"
    assert "Traceback" not in stderr, stderr[-2000:]
    assert stderr.endswith("\n") and stderr.count("\n") == 1, stderr[-2000:]
    assert stderr.startswith("cnnlab: error: ")
    assert re.search(pattern, stderr), f"{pattern!r} not in {stderr!r}"
    assert peak_kb < PEAK_RSS_LIMIT_KB, f"peak RSS {peak_kb / 1024:.0f} MB"


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_cli_refuses_hostile_input_in_one_line(case: str, tmp_path: Path):
    build, pattern = CASES[case]
    (tmp_path / "input").mkdir()
    source = build(tmp_path / "input")
    cache = tmp_path / "cache"
    code, _, stderr, peak_kb = run_data_info(source, cache)
    assert_one_line_refusal(code, stderr, pattern, peak_kb)
    assert files_under(cache) == []  # no memo, no arrays, no temporary file


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_library_refuses_hostile_input_with_a_cnnlab_error(case: str, tmp_path: Path):
    build, pattern = CASES[case]
    (tmp_path / "input").mkdir()
    source = build(tmp_path / "input")
    with pytest.raises(CnnlabError, match=pattern) as refusal:
        load_cifar10(os.fsdecode(source))
    assert "\n" not in str(refusal.value)
    assert files_under(cache_dir()) == []


# --- the cache cannot be written --------------------------------------------------------------


def test_a_cache_path_that_is_a_file_is_one_line_and_keeps_nothing(tmp_path: Path):
    source = make_source("binary folder", tmp_path, tiny_arrays())
    cache = tmp_path / "cache-file"
    cache.write_text("not a folder")
    code, _, stderr, peak_kb = run_data_info(source, cache)
    assert_one_line_refusal(code, stderr, r"cannot write the cache .*CNNLAB_CACHE", peak_kb)
    assert cache.read_text() == "not a folder"


def test_a_full_disk_while_caching_is_one_line_and_keeps_nothing(tmp_path: Path):
    source = make_source("png folder", tmp_path, tiny_arrays())
    cache = tmp_path / "cache"
    # The training images' .npy is 153 KB: with 100 KB per file the first array cannot be written.
    code, _, stderr, peak_kb = run_data_info(source, cache, file_size_limit=100_000)
    assert_one_line_refusal(code, stderr, r"cannot write the cache .*CNNLAB_CACHE", peak_kb)
    assert files_under(cache) == []
    code, stdout, stderr, _ = run_data_info(source, cache)  # room again: it loads and caches
    assert code == 0 and "decoded now and cached" in stdout, stderr


def test_running_out_of_space_mid_cache_removes_the_arrays_already_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    source = make_source("binary folder", tmp_path, tiny_arrays())
    real_save, saves = np.save, []

    def save_until_the_disk_is_full(path, array, **options):
        saves.append(path)
        if len(saves) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(path, array, **options)

    monkeypatch.setattr(np, "save", save_until_the_disk_is_full)
    with pytest.raises(CnnlabError, match=r"cannot write the cache .*No space left on device"):
        load_cifar10(source)
    assert len(saves) == 3
    assert files_under(cache_dir()) == []


# --- limits that need many files are checked with smaller limits -------------------------------


def test_a_folder_with_more_entries_than_a_source_holds_is_refused_before_reading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    folder = write_binary_folder(tmp_path, tiny_arrays())
    monkeypatch.setattr(sources, "MAX_MEMBERS", 5)  # the folder has 8 files
    with pytest.raises(CnnlabError, match=r"more than 5 files and folders"):
        load_cifar10(folder)


@pytest.mark.parametrize("form", ["png .tar", "png .zip"])
def test_an_archive_with_more_members_than_a_source_holds_is_refused(
    form: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    archive = make_source(form, tmp_path, tiny_arrays())
    monkeypatch.setattr(sources, "MAX_MEMBERS", 30)
    with pytest.raises(CnnlabError, match=r"more than 30 files and folders"):
        load_cifar10(archive)


def test_a_batch_with_more_images_than_the_limit_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    folder = write_pickle_folder(tmp_path, tiny_arrays())
    monkeypatch.setattr(cifar, "MAX_BATCH_IMAGES", 3)  # each training batch holds 10
    # The size of a file of 10 records is refused before it is read.
    with pytest.raises(
        CnnlabError, match=r"data_batch_1 declares [\d,]+ bytes; .* at most 3 images"
    ):
        load_cifar10(folder)


# --- mutations of valid tiny archives (property-based, in-process) ----------------------------

MUTATED_FORMS = ["pickle tar.gz", "binary .tar", "png .zip", "png .tar", "pickle .tar"]
_VALID: dict[str, tuple[str, bytes]] = {}


def valid_archive(form: str) -> tuple[str, bytes]:
    """The file name and bytes of a valid tiny archive of `form`, built once."""
    if form not in _VALID:
        with tempfile.TemporaryDirectory() as folder:
            if form == "pickle .tar":
                tree = write_pickle_folder(Path(folder) / "tree", tiny_arrays())
                archive = tar_folder(tree, Path(folder) / "p.tar")
            else:
                archive = make_source(form, Path(folder), tiny_arrays())
            _VALID[form] = (archive.name, archive.read_bytes())
    return _VALID[form]


@st.composite
def mutations(draw: st.DrawFn) -> tuple[str, bytes]:
    form = draw(st.sampled_from(MUTATED_FORMS))
    name, content = valid_archive(form)
    data = bytearray(content)
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["flip", "truncate", "insert", "tar header", "zero run"]))
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        if kind == "flip":
            data[at] ^= draw(st.integers(1, 255))
        elif kind == "truncate":
            del data[at:]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        elif kind == "zero run":
            data[at : at + 512] = bytes(len(data[at : at + 512]))
        elif name.endswith(".tar") and len(data) >= 512:
            # Rewrite a field of some header: name, mode, size, checksum or type.
            block = draw(st.integers(0, len(data) // 512 - 1)) * 512
            start, width = draw(
                st.sampled_from([(0, 100), (100, 8), (124, 12), (148, 8), (156, 1), (345, 155)])
            )
            field = draw(st.binary(min_size=width, max_size=width))
            data[block + start : block + start + width] = field
    return name, bytes(data)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(mutations())
def test_mutated_archives_load_or_raise_only_cnnlab_error(mutation: tuple[str, bytes]):
    name, content = mutation
    with tempfile.TemporaryDirectory() as folder:
        archive = Path(folder) / name
        archive.write_bytes(content)
        try:
            data = load_cifar10(archive)
        except CnnlabError as error:
            assert "\n" not in str(error)
            return
        # A mutation the format does not notice (a flipped pixel) still gives valid arrays.
        assert data.train_images.dtype == np.uint8 and data.train_images.shape[1:] == (32, 32, 3)
        assert data.train_labels.min() >= 0 and data.train_labels.max() <= 9


# --- the other datasets' formats, mutated ------------------------------------------------------

OTHER_FORMS = {  # form -> the dataset it is loaded as
    "mnist idx .tar": "mnist",
    "cifar100 python .tar": "cifar100",
    "cifar100 binary .tar": "cifar100-coarse",
    "images .zip": "images",
}
_VALID_OTHER: dict[str, tuple[str, bytes]] = {}


def valid_other_archive(form: str) -> tuple[str, bytes]:
    """The file name and bytes of a valid tiny archive of another dataset, built once."""
    from test_datasets import (
        cifar100_arrays,
        gray_layout,
        mnist_arrays,
        write_cifar100_binary,
        write_cifar100_python,
        write_idx,
        write_images,
    )

    if form not in _VALID_OTHER:
        with tempfile.TemporaryDirectory() as folder:
            root = Path(folder)
            if form.startswith("mnist"):
                archive = tar_folder(write_idx(root / "m", mnist_arrays()), root / "m.tar")
            elif form.startswith("cifar100 python"):
                tree = write_cifar100_python(root / "c", cifar100_arrays())
                archive = tar_folder(tree, root / "c.tar", wrapper="cifar-100-python")
            elif form.startswith("cifar100 binary"):
                archive = tar_folder(
                    write_cifar100_binary(root / "b", cifar100_arrays()), root / "b.tar"
                )
            else:
                from test_data import zip_folder

                archive = zip_folder(write_images(root / "i", gray_layout()), root / "i.zip")
            _VALID_OTHER[form] = (archive.name, archive.read_bytes())
    return _VALID_OTHER[form]


@st.composite
def other_mutations(draw: st.DrawFn) -> tuple[str, str, bytes]:
    form = draw(st.sampled_from(sorted(OTHER_FORMS)))
    name, content = valid_other_archive(form)
    data = bytearray(content)
    for _ in range(draw(st.integers(1, 3))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        kind = draw(st.sampled_from(["flip", "truncate", "insert", "zero run"]))
        if kind == "flip":
            data[at] ^= draw(st.integers(1, 255))
        elif kind == "truncate":
            del data[at:]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        else:
            data[at : at + 512] = bytes(len(data[at : at + 512]))
    return OTHER_FORMS[form], name, bytes(data)


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(other_mutations())
def test_mutated_sources_of_other_datasets_load_or_raise_only_cnnlab_error(
    mutation: tuple[str, str, bytes],
):
    from cnnlab.data.datasets import load_dataset

    dataset, name, content = mutation
    with tempfile.TemporaryDirectory() as folder:
        archive = Path(folder) / name
        archive.write_bytes(content)
        try:
            data = load_dataset(dataset, archive)
        except CnnlabError as error:
            assert "\n" not in str(error)
            return
        assert data.train_images.dtype == np.uint8 and data.train_images.ndim == 4
        assert data.train_labels.min() >= 0 and data.train_labels.max() < data.num_classes


@pytest.mark.parametrize("entries", [0, 3, 70_000])  # 70,000: past 65,535, a zip64 end record
def test_the_zip_directory_size_is_the_one_zipfile_reads(entries):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for index in range(entries):
            archive.writestr(f"train/cat/{index}.png", b"")
    # zipfile's private reader of the same record is the reference.
    expected = zipfile._EndRecData(buffer)[zipfile._ECD_SIZE]  # type: ignore[attr-defined]
    assert sources.zip_directory_size(buffer) == expected > (0 if entries else -1)


def test_a_zip64_directory_size_is_read_from_the_zip64_end_record():
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("a", b"x")
    data = buffer.getvalue()
    at = data.rfind(b"PK\x05\x06")
    fields = list(struct.unpack("<4s4H2LH", data[at : at + 22]))
    zip64_end = struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, 1, 1, 5 << 30, 0)
    locator = struct.pack("<4sLQL", b"PK\x06\x07", 0, at, 1)
    fields[5] = 0xFFFFFFFF  # "see the zip64 record"
    patched = data[:at] + zip64_end + locator + struct.pack("<4s4H2LH", *fields)
    assert sources.zip_directory_size(io.BytesIO(patched)) == 5 << 30
    assert sources.zip_directory_size(io.BytesIO(b"not a zip at all")) == 0


def png_of(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def tar_of_classes(path: Path, names: list[str]) -> Path:
    """An image-folder tar whose class folders are `names`, one 8x8 image per class and split."""
    content = png_of(np.zeros((8, 8, 3), np.uint8))
    with tarfile.open(path, "w") as archive:
        for split in ("train", "test"):
            for name in names:
                member = tarfile.TarInfo(f"{split}/{name}/0.png")
                member.size = len(content)
                archive.addfile(member, io.BytesIO(content))
    return path


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=3, unique=True))
def test_class_names_from_hostile_text_are_one_line_of_text_or_refused(tmp_path, names):
    names = [name for name in names if "/" not in name and name not in (".", "..")]
    if not names or any("\x00" in name for name in names):
        return  # no tar member can carry these
    source = tar_of_classes(tmp_path / f"{abs(hash(tuple(names)))}.tar", names)
    try:
        data = load_dataset("images", source)
    except CnnlabError as refusal:
        assert "\n" not in str(refusal) and "\r" not in str(refusal)
        return
    assert sorted(data.class_names) == sorted(names)
    assert all(name.isprintable() for name in data.class_names)


@pytest.mark.parametrize("name", ["\xa0", "a\u2028b", "no\u00a0break", "zero\u200bwidth"])
def test_a_class_name_with_a_space_that_is_no_space_is_refused(tmp_path, name):
    source = tar_of_classes(tmp_path / "spaces.tar", ["cat", name])
    with pytest.raises(CnnlabError, match="has a control character or a space other than"):
        load_dataset("images", source)


def test_a_class_name_with_a_line_break_is_refused_in_one_line(tmp_path):
    source = tar_of_classes(tmp_path / "a.tar", ["cat", "dog\nhorse"])
    with pytest.raises(CnnlabError, match=r"class folder 'dog\\nhorse' has a control character"):
        load_dataset("images", source)
