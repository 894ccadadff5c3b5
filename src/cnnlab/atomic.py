"""Atomic writes: a file or folder is written under a temporary name beside it, then renamed."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty temporary folder beside `path`; it replaces `path` if the block succeeds.

    A folder already at `path` is replaced whole (moved aside first, removed after), so readers
    see the old folder or the new one, never a mixture; a failure or a kill leaves at most a
    temporary folder, which `remove_temporaries` clears.
    """
    target = Path(path)
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
        if target.exists() or target.is_symlink():
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
    write will happen, and removed.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise CnnlabError(f"{what} {path}: exists and is not a folder")
    nearest = next((p for p in (path, *path.absolute().parents) if p.exists()), Path("/"))
    if not nearest.is_dir():
        raise CnnlabError(f"{what} {path}: cannot create it: {nearest} is not a folder")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".cnnlab-probe.", dir=nearest))
    except OSError as error:
        raise CnnlabError(
            f"{what} {path}: cannot write there ({error.strerror or error})"
        ) from None
