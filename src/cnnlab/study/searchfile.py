"""A study file's [experiments.N.search] table -> a validated `Search`, every key checked.

    [experiments.N.search]  trials, sampler ("random", "tpe", "grid"), seed, batch, repeats,
                       metric ("val_accuracy" or "val_loss"), direction, retrain, pruner
                       ("none", "median", "successive_halving", or a table: type = one of
                       those and its options, see PRUNER_OPTIONS), and
    [experiments.N.search.space]  run field = {low, high, log, step} or {choices = [...]}: a
                       search over those fields (see `cnnlab.study.search`) instead of a grid

`SearchParsing` is a mixin of the study file's parser (`cnnlab.study.studyfile`), which gives it
the error reporting and the run-field checks; this module imports neither that one nor torch.
"""

from __future__ import annotations

import math
import typing
from dataclasses import dataclass
from typing import Any

from cnnlab.config import RULES

MAX_REPEATS = 1000  # seeds per grid point (the study's, an experiment's, a search trial's)
SAMPLERS = ("tpe", "random", "grid")  # Optuna's samplers a search can use, seeded
# What a search may optimise, with its default direction: validation scores, never the test set.
SEARCH_METRICS = {"val_accuracy": "maximize", "val_loss": "minimize"}
DIRECTIONS = ("maximize", "minimize")
MAX_TRIALS = 10_000  # trials in one search, and points in a grid sampler's grid
# A float range's steps: more than a double's 53 bits of mantissa can tell apart is no step.
MAX_FLOAT_STEPS = 2**53
MAX_BATCH = 256  # trials asked together before any is told
MAX_SAMPLER_SEED = 2**32 - 1  # NumPy's RandomState, under Optuna's samplers, takes 32 bits
# A search's pruner (`cnnlab.study.pruning`): its options, each cnnlab key -> (Optuna's
# argument, default, least value). Epochs, counted from 1, are the pruners' steps; Optuna judges
# from step n_warmup_steps on, so `warmup_epochs` N (the first N epochs are never judged) is
# n_warmup_steps N + 1 (`pruning.optuna_pruner`). A run reaches successive halving's first rung
# after `min_epochs` epochs.
PRUNER_OPTIONS: dict[str, dict[str, tuple[str, int, int]]] = {
    "none": {},
    "median": {
        "startup_trials": ("n_startup_trials", 5, 0),
        "warmup_epochs": ("n_warmup_steps", 0, 0),
        "interval_epochs": ("interval_steps", 1, 1),
        "min_trials": ("n_min_trials", 1, 1),
    },
    "successive_halving": {
        "min_epochs": ("min_resource", 1, 1),
        "reduction_factor": ("reduction_factor", 4, 2),
        "min_early_stopping_rate": ("min_early_stopping_rate", 0, 0),
    },
}
MAX_PRUNER_OPTION = 1_000_000
_SEARCH_KEYS = {
    "trials": int,
    "sampler": str,
    "seed": int,
    "batch": int,
    "repeats": int,
    "metric": str,
    "direction": str,
    "retrain": int,
    "pruner": (str, dict),
    "space": dict,
}
_PARAM_KEYS = ("low", "high", "log", "step", "choices")


@dataclass(frozen=True)
class Param:
    """One searched run field: a range (`low`..`high`, `log`, `step`) or a list of `choices`."""

    field: str
    low: Any = None
    high: Any = None
    log: bool = False
    step: Any = None  # int or float; None: any value in the range
    choices: tuple[Any, ...] = ()


@dataclass(frozen=True)
class Search:
    """[experiments.N.search]: how an experiment's trials are asked for and scored."""

    trials: int
    sampler: str  # one of SAMPLERS
    seed: int  # the sampler's seed: the same file gives the same trials on the CPU
    batch: int  # trials asked together, told together before the next batch is asked
    repeats: int | None  # seeds per trial (a trial's value is their mean); None: the study's
    metric: str  # one of SEARCH_METRICS
    direction: str  # one of DIRECTIONS
    retrain: int  # fresh seeds the best trial's configuration is retrained on (test set)
    space: dict[str, Param]  # run field -> its range or choices, in the file's order
    pruner: Pruner | None = None  # None: every trial trains all its epochs


@dataclass(frozen=True)
class Pruner:
    """A search's pruner: its kind (a key of PRUNER_OPTIONS) and every option, set or default."""

    kind: str
    options: tuple[tuple[str, int], ...]  # (cnnlab key, value), in PRUNER_OPTIONS's order


