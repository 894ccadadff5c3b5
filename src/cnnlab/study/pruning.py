"""Seed-aware pruning: a search's run stops early when its validation curve falls behind.

Optuna's pruners judge (`MedianPruner`, `SuccessiveHalvingPruner`, the epochs as their steps);
this module chooses what they judge against, so that each verdict compares like with like and
is the same on every rerun:

- Seed by seed. A trial trains one run per seed offset (its `repeats`). The run with offset k
  is judged only against the runs with offset k of earlier trials, so a seed that is lucky or
  unlucky for every configuration is held against itself, not against another seed.
- Finished trials only. A run is judged against the trials of earlier batches, never against
  those of its own batch, whose curves are still being drawn. Its verdict is then a function of
  its own curve and of finished trials alone: the same after a kill -9 and a rerun, with any
  number of workers, and on Ray (`RunPruning` travels with the run and judges in its worker).
- A trial is pruned when one of its runs was; its other runs keep their own verdicts. Optuna's
  sampler is told the trial was pruned, with the mean of its runs' curves (over the epochs all
  of them reached) as its intermediate values: what Optuna's samplers read of a pruned trial.

A pruned run keeps its history, weights and scores as they were when it stopped (store status
`Status.PRUNED`); it is never trained again, and no report treats it as a full run.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import TrialState

from cnnlab.store import KEPT, RunRecord, Status
from cnnlab.study.searchfile import PRUNER_OPTIONS, Pruner


@dataclass(frozen=True)
class Curve:
    """An earlier run as a pruner sees it: its metric per epoch, whether it was pruned, and
    what the pruner noted of it (successive halving's rungs)."""

    values: tuple[float, ...]
    pruned: bool
    notes: tuple[tuple[str, Any], ...] = ()


def optuna_pruner(spec: Pruner) -> optuna.pruners.BasePruner:
    """Optuna's pruner for `spec`, its options under Optuna's names."""
    names = PRUNER_OPTIONS[spec.kind]
    options = {names[key][0]: value for key, value in spec.options}
    if "n_warmup_steps" in options:  # judged from the epoch after the warm-up (searchfile)
        options["n_warmup_steps"] += 1
    if spec.kind == "median":
        return optuna.pruners.MedianPruner(**options)
    return optuna.pruners.SuccessiveHalvingPruner(**options)


def judge(
    spec: Pruner, direction: str, earlier: Sequence[Curve], values: Sequence[float]
) -> tuple[int | None, tuple[tuple[str, Any], ...]]:
    """The epoch at which a run with these `values` is pruned (None: never) and the notes the
    pruner made on it, epoch by epoch as in training, against the `earlier` runs."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # also in a worker process
    study = optuna.create_study(
        direction=direction,
        pruner=optuna_pruner(spec),
        sampler=optuna.samplers.RandomSampler(seed=0),  # asks for nothing; cheap to make
    )
    for curve in earlier:
        study.add_trial(_frozen(curve))
    trial = study.ask()
    pruned_at = None
    for epoch, value in enumerate(values, 1):
        trial.report(value, epoch)
        if trial.should_prune():
            pruned_at = epoch
            break
    notes = study.get_trials(deepcopy=False)[-1].system_attrs
    return pruned_at, tuple(sorted(notes.items()))


def _frozen(curve: Curve) -> optuna.trial.FrozenTrial:
    """An earlier run as a finished Optuna trial: complete, or pruned (also a run whose last
    value is not a number: it stopped early too)."""
    steps = dict(enumerate(curve.values, 1))
    complete = not curve.pruned and math.isfinite(curve.values[-1])
    return optuna.trial.create_trial(
        state=TrialState.COMPLETE if complete else TrialState.PRUNED,
        value=curve.values[-1] if complete else None,
        intermediate_values=steps,
        system_attrs=dict(curve.notes),
    )


@dataclass(frozen=True)
class RunPruning:
    """`training.loop.Prune` for one run of a trial: after each epoch, is it pruned there?"""

    spec: Pruner
    direction: str
    metric: str  # a history key: "val_accuracy" or "val_loss"
    earlier: tuple[Curve, ...]  # the same seed offset's runs of the earlier batches' trials

    def __call__(self, history: list[dict[str, float]]) -> bool:
        values = [row[self.metric] for row in history]
        return judge(self.spec, self.direction, self.earlier, values)[0] is not None

    def keeps(self, record: RunRecord) -> bool:
        """Whether a stored pruned run stopped where this pruning stops it (a changed pruner
        trains it again)."""
        values = [row.get(self.metric, math.nan) for row in record.history]
        return judge(self.spec, self.direction, self.earlier, values)[0] == len(values)


def curve(
    spec: Pruner, direction: str, metric: str, earlier: Sequence[Curve], record: RunRecord
) -> Curve | None:
    """A finished or pruned run as a later batch's runs see it; None for a failed one."""
    if record.status not in KEPT or not record.history:
        return None
    values = tuple(float(row.get(metric, math.nan)) for row in record.history)
    notes = judge(spec, direction, earlier, values)[1]
    return Curve(values, record.status == Status.PRUNED, notes)


def mean_curve(records: Sequence[RunRecord], metric: str) -> list[float]:
    """The mean of the runs' metric at each epoch all of them reached."""
    reached = min((len(record.history) for record in records), default=0)
    return [
        statistics.fmean(float(record.history[epoch].get(metric, math.nan)) for record in records)
        for epoch in range(reached)
    ]
