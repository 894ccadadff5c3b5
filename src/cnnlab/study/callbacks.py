"""What a study tells its observers as it trains: one protocol, one list (Keras's callbacks).

The progress display (`cnnlab.study.progress`), TensorBoard and MLflow (`cnnlab.tracking`) and
any user's or test's observer subclass `Callback` and override what they need; `run_study`
tells a `CallbackList` of them, in order:

- `on_message(line)`: the study's own lines (what it found, what it will train);
- `on_train_begin(begin)`: a batch of runs is about to train (the grids' runs, then each batch
  of a search's trials), with how they train;
- per run `on_run_begin`, one `on_epoch_end` per epoch, then `on_run_end` with the run's record
  as the store holds it once recorded (status done, diverged, pruned or failed);
- `on_train_end()`: the batch is over (also on Ctrl-C or an error).

A `run` is the study's planned run (`cnnlab.study.plan.PlannedRun`) while training; replaying a
finished study (`cnnlab.tracking.export.replay`) passes each run's store record instead, which
has the same `id`, `seed`, `experiments` and `label()`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cnnlab.store import RunRecord


class Run(Protocol):
    """What every callback may use of a run."""

    id: str
    seed: int
    experiments: dict[str, dict[str, Any]]

    def label(self) -> str: ...


@dataclass(frozen=True)
class TrainBegin:
    """A batch of runs about to train, and the study they belong to."""

    runs: Sequence[Any]  # the runs to train now (planned runs; empty in a replay)
    how: str  # how they train: 'training on the CPU in 2 worker processes side by side...'
    study_dir: Path
    meta: Mapping[str, str]  # the store's meta: study_name, study_sha256, data_source...
    records: Sequence[RunRecord]  # every planned run of the study, as the store holds it


class Callback:
    """An observer of a study's runs; every method does nothing until overridden."""

    def on_message(self, line: str) -> None:
        """A line of the study's own: what it found in its folder, what it will train."""

    def on_train_begin(self, begin: TrainBegin) -> None:
        """A batch of runs is about to train."""

    def on_run_begin(self, run: Run, record: RunRecord) -> None:
        """A run starts (`record`: its row, marked running)."""

    def on_epoch_end(self, run: Run, row: Mapping[str, Any]) -> None:
        """A run's epoch ended: its history row (epoch, loss, accuracy, val_loss...)."""

    def on_run_end(self, run: Run, record: RunRecord) -> None:
        """A run ended and is recorded; `record.status` says how, `record.reason` why."""

    def on_train_end(self) -> None:
        """The batch is over, also after Ctrl-C or an error: finish what is open."""


class CallbackList(Callback):
    """Several callbacks told as one, in order.

    With `on_error`, a callback that raises is reported through it and dropped (a tracking
    server that went away must not stop the study); without, the error propagates.
    """

    def __init__(
        self, callbacks: Iterable[Callback] = (), on_error: Callable[[str], None] | None = None
    ):
        self.callbacks = list(callbacks)
        self.on_error = on_error

    def _each(self, method: str, *args: Any) -> None:
        for callback in list(self.callbacks):
            try:
                getattr(callback, method)(*args)
            except Exception as error:
                if self.on_error is None:
                    raise
                self.callbacks.remove(callback)
                self.on_error(f"{describe(callback)}: {first_line(error)}; it is told nothing more")

    def on_message(self, line: str) -> None:
        self._each("on_message", line)

    def on_train_begin(self, begin: TrainBegin) -> None:
        self._each("on_train_begin", begin)

    def on_run_begin(self, run: Run, record: RunRecord) -> None:
        self._each("on_run_begin", run, record)

    def on_epoch_end(self, run: Run, row: Mapping[str, Any]) -> None:
        self._each("on_epoch_end", run, row)

    def on_run_end(self, run: Run, record: RunRecord) -> None:
        self._each("on_run_end", run, record)

    def on_train_end(self) -> None:
        self._each("on_train_end")


def describe(callback: Callback) -> str:
    """How a dropped callback is named: its own `describe()`, else its class."""
    named = getattr(callback, "name", None)
    return named if isinstance(named, str) else type(callback).__name__


def first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]
