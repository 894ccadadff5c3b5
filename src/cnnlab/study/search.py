"""Search beyond grids: an experiment's trials asked of a seeded Optuna sampler, told their scores.

Optuna's in-memory state is never stored. Every time a study runs, each search is replayed from
its start: a fresh study with the seeded sampler is asked for `Search.batch` trials at once, the
runs of those trials that the store already holds as finished are not trained again, and the
whole batch is told its values before the next batch is asked. The sampler so sees the same
history as in a search that was never interrupted and asks for the same trials next (on the CPU,
where a run is a pure function of its config). The batch size, not the number of workers, fixes
what is asked together, so the trials do not depend on the machine either; with TPE a batch's
trials see each other through Optuna's constant liar.

A trial's value is the mean, over its `repeats` seeds, of each run's final validation metric;
a trial one of whose runs failed, or whose metric is not a finite number, is told as failed. A
search with a pruner stops hopeless runs after an epoch (`cnnlab.study.pruning`); a trial one of
whose runs was pruned is told as pruned.
"""

from __future__ import annotations

import enum
import itertools
import math
import statistics
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import TrialState

from cnnlab.config import COMBINED_FIELDS, RULES
from cnnlab.store import FINISHED, RunRecord, Status
from cnnlab.study import pruning
from cnnlab.study.searchfile import Search, grid_values


def distributions(search: Search) -> dict[str, BaseDistribution]:
    """Optuna's distribution of each searched run field, in the file's order."""
    result: dict[str, BaseDistribution] = {}
    for name, param in search.space.items():
        if param.choices:
            result[name] = CategoricalDistribution(param.choices)
        elif isinstance(param.low, int):
            step = param.step or 1
            result[name] = IntDistribution(param.low, param.high, log=param.log, step=step)
        else:
            result[name] = FloatDistribution(param.low, param.high, log=param.log, step=param.step)
    return result


def sampler(search: Search) -> optuna.samplers.BaseSampler:
    """The search's sampler, seeded by the study file."""
    if search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=search.seed)
    if search.sampler == "grid":
        space = {name: list(grid_values(param) or ()) for name, param in search.space.items()}
        return _AskTellGridSampler(space, seed=search.seed)
    with warnings.catch_warnings():  # constant_liar is marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=search.seed, constant_liar=search.batch > 1)


class _AskTellGridSampler(optuna.samplers.GridSampler):
    """Optuna's grid sampler without its stop after the last point (an `optimize` loop's)."""

    def after_trial(self, study, trial, state, values) -> None:
        """Nothing: the search asks exactly `trials` trials, so there is no loop to stop."""


