"""What a study shows while it trains: plain lines, or a live display on a terminal.

`study.execute_runs` tells each `Watcher` what happens to its runs (begin, started, epoch,
finished). `Lines` prints one line per event (logs, pipes, notebooks); `LiveDisplay` keeps the
whole study's progress on screen (runs done and to do, failed, elapsed, an ETA from the runs'
FLOPs and the measured rate) with one line per run in flight. Exporters
(`cnnlab.tracking.export`) are
watchers too.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from cnnlab.execution.planning import run_flops

if TYPE_CHECKING:
    from cnnlab.config import RunConfig
    from cnnlab.store import RunRecord


class PlannedRun(Protocol):
    """What a watcher sees of a planned run (`study.PlannedRun` is one)."""

    id: str
    config: RunConfig

    def label(self) -> str: ...


class Watcher(Protocol):
    """Told what happens to a study's runs, in order, by `study.execute_runs`."""

    def begin(self, plan: list[PlannedRun], how: str) -> None: ...

    def started(self, run: PlannedRun) -> None: ...

    def epoch(self, run: PlannedRun, row: dict[str, Any]) -> None: ...

    def finished(self, run: PlannedRun, record: RunRecord) -> None: ...

    def close(self) -> None: ...


def epoch_text(row: dict[str, Any]) -> str:
    """One epoch of a run: 'epoch 3/20  loss 1.2345  acc 0.567  val_loss ...  1.2 s'."""
    return (
        f"epoch {row['epoch']}/{row.get('epochs', '?')}"
        f"  loss {row['loss']:.4f}  acc {row['accuracy']:.3f}"
        f"  val_loss {row['val_loss']:.4f}  val_acc {row['val_accuracy']:.3f}"
        f"  {row['seconds']:.1f} s"
    )


def result_text(record: RunRecord) -> str:
    """A finished run: 'done: train 0.600  test 0.490  val 0.480  14.6 s', or why it failed."""
    if record.status == "failed":
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


class Lines:
    """One plain line per event, through `echo` (print by default)."""

    def __init__(self, echo: Callable[[str], None] = print):
        self.echo = echo
        self.total = 0
        self.count = 0

    def begin(self, plan: list[PlannedRun], how: str) -> None:
        self.total, self.count = len(plan), 0  # a search begins once per batch of trials
        self.echo(how)

    def started(self, run: PlannedRun) -> None:
        self.count += 1
        self.echo(f"[{self.count}/{self.total}] {run.id}  seed={run.config.seed}  {run.label()}")

    def epoch(self, run: PlannedRun, row: dict[str, Any]) -> None:
        self.echo(f"    {run.id}  {epoch_text(row)}")

    def finished(self, run: PlannedRun, record: RunRecord) -> None:
        self.echo(f"    {run.id} {result_text(record)}")

    def close(self) -> None:
        pass


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


class LiveDisplay:
    """The study's progress on a terminal, redrawn in place with rich; finished runs scroll."""

    def __init__(self, console: Any = None):
        from rich.console import Console

        self.console = console or Console()
        self.live: Any = None
        self.in_flight: dict[str, tuple[PlannedRun, dict[str, Any] | None]] = {}
        self.counts = {"done": 0, "diverged": 0, "failed": 0}
        self.total = 0
        self.estimate = Estimate({})

    def begin(self, plan: list[PlannedRun], how: str) -> None:
        from rich.live import Live

        self.total = len(plan)
        self.estimate = Estimate({run.id: run_flops(run.config) for run in plan})
        self._print(how)
        self.live = Live(self._view(), console=self.console, refresh_per_second=4, transient=True)
        self.live.start()

    def started(self, run: PlannedRun) -> None:
        self.in_flight[run.id] = (run, None)
        self._update()

    def epoch(self, run: PlannedRun, row: dict[str, Any]) -> None:
        self.in_flight[run.id] = (run, row)
        self.estimate.fraction[run.id] = row["epoch"] / max(row.get("epochs") or 1, 1)
        self._update()

    def finished(self, run: PlannedRun, record: RunRecord) -> None:
        self.in_flight.pop(run.id, None)
        self.estimate.fraction.pop(run.id, None)
        self.estimate.finished.add(run.id)
        self.counts[record.status] = self.counts.get(record.status, 0) + 1
        self._print(f"{run.id}  {run.label()}  {result_text(record)}")
        self._update()

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()
            self._print(self.summary())

    def summary(self) -> str:
        """'4/11 runs finished (1 failed, 0 diverged)  elapsed 0:01:02  ETA 0:03:10'."""
        finished = sum(self.counts.values())
        elapsed = time.monotonic() - self.estimate.started_at
        pruned = f", {self.counts['pruned']} pruned" if self.counts.get("pruned") else ""
        return (
            f"{finished}/{self.total} runs finished ({self.counts['failed']} failed,"
            f" {self.counts['diverged']} diverged{pruned})  elapsed {_clock(elapsed)}"
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
