"""A study's folder: checked before anything is loaded, made, held by one process at a time.

A folder that does not exist yet is made for the study; if the study is refused before any of
its runs is recorded (a mistake found once the store exists), the folder is removed again, so
a refused study leaves nothing behind. A folder that exists is never removed.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from cnnlab.errors import CnnlabError
from cnnlab.store import DATABASE_NAME, KEPT, RunRecord, Store

RUNS_FOLDER = "runs"
LOCK_NAME = ".lock"


def check_folder(study_dir: Path, *, force: bool) -> None:
    """Refuse a study folder that cannot be one, before anything is loaded or written."""
    if study_dir.exists() and not study_dir.is_dir():
        raise CnnlabError(f"{study_dir}: exists and is not a folder")
    if not study_dir.is_dir():
        parent = next((p for p in study_dir.absolute().parents if p.exists()), Path("/"))
        if not parent.is_dir():
            raise CnnlabError(
                f"{study_dir}: cannot create the study folder: {parent} is not a folder"
            )
        if not os.access(parent, os.W_OK | os.X_OK):
            raise CnnlabError(f"{study_dir}: cannot create the study folder in {parent}")
        return
    if (
        any(entry.name != LOCK_NAME for entry in study_dir.iterdir())
        and not (study_dir / DATABASE_NAME).exists()
        and not force
    ):
        raise CnnlabError(
            f"{study_dir}: not empty and not a cnnlab study folder; choose another --out"
            " or pass --force"
        )
    if not os.access(study_dir, os.W_OK):
        raise CnnlabError(f"{study_dir}: the study folder is read-only")


@contextlib.contextmanager
def held(study_dir: Path, *, force: bool) -> Iterator[None]:
    """The study folder (checked by `check_folder`), made if new and locked for the block.

    A folder made here is removed again when the block ends in a CnnlabError before any run is
    recorded as finished."""
    check_folder(study_dir, force=force)
    new = not study_dir.exists()
    try:
        study_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CnnlabError(
            f"{study_dir}: cannot create the study folder: {error.strerror}"
        ) from None
    try:
        with _locked(study_dir):
            yield
    except CnnlabError:
        if new and not _has_results(study_dir):
            shutil.rmtree(study_dir, ignore_errors=True)
        raise


def _has_results(study_dir: Path) -> bool:
    """Whether the study folder's store records a finished run (then it is kept)."""
    if not (study_dir / DATABASE_NAME).exists():
        return False
    try:
        with Store.open(study_dir, create=False) as store:
            return any(record.status in KEPT for record in store.runs())
    except CnnlabError:
        return True  # a store that cannot be read is not ours to judge: keep it


@contextlib.contextmanager
def _locked(study_dir: Path) -> Iterator[None]:
    """Only one process runs a study folder at a time (the lock dies with the process)."""
    try:
        handle = open(study_dir / LOCK_NAME, "a")  # noqa: SIM115 - held for the block
    except OSError as error:
        raise CnnlabError(f"{study_dir}: cannot write the study folder: {error.strerror}") from None
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CnnlabError(
                f"{study_dir}: another cnnlab process is running this study"
            ) from None
        yield
    finally:
        handle.close()


def artifacts_intact(study_dir: Path, record: RunRecord) -> bool:
    """A finished run is kept only if every artifact it listed is still there and non-empty."""
    if not record.artifacts:
        return False
    for relative in record.artifacts.values():
        path = study_dir / relative
        if not path.is_file() or path.stat().st_size == 0:
            return False
    return True
