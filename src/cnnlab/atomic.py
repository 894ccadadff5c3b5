"""Files cnnlab writes and reads at a user's paths.

Writes are atomic: a file or folder is written under a temporary name beside it, then renamed.
A folder is replaced only where cnnlab wrote it whole (`owns`: the marker file it writes lists
every entry); anything else in the way is refused in one line, before the work that fills it.
Reads take regular files only, within a size (`read_regular`): a FIFO, a device or a folder is
one line, never a hang.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from cnnlab.errors import CnnlabError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Keep the real suffix last so writers that infer the format from it (savefig, np.save) work.
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{target.stem}.", suffix=f".tmp{target.suffix}", dir=target.parent
    )
    tmp = Path(tmp_name)
    try:
        # mkstemp creates 0600 files; give the result the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        os.close(fd)
        fd = -1
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        if fd != -1:
            os.close(fd)
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write `data` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write `obj` as indented JSON to `path` atomically."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, allow_nan=True) + "\n")


TEMPORARY_SUFFIX = ".tmp"  # every temporary file or folder this module makes ends with it
MARKER = ".cnnlab-folder.json"  # in every folder `atomic_folder` writes: the entries it wrote
MAX_MARKER_BYTES = 1 << 20
MAX_NESTING = 4  # cnnlab's folders inside cnnlab's folders (a run folder's explain/)


@dataclass(frozen=True)
class FolderKind:
    """A kind of folder cnnlab writes: its name in messages, and the entries (fnmatch patterns)
    it wrote before it kept a marker, so that such a folder is still recognised."""

    name: str  # "a run folder"
    legacy: tuple[str, ...] = ()


ANY_FOLDER = FolderKind("a folder")


@contextlib.contextmanager
def atomic_folder(
    path: str | os.PathLike[str], what: str = "--out", kind: FolderKind = ANY_FOLDER
) -> Iterator[Path]:
    """Yield an empty temporary folder beside `path`; it replaces `path` if the block succeeds.

    A folder already at `path` is replaced whole only if it is empty or cnnlab wrote it
    (`owns`); otherwise CnnlabError, naming `what`. It is moved aside first and removed after,
    so readers see the old folder or the new one, never a mixture; a failure or a kill leaves
    at most a temporary folder, which `remove_temporaries` clears.
    """
    target = _named_folder(path, what)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(
        tempfile.mkdtemp(prefix=f".{target.name}.", suffix=TEMPORARY_SUFFIX, dir=target.parent)
    )
    try:
        # mkdtemp makes 0700 folders; give the result what a plain mkdir would.
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)
        yield tmp
        entries = sorted(entry.name for entry in tmp.iterdir())
        write_json(tmp / MARKER, {"written_by": "cnnlab", "entries": entries})
        if target.exists() or target.is_symlink():
            _check_owned(target, os.fspath(path), what, kind)  # it may have changed meanwhile
            old = Path(
                tempfile.mkdtemp(
                    prefix=f".{target.name}.old.", suffix=TEMPORARY_SUFFIX, dir=target.parent
                )
            )
            os.replace(target, old / "folder")
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def owns(folder: Path, legacy: tuple[str, ...] = (), depth: int = 0) -> bool:
    """Whether cnnlab wrote `folder` whole: every entry is listed in its marker, or (a folder
    written before markers) matches a `legacy` pattern, or is a folder cnnlab wrote itself."""
    listed = _marker_entries(folder)
    for entry in folder.iterdir():
        name = entry.name
        if name == MARKER or (listed is not None and name in listed):
            continue
        if listed is None and any(fnmatch.fnmatchcase(name, pattern) for pattern in legacy):
            continue
        nested = entry.is_dir() and not entry.is_symlink() and (entry / MARKER).is_file()
        if not (nested and depth < MAX_NESTING and owns(entry, depth=depth + 1)):
            return False
    return True


def _marker_entries(folder: Path) -> set[str] | None:
    """The names a folder's marker lists; None without a marker cnnlab could have written."""
    try:
        marker = json.loads(read_regular(folder / MARKER, MAX_MARKER_BYTES, "a marker"))
    except (CnnlabError, ValueError, RecursionError):
        return None
    entries = marker.get("entries") if isinstance(marker, dict) else None
    if not isinstance(entries, list) or not all(isinstance(name, str) for name in entries):
        return None
    return set(entries)


def _check_owned(target: Path, shown: str, what: str, kind: FolderKind) -> None:
    if not target.is_dir():
        raise CnnlabError(f"{what} {shown}: exists and is not a folder")
    if not owns(target, kind.legacy):
        raise CnnlabError(
            f"{what} {shown}: not empty and not {kind.name} cnnlab wrote whole (it replaces"
            " only its own folders); choose another folder, or empty this one"
        )


def _named_folder(path: str | os.PathLike[str], what: str) -> Path:
    """`path` as an absolute path naming a folder ('', '.', '..' and '/' name none to replace)."""
    text = os.fspath(path)
    if not text.strip() or Path(text).name in ("", "..") or "\0" in text:
        raise CnnlabError(
            f"{what} {text!r}: name a folder to write (not the current folder, a parent or /)"
        )
    return Path(os.path.abspath(text))


