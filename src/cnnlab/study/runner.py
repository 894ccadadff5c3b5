"""A study run: its planned runs trained, recorded and resumed.

`StudyRun` is one study file run into one folder with one `Execution` (`cnnlab.config`):
`plan()` lists its runs, `run(callbacks)` trains what the store (`cnnlab.store`) does not keep
yet and records each run as it ends. Re-running skips what finished. Training goes through
`cnnlab.execution.execute`, the one place that runs runs; the folder's checks and lock are
`cnnlab.study.folder`'s, the data `cnnlab.study.data`'s, a search's trials
`cnnlab.study.trials`'s, and the observers are study callbacks (`cnnlab.study.callbacks`). The
report is `cnnlab.report`'s; `cnnlab.pipeline` chains the study, the explanations and the
report as `cnnlab study` does.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnnlab import atomic
from cnnlab.config import Execution
from cnnlab.errors import CnnlabError
from cnnlab.execution.events import EventKind
from cnnlab.nn.architectures import is_module_net
from cnnlab.store import DATABASE_NAME, KEPT, RunRecord, Status, Store
from cnnlab.study import search
from cnnlab.study.callbacks import Callback, CallbackList, TrainBegin
from cnnlab.study.data import StudyData, by_dataset
from cnnlab.study.folder import RUNS_FOLDER, artifacts_intact, check_folder, held
from cnnlab.study.plan import PlannedRun, describe_searches, plan_runs, search_runs
from cnnlab.study.studyfile import load_study
from cnnlab.study.trials import run_search

__all__ = ["StudyOutcome", "StudyRun", "load_study", "plan_runs", "run_study", "summary_lines"]


@dataclass
class StudyOutcome:
    """What a study run did: where, how many of each status, and how long."""

    study_dir: Path
    planned: int
    skipped: int
    counts: dict[Status, int]
    problems: list[tuple[str, Status, str]]  # (run id, status, reason): diverged and failed runs
    seconds: float


class StudyRun:
    """One study file, run into one folder with one `Execution`.

    `out`: the study folder (default results/<study name>). `data`: the source of the study's
    main dataset (its [defaults] dataset; default: the study file's `data`, then cnnlab's usual
    search) or that dataset already loaded; runs on other datasets load theirs by the usual
    search, and only when some run trains. `repeats` overrides the study file's. `force` uses a
    folder that belongs to a different study, or data whose checksum differs from its runs'.
    """

    def __init__(
        self,
        study_file: str | os.PathLike[str],
        *,
        out: str | os.PathLike[str] | None = None,
        data: Any = None,
        repeats: int | None = None,
        force: bool = False,
        execution: Execution | None = None,
    ):
        self.study = load_study(study_file)
        study = self.study
        self.execution = (execution or Execution()).for_study(study.backend, study.address)
        self.study_dir = Path(out) if out is not None else Path("results") / study.name
        self.repeats = repeats
        self.force = force
        self.data = StudyData(study, data, self.execution)

    def plan(self) -> list[PlannedRun]:
        """The grids' runs, deduplicated by id (a search's are planned as its sampler asks)."""
        return plan_runs(self.study, self.repeats)

    def describe(self) -> list[str]:
        """The plan in lines, as `cnnlab study --dry-run` prints it."""
        from cnnlab.study.plan import MAX_RUNS, describe_plan

        runs = self.plan()
        self.data.check_sources(runs)
        return [
            *describe_plan(runs),
            *describe_searches(self.study, self.repeats),
            f"{len(runs)} runs planned (limit {MAX_RUNS:,}; dry run: nothing was trained)",
        ]

    def run(self, callbacks: Iterable[Callback] = ()) -> StudyOutcome:
        """Train every run the store does not keep yet, telling `callbacks` as they go."""
        started = time.perf_counter()
        told = CallbackList(callbacks)
        plan = self.plan()
        check_folder(self.study_dir, force=self.force)
        if not (self.study_dir / DATABASE_NAME).exists():
            # A new study trains every run: check them against the data before writing anything.
            self.data.check(plan + self._search_corners())
        else:  # a space edited since: every trial it can draw must fit; a module net's
            # package may have changed since: its nets are built again
            nets = [run for run in plan if is_module_net(run.config)]
            corners = self._search_corners() if self.study.searches else []
            if nets or corners:
                self.data.check(nets + corners)
        with held(self.study_dir, force=self.force), Store.open(self.study_dir) as store:
            session = _Session(self, store, told)
            skipped = session.start(plan)
            for experiment in self.study.searches:
                skipped += run_search(
                    self.study, experiment, self.repeats, store, session.train_missing
                )
            final = store.runs(planned_only=True)
            store.set_meta({"last_wall_seconds": f"{time.perf_counter() - started:.3f}"})
        return _outcome(self.study_dir, final, skipped, time.perf_counter() - started)

    def _search_corners(self) -> list[PlannedRun]:
        """One run at each corner of every search's space, to check against the data."""
        return [
            run
            for experiment in self.study.searches
            for params in search.corners(experiment.search)
            for run in search_runs(self.study, experiment, params, {}, range(1))
        ]


