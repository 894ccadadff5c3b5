"""Layer specs: a net's layers as plain data, checked strictly, key by key.

An architecture is data: a sequence of plain dicts (from TOML or JSON) such as
`{"type": "conv", "filters": 16, "kernel": 3, "stride": 2, "padding": "same",
"activation": "relu"}`. `parse_specs` checks their keys and values strictly and returns frozen
dataclasses that keep Keras's names and defaults: beyond the seed report's layers (conv,
maxpool, dropout, flatten, dense), Keras's BatchNormalization, Activation, Rescaling,
AveragePooling2D, the global pools and residual blocks (Add of a branch and a shortcut, as a
functional Keras model builds them). Shapes, sizes and the checks against an input
(`parse_layers`, `resolve_layers`) are `shapes.py`'s; the registry of named architectures
(`architectures.py`) is plain data too. This module imports no torch: a study file,
`cnnlab archs` and `cnnlab summary` check nets without it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cnnlab.errors import CnnlabError

ACTIVATIONS = (
    "linear",
    "relu",
    "gelu",
    "silu",
    "leaky_relu",
    "elu",
    "tanh",
    "sigmoid",
    "softmax",
)
PADDINGS = ("same", "valid")
# Kernel initialisers by Keras's names; "whiten" is cnnlab's data-dependent first layer.
DENSE_INITIALISERS = ("glorot_uniform", "he_normal", "he_uniform")
CONV_INITIALISERS = (*DENSE_INITIALISERS, "whiten")


# --- layer specs ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Conv:
    """Conv2D: `filters` kernels of `kernel` (rows, columns), moved by `stride`."""

    filters: int
    kernel: tuple[int, int]
    stride: tuple[int, int] = (1, 1)
    padding: str = "valid"  # "same" (TensorFlow's rule) or "valid" (no padding), as in Keras
    activation: str = "linear"
    use_bias: bool = True
    l1: float = 0.0  # kernel penalty weights, as on Dense
    l2: float = 0.0
    init: str = "glorot_uniform"  # one of CONV_INITIALISERS
    trainable: bool = True  # False freezes kernel and bias, as Keras's layer.trainable = False


@dataclass(frozen=True)
class MaxPool:
    """MaxPooling2D with 'valid' padding; the stride defaults to the pool size, as in Keras."""

    size: tuple[int, int] = (2, 2)
    stride: tuple[int, int] | None = None


@dataclass(frozen=True)
class AvgPool:
    """AveragePooling2D with 'valid' padding; the stride defaults to the pool size."""

    size: tuple[int, int] = (2, 2)
    stride: tuple[int, int] | None = None


@dataclass(frozen=True)
class Dropout:
    """Zeroes a `rate` fraction of activations while training and rescales the rest."""

    rate: float


@dataclass(frozen=True)
class Flatten:
    """(H, W, C) -> H·W·C features in channels-last order, as Keras flattens."""


@dataclass(frozen=True)
class Dense:
    """Fully connected layer; `l1`/`l2` weight a penalty on its kernel (never its bias)."""

    units: int
    activation: str = "linear"
    l1: float = 0.0
    l2: float = 0.0
    use_bias: bool = True
    init: str = "glorot_uniform"  # one of DENSE_INITIALISERS
    trainable: bool = True


@dataclass(frozen=True)
class BatchNorm:
    """BatchNormalization over channels (the features of a flat input), Keras's defaults."""

    momentum: float = 0.99  # moving = moving·momentum + batch·(1 - momentum), as Keras
    epsilon: float = 1e-3
    center: bool = True  # a learned offset (beta)
    scale: bool = True  # a learned factor (gamma)


@dataclass(frozen=True)
class Activation:
    """Keras's Activation layer: one of ACTIVATIONS applied on its own."""

    activation: str


@dataclass(frozen=True)
class Rescaling:
    """Keras's Rescaling layer: x·scale + offset (e.g. a logit temperature before the softmax)."""

    scale: float
    offset: float = 0.0


@dataclass(frozen=True)
class GlobalAvgPool:
    """GlobalAveragePooling2D: (H, W, C) -> (C,), each channel's mean."""


@dataclass(frozen=True)
class GlobalMaxPool:
    """GlobalMaxPooling2D: (H, W, C) -> (C,), each channel's maximum."""


@dataclass(frozen=True)
class Residual:
    """activation(layers(x) + shortcut(x)); no shortcut: identity, or a 1x1 conv projection."""

    layers: tuple[LayerSpec, ...]
    shortcut: tuple[LayerSpec, ...] | None = None  # None: chosen from the shapes
    activation: str = "linear"


