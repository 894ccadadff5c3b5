"""The registry of named architectures: layer specs (plain data), and module nets (no torch).

The seed report's three nets, the strong recipe's three, and two small nets for tests. A study
file adds its own under [architectures.NAME]; `cnnlab archs` lists these with their parameters.

A module net is a PyTorch user's own `nn.Module`, made by a factory an installed package declares
under the entry-point group "cnnlab.architectures" (`mynet = "mypkg.nets:build"`, as pytest's
plugins are found). It is called `build(input_shape, num_classes, **fields)`: the image's
(height, width, channels), the class count, and the fields it declares by keyword, each with a
default (a boolean, number or string): a run's `arch_fields`. The entry points are read, and a
factory imported, only when a name is not a registered one: importing this module loads nothing.
"""

from __future__ import annotations

import functools
import importlib.metadata
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cnnlab.config import DEFAULTS, ConfigError, RunConfig
from cnnlab.errors import CnnlabError

ENTRY_POINT_GROUP = "cnnlab.architectures"


def _conv(filters: int, kernel: int = 3, stride: int = 1) -> dict[str, Any]:
    return {
        "type": "conv",
        "filters": filters,
        "kernel": kernel,
        "stride": stride,
        "padding": "same",
        "activation": "relu",
    }


_HEAD = (
    {"type": "dropout", "rate": 0.5},
    {"type": "flatten"},
    {"type": "dense", "units": 10, "activation": "softmax", "l1": 1e-4},
)


def _strong_block(width: int) -> tuple[dict[str, Any], ...]:
    """conv, 2x2 max-pool, batch norm, gelu, conv, batch norm, gelu (airbench's block)."""
    conv = {"type": "conv", "filters": width, "kernel": 3, "padding": "same", "use_bias": False}
    # A fast-moving average (Keras's momentum 0.6): the statistics keep up with a run of a few
    # hundred steps; airbench's tiny epsilon: weight decay shrinks the convs, whose outputs'
    # variance can fall towards Keras's 1e-3; no gamma, since a scale before gelu adds nothing a
    # conv cannot learn.
    norm = {"type": "batchnorm", "momentum": 0.6, "epsilon": 1e-12, "scale": False}
    gelu = {"type": "activation", "activation": "gelu"}
    return (conv, {"type": "maxpool", "size": 2}, norm, gelu, conv, norm, gelu)


def _strong(widths: tuple[int, int, int]) -> tuple[dict[str, Any], ...]:
    """The strong recipe's net: a frozen patch-whitening stem, three blocks, scaled logits."""
    stem = {
        "type": "conv",
        "filters": 24,
        "kernel": 2,
        "padding": "valid",
        "init": "whiten",
        "trainable": False,
        "activation": "gelu",
    }
    return (
        stem,
        *(layer for width in widths for layer in _strong_block(width)),
        {"type": "globalmaxpool"},
        {"type": "dense", "units": 10, "use_bias": False},
        {"type": "rescaling", "scale": 1 / 9},  # a logit temperature the high learning rate needs
        {"type": "activation", "activation": "softmax"},
    )


ARCHITECTURES: dict[str, tuple[dict[str, Any], ...]] = {
    "seed": (_conv(16), _conv(16, stride=2), _conv(32), _conv(32, stride=2), *_HEAD),
    "seed-maxpool": (
        _conv(16),
        _conv(16),
        _conv(32),
        _conv(32),
        {"type": "maxpool", "size": 2},
        *_HEAD,
    ),
    "seed-deep": (
        _conv(8),
        _conv(8, kernel=2, stride=2),
        _conv(16),
        _conv(16, stride=2),
        _conv(32),
        _conv(32, stride=2),
        *_HEAD,
    ),
    "tiny": (
        _conv(4, stride=2),
        {"type": "flatten"},
        {"type": "dense", "units": 10, "activation": "softmax", "l1": 1e-4},
    ),
    "tiny-modern": (
        {
            "type": "conv",
            "filters": 4,
            "kernel": 3,
            "padding": "same",
            "use_bias": False,
            "init": "he_normal",
        },
        {"type": "batchnorm"},
        {"type": "activation", "activation": "gelu"},
        {
            "type": "residual",
            "layers": [
                {
                    "type": "conv",
                    "filters": 4,
                    "kernel": 3,
                    "padding": "same",
                    "use_bias": False,  # a batch norm follows: a bias would have no gradient
                    "l2": 1e-4,
                },
                {"type": "batchnorm"},
                {"type": "activation", "activation": "silu"},
            ],
        },
        {"type": "avgpool", "size": 2},
        {
            "type": "residual",
            "layers": [
                {
                    "type": "conv",
                    "filters": 8,
                    "kernel": 3,
                    "stride": 2,
                    "padding": "same",
                    "activation": "relu",
                }
            ],
        },
        {"type": "globalavgpool"},
        {"type": "dropout", "rate": 0.25},
        {"type": "dense", "units": 10, "l1": 1e-4},
        {"type": "rescaling", "scale": 0.5},  # a logit temperature, as the strong nets have
        {"type": "activation", "activation": "softmax"},
    ),
    "strong-s": _strong((32, 64, 128)),
    "strong-m": _strong((64, 128, 256)),
    "strong-l": _strong((64, 256, 256)),
}
DESCRIPTIONS = {
    "seed": "the seed report's ConvNet: two strided conv pairs, dropout, L1 dense",
    "seed-maxpool": "seed without strides, one 2x2 max-pool after the fourth conv (report, c)",
    "seed-deep": "thinner and deeper: six convs 8-8-16-16-32-32, every second strided (report, d)",
    "tiny": "one strided conv and a dense layer, for tests",
    "tiny-modern": "batch norm, gelu, silu, residual blocks, a global pool, rescaling; for tests",
    "strong-s": "the strong recipe's net (airbench-style): whitened stem, blocks 32-64-128",
    "strong-m": "the strong recipe's net, blocks 64-128-256",
    "strong-l": "the strong recipe's net, blocks 64-256-256 (airbench94's widths)",
}


