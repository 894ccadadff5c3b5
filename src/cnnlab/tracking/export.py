"""Results where users already look: TensorBoard event files and MLflow runs, live or exported.

A logger is a study callback (`cnnlab.study.callbacks`): told as the study trains (`--log`), or
by `export_study`, which replays a finished study's records through the same callback methods,
so live and exported results are the same.
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
from collections.abc import Callable, Sequence
from pathlib import Path

from cnnlab.errors import CnnlabError
from cnnlab.store import KEPT, Store
from cnnlab.study.callbacks import Callback, CallbackList, TrainBegin
from cnnlab.tracking.loggers import (
    run_name,
)
from cnnlab.tracking.mlflow_logger import MlflowLogger, check_mlflow_uri
from cnnlab.tracking.tensorboard_logger import TensorBoardLogger

__all__ = [
    "MlflowLogger",
    "TensorBoardLogger",
    "export_study",
    "open_logger",
    "open_loggers",
    "replay",
    "run_name",
]


def open_logger(spec: str, timeout: float | None = None) -> Callback:
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
) -> CallbackList:
    """Every `--log` spec opened: a spec that cannot work raises before any run trains.

    With `on_error`, a logger that fails while the study trains is reported and dropped."""
    loggers = []
    for spec in specs:
        logger = open_logger(spec, timeout)
        logger.name = f"--log {spec}"  # how `on_error` names it
        loggers.append(logger)
    return CallbackList(loggers, on_error)


def replay(study_dir: str | os.PathLike[str], logger: Callback) -> int:
    """Tell `logger` every finished run of a study folder as if it were training now (each
    run's record stands for the run); returns how many."""
    study_dir = Path(study_dir)
    with Store.open(study_dir, create=False) as store:
        meta = store.meta()
        records = store.runs(planned_only=True)
    meta.setdefault("study_name", study_dir.name)
    finished = [record for record in records if record.status in KEPT]
    logger.on_train_begin(TrainBegin([], "replayed from the store", study_dir, meta, records))
    try:
        for record in finished:
            logger.on_run_begin(record, record)
            for row in record.history:
                logger.on_epoch_end(record, row)
            logger.on_run_end(record, record)
    finally:
        logger.on_train_end()
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