LayerSpec = (
    Conv
    | MaxPool
    | AvgPool
    | Dropout
    | Flatten
    | Dense
    | BatchNorm
    | Activation
    | Rescaling
    | GlobalAvgPool
    | GlobalMaxPool
    | Residual
)
LAYER_TYPES = (
    Conv,
    MaxPool,
    AvgPool,
    Dropout,
    Flatten,
    Dense,
    BatchNorm,
    Activation,
    Rescaling,
    GlobalAvgPool,
    GlobalMaxPool,
    Residual,
)

# type -> (class, {key: kind}); kinds drive the validation in `_check_value`.
_LAYER_KEYS: dict[str, tuple[type, dict[str, str]]] = {
    "conv": (
        Conv,
        {
            "filters": "positive",
            "kernel": "pair",
            "stride": "pair",
            "padding": "padding",
            "activation": "activation",
            "use_bias": "bool",
            "l1": "weight",
            "l2": "weight",
            "init": "conv_init",
            "trainable": "bool",
        },
    ),
    "maxpool": (MaxPool, {"size": "pair", "stride": "pair"}),
    "avgpool": (AvgPool, {"size": "pair", "stride": "pair"}),
    "dropout": (Dropout, {"rate": "rate"}),
    "flatten": (Flatten, {}),
    "dense": (
        Dense,
        {
            "units": "positive",
            "activation": "activation",
            "l1": "weight",
            "l2": "weight",
            "use_bias": "bool",
            "init": "dense_init",
            "trainable": "bool",
        },
    ),
    "batchnorm": (
        BatchNorm,
        {"momentum": "momentum", "epsilon": "epsilon", "center": "bool", "scale": "bool"},
    ),
    "activation": (Activation, {"activation": "activation"}),
    "rescaling": (Rescaling, {"scale": "finite", "offset": "finite"}),
    "globalavgpool": (GlobalAvgPool, {}),
    "globalmaxpool": (GlobalMaxPool, {}),
    "residual": (Residual, {"layers": "layers", "shortcut": "layers", "activation": "activation"}),
}
_REQUIRED = {
    "conv": ("filters", "kernel"),
    "dropout": ("rate",),
    "dense": ("units",),
    "activation": ("activation",),
    "rescaling": ("scale",),
    "residual": ("layers",),
}
TYPE_NAMES = {cls: kind for kind, (cls, _) in _LAYER_KEYS.items()}
# What a residual block may hold: layers that keep an image an image.
BLOCK_TYPES = (
    "conv",
    "maxpool",
    "avgpool",
    "dropout",
    "batchnorm",
    "activation",
    "rescaling",
    "residual",
)
# Keras's default layer name and class name of each spec (errors and summaries use them).
KERAS_NAMES = {
    Conv: ("conv2d", "Conv2D"),
    MaxPool: ("max_pooling2d", "MaxPooling2D"),
    AvgPool: ("average_pooling2d", "AveragePooling2D"),
    Dropout: ("dropout", "Dropout"),
    Flatten: ("flatten", "Flatten"),
    Dense: ("dense", "Dense"),
    BatchNorm: ("batch_normalization", "BatchNormalization"),
    Activation: ("activation", "Activation"),
    Rescaling: ("rescaling", "Rescaling"),
    GlobalAvgPool: ("global_average_pooling2d", "GlobalAveragePooling2D"),
    GlobalMaxPool: ("global_max_pooling2d", "GlobalMaxPooling2D"),
    Residual: ("add", "Add"),
}


def _check_value(where: str, key: str, kind: str, value: Any) -> Any:
    """One spec value, validated and normalised (pairs become tuples)."""

    def fail(expected: str) -> CnnlabError:
        return CnnlabError(f"{where}: {key}: expected {expected}, got {value!r}")

    is_int = isinstance(value, int) and not isinstance(value, bool)
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    choices = {
        "activation": ACTIVATIONS,
        "conv_init": CONV_INITIALISERS,
        "dense_init": DENSE_INITIALISERS,
    }
    if is_int and kind in ("rate", "weight", "momentum", "finite", "epsilon"):
        try:
            float(value)
        except OverflowError:
            raise fail("a number that a float can hold") from None
    if kind == "positive":
        if not is_int or value < 1:
            raise fail("a positive integer")
        return value
    if kind == "pair":
        pair = [value, value] if is_int else value
        if (
            not isinstance(pair, list | tuple)
            or len(pair) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in pair)
        ):
            raise fail("a positive integer or a pair of them")
        return (pair[0], pair[1])
    if kind == "padding":
        if value not in PADDINGS:
            raise fail(" or ".join(repr(p) for p in PADDINGS))
        return value
    if kind in choices:
        if not isinstance(value, str) or value not in choices[kind]:
            raise fail("one of " + ", ".join(choices[kind]))
        return value
    if kind == "rate":
        if not is_number or not 0 <= value < 1:
            raise fail("a rate in [0, 1)")
        return float(value)
    if kind == "weight":
        if not is_number or not 0 <= value < math.inf:
            raise fail("a finite number >= 0")
        return float(value)
    if kind == "bool":
        if not isinstance(value, bool):
            raise fail("true or false")
        return value
    if kind == "momentum":
        if not is_number or not 0 <= value <= 1:
            raise fail("a number in [0, 1]")
        return float(value)
    if kind == "finite":
        if not is_number or not math.isfinite(value):
            raise fail("a finite number")
        return float(value)
    if kind == "epsilon":
        if not is_number or not 0 < value < math.inf:
            raise fail("a positive number")
        return float(value)
    raise AssertionError(kind)


