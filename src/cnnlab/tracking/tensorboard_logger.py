"""TensorBoard event files for a study: per-epoch scalars, final metrics, the HParams table."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cnnlab import atomic
from cnnlab.errors import CnnlabError
from cnnlab.store import KEPT, RunRecord, Status
from cnnlab.study.callbacks import Callback, Run, TrainBegin
from cnnlab.tracking.loggers import (
    FINAL_METRICS,
    epoch_scalars,
    final_scalars,
    final_step,
    is_number,
    require,
    run_name,
    text,
    varied_fields,
)


class TensorBoardLogger(Callback):
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
        if not str(logdir).strip():
            raise CnnlabError(
                f"{option} {str(logdir)!r}: name a folder for the event files"
                " (an empty name would write into the current folder)"
            )
        self._tb = require("tensorboard", option)
        self.logdir = Path(logdir)
        check_writable(self.logdir, option)
        self.live = live
        self.written = 0
        self._hparams: dict[str, type] = {}  # varied field -> bool, float or str
        self._writers: dict[str, Any] = {}  # run id -> open EventFileWriter
        self._folders: dict[str, Path] = {}  # run id -> where its events are being written
        self._scratch: Path | None = None

    def on_train_begin(self, begin: TrainBegin) -> None:
        meta, runs = begin.meta, begin.records
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

    def on_run_begin(self, run: Run, record: RunRecord) -> None:
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

    def on_epoch_end(self, run: Run, row: Mapping[str, Any]) -> None:
        writer = self._writers[run.id]
        self._add(writer, int(row["epoch"]), self._scalars(epoch_scalars(row)))
        if self.live:
            writer.flush()

    def on_run_end(self, run: Run, record: RunRecord) -> None:
        if record.status not in KEPT:  # failed: no result to log
            if record.id in self._writers:
                self._end(record.id, "STATUS_FAILURE", 0)
            return
        writer = self._writers[record.id]
        self._add(writer, final_step(record), self._scalars(final_scalars(record.metrics)))
        status = "STATUS_SUCCESS" if record.status == Status.DONE else "STATUS_FAILURE"
        self._end(record.id, status, final_step(record))
        if not self.live:
            self._remove_run(record.id)
            os.replace(self._folders[record.id], self.logdir / self._folders[record.id].name)
        self.written += 1

    def on_train_end(self) -> None:
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
    if all(is_number(value) for value in values):
        return float
    return str


def _hparam_value(value: Any, kind: type) -> bool | float | str:
    return text(value) if kind is str else kind(value)


def check_writable(logdir: Path, option: str) -> None:
    """The log folder, and beside it the scratch folders, can be written: probed, not created
    (permission bits do not tell: root, read-only mounts, /proc)."""
    atomic.check_folder_target(logdir, option)
    if logdir.is_dir():  # new, it is made where the probe ran; else scratch goes beside it
        try:
            beside = logdir.resolve().parent
        except (OSError, RuntimeError) as error:  # a loop of symbolic links
            raise CnnlabError(f"{option} {logdir}: cannot resolve it ({error})") from None
        atomic.check_folder_target(beside, f"{option} {logdir}: beside it,")
