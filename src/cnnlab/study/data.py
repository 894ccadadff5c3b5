"""The datasets a study's runs train on: each loaded once, checked against its runs, noted.

The main dataset (the study's [defaults] dataset) comes from the source the caller gives (a
path, or a dataset already loaded), else the study file's `data`, else cnnlab's usual search;
other datasets by the usual search. Nothing is loaded until a run needs it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from cnnlab.config import ConfigError, Execution, RunConfig
from cnnlab.errors import CnnlabError
from cnnlab.machine import machine_description
from cnnlab.nn.architectures import is_module_net
from cnnlab.store import Store
from cnnlab.study.plan import PlannedRun, check_run, origin
from cnnlab.study.studyfile import Study, where


class StudyData:
    """A study's datasets by name, loaded on first use."""

    def __init__(self, study: Study, source: Any, execution: Execution):
        self.study = study
        self.source = source if source is not None else study.data
        self.execution = execution
        self.main = study.defaults.get("dataset", RunConfig.dataset)
        self.loaded: dict[str, Any] = {}

    def get(self, name: str) -> Any:
        """Dataset `name`, loaded on first use (an unavailable device fails before decoding)."""
        if name not in self.loaded:
            from cnnlab.training.device import resolve_device  # torch loads only when runs train

            if self.execution.backend == "local":  # on Ray the nodes have the devices
                resolve_device(self.execution.device)
            source = self.source if name == self.main else None
            if isinstance(source, str | os.PathLike) or source is None:
                from cnnlab.data.datasets import load_dataset

                source = load_dataset(name, None if source is None else str(source))
            self.loaded[name] = source
        return self.loaded[name]

    def check_sources(self, runs: Sequence[PlannedRun]) -> None:
        """The sources `runs` would load exist (nothing read, nothing downloaded)."""
        from cnnlab.data.datasets import check_source

        for name in by_dataset(runs):
            source = self.source if name == self.main else None
            if source is None or isinstance(source, str | os.PathLike):
                check_source(name, source)

    def check(self, runs: Sequence[PlannedRun]) -> None:
        """Every run's config against its data (train size, classes), by the line that sets it."""
        experiments = {e.name: e for e in (*self.study.experiments, *self.study.searches)}
        for name, group in by_dataset(runs).items():
            data = self.get(name)
            for run in group:
                experiment = experiments[next(iter(run.experiments))]
                check_run(self.study, experiment, run.config, data)
                if is_module_net(run.config):
                    self._check_net(experiment, run.config, data)

    def _check_net(self, experiment: Any, config: RunConfig, data: Any) -> None:
        """A module net built and run on a batch of the data's shape, before anything trains."""
        from cnnlab.nn.module_nets import check_module_net  # torch, only for a module net

        shape, classes = tuple(data.train_images.shape[1:]), len(data.class_names)
        try:
            check_module_net(config, shape, classes)
        except ConfigError as error:
            keys = origin(self.study, experiment, error.key)
            raise CnnlabError(f"{where(self.study, keys)}: {error.reason}") from None
        except CnnlabError as error:
            keys = origin(self.study, experiment, "arch")
            raise CnnlabError(f"{where(self.study, keys)}: {error}") from None

    def for_training(
        self, runs: Sequence[PlannedRun], store: Store, *, force: bool
    ) -> dict[str, Any]:
        """The datasets `runs` train on, checked against them and noted in the store."""
        self.check(runs)
        return {
            name: _record_data(self.get(name), store, main=name == self.main, force=force)
            for name in by_dataset(runs)
        }


def by_dataset(runs: Sequence[PlannedRun]) -> dict[str, list[PlannedRun]]:
    """The runs by the dataset they train on, in their order."""
    groups: dict[str, list[PlannedRun]] = {}
    for run in runs:
        groups.setdefault(run.config.dataset, []).append(run)
    return groups


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
