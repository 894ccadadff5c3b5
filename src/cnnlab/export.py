"""Results where users already look: TensorBoard event files and MLflow runs, live or exported.

A `StudyLogger` follows a study the way `study.execute_runs` sees it: `start` with the store's
meta and planned runs, then per run `started`, one `epoch` per history row, and `finished` with
the record read back from the store (or `failed`), and `close`. `export_study` replays a
finished study's records through the same loggers, so live and exported results are the same.
Both backends are optional extras, imported only when a logger is opened.

Re-exporting is idempotent: TensorBoard gets each run's folder rewritten whole (written beside
the log folder, then swapped in), MLflow finds its runs by tags (`cnnlab.role`, `cnnlab.run_id`)
and skips a run whose `cnnlab.finished_at` matches the store, replacing any other.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from cnnlab.errors import CnnlabError
from cnnlab.events import Event
from cnnlab.store import FINISHED, RunRecord, Store

# history row key -> the name its per-epoch scalar gets (step = epoch)
EPOCH_SCALARS = {
    "loss": "loss",
    "accuracy": "accuracy",
    "val_loss": "val_loss",
    "val_accuracy": "val_accuracy",
    "seconds": "epoch_seconds",
}
# metrics.json keys logged once, at the last epoch's step, as "final/<key>"
FINAL_METRICS = (
    "train_accuracy",
    "train_loss",
    "test_accuracy",
    "test_loss",
    "val_accuracy",
    "val_loss",
    "fit_seconds",
)
# run folder artifacts (store names) that MLflow keeps with each run
ARTIFACTS = ("config", "metrics", "history_png", "confusion_train_png", "confusion_test_png")
MLFLOW_SCHEMES = ("sqlite", "file", "http", "https", "databricks", "postgresql", "mysql", "mssql")


class StudyLogger(Protocol):
    """Where a study's runs are logged as they train (or replayed from the store)."""

    def start(self, meta: Mapping[str, str], runs: Sequence[RunRecord]) -> None:
        """The study begins: the store's meta (study_name, study_sha256...) and planned runs."""

    def started(self, record: RunRecord) -> None:
        """A run begins (its record as the store holds it then)."""

    def epoch(self, run_id: str, row: Mapping[str, Any]) -> None:
        """One history row of a started run: epoch, loss, accuracy, val_loss, val_accuracy..."""

    def finished(self, record: RunRecord, study_dir: Path) -> None:
        """A run ended 'done' or 'diverged'; `record` is read back from the store."""

    def failed(self, run_id: str, reason: str) -> None:
        """A started run raised; the store keeps no results for it."""

    def close(self) -> None:
        """The study ends (also on Ctrl-C or an error): finish what is open."""


def final_step(record: RunRecord) -> int:
    """The step of a run's final metrics: its last epoch (0 for a run without history)."""
    return int(record.history[-1]["epoch"]) if record.history else 0


def epoch_scalars(row: Mapping[str, Any]) -> dict[str, float]:
    """A history row's scalars by logged name."""
    return {
        name: float(row[key]) for key, name in EPOCH_SCALARS.items() if _is_number(row.get(key))
    }


def final_scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    """A run's final metrics by logged name ('final/test_accuracy'...)."""
    return {
        f"final/{key}": float(metrics[key]) for key in FINAL_METRICS if _is_number(metrics.get(key))
    }


def run_label(record: RunRecord) -> str:
    """'l1 l1=0.0001, sizes train_size=5000 seed=1': what places the run in each experiment.

    Safe in a folder name (no '/', nothing Windows refuses) and at most 137 characters.
    """
    places = ", ".join(
        " ".join([name, *(f"{key}={_text(value)}" for key, value in fields.items())])
        for name, fields in record.experiments.items()
    )
    seed = f"seed={record.seed}"
    return re.sub(r"[^\w.,=+\- ]", "_", places)[: 136 - len(seed)].strip() + f" {seed}"


def run_name(record: RunRecord) -> str:
    """How TensorBoard and MLflow name a run: '<run id> <run_label>'."""
    return f"{record.id} {run_label(record)}"


