"""Which runs a grouped network can train together (no torch: the planners ask it too)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from cnnlab.config import DEFAULTS, MODERN_FIELDS, RunConfig
from cnnlab.nn import specs
from cnnlab.nn.architectures import get_architecture, is_module_net

# Fields that may differ between the members of one group; every other field must match.
MEMBER_FIELDS = ("seed", "l1", "l2")
# What a GroupNet can train: the seed report's layers and Keras's plain loop (Adam, constant
# rate). A run with anything more (batch norm, a schedule, augmentation, label noise, whose
# wrong labels each seed draws for itself, ...) trains alone.
GROUP_LAYERS = (specs.Conv, specs.MaxPool, specs.Dropout, specs.Flatten, specs.Dense)
GROUP_ACTIVATIONS = ("linear", "relu", "tanh", "sigmoid", "softmax")
GROUP_OPTIMIZERS = ("adam", "torch_adam")


def group_key(config: RunConfig) -> tuple[Any, ...]:
    """Runs with equal keys can be trained together in one group."""
    fields = dataclasses.asdict(config)
    return tuple((name, repr(fields[name])) for name in sorted(fields) if name not in MEMBER_FIELDS)


def groupable(config: RunConfig) -> bool:
    """Whether a GroupNet can train `config`: its layers and training are the seed's kind (a
    module net has no layer specs to stack: it trains alone, on CUDA one run per stream)."""
    if is_module_net(config):
        return False
    if config.optimizer not in GROUP_OPTIMIZERS or any(
        getattr(config, name) != DEFAULTS[name] for name in MODERN_FIELDS
    ):
        return False
    layers = config.layers if config.layers is not None else get_architecture(config.arch)
    return all(_seed_kind(layer) for layer in specs.parse_specs(layers))  # kinds, not shapes


def _seed_kind(layer: specs.LayerSpec) -> bool:
    """A layer of the seed report's vocabulary, with none of the later keys set."""
    if isinstance(layer, specs.Conv):
        plain = specs.Conv(layer.filters, layer.kernel, layer.stride, layer.padding)
        return layer == dataclasses.replace(plain, activation=layer.activation) and (
            layer.activation in GROUP_ACTIVATIONS
        )
    if isinstance(layer, specs.Dense):
        plain = specs.Dense(layer.units, layer.activation, layer.l1, layer.l2)
        return layer == plain and layer.activation in GROUP_ACTIVATIONS
    return isinstance(layer, GROUP_LAYERS)


def plan_groups(configs: Sequence[RunConfig], max_members: int) -> list[list[int]]:
    """Indices of `configs` split into groups of at most `max_members` compatible runs.

    A run that cannot be grouped (`groupable`) is a group of its own.
    """
    by_key: dict[tuple[Any, ...], list[int]] = {}
    for index, config in enumerate(configs):
        key = group_key(config) if groupable(config) else ("alone", index)
        by_key.setdefault(key, []).append(index)
    groups = []
    for indices in by_key.values():
        groups += [indices[i : i + max_members] for i in range(0, len(indices), max_members)]
    return groups