def _parse_block(where: str, specs: Any, *, allow_empty: bool) -> tuple[LayerSpec, ...]:
    """A residual block's list of layers (or shortcut), each checked as inside a block."""
    if isinstance(specs, str | bytes | Mapping) or not isinstance(specs, Sequence):
        raise CnnlabError(f"{where}: expected a list of layer tables, got {specs!r}")
    if not specs and not allow_empty:
        raise CnnlabError(f"{where}: a residual block needs at least one layer")
    return tuple(
        _parse_layer(index, spec, prefix=f"{where}: ", in_block=True)
        for index, spec in enumerate(specs)
    )


def _check_block_type(where: str, kind: str, in_block: bool) -> None:
    if in_block and kind not in BLOCK_TYPES:
        raise CnnlabError(
            f"{where}: not allowed inside a residual block, whose layers keep an image;"
            f" valid types: {', '.join(BLOCK_TYPES)}"
        )


def _check_placement(where: str, layer: LayerSpec, index: int, in_block: bool) -> None:
    """Rules that depend on where a layer stands: inside a block, or at which index."""
    if in_block and getattr(layer, "activation", None) == "softmax":
        raise CnnlabError(f"{where}: softmax is only for the last layer")
    if getattr(layer, "init", None) == "whiten" and (in_block or index != 0):
        raise CnnlabError(f"{where}: init: 'whiten' is only for the net's first layer (layer 0)")


def _parse_layer(
    index: int,
    spec: Mapping[str, Any] | LayerSpec,
    *,
    prefix: str = "",
    in_block: bool = False,
) -> LayerSpec:
    where = f"{prefix}layer {index}"
    if isinstance(spec, LAYER_TYPES):
        kind = TYPE_NAMES[type(spec)]
        where = f"{where} ({kind})"
        _check_block_type(where, kind, in_block)
        if isinstance(spec, Residual):
            spec = Residual(
                _parse_block(f"{where}: layers", spec.layers, allow_empty=False),
                None
                if spec.shortcut is None
                else _parse_block(f"{where}: shortcut", spec.shortcut, allow_empty=True),
                spec.activation,
            )
        _check_placement(where, spec, index, in_block)
        return spec
    if not isinstance(spec, Mapping):
        raise CnnlabError(f'{where}: expected a table like {{type = "conv", ...}}, got {spec!r}')
    kind = spec.get("type")
    if kind not in _LAYER_KEYS:
        raise CnnlabError(f"{where}: type: expected one of {', '.join(_LAYER_KEYS)}, got {kind!r}")
    cls, keys = _LAYER_KEYS[kind]
    where = f"{where} ({kind})"
    _check_block_type(where, kind, in_block)
    values: dict[str, Any] = {}
    for key, value in spec.items():
        if key == "type":
            continue
        if key not in keys:
            valid = ", ".join(keys) or "none besides type"
            raise CnnlabError(f"{where}: unknown key {key!r}; valid keys: {valid}")
        if keys[key] == "layers":
            values[key] = _parse_block(f"{where}: {key}", value, allow_empty=key == "shortcut")
        else:
            values[key] = _check_value(where, key, keys[key], value)
    for key in _REQUIRED.get(kind, ()):
        if key not in values:
            raise CnnlabError(f"{where}: missing key {key!r}")
    layer = cls(**values)
    _check_placement(where, layer, index, in_block)
    return layer


def parse_specs(specs: Sequence[Mapping[str, Any] | LayerSpec]) -> tuple[LayerSpec, ...]:
    """Each layer's keys and values checked, before any input shape is known."""
    if isinstance(specs, str | bytes | Mapping) or not isinstance(specs, Sequence):
        raise CnnlabError(f"layers: expected a list of layer tables, got {specs!r}")
    if not specs:
        raise CnnlabError("layers: an architecture needs at least one layer")
    return tuple(_parse_layer(index, spec) for index, spec in enumerate(specs))


def flat_specs(layers: Sequence[LayerSpec]) -> Iterator[LayerSpec]:
    """Every layer spec, residual blocks' inner layers and given shortcuts included, in order."""
    for layer in layers:
        yield layer
        if isinstance(layer, Residual):
            yield from flat_specs(layer.layers)
            yield from flat_specs(layer.shortcut or ())