def run_study(
    study_file: str | os.PathLike[str],
    *,
    out: str | os.PathLike[str] | None = None,
    data: Any = None,
    repeats: int | None = None,
    execution: Execution | None = None,
    callbacks: Iterable[Callback] = (),
) -> StudyOutcome:
    """Run every unfinished run of a study file (`StudyRun`), quietly unless `callbacks` say.

    `callbacks` (`cnnlab.study.callbacks`) follow the study: `cnnlab.study.progress.Lines()`
    prints a line per event. The report is the caller's (`cnnlab.write_report`).
    """
    study = StudyRun(study_file, out=out, data=data, repeats=repeats, execution=execution)
    return study.run(callbacks)


class _Session:
    """One `StudyRun.run`: its store, its callbacks, and the training of what is missing."""

    def __init__(self, study: StudyRun, store: Store, callbacks: CallbackList):
        self.study = study
        self.store = store
        self.callbacks = callbacks

    def start(self, plan: list[PlannedRun]) -> int:
        """Claim the folder, resume, and train the grids' missing runs; returns those kept."""
        study, store = self.study, self.store
        store.claim(study.study.name, study.study.text, study.study.sha256, force=study.force)
        store.sync_plan(
            (run.id, dataclasses.asdict(run.config), run.config.seed, run.experiments)
            for run in plan
        )
        atomic.remove_temporaries(study.study_dir / RUNS_FOLDER)  # what a kill left half-written
        recovered = store.recover_interrupted()
        if recovered:
            self.callbacks.on_message(
                f"redoing {len(recovered)} run(s) interrupted earlier: {', '.join(recovered)}"
            )
        records = {record.id: record for record in store.runs(planned_only=True)}
        todo = [run for run in plan if not self.kept(run, records[run.id])]
        self.callbacks.on_message(
            f"study {study.study.name}: {len(plan)} runs, {len(plan) - len(todo)} already"
            f" finished, {len(todo)} to run -> {study.study_dir}"
        )
        if any(is_module_net(run.config) for run in todo) and self._on_cuda():
            self.callbacks.on_message(
                "module nets train one run per CUDA stream: grouping needs layer specs"
            )
        self.train(todo)
        store.clear_trials()  # the searches replay theirs
        for line in describe_searches(study.study, study.repeats):
            self.callbacks.on_message(line)
        return len(plan) - len(todo)

    def _on_cuda(self) -> bool:
        """Whether this machine's runs train on CUDA (Ray's nodes decide for themselves)."""
        execution = self.study.execution
        if execution.backend != "local" or execution.device == "cpu":
            return False
        from cnnlab.training.device import resolve_device  # torch: runs are about to train

        return resolve_device(execution.device).type == "cuda"

    def kept(self, run: PlannedRun, record: RunRecord) -> bool:
        """Whether the store keeps `run` as it is: finished with its files intact; a pruned run
        only where its pruning still stops it there (a changed pruner trains it again)."""
        if record.status not in KEPT or not artifacts_intact(self.study.study_dir, record):
            return False
        keeps = getattr(run.prune, "keeps", None)
        return record.status != Status.PRUNED or (keeps is not None and keeps(record))

    def train_missing(self, runs: Sequence[PlannedRun], name: str) -> int:
        """Add a search's `runs` to the plan and train those not kept; returns how many were."""
        self.store.add_planned(
            (run.id, dataclasses.asdict(run.config), run.config.seed, run.experiments)
            for run in runs
        )
        todo = [run for run in runs if not self.kept(run, self.store.get(run.id))]
        if todo:
            self.callbacks.on_message(f"search {name}: {len(todo)} run(s) to train")
            self.train(todo)
        return len(runs) - len(todo)

    def train(self, runs: list[PlannedRun]) -> None:
        """Train `runs` on their datasets, one dataset's runs after another, as one batch."""
        if not runs:
            return
        study = self.study
        datasets = study.data.for_training(runs, self.store, force=study.force)
        parts = []  # (runs, their dataset, the training of them); nothing starts yet
        for name, group in by_dataset(runs).items():
            parts.append((group, datasets[name], _execute(group, datasets[name], study.execution)))
        in_hand: set[str] = set()
        try:
            how = "; ".join(dict.fromkeys(training.how for _, _, training in parts))
            meta, records = self.store.meta(), self.store.runs(planned_only=True)
            self.callbacks.on_train_begin(TrainBegin(runs, how, study.study_dir, meta, records))
            for group, data, training in parts:
                self._follow(group, data, training, in_hand)
        except BaseException:  # Ctrl-C, or a write that failed: the runs in hand are redone later
            for identifier in in_hand:
                self.store.mark_pending(identifier)
            raise
        finally:
            for _, _, training in parts:
                training.close()
            self.callbacks.on_train_end()

    def _follow(self, runs: list[PlannedRun], data: Any, training: Any, in_hand: set[str]) -> None:
        """Record and tell one training's events; `in_hand` holds the runs training now."""
        store, callbacks = self.store, self.callbacks
        for event in training:
            run = runs[event.index]
            if event.kind == EventKind.STARTED:
                in_hand.add(run.id)
                store.mark_running(run.id)
                callbacks.on_run_begin(run, store.get(run.id))
            elif event.kind == EventKind.EPOCH:
                callbacks.on_epoch_end(run, event.payload)
            else:
                in_hand.discard(run.id)
                if event.kind == EventKind.ERROR:
                    store.record_failure(run.id, event.payload)
                else:
                    _record(run, event.payload, data, store, self.study.study_dir)
                callbacks.on_run_end(run, store.get(run.id))


