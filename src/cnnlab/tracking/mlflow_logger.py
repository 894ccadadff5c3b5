"""MLflow runs for a study: a parent per study, a child per run with params, metrics, files.

Never into a user's file: an SQLite file must already be MLflow's database, a file store's
folder empty or MLflow's; a new database is built aside and linked in whole.
"""

from __future__ import annotations

import fcntl
import glob
import os
import sqlite3
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cnnlab import atomic
from cnnlab.errors import CnnlabError
from cnnlab.store import KEPT, RunRecord, Status
from cnnlab.study.callbacks import Callback, Run, TrainBegin
from cnnlab.tracking.endpoints import connect_timeout, probe_mlflow
from cnnlab.tracking.loggers import (
    ARTIFACTS,
    MLFLOW_SCHEMES,
    epoch_scalars,
    final_scalars,
    final_step,
    first_line,
    require,
    run_label,
    run_name,
    text,
)


class MlflowLogger(Callback):
    """One parent MLflow run per study (experiment = the study's name), one child per cnnlab run.

    A child has the config fields as params, the per-epoch metrics (step = epoch), the final
    metrics at the last step, tags `cnnlab.run_id`, `cnnlab.status`, `cnnlab.finished_at` and
    `mlflow.parentRunId`, and the run folder's plots, config.json, metrics.json and
    measurements.json (`training.measure`: norms, sparsity, activations) as artifacts.
    """

    def __init__(
        self, uri: str, *, live: bool, option: str = "--mlflow", timeout: float | None = None
    ):
        check_mlflow_uri(uri, option)
        probe_mlflow(uri, connect_timeout(timeout), option)  # before anything is written
        database = sqlite_path(uri)
        if database is not None:
            check_database(database, f"{option} {uri}")
        if uri.startswith("file:"):
            check_file_store(Path(urlsplit(uri).path), f"{option} {uri}")
        self._ml = require("mlflow", option)
        if uri.startswith("file:"):
            # MLflow 3 keeps its file store behind an opt-out; naming a file: URI opts out.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.uri = uri
        self.live = live
        self._lock: int | None = None  # exported: the database, locked until `close`
        try:
            if database is not None:
                create_database(database, f"{option} {uri}", self._ml)
            self.client = self._ml.MlflowClient(tracking_uri=uri)
            self.client.search_experiments(max_results=1)
        except CnnlabError:
            raise
        except ImportError as error:
            raise CnnlabError(
                f"{option} {uri}: needs {error.name or 'a missing package'}:"
                " pip install 'cnnlab[mlflow]'"
            ) from None
        except Exception as error:
            raise CnnlabError(f"{option} {uri}: {first_line(error)}") from None
        if database is not None and not live:
            self._lock = lock_database(database)
        self.written = 0
        self.unchanged = 0
        self._experiment_id = ""
        self._parent_id = ""
        self._existing: dict[str, list[Any]] = {}  # cnnlab run id -> its children at start
        self._created: dict[str, str] = {}  # cnnlab run id -> MLflow run id logged since
        self._active: dict[str, str] = {}  # cnnlab run id -> MLflow run id being written
        self._skipped: set[str] = set()
        self._pending: dict[str, list[Any]] = {}  # exported: metrics held until the run ends
        self._study_dir = Path()  # where the runs' artifacts are (`TrainBegin.study_dir`)

    def on_train_begin(self, begin: TrainBegin) -> None:
        meta, self._study_dir = begin.meta, begin.study_dir
        client = self.client
        name = meta.get("study_name") or "cnnlab"
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            self._experiment_id = client.create_experiment(
                name, artifact_location=self._artifact_root()
            )
        else:
            self._experiment_id = experiment.experiment_id
            if experiment.lifecycle_stage == "deleted":
                client.restore_experiment(self._experiment_id)
        tags = {
            "cnnlab.role": "study",
            "cnnlab.study.runner": name,
            "cnnlab.study_sha256": meta.get("study_sha256", ""),
        }
        parents = self._search("tags.`cnnlab.role` = 'study'")
        if parents:
            self._parent_id = parents[0].info.run_id
            self.client.update_run(self._parent_id, status="RUNNING")
            for key, value in tags.items():
                client.set_tag(self._parent_id, key, value)
        else:
            self._parent_id = client.create_run(
                self._experiment_id, tags=tags, run_name=name
            ).info.run_id
        if meta.get("study_text"):
            client.log_text(self._parent_id, meta["study_text"], "study.toml")
        self._existing = {}
        for run in self._search(f"tags.`mlflow.parentRunId` = '{self._parent_id}'"):
            self._existing.setdefault(run.data.tags.get("cnnlab.run_id", ""), []).append(run)

    def on_run_begin(self, run: Run, record: RunRecord) -> None:
        entities = self._ml.entities
        self._skipped.discard(record.id)
        existing = self._existing.pop(record.id, [])
        if (
            record.finished_at is not None
            and len(existing) == 1
            and existing[0].info.status == "FINISHED"
            and existing[0].data.tags.get("cnnlab.finished_at") == repr(record.finished_at)
        ):
            self._skipped.add(record.id)
            self.unchanged += 1
            return
        stale = [run.info.run_id for run in existing]
        if record.id in self._created:  # trained again since this logger started
            stale.append(self._created.pop(record.id))
        for mlflow_id in stale:
            self.client.delete_run(mlflow_id)
        tags = {
            "mlflow.parentRunId": self._parent_id,
            "cnnlab.run_id": record.id,
            "cnnlab.label": run_label(record),
        }
        child = self.client.create_run(
            self._experiment_id,
            run_name=run_name(record),
            tags=tags,
            start_time=int(1000 * (record.started_at or time.time())),
        )
        self._active[record.id] = self._created[record.id] = child.info.run_id
        params = [
            entities.Param(key, text(value)[:6000]) for key, value in sorted(record.config.items())
        ]
        self.client.log_batch(child.info.run_id, params=params)

    def on_epoch_end(self, run: Run, row: Mapping[str, Any]) -> None:
        if run.id not in self._skipped:
            self._log(run.id, epoch_scalars(row), int(row["epoch"]))

    def on_run_end(self, run: Run, record: RunRecord) -> None:
        if record.status not in KEPT:
            self._failed(record.id, record.reason)
            return
        if record.id in self._skipped:
            return
        self._log(record.id, final_scalars(record.metrics), final_step(record))
        self._flush(record.id)
        mlflow_id = self._active.pop(record.id)
        for name in ARTIFACTS:
            path = self._study_dir / record.artifacts.get(name, "")
            if name in record.artifacts and path.is_file():
                self.client.log_artifact(mlflow_id, str(path))
        tags = {"cnnlab.status": str(record.status), "cnnlab.finished_at": repr(record.finished_at)}
        if record.reason:
            tags["cnnlab.reason"] = record.reason
        entities = self._ml.entities
        self.client.log_batch(mlflow_id, tags=[entities.RunTag(k, v) for k, v in tags.items()])
        end = int(1000 * record.finished_at) if record.finished_at else None
        self.client.set_terminated(mlflow_id, "FINISHED", end_time=end)
        self.written += 1

    def _failed(self, run_id: str, reason: str) -> None:
        mlflow_id = self._active.pop(run_id, None)
        self._pending.pop(run_id, None)
        if mlflow_id is not None:
            self.client.set_tag(mlflow_id, "cnnlab.status", str(Status.FAILED))
            self.client.set_tag(mlflow_id, "cnnlab.reason", reason[:5000])
            self.client.set_terminated(mlflow_id, "FAILED")

    def on_train_end(self) -> None:
        try:
            for mlflow_id in self._active.values():
                self.client.set_terminated(mlflow_id, "KILLED")
            self._active.clear()
            if self._parent_id:
                self.client.set_terminated(self._parent_id, "FINISHED")
        finally:
            if self._lock is not None:
                os.close(self._lock)  # releases the lock
                self._lock = None

    def describe(self) -> str:
        return (
            f"MLflow: {self.written} runs logged, {self.unchanged} unchanged -> {self.uri}"
            f" (experiment id {self._experiment_id}, parent run {self._parent_id})"
        )

    def _log(self, run_id: str, values: Mapping[str, float], step: int) -> None:
        """Live, at once; exported, held until the run ends and written in a few batches."""
        now = int(time.time() * 1000)
        metrics = [self._ml.entities.Metric(key, value, now, step) for key, value in values.items()]
        pending = self._pending.setdefault(run_id, [])
        pending.extend(metrics)
        if self.live:
            self._flush(run_id)

    def _flush(self, run_id: str) -> None:
        pending = self._pending.pop(run_id, [])
        for start in range(0, len(pending), 1000):  # log_batch takes up to 1000 metrics
            self.client.log_batch(self._active[run_id], metrics=pending[start : start + 1000])

    def _search(self, filter_string: str) -> list[Any]:
        """Every active run of the study's experiment matching `filter_string` (all pages)."""
        found: list[Any] = []
        token = None
        while True:
            page = self.client.search_runs(
                [self._experiment_id], filter_string, max_results=1000, page_token=token
            )
            found.extend(page)
            token = page.token
            if not token:
                return found

    def _artifact_root(self) -> str | None:
        """Beside a SQLite database (MLflow's default is the working folder); else the default."""
        database = sqlite_path(self.uri)
        if database is not None:
            return (database.resolve().parent / "mlartifacts").as_uri()
        return None


