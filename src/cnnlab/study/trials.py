"""A search's trials, batch by batch: asked of its sampler, trained as runs, told their values.

Each batch's trials are asked together and told together once all their runs are finished
(`cnnlab.study.search`), so a rerun after a kill asks for the same trials as before. With a
pruner, each run carries its pruning (`PlannedRun.prune`), judged against the earlier batches'
runs of its seed offset (`cnnlab.study.pruning`). The best trial's configuration is retrained
on `retrain` fresh seeds at the end.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from cnnlab.store import Store
from cnnlab.study import pruning, search
from cnnlab.study.plan import PlannedRun, search_runs, trial_repeats
from cnnlab.study.studyfile import Experiment, Study

# Trains the runs of a list that the store does not keep yet, under a name for the study's
# lines; returns how many it kept (`runner`'s session).
TrainMissing = Callable[[Sequence[PlannedRun], str], int]


def run_search(
    study: Study,
    experiment: Experiment,
    repeats: int | None,
    store: Store,
    train_missing: TrainMissing,
) -> int:
    """Replay a search batch by batch, training what the store lacks; returns the runs kept.

    `earlier` holds, per seed offset, the curves of the earlier batches' runs.
    """
    spec = experiment.search
    count = trial_repeats(study, experiment, repeats)
    optuna_study = search.new_study(spec)
    known = search.distributions(spec)
    earlier: list[list[pruning.Curve]] = [[] for _ in range(count)]
    kept = 0
    for size in search.batch_sizes(spec):
        asked = [optuna_study.ask(known) for _ in range(size)]
        trial_runs = [
            _with_pruning(spec, _trial_runs(study, experiment, trial, count), earlier)
            for trial in asked
        ]
        runs = list({run.id: run for runs in trial_runs for run in runs}.values())
        kept += train_missing(runs, experiment.name)
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
        retrained = search_runs(study, experiment, best.params, place, fresh)
        kept += train_missing(retrained, experiment.name)
    return kept


def _trial_runs(study: Study, experiment: Experiment, trial, count: int) -> list[PlannedRun]:
    """A trial's runs: its values on `count` seeds."""
    place = {"trial": trial.number, **trial.params}
    return search_runs(study, experiment, trial.params, place, range(count))


def _with_pruning(spec, runs: list[PlannedRun], earlier) -> list[PlannedRun]:
    """A trial's runs, each with its pruning (none without a pruner): against its seed
    offset's runs of the earlier batches."""
    if spec.pruner is None:
        return runs
    return [
        dataclasses.replace(
            run,
            prune=pruning.RunPruning(
                spec.pruner, spec.direction, spec.metric, tuple(earlier[offset])
            ),
        )
        for offset, run in enumerate(runs)
    ]