class SearchParsing:
    """The search part of the study file's parser: [experiments.N.search], its pruner and space."""

    # What the parser this is mixed into provides (`studyfile._Parser`).
    def fail(self, keys: tuple[str, ...], message: str) -> typing.NoReturn:
        raise NotImplementedError

    def check_keys(self, table: Any, keys: tuple[str, ...], valid: typing.Iterable[str]) -> None:
        raise NotImplementedError

    def typed(self, value: Any, expected: type, keys: tuple[str, ...]) -> Any:
        raise NotImplementedError

    def run_field(self, name: str, value: Any, keys: tuple[str, ...]) -> Any:
        raise NotImplementedError

    def search(
        self, table: Any, keys: tuple[str, ...], run_keys: list[str], fixed: dict[str, Any]
    ) -> Search:
        """[experiments.N.search] and its space, every key checked."""
        self.check_keys(table, keys, _SEARCH_KEYS)
        for key, expected in _SEARCH_KEYS.items():
            if key in table:
                self.typed(table[key], expected, (*keys, key))
        sampler = table.get("sampler", "tpe")
        if sampler not in SAMPLERS:
            valid = ", ".join(SAMPLERS)
            self.fail((*keys, "sampler"), f"unknown sampler {sampler!r}; valid: {valid}")
        metric = table.get("metric", "val_accuracy")
        if metric not in SEARCH_METRICS:
            self.fail(
                (*keys, "metric"),
                f"unknown metric {metric!r}; valid: {', '.join(SEARCH_METRICS)} (a search never"
                " looks at the test set)",
            )
        direction = table.get("direction", SEARCH_METRICS[metric])
        if direction not in DIRECTIONS:
            self.fail((*keys, "direction"), f"expected one of {', '.join(DIRECTIONS)}")
        bounds = {
            "seed": (0, MAX_SAMPLER_SEED),
            "batch": (1, MAX_BATCH),
            "repeats": (1, MAX_REPEATS),
            "retrain": (0, MAX_REPEATS),
            "trials": (1, MAX_TRIALS),
        }
        for key, (low, high) in bounds.items():
            if key in table and not low <= table[key] <= high:
                self.fail((*keys, key), f"must be between {low} and {high}, got {table[key]}")
        raw_space = table.get("space")
        if not raw_space:
            self.fail((*keys, "space"), "missing: give [..search.space] with at least one field")
        # A module net's own fields are grid fields, not searched (their kinds are no RULES).
        searchable = [name for name in run_keys if name != "seed" and name in RULES]
        self.check_keys(raw_space, (*keys, "space"), searchable)
        space = {
            name: self.param(name, spec, (*keys, "space", name)) for name, spec in raw_space.items()
        }
        for name in space.keys() & fixed.keys():
            self.fail((*keys[:-1], name), "set both as a fixed field and in the search's space")
        trials = table.get("trials")
        if sampler == "grid":
            points = self.grid_points(space, keys)
            trials = points if trials is None else trials
            if trials > points:
                self.fail(
                    (*keys, "trials"), f"{trials} trials but the grid has only {points} points"
                )
        elif trials is None:
            self.fail((*keys, "trials"), "missing: how many trials the search runs")
        return Search(
            trials=trials,
            sampler=sampler,
            seed=table.get("seed", 0),
            batch=table.get("batch", 4),
            repeats=table.get("repeats"),
            metric=metric,
            direction=direction,
            retrain=table.get("retrain", 3),
            space=space,
            pruner=self.pruner(table.get("pruner", "none"), (*keys, "pruner")),
        )

    def grid_points(self, space: dict[str, Param], keys: tuple[str, ...]) -> int:
        """The grid's size, counted without building it: at most MAX_TRIALS (Optuna's grid
        sampler holds every point, and any of them may be drawn)."""
        sizes = []
        for name, param in space.items():
            size = grid_size(param)
            if size is None:
                self.fail(
                    (*keys, "space", name),
                    "the grid sampler needs choices, an integer range or a step",
                )
            sizes.append(size)
        points = math.prod(sizes)
        if points > MAX_TRIALS:
            shown = f"{points:,}" if points < 10**15 else "more than 10^15"
            self.fail(
                (*keys, "space"),
                f"the grid has {shown} points; a grid sampler takes at most {MAX_TRIALS:,}"
                " (give fewer values or larger steps)",
            )
        return points

    def pruner(self, spec: Any, keys: tuple[str, ...]) -> Pruner | None:
        """A search's `pruner`: a kind's name, or a table of `type` and that kind's options."""
        table = spec if isinstance(spec, dict) else {"type": spec}
        kind = table.get("type")
        where = (*keys, "type") if isinstance(spec, dict) else keys
        if kind not in PRUNER_OPTIONS:
            valid = ", ".join(PRUNER_OPTIONS)
            self.fail(where, f"unknown pruner {typed_repr(kind)}; valid: {valid}")
        options = PRUNER_OPTIONS[kind]
        self.check_keys(table, keys, ["type", *options])
        chosen = []
        for key, (_, default, least) in options.items():
            value = self.typed(table.get(key, default), int, (*keys, key))
            if not least <= value <= MAX_PRUNER_OPTION:
                self.fail(
                    (*keys, key), f"must be between {least} and {MAX_PRUNER_OPTION}, got {value}"
                )
            chosen.append((key, value))
        return None if kind == "none" else Pruner(kind, tuple(chosen))

    def param(self, name: str, spec: Any, keys: tuple[str, ...]) -> Param:
        """One field of a search's space: {low, high, log, step} or {choices = [...]}."""
        if not isinstance(spec, dict):
            self.fail(
                keys,
                f"expected {{low = .., high = ..}} or {{choices = [..]}}, got {typed_repr(spec)}",
            )
        self.check_keys(spec, keys, _PARAM_KEYS)
        if "choices" in spec:
            for other in spec.keys() - {"choices"}:
                self.fail((*keys, other), "choices take no range keys")
            choices = spec["choices"]
            if not isinstance(choices, list) or not choices:
                self.fail(
                    (*keys, "choices"), f"expected a non-empty list, got {typed_repr(choices)}"
                )
            values = tuple(self.run_field(name, value, (*keys, "choices")) for value in choices)
            if len(set(values)) != len(values):
                self.fail((*keys, "choices"), f"repeated values in {list(values)}")
            return Param(name, choices=values)
        kind = RULES[name].kind
        if kind not in (int, float):
            self.fail(keys, f"a {kind.__name__} field is searched over choices = [...]")
        for bound in ("low", "high"):
            if bound not in spec:
                self.fail((*keys, bound), "missing: a range needs low and high (or choices)")
        low = self.run_field(name, spec["low"], (*keys, "low"))
        high = self.run_field(name, spec["high"], (*keys, "high"))
        if not low < high:
            self.fail((*keys, "high"), f"must be greater than low ({low}), got {high}")
        log = self.typed(spec.get("log", False), bool, (*keys, "log"))
        if log and low <= 0:
            self.fail((*keys, "low"), f"a log range needs low > 0, got {low}")
        step = spec.get("step")
        if step is not None:
            number = isinstance(step, int | float) and not isinstance(step, bool)
            if (
                not (number and math.isfinite(step) and step > 0)
                or log
                or (kind is int and not isinstance(step, int))
            ):
                self.fail(
                    (*keys, "step"),
                    f"expected a positive finite {kind.__name__} (and no log), got"
                    f" {typed_repr(step)}",
                )
            step = kind(step)
            if kind is float and not (high - low) / step <= MAX_FLOAT_STEPS:
                self.fail(
                    (*keys, "step"),
                    f"{step!r} cuts the range into more than {MAX_FLOAT_STEPS:,} steps (finer"
                    " than its numbers can tell apart); give a larger step, or none",
                )
        return Param(name, low, high, log, step)


def grid_size(param: Param) -> int | None:
    """How many values a grid sampler visits for `param`, counted, not built; None for a
    continuous or log range."""
    if param.choices:
        return len(param.choices)
    if param.log or (isinstance(param.low, float) and param.step is None):
        return None
    step = param.step or 1
    if isinstance(step, int):
        return (param.high - param.low) // step + 1
    return math.floor((param.high - param.low) / step + 1e-9) + 1


def grid_values(param: Param) -> tuple[Any, ...] | None:
    """The values a grid sampler visits for `param`; None for a continuous or log range.

    Built only for a grid the parser has held to MAX_TRIALS points (`grid_size` counts them).
    """
    size = grid_size(param)
    if param.choices or size is None:
        return param.choices or None
    step = param.step or 1
    return tuple(param.low + index * step for index in range(size))


def typed_repr(value: Any) -> str:
    """A value as an error line quotes it: its type and repr ("int 3")."""
    return f"{type(value).__name__} {value!r}"