def check_mlflow_uri(uri: str, option: str = "--mlflow") -> None:
    """A tracking URI cnnlab can use: a SQLite file, a file store, or a tracking server."""
    scheme = uri.split(":", 1)[0].split("+", 1)[0] if ":" in uri else ""
    if scheme not in MLFLOW_SCHEMES or uri.rstrip("/") == f"{scheme}:":
        raise CnnlabError(
            f"{option} {uri!r}: expected an MLflow tracking URI: sqlite:///FILE.db,"
            " file:///DIR or http(s)://HOST:PORT"
        )


def sqlite_path(uri: str) -> Path | None:
    """The database file a `sqlite:///FILE` URI names (None for other URIs)."""
    if not uri.startswith("sqlite:///"):
        return None
    name = uri.removeprefix("sqlite:///").split("?", 1)[0]
    return Path(name) if name and name != ":memory:" else None


MAX_DATABASE_BYTES = 1 << 40


def is_mlflow_database(path: Path) -> bool:
    """Whether `path` is an SQLite database holding MLflow's tables (its tables only read)."""
    try:
        with atomic.open_regular(path, MAX_DATABASE_BYTES, "an MLflow database") as file:
            if file.read(16) != b"SQLite format 3\x00":
                return False
        # Not read-only: a database whose writer was killed needs its journal rolled back first.
        uri = f"{path.resolve().as_uri()}?mode=rw"
        connection = sqlite3.connect(uri, uri=True, timeout=60)  # an export may be writing
        try:
            query = "SELECT name FROM sqlite_master WHERE type = 'table'"
            tables = {row[0] for row in connection.execute(query)}
        finally:
            connection.close()
    except (OSError, sqlite3.Error, CnnlabError):  # a FIFO or a device is no database
        return False
    return {"alembic_version", "experiments", "runs"} <= tables


