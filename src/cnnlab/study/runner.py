"""A study: its planned runs (`cnnlab.study.plan`) trained, recorded and resumed.

The store (`cnnlab.store`) remembers what finished; re-running skips it. Training goes through
`cnnlab.execution.execute`, the one place that runs runs; the report is written by the caller
(`cnnlab.report.report.write_report`).

A search's experiment (`[experiments.N.search]`) is planned batch by batch after the grids: its
trials are asked of a seeded Optuna sampler and replayed from the store on every run (see
`cnnlab.study.search`); each trial is `repeats` ordinary runs, trained and recorded like any
other (and judged by its pruner, `cnnlab.study.pruning`), and the best trial's configuration is
retrained on `retrain` fresh seeds at the end.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnnlab import atomic
from cnnlab.config import (
    RunConfig,
    check_workers,
)
from cnnlab.errors import CnnlabError
from cnnlab.machine import machine_description
from cnnlab.store import DATABASE_NAME, FINISHED, KEPT, RunRecord, Store
from cnnlab.study import pruning, search
from cnnlab.study.plan import (
    PlannedRun,
    check_run,
    describe_searches,
    plan_runs,
    search_runs,
    trial_repeats,
)
from cnnlab.study.progress import Lines, Watcher
from cnnlab.study.studyfile import Experiment, Study, load_study
from cnnlab.tracking.export import StudyLogger, log_event

RUNS_FOLDER = "runs"
LOCK_NAME = ".lock"


@dataclass
class StudyOutcome:
    """What `run_study` did: where, how many of each status, and how long."""

    study_dir: Path
    planned: int
    skipped: int
    counts: dict[str, int]
    problems: list[tuple[str, str, str]]  # (run id, status, reason) of diverged and failed runs
    seconds: float


Fit = Callable[..., Any]  # loop.fit's signature: fit(config, data, *, device, progress)

# --- running ----------------------------------------------------------------------------------


def artifacts_intact(study_dir: Path, record: RunRecord) -> bool:
    """A finished run is kept only if every artifact it listed is still there and non-empty."""
    if not record.artifacts:
        return False
    for relative in record.artifacts.values():
        path = study_dir / relative
        if not path.is_file() or path.stat().st_size == 0:
            return False
    return True


def execute_runs(
    plan: list[PlannedRun],
    data: Any,
    store: Store,
    study_dir: Path,
    *,
    device: str = "auto",
    workers: int | None = None,
    fit: Fit | None = None,
    watchers: Sequence[Watcher] = (),
    logger: StudyLogger | None = None,
    backend: str = "local",
    address: str | None = None,
    prunes: dict[str, Any] | None = None,
) -> None:
    """Train every run of `plan` through `cnnlab.execution.execute`, recording each in `store`.

    `prunes`: run id -> its `loop.Prune` (a search's pruning, `cnnlab.study.pruning`), if any.

    `data` is the loaded dataset, or a dict of them by name: then each run trains on its
    config's dataset, one dataset's runs after another, watched and logged as one study.

    A run is marked running when it starts and recorded (artifacts first, then its row) when it
    ends; a failed run is recorded with its reason and the rest go on. `watchers` are told each
    step (see `cnnlab.study.progress`). `fit` (loop.fit's signature) replaces the training, one run
    at a time in this process. A failed write stops the study (the disk is full or gone),
    leaving the run marked failed. On Ctrl-C the runs in hand go back to pending (also when a
    write fails). `logger` (`cnnlab.tracking.export`) logs every run to TensorBoard or MLflow as
    it trains.
    """
    datasets = data if isinstance(data, dict) else {None: data}
    parts = []  # (runs, their dataset, the execution that trains them); nothing starts yet
    for name, dataset in datasets.items():
        runs = [run for run in plan if name is None or run.config.dataset == name]
        if runs:
            configs = [run.config for run in runs]
            chosen = [prunes.get(run.id) for run in runs] if prunes else []
            if fit is None:
                options = {"device": device, "workers": workers, "prunes": chosen}
                execution = _execute(configs, dataset, backend=backend, address=address, **options)
            else:
                execution = _execute_with(fit, configs, dataset, device, chosen)
            parts.append((runs, dataset, execution))
    in_hand: set[str] = set()
    try:
        if logger is not None:
            logger.start(store.meta(), store.runs(planned_only=True))
        how = "; ".join(dict.fromkeys(execution.how for _, _, execution in parts))
        for watcher in watchers:
            watcher.begin(plan, how)
        for runs, dataset, execution in parts:
            _follow(runs, dataset, execution, store, study_dir, watchers, logger, in_hand)
    except BaseException:  # Ctrl-C, or a write that failed: the runs in hand are redone later
        for identifier in in_hand:
            store.mark_pending(identifier)
        raise
    finally:
        for _, _, execution in parts:
            execution.close()
        for watcher in watchers:
            watcher.close()
        if logger is not None:
            logger.close()


def _execute(configs, data, **options):
    """`execution.execute`: the training stack (torch) loads only when runs train."""
    from cnnlab.execution.execute import execute

    return execute(configs, data, **options)


def _execute_with(fit: Fit, configs: list[RunConfig], data: Any, device: str, prunes: list):
    """The runs trained by `fit` instead, one at a time in a thread of this process (a run
    with a pruning gets it as `prune=`)."""
    from cnnlab.execution.execute import Execution
    from cnnlab.execution.threads import train_concurrently

    def train_group(group, data, *, device, progress, prunes=()):
        pruning = {"prune": prunes[0]} if prunes and prunes[0] is not None else {}
        return [fit(group[0], data, device=device, progress=progress, **pruning)]

    alone = [[index] for index in range(len(configs))]
    events = train_concurrently(
        configs, alone, data, device=device, streams=1, train_group=train_group, prunes=prunes
    )
    return Execution(events, "training one run after another in this process")


def _follow(runs, data, execution, store, study_dir, watchers, logger, in_hand) -> None:
    """Record, watch and log one execution's events; `in_hand` holds the runs training now."""
    for event in execution:
        run = runs[event.index]
        if event.kind == "started":
            in_hand.add(run.id)
            store.mark_running(run.id)
            for watcher in watchers:
                watcher.started(run)
        elif event.kind == "progress":
            for watcher in watchers:
                watcher.epoch(run, event.payload)
        else:
            in_hand.discard(run.id)
            if event.kind == "failed":
                store.record_failure(run.id, event.payload)
            else:
                _record(run, event.payload, data, store, study_dir)
            record = store.get(run.id)
            for watcher in watchers:
                watcher.finished(run, record)
        if logger is not None:
            log_event(logger, store, study_dir, run.id, event)


def _record(run: PlannedRun, result: Any, data: Any, store: Store, study_dir: Path) -> None:
    """Write a finished run's folder, then its row: a row marked done always has its files."""
    from cnnlab.training import runfolder

    run_dir = study_dir / RUNS_FOLDER / run.id
    try:
        paths = runfolder.write_run_folder(
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
    if result.status == "diverged":
        reason = f"loss not finite at epoch {metrics.get('diverged_epoch', '?')}"
    elif result.status == "pruned":
        reason = f"pruned after epoch {metrics.get('pruned_epoch', '?')} by the search's pruner"
    store.record_result(
        run.id,
        status=result.status,
        metrics=metrics,
        history=result.history,
        artifacts=artifacts,
        reason=reason,
    )


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


def prepare_folder(study_dir: Path, *, force: bool) -> None:
    """Create the study folder (checked by `check_folder`)."""
    check_folder(study_dir, force=force)
    try:
        study_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CnnlabError(
            f"{study_dir}: cannot create the study folder: {error.strerror}"
        ) from None


def run_study(
    study_file: str | os.PathLike[str],
    *,
    out: str | os.PathLike[str] | None = None,
    data: Any = None,
    repeats: int | None = None,
    force: bool = False,
    device: str = "auto",
    workers: int | None = None,
    fit: Fit | None = None,
    echo: Callable[[str], None] | None = None,
    watchers: Sequence[Watcher] | None = None,
    logger: StudyLogger | None = None,
    backend: str | None = None,
    address: str | None = None,
) -> StudyOutcome:
    """Run every unfinished run of a study file, quietly unless told otherwise.

    `echo` gets the study's own lines (what it found, what it will run); `watchers` follow the
    runs (`cnnlab.study.progress`; default: plain lines through `echo`, when it is given).

    `data` is the source of the study's main dataset (its [defaults] dataset; default: the
    study file's `data`, then cnnlab's usual search) or that dataset already loaded; runs on
    other datasets load theirs by the usual search. Data is loaded only if some run trains.
    `workers` is how many processes train side by side on the CPU (default: one per core), or
    how many groups of runs on CUDA (default: all, up to 8); 1 trains one after another in this
    process. `fit` replaces the training (see `execute_runs`). The report is the caller's.
    """
    started = time.perf_counter()
    if watchers is None:
        watchers = [Lines(echo)] if echo is not None else []
    echo = echo or _quiet
    check_workers(workers)  # before any data is loaded
    study = load_study(study_file)
    backend, address = backend or study.backend, address or study.address
    if address and backend != "ray":  # an address with nothing to connect to is a mistake
        raise CnnlabError(f"address {address!r} is for the Ray backend: add --backend ray")
    if fit is not None and backend != "local":
        raise CnnlabError(f"fit replaces the training in this process: backend {backend!r}")
    plan = plan_runs(study, repeats)
    study_dir = Path(out) if out is not None else Path("results") / study.name
    if data is None:
        data = study.data
    check_folder(study_dir, force=force)
    main = study.defaults.get("dataset", RunConfig.dataset)
    loaded: dict[str, Any] = {}
    if not (study_dir / DATABASE_NAME).exists():
        # A new study trains every run: check them against the data before writing anything.
        corners = [
            run
            for experiment in study.searches
            for params in search.corners(experiment.search)
            for run in search_runs(study, experiment, params, {}, range(1))
        ]
        for name, runs in _by_dataset(plan + corners).items():
            loaded[name] = _loaded(name, data if name == main else None, device, backend)
            _check_against(study, runs, loaded[name])
    prepare_folder(study_dir, force=force)
    with _locked(study_dir), Store.open(study_dir) as store:
        store.claim(study.name, study.text, study.sha256, force=force)
        store.sync_plan(
            (run.id, dataclasses.asdict(run.config), run.config.seed, run.experiments)
            for run in plan
        )
        atomic.remove_temporaries(study_dir / RUNS_FOLDER)  # what a kill left half-written
        recovered = store.recover_interrupted()
        if recovered:
            echo(f"redoing {len(recovered)} run(s) interrupted earlier: {', '.join(recovered)}")
        records = {record.id: record for record in store.runs(planned_only=True)}
        todo = [
            run
            for run in plan
            if not (
                records[run.id].status in FINISHED and artifacts_intact(study_dir, records[run.id])
            )
        ]
        skipped = len(plan) - len(todo)
        echo(
            f"study {study.name}: {len(plan)} runs, {skipped} already finished,"
            f" {len(todo)} to run -> {study_dir}"
        )

        def train(todo: list[PlannedRun], prunes: dict[str, Any] | None = None) -> None:
            needed = {}
            for name, runs in _by_dataset(todo).items():
                if name not in loaded:
                    loaded[name] = _loaded(name, data if name == main else None, device, backend)
                needed[name] = _record_data(loaded[name], store, main=name == main, force=force)
                _check_against(study, runs, needed[name])
            if todo:
                execute_runs(
                    todo,
                    needed,
                    store,
                    study_dir,
                    device=device,
                    workers=workers,
                    fit=fit,
                    watchers=watchers,
                    logger=logger,
                    backend=backend,
                    address=address,
                    prunes=prunes,
                )

        train(todo)
        store.clear_trials()  # the searches replay theirs
        for line in describe_searches(study, repeats):
            echo(line)
        for experiment in study.searches:
            skipped += run_search(study, experiment, store, study_dir, repeats, train, echo)
        final = store.runs(planned_only=True)
        store.set_meta({"last_wall_seconds": f"{time.perf_counter() - started:.3f}"})
    counts = {status: 0 for status in ("done", "diverged", "failed", "pending")}
    problems = []
    for record in final:
        counts[record.status] = counts.get(record.status, 0) + 1
        if record.status in ("diverged", "failed"):
            problems.append((record.id, record.status, record.reason))
    return StudyOutcome(
        study_dir=study_dir,
        planned=len(final),
        skipped=skipped,
        counts=counts,
        problems=problems,
        seconds=time.perf_counter() - started,
    )


def run_search(
    study: Study,
    experiment: Experiment,
    store: Store,
    study_dir: Path,
    repeats: int | None,
    train: Callable[..., None],
    echo: Callable[[str], None],
) -> int:
    """Replay a search batch by batch, training what the store lacks; returns the runs skipped.

    Each batch's trials are asked together and told together once all their runs are finished
    (`cnnlab.study.search`), so a rerun after a kill asks for the same trials as before. With a
    pruner, each run is judged against the earlier batches' runs of its seed offset
    (`cnnlab.study.pruning`): `earlier` holds those, offset by offset.
    """
    spec = experiment.search
    count = trial_repeats(study, experiment, repeats)
    optuna_study = search.new_study(spec)
    known = search.distributions(spec)
    earlier: list[list[pruning.Curve]] = [[] for _ in range(count)]
    skipped = 0
    for size in search.batch_sizes(spec):
        asked = [optuna_study.ask(known) for _ in range(size)]
        trial_runs = [
            search_runs(study, experiment, t.params, {"trial": t.number, **t.params}, range(count))
            for t in asked
        ]
        prunes = _prunes(spec, trial_runs, earlier)
        runs = list({run.id: run for runs in trial_runs for run in runs}.values())
        skipped += _plan_more(store, study_dir, runs, train, echo, experiment.name, prunes)
        batch_curves: list[list[pruning.Curve]] = [[] for _ in range(count)]
        for trial, runs in zip(asked, trial_runs, strict=True):
            store.add_trial(experiment.name, trial.number, trial.params, [r.id for r in runs])
            records = [store.get(run.id) for run in runs]
            search.tell(optuna_study, trial, records, spec.metric)
            for offset, record in enumerate(records if spec.pruner else ()):
                args = (spec.pruner, spec.direction, spec.metric, earlier[offset], record)
                if (seen := pruning.curve(*args)) is not None:
                    batch_curves[offset].append(seen)
        for offset, curves in enumerate(batch_curves):  # seen by the next batches only
            earlier[offset].extend(curves)
    best = search.best_trial(optuna_study)
    if best is not None and spec.retrain:
        place = {"retrain": best.number, **best.params}
        fresh = range(count, count + spec.retrain)  # seeds no trial trained on
        runs = search_runs(study, experiment, best.params, place, fresh)
        skipped += _plan_more(store, study_dir, runs, train, echo, experiment.name)
    return skipped


def _prunes(spec, trial_runs, earlier) -> dict[str, pruning.RunPruning]:
    """Each run's pruning (none without a pruner): against its seed offset's earlier runs."""
    if spec.pruner is None:
        return {}
    return {
        run.id: pruning.RunPruning(spec.pruner, spec.direction, spec.metric, tuple(earlier[k]))
        for runs in trial_runs
        for k, run in enumerate(runs)
    }


def _plan_more(store, study_dir, runs, train, echo, name, prunes=None) -> int:
    """Add `runs` to the plan and train those not kept; returns how many were kept.

    A pruned run is kept only where its pruning (of `prunes`) still stops it there."""
    store.add_planned(
        (run.id, dataclasses.asdict(run.config), run.config.seed, run.experiments) for run in runs
    )
    records = {record.id: record for record in map(store.get, [run.id for run in runs])}

    def kept(record: RunRecord) -> bool:
        if record.status == "pruned" and not (prunes and prunes[record.id].keeps(record)):
            return False
        return record.status in KEPT and artifacts_intact(study_dir, record)

    todo = [run for run in runs if not kept(records[run.id])]
    if todo:
        echo(f"search {name}: {len(todo)} run(s) to train")
        train(todo, prunes)
    return len(runs) - len(todo)


def _by_dataset(plan: list[PlannedRun]) -> dict[str, list[PlannedRun]]:
    """The runs of `plan` by the dataset they train on, in the plan's order."""
    groups: dict[str, list[PlannedRun]] = {}
    for run in plan:
        groups.setdefault(run.config.dataset, []).append(run)
    return groups


def _loaded(name: str, data: Any, device: str, backend: str = "local") -> Any:
    """Dataset `name`: `data` if already loaded, else loaded from `data` (a path, or None)."""
    from cnnlab.training.device import resolve_device  # torch loads only when runs train

    if backend == "local":  # on Ray the nodes have the devices, not this machine
        resolve_device(device)  # an unavailable device fails before the data is decoded
    if isinstance(data, str | os.PathLike) or data is None:
        from cnnlab.data.datasets import load_dataset

        return load_dataset(name, None if data is None else str(data))
    return data


def _check_against(study: Study, plan: list[PlannedRun], data: Any) -> None:
    """Every run's config against the data (train size, classes), by the line that sets it."""
    experiments = {e.name: e for e in (*study.experiments, *study.searches)}
    for run in plan:
        check_run(study, experiments[next(iter(run.experiments))], run.config, data)


def _record_data(data: Any, store: Store, *, main: bool, force: bool) -> Any:
    """Make sure `data` is what the study's earlier runs trained on, and note it in the store.

    The main dataset's facts go under the store's plain keys (what the report reads); another
    dataset's under keys suffixed with its name.
    """
    suffix = "" if main else f".{getattr(data, 'name', 'data')}"
    known = store.meta().get("data_sha256" + suffix)
    if known and data.source_sha256 and known != data.source_sha256 and not force:
        raise CnnlabError(
            f"data {data.source}: checksum {data.source_sha256[:12]} differs from the data this"
            f" study's earlier runs used ({known[:12]}); pass the same --data, or --force"
        )
    store.set_meta(
        {
            "data_source" + suffix: str(data.source),
            "data_sha256" + suffix: data.source_sha256,
            "class_names" + suffix: json.dumps(list(data.class_names)),
            "machine": machine_description(),
            "cpu_count": str(os.cpu_count()),
        }
    )
    return data


def _quiet(line: str) -> None:
    """The default `echo`: a study run from Python prints nothing."""


def summary_lines(outcome: StudyOutcome) -> list[str]:
    """The closing summary: counts, the runs that diverged or failed and why, time, report."""
    counts = ", ".join(f"{count} {status}" for status, count in outcome.counts.items() if count)
    lines = [
        f"study finished in {outcome.seconds:.1f} s: {outcome.planned} runs ({counts};"
        f" {outcome.skipped} were already finished)"
    ]
    lines += [f"  {status} {run}: {reason}" for run, status, reason in outcome.problems]
    return lines