def new_study(search: Search) -> optuna.Study:
    """An empty in-memory Optuna study with the search's sampler and direction."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # cnnlab prints its own lines
    return optuna.create_study(sampler=sampler(search), direction=search.direction)


def batch_sizes(search: Search) -> list[int]:
    """How many trials each batch asks for: `batch` at a time, the rest last."""
    full, rest = divmod(search.trials, search.batch)
    return [search.batch] * full + ([rest] if rest else [])


def corners(search: Search) -> Iterator[dict[str, Any]]:
    """Every combination of values that decides whether all the space's draws can run: each is
    checked before anything trains (`plan.check_space`; the runner's against the data).

    A grid sampler may draw any point of its grid (held to MAX_TRIALS points): all of them, one
    at a time. Other samplers draw anywhere in a range, and every check is monotone in each
    number it reads (a single value is checked as the file is parsed): each field alone, and
    each group of fields that a check combines (`config.COMBINED_FIELDS`), is tried at every
    combination of its numbers' ends and its other fields' choices, the rest of the space at
    its first values.
    """
    if search.sampler == "grid":
        names = list(search.space)
        grids = itertools.product(*(grid_values(param) for param in search.space.values()))
        return (dict(zip(names, values, strict=True)) for values in grids)
    base, ends = _ends(search)
    groups = [*((name,) for name in search.space), *COMBINED_FIELDS]
    return _combinations(groups, base, ends)


def _ends(search: Search) -> tuple[dict[str, Any], dict[str, tuple]]:
    """The space's first values, and the values that decide each field: a range's ends as the
    sampler reaches them, a list of numbers' least and greatest, every other choice."""
    with warnings.catch_warnings():  # Optuna warns where `step` does not divide a range: its
        # lowered `high` is what is used here
        warnings.simplefilter("ignore", UserWarning)
        known = distributions(search)
    base, ends = {}, {}
    for name, param in search.space.items():
        if not param.choices:
            base[name] = param.low
            ends[name] = (known[name].low, known[name].high)
        elif RULES[name].kind in (int, float):
            base[name] = param.choices[0]
            ends[name] = (min(param.choices), max(param.choices))
        else:
            base[name] = param.choices[0]
            ends[name] = param.choices
    return base, ends


def _combinations(
    groups: list[tuple[str, ...]], base: dict[str, Any], values: dict[str, tuple]
) -> Iterator[dict[str, Any]]:
    """`base` with each group's fields at every combination of their `values`, each once."""
    seen = set()
    for group in groups:
        names = [name for name in group if name in values]
        for chosen in itertools.product(*(values[name] for name in names)):
            point = {**base, **dict(zip(names, chosen, strict=True))}
            key = tuple(point.values())
            if key not in seen:
                seen.add(key)
                yield point


def trial_value(records: Sequence[RunRecord], metric: str) -> float | None:
    """The mean of `metric` over a trial's runs; None if one is unfinished or not finite."""
    values = []
    for record in records:
        value = record.metrics.get(metric)
        if record.status not in FINISHED or not isinstance(value, int | float):
            return None
        if not math.isfinite(value):
            return None
        values.append(float(value))
    return statistics.fmean(values) if values else None


class TrialStatus(enum.StrEnum):
    """Where a search's trial stands, from its runs' statuses (the report counts these)."""

    COMPLETE = "complete"  # every run finished with a finite metric: the trial has a value
    PRUNED = "pruned"  # a run was stopped by the pruner (and none failed)
    FAILED = "failed"  # a run failed, or the metric is not a finite number
    PENDING = "pending"  # a run is still to train


def trial_state(records: Sequence[RunRecord], metric: str) -> tuple[TrialStatus, float | None]:
    """A trial's state and its value, if any."""
    value = trial_value(records, metric)
    if value is not None:
        return TrialStatus.COMPLETE, value
    statuses = {record.status for record in records}
    if statuses & {Status.PENDING, Status.RUNNING}:
        return TrialStatus.PENDING, None
    if Status.PRUNED in statuses and Status.FAILED not in statuses:
        return TrialStatus.PRUNED, None
    return TrialStatus.FAILED, None


def tell(study: optuna.Study, trial: optuna.Trial, records: Sequence[RunRecord], metric: str):
    """Tell the sampler a trial's value, or that it was pruned (with its mean curve), or failed."""
    state, value = trial_state(records, metric)
    curve = pruning.mean_curve(records, metric) if state == TrialStatus.PRUNED else []
    if value is not None:
        study.tell(trial, value)
    elif curve and all(math.isfinite(v) for v in curve):
        for epoch, mean in enumerate(curve, 1):
            trial.report(mean, epoch)
        study.tell(trial, state=TrialState.PRUNED)
    else:
        study.tell(trial, state=TrialState.FAIL)


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The best complete trial (the first of equals), or None when none completed."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return study.best_trial if complete else None


def rebuilt(search: Search, trials: Sequence[tuple[dict[str, Any], float | None]]) -> optuna.Study:
    """An Optuna study holding `trials` (params, value or None for failed), for its analyses."""
    study = new_study(search)
    known = distributions(search)
    for params, value in trials:
        state = TrialState.FAIL if value is None else TrialState.COMPLETE
        trial = optuna.trial.create_trial(
            params=params, distributions=known, value=value, state=state
        )
        study.add_trial(trial)
    return study