def remove_temporaries(folder: str | os.PathLike[str]) -> list[Path]:
    """Remove what interrupted atomic writes left directly in `folder`; returns what it removed."""
    removed = []
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for entry in Path(folder).iterdir():
            if not (entry.name.startswith(".") and TEMPORARY_SUFFIX in entry.name):
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def check_folder_target(path: str | os.PathLike[str], what: str) -> None:
    """A folder can be made (or written into) at `path`, checked before the work that fills it.

    Permissions do not tell (root, read-only mounts, /proc): a probe folder is made where the
    write will happen, and removed. Every error of the probe is one line.
    """
    shown = os.fspath(path)
    if not shown.strip() or "\0" in shown:
        raise CnnlabError(f"{what} {shown!r}: name a folder")
    try:
        path = Path(shown)
        if path.exists() and not path.is_dir():
            raise CnnlabError(f"{what} {path}: exists and is not a folder")
        _probe(path if path.is_dir() else path.absolute().parent, path, what)
    except OSError as error:
        raise CnnlabError(f"{what} {shown}: cannot write there ({_reason(error)})") from None


def check_folder_replaceable(
    path: str | os.PathLike[str], what: str = "--out", kind: FolderKind = ANY_FOLDER
) -> None:
    """`atomic_folder(path, what, kind)` will succeed as far as can be told before the work:
    `path` names a folder that is new, empty or cnnlab's own whole, in a place that can be
    written (probed beside it, where the temporary folder will be made)."""
    target = _named_folder(path, what)
    try:
        if target.exists() or target.is_symlink():
            _check_owned(target, os.fspath(path), what, kind)
        _probe(target.parent, target, what)
    except OSError as error:
        raise CnnlabError(f"{what} {path}: cannot write there ({_reason(error)})") from None


def check_file_target(path: str | os.PathLike[str], what: str) -> None:
    """A file can be written at `path` (by `atomic_path`): probed before the work."""
    shown = os.fspath(path)
    if not shown.strip() or "\0" in shown or Path(shown).name in ("", ".", ".."):
        raise CnnlabError(f"{what} {shown!r}: name a file to write")
    try:
        target = Path(os.path.abspath(shown))
        if target.is_dir():
            raise CnnlabError(f"{what} {shown}: is a folder; name a file in it")
        nearest = _nearest(target.parent)
        if not nearest.is_dir():
            raise CnnlabError(
                f"{what} {shown}: cannot write there ({nearest}: not a writable folder)"
            )
        _probe(nearest, target, what)
    except OSError as error:
        raise CnnlabError(f"{what} {shown}: cannot write there ({_reason(error)})") from None


def _probe(folder: Path, path: Path, what: str) -> None:
    """Make and remove a folder in `folder`, or where it would be created (its nearest existing
    ancestor, which must be a folder)."""
    nearest = _nearest(folder)
    if not nearest.is_dir():
        raise CnnlabError(f"{what} {path}: cannot create it: {nearest} is not a folder")
    os.rmdir(tempfile.mkdtemp(prefix=".cnnlab-probe.", dir=nearest))


def _nearest(folder: Path) -> Path:
    """`folder`, or its nearest ancestor that exists."""
    return next((p for p in (folder, *folder.absolute().parents) if p.exists()), Path("/"))


def _reason(error: OSError) -> str:
    return error.strerror or errno.errorcode.get(error.errno or 0, "") or type(error).__name__


def open_regular(path: str | os.PathLike[str], limit: int, what: str) -> BinaryIO:
    """The regular file at `path` open for reading, if it holds at most `limit` bytes; else one
    CnnlabError line ending "not WHAT" (a FIFO, a device or a folder is refused unread)."""
    try:
        _check_regular(path, os.stat(path), limit, what)
        # O_NONBLOCK: a FIFO swapped in after the stat opens at once, and fstat refuses it.
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        file = os.fdopen(descriptor, "rb")
    except CnnlabError:
        raise
    except OSError as error:
        raise CnnlabError(f"{path}: cannot read ({_reason(error)}); not {what}") from None
    except ValueError:  # a NUL in the name
        raise CnnlabError(f"{str(path)!r}: not a file name; not {what}") from None
    try:
        _check_regular(path, os.fstat(file.fileno()), limit, what)
    except BaseException:
        file.close()
        raise
    return file


def read_regular(path: str | os.PathLike[str], limit: int, what: str) -> bytes:
    """The bytes of the regular file at `path` (see `open_regular`), at most `limit` of them."""
    with open_regular(path, limit, what) as file:
        try:
            data = file.read(limit + 1)
        except OSError as error:
            raise CnnlabError(f"{path}: cannot read ({_reason(error)}); not {what}") from None
    if len(data) > limit:  # it grew since it was opened
        raise CnnlabError(f"{path}: larger than {limit:,} bytes; not {what}")
    return data


def _check_regular(
    path: str | os.PathLike[str], facts: os.stat_result, limit: int, what: str
) -> None:
    if stat.S_ISDIR(facts.st_mode):
        raise CnnlabError(f"{path}: is a folder; not {what}")
    if not stat.S_ISREG(facts.st_mode):
        raise CnnlabError(f"{path}: not a regular file (a pipe, socket or device); not {what}")
    if facts.st_size > limit:
        raise CnnlabError(f"{path}: larger than {limit:,} bytes; not {what}")
