"""A study file's experiments as explicit runs: ids, configs, seeds, where each run sits.

Every grid point of every experiment is repeated with seeds `seed + 0 .. seed + repeats - 1`.
A run's id is a hash of its resolved config (seed included, see `config.run_id`), so a run that
two experiments share is one run. A search's runs are planned trial by trial as its sampler asks
(`search_runs`, called by `cnnlab.study.runner`). Every config is checked by the training loop's
own rules and reported at the study file's line that sets the offending field. No torch.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from cnnlab.config import (
    DATASET_SHAPES,
    DEFAULTS,
    ConfigError,
    RunConfig,
    check_config,
    check_run_augmentation,
    run_id,
)
from cnnlab.errors import CnnlabError
from cnnlab.nn.architectures import (
    canonical_fields,
    check_module_fields,
    is_module_net,
    module_architecture,
)
from cnnlab.nn.shapes import resolve_layers
from cnnlab.store import places_label
from cnnlab.study import search
from cnnlab.study.searchfile import MAX_REPEATS, MAX_TRIALS
from cnnlab.study.studyfile import Experiment, Study, where

MAX_RUNS = 100_000  # planned runs in one study (repeats included); more is refused, not planned


@dataclass(frozen=True)
class PlannedRun:
    """One run of the plan: its id, config, where it sits in each experiment, and what may stop
    it early."""

    id: str
    config: RunConfig
    experiments: dict[str, dict[str, Any]]  # experiment -> the grid fields that place it there
    # A search's pruning (`cnnlab.study.pruning`): told the history after each epoch, True stops
    # the run there (`cnnlab.training.loop.Prune`).
    prune: Callable[[list[dict[str, float]]], bool] | None = None

    @property
    def seed(self) -> int:
        return self.config.seed

    def label(self) -> str:
        """'sizes: train_size=5000 | l1: l1=0.0001' (what differs, per experiment)."""
        return places_label(self.experiments)


def plan_runs(study: Study, repeats: int | None = None) -> list[PlannedRun]:
    """The explicit runs of every experiment, deduplicated by id, in declaration order."""
    if repeats is not None and not 1 <= repeats <= MAX_REPEATS:
        raise CnnlabError(f"--repeats {repeats}: must be between 1 and {MAX_REPEATS}")
    total = run_bound(study, repeats)
    if total > MAX_RUNS:
        raise CnnlabError(
            f"{study.path}: the study plans up to {total:,} runs (grid points x repeats, and"
            f" each search's trials x repeats + retrained); at most {MAX_RUNS:,} are allowed in"
            " one study"
        )
    planned: dict[str, PlannedRun] = {}
    for experiment in study.experiments:
        count = repeats or experiment.repeats or study.repeats
        for place, point in experiment.points():
            for config in _configs(study, experiment, {**study.defaults, **point}, range(count)):
                identifier = run_id(config)
                run = planned.setdefault(identifier, PlannedRun(identifier, config, {}))
                # What places the run in this experiment: its grid point and fixed fields.
                known = run.experiments.setdefault(experiment.name, place)
                if known != place:
                    raise CnnlabError(
                        f"{where(study, ('experiments', experiment.name, 'variants'))}:"
                        f" {_fields_text(known)} and {_fields_text(place)} train the same runs;"
                        " make the variants differ"
                    )
    for experiment in study.searches:
        check_space(study, experiment)
    return list(planned.values())


def run_bound(study: Study, repeats: int | None = None) -> int:
    """The most runs a study can plan: its grid points x repeats, and each search's trials x
    repeats + retrained (a grid sampler's trials are its grid's points, counted at parsing)."""
    grids = sum(
        math.prod(len(values) for values in experiment.grid.values())
        * (repeats or experiment.repeats or study.repeats)
        for experiment in study.experiments
    )
    return grids + sum(
        experiment.search.trials * trial_repeats(study, experiment, repeats)
        + experiment.search.retrain
        for experiment in study.searches
    )


def check_space(study: Study, experiment: Experiment) -> None:
    """Every combination that decides whether a search's draws can run (`search.corners`, at
    most MAX_TRIALS of them) makes a valid run, so the search cannot stop at a trial it drew."""
    points = list(itertools.islice(search.corners(experiment.search), MAX_TRIALS + 1))
    if len(points) > MAX_TRIALS:
        keys = ("experiments", experiment.name, "search", "space")
        raise CnnlabError(
            f"{where(study, keys)}: more than {MAX_TRIALS:,} combinations of its fields decide"
            " whether its trials can run (the most checked before training); search fewer"
            " choices of the fields a check combines together"
        )
    for params in points:
        try:
            search_runs(study, experiment, params, {}, range(1))
        except CnnlabError as error:
            drawn = ", ".join(f"{name}={value!r}" for name, value in params.items())
            raise CnnlabError(f"{error} (a trial the search can draw: {drawn})") from None


def search_runs(
    study: Study, experiment: Experiment, params: dict[str, Any], place: dict, offsets: range
) -> list[PlannedRun]:
    """The runs of one trial of a search (or of its retraining): seeds `seed + offsets`."""
    fields = {**study.defaults, **experiment.fixed, **params}
    return [
        PlannedRun(run_id(config), config, {experiment.name: place})
        for config in _configs(study, experiment, fields, offsets)
    ]


def _configs(
    study: Study, experiment: Experiment, fields: dict[str, Any], offsets: range
) -> list[RunConfig]:
    """The checked configs of `fields` on seeds `seed + offsets` (a study's architecture by
    name resolved to its layers)."""
    fields = dict(fields)
    base_seed = fields.pop("seed", RunConfig.seed)
    arch = fields.get("arch", RunConfig.arch)
    # A module net's own fields (the file's other keys) go to its factory, by keyword.
    net_fields = {name: fields.pop(name) for name in list(fields) if name not in DEFAULTS}
    if arch in study.architectures:
        fields["layers"] = study.architectures[arch]
    elif is_module_net(RunConfig(arch=arch)):
        fields["arch_fields"] = net_fields or None
        fields["arch_package"] = _package(study, experiment, arch)
    if net_fields and "arch_fields" not in fields:
        name = next(iter(net_fields))
        keys = origin(study, experiment, name)
        raise CnnlabError(
            f"{where(study, keys)}: {arch} is not a module net; only a module net's factory"
            " takes fields of its own"
        )
    configs = []
    for offset in offsets:
        config = RunConfig(**fields, seed=base_seed + offset)
        check_run(study, experiment, config)
        if config.arch_fields is not None:  # checked: those at the factory's default go
            config = dataclasses.replace(config, arch_fields=canonical_fields(config))
        configs.append(config)
    return configs


def trial_repeats(study: Study, experiment: Experiment, repeats: int | None) -> int:
    """Seeds per trial: --repeats, else the search's, the experiment's, the study's."""
    return repeats or experiment.search.repeats or experiment.repeats or study.repeats


