"""What a study shows while it trains: plain lines, or a live display on a terminal.

Both are study callbacks (`cnnlab.study.callbacks`). `Lines` prints one line per event (logs,
pipes, notebooks); `LiveDisplay` keeps the whole study's progress on screen (runs done and to
do, failed, elapsed, an ETA from the runs' FLOPs and the measured rate) with one line per run in
flight.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from cnnlab.execution.planning import run_flops
from cnnlab.store import RunRecord, Status
from cnnlab.study.callbacks import Callback, Run, TrainBegin
from cnnlab.training.metrics import epoch_text


def result_text(record: RunRecord) -> str:
    """A finished run: 'done: train 0.600  test 0.490  val 0.480  14.6 s', or why it failed."""
    if record.status == Status.FAILED:
        return f"failed: {record.reason}"

    def number(key: str, form: str) -> str:
        value = record.metrics.get(key)
        return format(value, form) if isinstance(value, int | float) else "?"

    line = (
        f"{record.status}: train {number('train_accuracy', '.3f')}"
        f"  test {number('test_accuracy', '.3f')}  val {number('val_accuracy', '.3f')}"
        f"  {number('fit_seconds', '.1f')} s"
    )
    return f"{line}  ({record.reason})" if record.reason else line


class Lines(Callback):
    """One plain line per event, through `echo` (print by default)."""

    def __init__(self, echo: Callable[[str], None] = print):
        self.echo = echo
        self.total = 0
        self.count = 0

    def on_message(self, line: str) -> None:
        self.echo(line)

    def on_train_begin(self, begin: TrainBegin) -> None:
        self.total, self.count = len(begin.runs), 0  # a search begins once per batch of trials
        self.echo(begin.how)

    def on_run_begin(self, run: Run, record: RunRecord) -> None:
        self.count += 1
        self.echo(f"[{self.count}/{self.total}] {run.id}  seed={run.seed}  {run.label()}")

    def on_epoch_end(self, run: Run, row: Mapping[str, Any]) -> None:
        self.echo(f"    {run.id}  {epoch_text(row)}")

    def on_run_end(self, run: Run, record: RunRecord) -> None:
        self.echo(f"    {run.id} {result_text(record)}")


class Estimate:
    """How far a study is, in network FLOPs: done, in flight, left, and the time to go."""

    def __init__(self, flops: dict[str, float]):
        self.flops = flops  # run id -> the run's FLOPs
        self.finished: set[str] = set()
        self.fraction: dict[str, float] = {}  # run in flight -> share of its epochs done
        self.started_at = time.monotonic()

    def done_flops(self) -> float:
        finished = sum(self.flops[run] for run in self.finished)
        return finished + sum(self.flops[run] * share for run, share in self.fraction.items())

    def eta_seconds(self) -> float | None:
        """Seconds left at the rate so far; None until some work is done."""
        done = self.done_flops()
        elapsed = time.monotonic() - self.started_at
        if done <= 0 or elapsed <= 0:
            return None
        return (sum(self.flops.values()) - done) / (done / elapsed)


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = round(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class LiveDisplay(Callback):
    """The study's progress on a terminal, redrawn in place with rich; finished runs scroll."""

    def __init__(self, console: Any = None):
        from rich.console import Console

        self.console = console or Console()
        self.live: Any = None
        self.in_flight: dict[str, tuple[Run, Mapping[str, Any] | None]] = {}
        self.counts = {Status.DONE: 0, Status.DIVERGED: 0, Status.FAILED: 0}
        self.total = 0
        self.estimate = Estimate({})

    def on_message(self, line: str) -> None:
        self._print(line)

    def on_train_begin(self, begin: TrainBegin) -> None:
        from rich.live import Live

        self.total = len(begin.runs)
        self.estimate = Estimate({run.id: run_flops(run.config) for run in begin.runs})
        self._print(begin.how)
        self.live = Live(self._view(), console=self.console, refresh_per_second=4, transient=True)
        self.live.start()

    def on_run_begin(self, run: Run, record: RunRecord) -> None:
        self.in_flight[run.id] = (run, None)
        self._update()

    def on_epoch_end(self, run: Run, row: Mapping[str, Any]) -> None:
        self.in_flight[run.id] = (run, row)
        self.estimate.fraction[run.id] = row["epoch"] / max(row.get("epochs") or 1, 1)
        self._update()

    def on_run_end(self, run: Run, record: RunRecord) -> None:
        self.in_flight.pop(run.id, None)
        self.estimate.fraction.pop(run.id, None)
        self.estimate.finished.add(run.id)
        self.counts[record.status] = self.counts.get(record.status, 0) + 1
        self._print(f"{run.id}  {run.label()}  {result_text(record)}")
        self._update()

    def on_train_end(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None
            self._print(self.summary())

    def summary(self) -> str:
        """'4/11 runs finished (1 failed, 0 diverged)  elapsed 0:01:02  ETA 0:03:10'."""
        finished = sum(self.counts.values())
        elapsed = time.monotonic() - self.estimate.started_at
        pruned = self.counts.get(Status.PRUNED)
        pruned_text = f", {pruned} pruned" if pruned else ""
        return (
            f"{finished}/{self.total} runs finished ({self.counts[Status.FAILED]} failed,"
            f" {self.counts[Status.DIVERGED]} diverged{pruned_text})  elapsed {_clock(elapsed)}"
            f"  ETA {_clock(self.estimate.eta_seconds())}"
        )

    def _print(self, line: str) -> None:
        # Labels hold brackets and numbers: print them as they are, not as markup.
        self.console.print(line, markup=False, highlight=False)

    def _update(self) -> None:
        if self.live is not None:
            self.live.update(self._view())

    def _view(self) -> Any:
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        finished = sum(self.counts.values())
        table = Table(box=None, show_header=False, pad_edge=False)
        for run, row in self.in_flight.values():
            table.add_row(
                Text(run.id), Text(run.label()), Text(epoch_text(row) if row else "starting")
            )
        bar = ProgressBar(total=max(self.total, 1), completed=finished, width=40)
        return Group(bar, Text(self.summary()), table)