def get_architecture(name: str) -> tuple[dict[str, Any], ...]:
    """The layer specs of a registered architecture; an unknown name lists the known ones."""
    if name not in ARCHITECTURES:
        found = module_architectures().get(name)
        if found is not None:
            raise CnnlabError(f"{found.label()}: a module net has no layer specs")
        raise CnnlabError(f"unknown architecture {name!r}; known: {', '.join(known_names())}")
    return ARCHITECTURES[name]


def known_names() -> list[str]:
    """The registered names, then the installed module nets' (shadowed ones left out)."""
    return [*sorted(ARCHITECTURES), *sorted(module_architectures())]


# --- module nets ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModuleArchitecture:
    """An installed factory: its name, "module:attribute", and the package that provides it."""

    name: str
    target: str
    package: str
    version: str
    entry: Any = field(default=None, compare=False, repr=False)  # importlib's EntryPoint

    def label(self) -> str:
        return f"architecture {self.name!r} ({self.package} {self.version})".replace(" )", ")")


@dataclass(frozen=True)
class FactoryField:
    """A field a factory declares: its kind (bool, int, float or str) and its default."""

    kind: type
    default: Any


# Factories handed to `cnnlab.fit(..., factory=)` in this process, by the name their runs use.
_LOCAL: dict[str, Callable[..., Any]] = {}


def is_module_net(config: Any) -> bool:
    """Whether a config names a module net: no inline layers and no registered name."""
    return getattr(config, "layers", None) is None and config.arch not in ARCHITECTURES


@functools.cache
def module_architectures() -> dict[str, ModuleArchitecture]:
    """The installed module nets by name (cached: `module_architectures.cache_clear()` rereads).

    A registered name wins over an entry point of the same name; a name two packages declare is
    kept as the first and refused when loaded (`load_factory`).
    """
    found: dict[str, ModuleArchitecture] = {}
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if entry.name in ARCHITECTURES:
            continue
        dist = entry.dist
        package = dist.name if dist is not None else "an unnamed package"
        version = dist.version if dist is not None else ""
        known = found.get(entry.name)
        if known is not None and known.package != package:
            target = f"{known.target} and {package}'s {entry.value}"
            found[entry.name] = ModuleArchitecture(entry.name, target, known.package, "", None)
            continue
        found[entry.name] = ModuleArchitecture(entry.name, entry.value, package, version, entry)
    return found


def module_architecture(name: str, package: str | None = None) -> ModuleArchitecture:
    """The installed module net `name`; one line naming the package when it is not here."""
    if name in _LOCAL:
        factory = _LOCAL[name]
        target = f"{factory.__module__}:{factory.__qualname__}"
        return ModuleArchitecture(name, target, "a factory passed to cnnlab.fit", "")
    found = module_architectures().get(name)
    if found is None and package:
        raise CnnlabError(
            f"architecture {name!r} is not installed in this Python: install the package"
            f" {package} (its runs were planned with it) where the run trains"
        )
    if found is None:
        raise CnnlabError(
            f"unknown architecture {name!r}; known: {', '.join(known_names())} (or install a"
            f' package that declares it under [project.entry-points."{ENTRY_POINT_GROUP}"])'
        )
    if found.entry is None:
        raise CnnlabError(
            f"architecture {name!r} is declared by two packages ({found.target}); uninstall one"
        )
    return found


