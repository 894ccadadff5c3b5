"""Results where users already look: TensorBoard event files and MLflow runs, live or exported.

A `StudyLogger` follows a study the way `study.execute_runs` sees it: `start` with the store's
meta and planned runs, then per run `started`, one `epoch` per history row, and `finished` with
the record read back from the store (or `failed`), and `close`. `export_study` replays a
finished study's records through the same loggers, so live and exported results are the same.
Both backends are optional extras, imported only when a logger is opened.

Re-exporting is idempotent: TensorBoard gets each run's folder rewritten whole (written beside
the log folder, then swapped in), MLflow finds its runs by tags (`cnnlab.role`, `cnnlab.run_id`)
and skips a run whose `cnnlab.finished_at` matches the store, replacing any other. A SQLite
database cnnlab creates is built aside and linked in whole, and an export holds it locked
while it writes: exports killed at any moment, or run side by side, leave a database that the
next export completes. Servers are probed first (`endpoints`), with a bounded timeout.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from cnnlab.errors import CnnlabError
from cnnlab.execution.events import Event
from cnnlab.store import KEPT, RunRecord, Store
from cnnlab.tracking.loggers import (
    StudyLogger,
    first_line,
    run_name,
)
from cnnlab.tracking.mlflow_logger import MlflowLogger, check_mlflow_uri
from cnnlab.tracking.tensorboard_logger import TensorBoardLogger

__all__ = [
    "LoggerGroup",
    "MlflowLogger",
    "StudyLogger",
    "TensorBoardLogger",
    "export_study",
    "log_event",
    "open_logger",
    "open_loggers",
    "replay",
    "run_name",
]


class LoggerGroup:
    """Several loggers as one; with `on_error`, a logger that fails is reported and dropped."""

    def __init__(
        self,
        loggers: Sequence[tuple[str, StudyLogger]],
        on_error: Callable[[str], None] | None = None,
    ):
        self.loggers = list(loggers)
        self.on_error = on_error

    def _each(self, method: str, *args: Any) -> None:
        for spec, logger in list(self.loggers):
            try:
                getattr(logger, method)(*args)
            except Exception as error:
                if self.on_error is None:
                    raise
                self.loggers.remove((spec, logger))
                self.on_error(f"--log {spec}: {first_line(error)}; no longer logging there")

    def start(self, meta: Mapping[str, str], runs: Sequence[RunRecord]) -> None:
        self._each("start", meta, runs)

    def started(self, record: RunRecord) -> None:
        self._each("started", record)

    def epoch(self, run_id: str, row: Mapping[str, Any]) -> None:
        self._each("epoch", run_id, row)

    def finished(self, record: RunRecord, study_dir: Path) -> None:
        self._each("finished", record, study_dir)

    def failed(self, run_id: str, reason: str) -> None:
        self._each("failed", run_id, reason)

    def close(self) -> None:
        self._each("close")


def open_logger(spec: str, timeout: float | None = None) -> StudyLogger:
    """`tensorboard:DIR` or `mlflow:URI` (a `--log` value) as a live logger.

    `timeout`: seconds to reach a tracking server (default: `endpoints.connect_timeout`).
    """
    kind, _, target = spec.partition(":")
    if kind == "tensorboard" and target:
        return TensorBoardLogger(target, live=True, option="--log tensorboard")
    if kind == "mlflow" and target:
        try:
            check_mlflow_uri(target)
        except CnnlabError:
            raise CnnlabError(
                f"--log {spec!r}: expected mlflow:URI with an MLflow tracking URI:"
                " sqlite:///FILE.db, file:///DIR or http(s)://HOST:PORT"
            ) from None
        return MlflowLogger(target, live=True, option="--log mlflow", timeout=timeout)
    raise CnnlabError(
        f"--log {spec!r}: expected tensorboard:DIR or mlflow:URI"
        " (sqlite:///FILE.db, file:///DIR, http(s)://HOST:PORT)"
    )


def open_loggers(
    specs: Sequence[str],
    on_error: Callable[[str], None] | None = None,
    timeout: float | None = None,
) -> LoggerGroup:
    """Every `--log` spec opened: a spec that cannot work raises before any run trains."""
    return LoggerGroup([(spec, open_logger(spec, timeout)) for spec in specs], on_error)


def log_event(
    logger: StudyLogger, store: Store, study_dir: Path, run_id: str, event: Event
) -> None:
    """Pass one of execute's events to `logger`, after the store has recorded it."""
    if event.kind == "started":
        logger.started(store.get(run_id))
    elif event.kind == "progress":
        logger.epoch(run_id, event.payload)
    elif event.kind == "failed":
        logger.failed(run_id, event.payload)
    else:
        record = store.get(run_id)
        if record.status in KEPT:  # a run whose files could not be written is 'failed'
            logger.finished(record, study_dir)
        else:
            logger.failed(run_id, record.reason)


def replay(study_dir: str | os.PathLike[str], logger: StudyLogger) -> int:
    """Log every finished run of a study folder as if it were training now; returns how many."""
    study_dir = Path(study_dir)
    with Store.open(study_dir, create=False) as store:
        meta = store.meta()
        records = store.runs(planned_only=True)
    meta.setdefault("study_name", study_dir.name)
    finished = [record for record in records if record.status in KEPT]
    logger.start(meta, records)
    try:
        for record in finished:
            logger.started(record)
            for row in record.history:
                logger.epoch(record.id, row)
            logger.finished(record, study_dir)
    finally:
        logger.close()
    return len(finished)


def export_study(
    study_dir: str | os.PathLike[str],
    *,
    tensorboard: str | os.PathLike[str] | None = None,
    mlflow: str | None = None,
    timeout: float | None = None,
) -> list[str]:
    """Export a study folder's finished runs to TensorBoard and/or MLflow; one line per target.

    `timeout`: seconds to reach an MLflow server (default: `endpoints.connect_timeout`).
    """
    if tensorboard is None and mlflow is None:
        raise CnnlabError("export: name a target: --tensorboard DIR and/or --mlflow URI")
    Store.open(study_dir, create=False).close()  # not a study folder: say so before importing
    targets: list[TensorBoardLogger | MlflowLogger] = []
    if tensorboard is not None:
        targets.append(TensorBoardLogger(tensorboard, live=False))
    if mlflow is not None:
        targets.append(MlflowLogger(mlflow, live=False, timeout=timeout))
    for target in targets:
        replay(study_dir, target)
    return [target.describe() for target in targets]