def check_database(path: Path, what: str) -> None:
    """A database file that exists must be MLflow's: cnnlab never turns a user's file into one."""
    if (path.exists() or path.is_symlink()) and not is_mlflow_database(path):
        raise CnnlabError(
            f"{what}: {path} exists and is not an MLflow database;"
            " name a new file or an MLflow SQLite database"
        )


def check_file_store(folder: Path, what: str) -> None:
    """A folder that exists must be empty or MLflow's file store (which keeps a `.trash`)."""
    if folder.exists() and not folder.is_dir():
        raise CnnlabError(f"{what}: {folder} is a file, not an MLflow file store (a folder)")
    if folder.is_dir() and not (folder / ".trash").is_dir() and any(folder.iterdir()):
        raise CnnlabError(
            f"{what}: {folder} holds other files and is not an MLflow file store;"
            " name a new or empty folder, or an MLflow file store"
        )


def create_database(path: Path, what: str, ml: Any) -> None:
    """Create MLflow's database at `path` whole, if it is not there: built aside, then linked in.

    A kill while MLflow creates its schema (dozens of migrations) leaves no half-built database
    behind, and exports started together each build their own and use the one linked first.
    """
    if path.exists():
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CnnlabError(
            f"{what}: cannot create {path.parent}: {error.strerror or error}"
        ) from None
    prefix = f".{path.name}."
    for stale in path.parent.glob(f"{glob.escape(prefix)}*.creating*"):
        if not _alive(stale.name[len(prefix) :].split(".")[0]):  # what a killed export built
            stale.unlink(missing_ok=True)  # the database and its journal
    scratch = path.parent / f".{path.name}.{os.getpid()}.creating"
    scratch.unlink(missing_ok=True)
    try:
        ml.MlflowClient(tracking_uri=f"sqlite:///{scratch}").search_experiments(max_results=1)
        os.link(scratch, path)
    except FileExistsError:
        pass  # another export linked its database first: use that one
    finally:
        scratch.unlink(missing_ok=True)


def lock_database(path: Path) -> int:
    """Hold an exclusive lock on the database file (one export at a time); the descriptor."""
    descriptor = os.open(path, os.O_RDONLY)
    fcntl.flock(descriptor, fcntl.LOCK_EX)  # SQLite's own locks are fcntl's: no conflict
    return descriptor


def _alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True