def varied_fields(runs: Sequence[RunRecord]) -> list[str]:
    """The config fields that place runs in experiments, and the seed, that differ across runs."""
    names = dict.fromkeys(
        key for record in runs for fields in record.experiments.values() for key in fields
    )
    names["seed"] = None
    varied = [
        name
        for name in names
        if len({_text(record.config.get(name)) for record in runs}) > 1 or len(runs) == 1
    ]
    return varied


# --- TensorBoard ---------------------------------------------------------------------------------


class TensorBoardLogger:
    """One folder of event files per run, named `run_name`, plus the study's HParams table.

    Per run: the per-epoch scalars (step = epoch), the final metrics at the last step, and the
    HParams session (its varied fields, its status). The log folder's own event file holds the
    HParams experiment (the varied fields and the final metrics). Live, a run's folder is
    cleared when it starts and written as it goes; exported (`live=False`), it is written beside
    the log folder and swapped in whole.
    """

    def __init__(
        self, logdir: str | os.PathLike[str], *, live: bool, option: str = "--tensorboard"
    ):
        self._tb = _require("tensorboard", option)
        self.logdir = Path(logdir)
        self.live = live
        self.written = 0
        self._hparams: dict[str, type] = {}  # varied field -> bool, float or str
        self._writers: dict[str, Any] = {}  # run id -> open EventFileWriter
        self._folders: dict[str, Path] = {}  # run id -> where its events are being written
        self._scratch: Path | None = None

    def start(self, meta: Mapping[str, str], runs: Sequence[RunRecord]) -> None:
        try:
            self.logdir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise CnnlabError(
                f"{self.logdir}: cannot create the log folder: {error.strerror or error}"
            ) from None
        api = self._tb.api_pb2
        self._hparams = {name: _hparam_kind(runs, name) for name in varied_fields(runs)}
        types = {bool: api.DATA_TYPE_BOOL, float: api.DATA_TYPE_FLOAT64, str: api.DATA_TYPE_STRING}
        infos = []
        for name, kind in self._hparams.items():
            values = sorted({_hparam_value(record.config.get(name), kind) for record in runs})
            domain = self._tb.struct_pb2.ListValue()
            domain.extend(values)
            infos.append(api.HParamInfo(name=name, type=types[kind], domain_discrete=domain))
        metrics = [
            api.MetricInfo(name=api.MetricName(tag=f"final/{key}"), display_name=key)
            for key in FINAL_METRICS
        ]
        experiment = api.Experiment(
            description=f"cnnlab study {meta.get('study_name', '')}",
            time_created_secs=time.time(),
            hparam_infos=infos,
            metric_infos=metrics,
        )
        summary = self._hparams_summary(
            self._tb.metadata.EXPERIMENT_TAG,
            self._tb.plugin_data_pb2.HParamsPluginData(experiment=experiment),
        )
        # The log folder's own event file: written aside, moved in, then older ones removed.
        scratch = self._scratch_folder()
        try:
            writer = self._tb.EventFileWriter(str(scratch), filename_suffix=".cnnlab-hparams")
            writer.add_event(
                self._tb.event_pb2.Event(wall_time=time.time(), step=0, summary=summary)
            )
            writer.close()
            (written,) = scratch.iterdir()
            os.replace(written, self.logdir / written.name)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        for old in self.logdir.glob("events.out.tfevents.*.cnnlab-hparams"):
            if old.name != written.name:
                old.unlink()

    def started(self, record: RunRecord) -> None:
        name = run_name(record)
        if self.live:
            self._remove_run(record.id)
            folder = self.logdir / name
        else:
            if self._scratch is None:
                self._scratch = self._scratch_folder()
            folder = self._scratch / name
        self._folders[record.id] = folder
        writer = self._writers[record.id] = self._tb.EventFileWriter(str(folder))
        start = self._tb.plugin_data_pb2.SessionStartInfo(
            start_time_secs=record.started_at or time.time()
        )
        for field, kind in self._hparams.items():
            value = _hparam_value(record.config.get(field), kind)
            slot = {bool: "bool_value", float: "number_value", str: "string_value"}[kind]
            setattr(start.hparams[field], slot, value)
        session = self._tb.plugin_data_pb2.HParamsPluginData(session_start_info=start)
        self._add(
            writer, 0, self._hparams_summary(self._tb.metadata.SESSION_START_INFO_TAG, session)
        )

    def epoch(self, run_id: str, row: Mapping[str, Any]) -> None:
        writer = self._writers[run_id]
        self._add(writer, int(row["epoch"]), self._scalars(epoch_scalars(row)))
        if self.live:
            writer.flush()

    def finished(self, record: RunRecord, study_dir: Path) -> None:
        writer = self._writers[record.id]
        self._add(writer, final_step(record), self._scalars(final_scalars(record.metrics)))
        status = "STATUS_SUCCESS" if record.status == "done" else "STATUS_FAILURE"
        self._end(record.id, status, final_step(record))
        if not self.live:
            self._remove_run(record.id)
            os.replace(self._folders[record.id], self.logdir / self._folders[record.id].name)
        self.written += 1

    def failed(self, run_id: str, reason: str) -> None:
        if run_id in self._writers:
            self._end(run_id, "STATUS_FAILURE", 0)

    def close(self) -> None:
        for run_id in list(self._writers):
            self._end(run_id, "STATUS_UNKNOWN", 0)
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None

    def describe(self) -> str:
        return (
            f"TensorBoard: {self.written} runs -> {self.logdir}"
            f" (view with: tensorboard --logdir {self.logdir})"
        )

    def _end(self, run_id: str, status: str, step: int) -> None:
        end = self._tb.plugin_data_pb2.SessionEndInfo(
            status=self._tb.api_pb2.Status.Value(status), end_time_secs=time.time()
        )
        session = self._tb.plugin_data_pb2.HParamsPluginData(session_end_info=end)
        writer = self._writers.pop(run_id)
        self._add(
            writer, step, self._hparams_summary(self._tb.metadata.SESSION_END_INFO_TAG, session)
        )
        writer.close()

    def _scratch_folder(self) -> Path:
        """A folder beside the log folder (same disk, outside TensorBoard's view)."""
        try:
            return Path(tempfile.mkdtemp(prefix=".cnnlab-", dir=self.logdir.resolve().parent))
        except OSError as error:
            raise CnnlabError(
                f"{self.logdir}: cannot write beside the log folder: {error}"
            ) from None

    def _remove_run(self, run_id: str) -> None:
        """Every folder an earlier export or study wrote for this run (its label may differ)."""
        for old in self.logdir.glob(f"{run_id}*"):
            if old.is_dir() and (old.name == run_id or old.name.startswith(f"{run_id} ")):
                shutil.rmtree(old)

    def _add(self, writer: Any, step: int, summary: Any) -> None:
        writer.add_event(
            self._tb.event_pb2.Event(wall_time=time.time(), step=step, summary=summary)
        )

    def _scalars(self, values: Mapping[str, float]) -> Any:
        summary_pb2 = self._tb.summary_pb2
        return summary_pb2.Summary(
            value=[
                summary_pb2.Summary.Value(tag=tag, simple_value=value)
                for tag, value in values.items()
            ]
        )

    def _hparams_summary(self, tag: str, plugin_data: Any) -> Any:
        metadata = self._tb.metadata
        summary_pb2 = self._tb.summary_pb2
        return summary_pb2.Summary(
            value=[
                summary_pb2.Summary.Value(
                    tag=tag,
                    metadata=metadata.create_summary_metadata(plugin_data),
                    tensor=metadata.NULL_TENSOR,
                )
            ]
        )