def _execute(runs: list[PlannedRun], data: Any, execution: Execution) -> Any:
    """`execution.execute`: the training stack (torch) loads only when runs train."""
    from cnnlab.execution.execute import execute

    return execute(
        runs,
        data,
        device=execution.device,
        workers=execution.workers,
        backend=execution.backend or "local",
        address=execution.address,
    )


def _record(run: PlannedRun, result: Any, data: Any, store: Store, study_dir: Path) -> None:
    """Write a finished run's folder, then its row: a row marked done always has its files.

    A failed write stops the study (the disk is full or gone), leaving the run marked failed."""
    from cnnlab.training import runfolder

    run_dir = study_dir / RUNS_FOLDER / run.id
    try:
        paths = runfolder.save_run(
            result,
            run_dir,
            data.class_names,
            test_images=data.test_images,
            test_labels=data.test_labels,
        )
    except OSError as error:
        where = error.filename or run_dir
        store.record_failure(run.id, f"cannot write {where}: {error.strerror or error}")
        raise CnnlabError(
            f"{where}: cannot write the run's files ({error.strerror or error});"
            f" run {run.id} is marked failed"
        ) from None
    artifacts = {name: os.path.relpath(path, study_dir) for name, path in paths.items()}
    metrics = result.metrics
    reason = ""
    if result.status == Status.DIVERGED:
        reason = f"loss not finite at epoch {metrics.get('diverged_epoch', '?')}"
    elif result.status == Status.PRUNED:
        reason = f"pruned after epoch {metrics.get('pruned_epoch', '?')} by the search's pruner"
    store.record_result(
        run.id,
        status=result.status,
        metrics=metrics,
        history=result.history,
        artifacts=artifacts,
        reason=reason,
    )


def _outcome(study_dir: Path, final: list[RunRecord], skipped: int, seconds: float):
    counts = {status: 0 for status in (Status.DONE, Status.DIVERGED, Status.FAILED)}
    counts[Status.PENDING] = 0
    problems = []
    for record in final:
        counts[record.status] = counts.get(record.status, 0) + 1
        if record.status in (Status.DIVERGED, Status.FAILED):
            problems.append((record.id, record.status, record.reason))
    return StudyOutcome(study_dir, len(final), skipped, counts, problems, seconds)


def summary_lines(outcome: StudyOutcome) -> list[str]:
    """The closing summary: counts, the runs that diverged or failed and why, time, report."""
    counts = ", ".join(f"{count} {status}" for status, count in outcome.counts.items() if count)
    lines = [
        f"study finished in {outcome.seconds:.1f} s: {outcome.planned} runs ({counts};"
        f" {outcome.skipped} were already finished)"
    ]
    lines += [f"  {status} {run}: {reason}" for run, status, reason in outcome.problems]
    return lines