def load_factory(name: str, package: str | None = None) -> Callable[..., Any]:
    """The factory of module net `name`, imported; a failure is one line naming the package."""
    if name in _LOCAL:
        return _LOCAL[name]
    found = module_architecture(name, package)
    try:
        factory = found.entry.load()
    except Exception as error:  # the user's package: anything may go wrong on import
        raise CnnlabError(
            f"{found.label()}: cannot import {found.target}: {type(error).__name__}: {error}"
        ) from None
    if not callable(factory):
        raise CnnlabError(f"{found.label()}: {found.target} is not a callable factory")
    return factory


def factory_fields(name: str, package: str | None = None) -> dict[str, FactoryField]:
    """The fields module net `name`'s factory declares after (input_shape, num_classes)."""
    return _declared_fields(load_factory(name, package), module_architecture(name, package))


def _declared_fields(
    factory: Callable[..., Any], found: ModuleArchitecture
) -> dict[str, FactoryField]:
    try:
        parameters = list(inspect.signature(factory).parameters.values())
    except (TypeError, ValueError) as error:
        raise CnnlabError(f"{found.label()}: the factory has no signature ({error})") from None
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if len(parameters) < 2 or any(p.kind not in positional for p in parameters[:2]):
        raise CnnlabError(
            f"{found.label()}: the factory must take (input_shape, num_classes, **fields)"
        )
    fields = {}
    for parameter in parameters[2:]:
        if parameter.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            continue
        default = parameter.default
        if isinstance(default, bool | int | float | str) and parameter.name not in DEFAULTS:
            fields[parameter.name] = FactoryField(type(default), default)
            continue
        reason = (
            "is a run field's name: rename it"
            if parameter.name in DEFAULTS
            else "needs a default that is a boolean, a number or a string"
        )
        raise CnnlabError(f"{found.label()}: the factory's field {parameter.name!r} {reason}")
    return fields


def check_field(name: str, key: str, value: Any, package: str | None = None) -> Any:
    """`value` for field `key` of module net `name`, coerced (an int where a float goes);
    ConfigError(key) names the package and the fields it declares."""
    fields = factory_fields(name, package)
    declared = fields.get(key)
    found = module_architecture(name, package)
    if declared is None:
        listed = ", ".join(f"{f} (default {d.default!r})" for f, d in fields.items()) or "none"
        raise ConfigError(
            key, f"{found.label()} declares no field {key!r}; its factory's fields: {listed}"
        )
    kind = declared.kind
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if type(value) is not kind:
        raise ConfigError(
            key,
            f"{found.label()} takes {kind.__name__} for {key!r} (its default is"
            f" {declared.default!r}), got {type(value).__name__} {value!r}",
        )
    return value


def check_module_fields(config: RunConfig) -> dict[str, Any]:
    """A module net config's fields, each checked against its factory's signature."""
    fields = config.arch_fields or {}
    if not isinstance(fields, dict):
        raise ConfigError("arch_fields", f"expected a table of fields, got {fields!r}")
    factory_fields(config.arch, config.arch_package)  # the signature, even with no field set
    return {key: check_field(config.arch, key, v, config.arch_package) for key, v in fields.items()}


def canonical_fields(config: RunConfig) -> dict[str, Any] | None:
    """A module net config's fields checked, those at their factory's default left out (as
    `config.run_id` leaves out run fields at theirs): one net, one run id."""
    checked = check_module_fields(config)
    declared = factory_fields(config.arch, config.arch_package)
    changed = {key: value for key, value in checked.items() if value != declared[key].default}
    return changed or None


def describe_module_net(name: str) -> str:
    """The first line of the factory's docstring, else its target."""
    found = module_architecture(name)
    doc = inspect.getdoc(load_factory(name)) or ""
    return doc.splitlines()[0] if doc else found.target


def register_factory(name: str, factory: Callable[..., Any] | None) -> None:
    """Use `factory` for runs of `name` in this process (None: forget it); registered names
    and installed ones are refused, so no run means two nets."""
    if factory is None:
        _LOCAL.pop(name, None)
        return
    if name in ARCHITECTURES or name in module_architectures():
        raise CnnlabError(
            f"factory: arch {name!r} names a known architecture; give the run its own arch name"
        )
    if not callable(factory):
        raise CnnlabError(f"factory: expected a callable, got {type(factory).__name__}")
    _LOCAL[name] = factory