def _hparam_kind(runs: Sequence[RunRecord], name: str) -> type:
    """bool, float or str: the one type that holds the field's value in every run."""
    values = [record.config.get(name) for record in runs]
    if all(isinstance(value, bool) for value in values):
        return bool
    if all(_is_number(value) for value in values):
        return float
    return str


def _hparam_value(value: Any, kind: type) -> bool | float | str:
    return _text(value) if kind is str else kind(value)


# --- MLflow --------------------------------------------------------------------------------------


class MlflowLogger:
    """One parent MLflow run per study (experiment = the study's name), one child per cnnlab run.

    A child has the config fields as params, the per-epoch metrics (step = epoch), the final
    metrics at the last step, tags `cnnlab.run_id`, `cnnlab.status`, `cnnlab.finished_at` and
    `mlflow.parentRunId`, and the run folder's plots, config.json and metrics.json as artifacts.
    """

    def __init__(self, uri: str, *, live: bool, option: str = "--mlflow"):
        check_mlflow_uri(uri, option)
        self._ml = _require("mlflow", option)
        if uri.startswith("file:"):
            # MLflow 3 keeps its file store behind an opt-out; naming a file: URI opts out.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        if uri.startswith("sqlite:///"):
            folder = Path(uri.removeprefix("sqlite:///")).parent
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise CnnlabError(
                    f"{option} {uri}: cannot create {folder}: {error.strerror or error}"
                ) from None
        self.uri = uri
        self.live = live
        try:
            self.client = self._ml.MlflowClient(tracking_uri=uri)
            self.client.search_experiments(max_results=1)
        except ImportError as error:
            raise CnnlabError(
                f"{option} {uri}: needs {error.name or 'a missing package'}:"
                " pip install 'cnnlab[mlflow]'"
            ) from None
        except Exception as error:
            raise CnnlabError(f"{option} {uri}: {_first_line(error)}") from None
        self.written = 0
        self.unchanged = 0
        self._experiment_id = ""
        self._parent_id = ""
        self._existing: dict[str, list[Any]] = {}  # cnnlab run id -> its children at start
        self._created: dict[str, str] = {}  # cnnlab run id -> MLflow run id logged since
        self._active: dict[str, str] = {}  # cnnlab run id -> MLflow run id being written
        self._skipped: set[str] = set()
        self._pending: dict[str, list[Any]] = {}  # exported: metrics held until the run ends

    def start(self, meta: Mapping[str, str], runs: Sequence[RunRecord]) -> None:
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
            "cnnlab.study": name,
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

    def started(self, record: RunRecord) -> None:
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
            entities.Param(key, _text(value)[:6000]) for key, value in sorted(record.config.items())
        ]
        self.client.log_batch(child.info.run_id, params=params)

    def epoch(self, run_id: str, row: Mapping[str, Any]) -> None:
        if run_id not in self._skipped:
            self._log(run_id, epoch_scalars(row), int(row["epoch"]))

    def finished(self, record: RunRecord, study_dir: Path) -> None:
        if record.id in self._skipped:
            return
        self._log(record.id, final_scalars(record.metrics), final_step(record))
        self._flush(record.id)
        mlflow_id = self._active.pop(record.id)
        for name in ARTIFACTS:
            path = Path(study_dir) / record.artifacts.get(name, "")
            if name in record.artifacts and path.is_file():
                self.client.log_artifact(mlflow_id, str(path))
        tags = {"cnnlab.status": record.status, "cnnlab.finished_at": repr(record.finished_at)}
        if record.reason:
            tags["cnnlab.reason"] = record.reason
        entities = self._ml.entities
        self.client.log_batch(mlflow_id, tags=[entities.RunTag(k, v) for k, v in tags.items()])
        end = int(1000 * record.finished_at) if record.finished_at else None
        self.client.set_terminated(mlflow_id, "FINISHED", end_time=end)
        self.written += 1

    def failed(self, run_id: str, reason: str) -> None:
        mlflow_id = self._active.pop(run_id, None)
        self._pending.pop(run_id, None)
        if mlflow_id is not None:
            self.client.set_tag(mlflow_id, "cnnlab.status", "failed")
            self.client.set_tag(mlflow_id, "cnnlab.reason", reason[:5000])
            self.client.set_terminated(mlflow_id, "FAILED")

    def close(self) -> None:
        for mlflow_id in self._active.values():
            self.client.set_terminated(mlflow_id, "KILLED")
        self._active.clear()
        if self._parent_id:
            self.client.set_terminated(self._parent_id, "FINISHED")

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
        if self.uri.startswith("sqlite:///"):
            database = Path(self.uri.removeprefix("sqlite:///")).resolve()
            return (database.parent / "mlartifacts").as_uri()
        return None