def _fields_text(fields: dict[str, Any]) -> str:
    return " ".join(f"{name}={value}" for name, value in fields.items()) or "-"


def check_run(study: Study, experiment: Experiment, config: RunConfig, data: Any = None) -> None:
    """The training loop's own checks, reported at the line that sets the offending field.

    The net and the augmentation are checked against the images and classes the run will train
    on: the loaded data's, else the named dataset's (an image folder's are known once read).
    """
    images = _images_of(config, data)
    try:
        if data is None:
            check_config(config)
        else:
            check_config(config, available=len(data.train_labels), classes=len(data.class_names))
        if images is not None:
            (height, width, _), _ = images
            check_run_augmentation(config, height, width)
    except ConfigError as error:
        keys = origin(study, experiment, error.key)
        raise CnnlabError(f"{where(study, keys)}: {error.reason}") from None
    if is_module_net(config):  # its fields here; its net in `study.data` (torch)
        try:
            check_module_fields(config)
        except ConfigError as error:
            keys = origin(study, experiment, error.key)
            raise CnnlabError(f"{where(study, keys)}: {error.reason}") from None
    elif images is not None:
        try:
            resolve_layers(config, *images)  # the net must fit the images and the classes
        except CnnlabError as error:
            keys = origin(study, experiment, "arch")
            raise CnnlabError(f"{where(study, keys)}: {error}") from None


def _package(study: Study, experiment: Experiment, arch: str) -> str:
    """The installed package that provides module net `arch` (one line where none does)."""
    try:
        return module_architecture(arch).package
    except CnnlabError as error:
        keys = origin(study, experiment, "arch")
        raise CnnlabError(f"{where(study, keys)}: {error}") from None


def _images_of(config: RunConfig, data: Any) -> tuple[tuple[int, int, int], int] | None:
    """(image shape, class count) a run trains on, where it is known before training."""
    if data is not None:
        return tuple(data.train_images.shape[1:]), len(data.class_names)
    return DATASET_SHAPES.get(config.dataset)


def origin(study: Study, experiment: Experiment, field: str) -> tuple[str, ...]:
    """The key path that gives `field` its value in `experiment` (grid, fixed, defaults)."""
    own = ("experiments", experiment.name)
    if experiment.search is not None and field in experiment.search.space:
        return (*own, "search", "space", field)
    if field in experiment.grid:
        return (*own, "grid", field)
    if any(field in fields for fields in experiment.variants.values()):
        return (*own, "variants", field)
    if field in experiment.fixed:
        return (*own, field)
    if field in study.defaults:
        return ("defaults", field)
    return own


def describe_plan(plan: list[PlannedRun]) -> Iterator[str]:
    """One line per run: id, seed, and per experiment the fields that place it there."""
    for run in plan:
        yield f"{run.id}  seed={run.config.seed:<3} {run.label()}"


def describe_searches(study: Study, repeats: int | None = None) -> Iterator[str]:
    """One line per search: its trials are planned as they go, so only their count is known."""
    for experiment in study.searches:
        spec = experiment.search
        count = trial_repeats(study, experiment, repeats)
        yield (
            f"search {experiment.name}: {spec.trials} trials x {count} seed(s) + {spec.retrain}"
            f" retrained = up to {spec.trials * count + spec.retrain} runs, asked of the"
            f" {spec.sampler} sampler (seed {spec.seed}) {spec.batch} at a time"
            + (f", runs judged by the {spec.pruner.kind} pruner" if spec.pruner else "")
        )
    if study.searches:
        yield f"up to {run_bound(study, repeats):,} runs in all (limit {MAX_RUNS:,})"