def check_mlflow_uri(uri: str, option: str = "--mlflow") -> None:
    """A tracking URI cnnlab can use: a SQLite file, a file store, or a tracking server."""
    scheme = uri.split(":", 1)[0].split("+", 1)[0] if ":" in uri else ""
    if scheme not in MLFLOW_SCHEMES or uri.rstrip("/") == f"{scheme}:":
        raise CnnlabError(
            f"{option} {uri!r}: expected an MLflow tracking URI: sqlite:///FILE.db,"
            " file:///DIR or http(s)://HOST:PORT"
        )


# --- following a study, exporting one ----------------------------------------------------------


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
                self.on_error(f"--log {spec}: {_first_line(error)}; no longer logging there")

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


def open_logger(spec: str) -> StudyLogger:
    """`tensorboard:DIR` or `mlflow:URI` (a `--log` value) as a live logger."""
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
        return MlflowLogger(target, live=True, option="--log mlflow")
    raise CnnlabError(
        f"--log {spec!r}: expected tensorboard:DIR or mlflow:URI"
        " (sqlite:///FILE.db, file:///DIR, http(s)://HOST:PORT)"
    )


def open_loggers(
    specs: Sequence[str], on_error: Callable[[str], None] | None = None
) -> LoggerGroup:
    """Every `--log` spec opened (bad specs and missing extras raise before any run trains)."""
    return LoggerGroup([(spec, open_logger(spec)) for spec in specs], on_error)


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
        if record.status in FINISHED:  # a run whose files could not be written is 'failed'
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
    finished = [record for record in records if record.status in FINISHED]
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
) -> list[str]:
    """Export a study folder's finished runs to TensorBoard and/or MLflow; one line per target."""
    if tensorboard is None and mlflow is None:
        raise CnnlabError("export: name a target: --tensorboard DIR and/or --mlflow URI")
    Store.open(study_dir, create=False).close()  # not a study folder: say so before importing
    targets: list[TensorBoardLogger | MlflowLogger] = []
    if tensorboard is not None:
        targets.append(TensorBoardLogger(tensorboard, live=False))
    if mlflow is not None:
        targets.append(MlflowLogger(mlflow, live=False))
    for target in targets:
        replay(study_dir, target)
    return [target.describe() for target in targets]


# --- helpers -------------------------------------------------------------------------------------


class _Modules:
    """The names cnnlab uses from an optional package, imported on demand."""

    def __init__(self, **modules: Any):
        self.__dict__.update(modules)


def _require(package: str, option: str) -> _Modules:
    """Import an optional extra's modules, or say in one line how to install it."""
    try:
        if package == "tensorboard":
            from google.protobuf import struct_pb2
            from tensorboard.compat.proto import event_pb2, summary_pb2
            from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2
            from tensorboard.summary.writer.event_file_writer import EventFileWriter

            return _Modules(
                event_pb2=event_pb2,
                struct_pb2=struct_pb2,
                summary_pb2=summary_pb2,
                api_pb2=api_pb2,
                metadata=metadata,
                plugin_data_pb2=plugin_data_pb2,
                EventFileWriter=EventFileWriter,
            )
        import mlflow
        import mlflow.entities

        return _Modules(MlflowClient=mlflow.MlflowClient, entities=mlflow.entities)
    except ImportError:
        raise CnnlabError(
            f"{option} needs the {package} package: pip install 'cnnlab[{package}]'"
        ) from None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _text(value: Any) -> str:
    """A config value as text: strings as they are, anything else as JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return json.dumps(value, sort_keys=True)


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]
