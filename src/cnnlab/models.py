"""Layer specs -> nn.Module with Keras semantics, the registry of named architectures, summaries.

An architecture is data: a sequence of plain dicts (from TOML or JSON) such as
`{"type": "conv", "filters": 16, "kernel": 3, "stride": 2, "padding": "same",
"activation": "relu"}`.
`parse_layers` checks them strictly against the input shape; `build_model` turns them into a
`ConvNet` whose behaviour matches Keras: glorot-uniform kernels and zero biases, TensorFlow's
'same' padding (the extra row and column at the bottom/right), channels-last flatten, and an L1/L2
penalty on kernels. The network returns logits: a final softmax is folded into the loss.

Beyond the seed report's layers (conv, maxpool, dropout, flatten, dense) the vocabulary has
Keras's BatchNormalization (its moving-statistics formula, not PyTorch's), Activation,
AveragePooling2D, the global pools and residual blocks (Add of a branch and a shortcut, as a
functional Keras model builds them); each keeps Keras's names and defaults.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.config import DATASET_SHAPES, RunConfig
from cnnlab.errors import CnnlabError

# Where no dataset is named, nets are checked and summarised for the default one's images.
INPUT_SHAPE, NUM_CLASSES = DATASET_SHAPES[RunConfig.dataset]  # (height, width, channels)
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
LEAKY_RELU_SLOPE = 0.2  # Keras's default negative slope (PyTorch's is 0.01)
# The standard deviation of a unit normal truncated at ±2: Keras divides by it so that the
# truncated draws keep the variance scaling's standard deviation.
TRUNCATED_NORMAL_STDDEV = 0.87962566103423978


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
_TYPE_NAMES = {cls: kind for kind, (cls, _) in _LAYER_KEYS.items()}
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
_KERAS_NAMES = {
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
        if not is_number or not value >= 0:
            raise fail("a number >= 0")
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
        kind = _TYPE_NAMES[type(spec)]
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


def _chain_shape(
    layers: Sequence[LayerSpec], shape: tuple[int, ...], prefix: str = ""
) -> tuple[int, ...]:
    """The shape after `layers` in turn; an error names the layer (after `prefix`)."""
    for index, layer in enumerate(layers):
        try:
            shape = output_shape(layer, shape)
        except CnnlabError as error:
            kind = _TYPE_NAMES[type(layer)]
            raise CnnlabError(f"{prefix}layer {index} ({kind}): {error}") from None
    return shape


def _projection(input_shape: tuple[int, ...], output: tuple[int, ...]) -> tuple[LayerSpec, ...]:
    """The shortcut a block without one gets: identity, or the 1x1 conv onto its output."""
    if output == tuple(input_shape):
        return ()
    (height, width, _), (rows, columns, filters) = input_shape, output
    if height % rows or width % columns:
        raise CnnlabError(
            f"the layers map {tuple(input_shape)} to {output} and no 1x1 projection stride maps"
            f" {height}x{width} onto {rows}x{columns} (each side must divide exactly);"
            " give a shortcut"
        )
    return (Conv(filters, (1, 1), (height // rows, width // columns)),)


def shortcut_specs(block: Residual, input_shape: tuple[int, ...]) -> tuple[LayerSpec, ...]:
    """A block's shortcut: its own, else () (identity) or a 1x1 conv projection (linear, with a
    bias, glorot-initialised) whose stride maps the input's height and width onto the output's."""
    if block.shortcut is not None:
        return block.shortcut
    return _projection(input_shape, _chain_shape(block.layers, input_shape, "layers: "))


def _residual_shape(block: Residual, shape: tuple[int, ...]) -> tuple[int, ...]:
    if len(shape) != 3:
        raise CnnlabError(
            f"a residual block needs an image input (height, width, channels), got {shape}"
        )
    output = _chain_shape(block.layers, shape, "layers: ")
    if block.shortcut is None:
        _projection(shape, output)  # raises where none fits
        return output
    shortcut = _chain_shape(block.shortcut, shape, "shortcut: ")
    if shortcut != output:
        raise CnnlabError(
            f"shortcut: gives {shortcut} but the layers give {output}; the two must match"
        )
    return output


def output_shape(layer: LayerSpec, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The channels-last shape after `layer`; raises CnnlabError where it does not fit."""
    if isinstance(layer, Residual):
        return _residual_shape(layer, shape)
    name = _KERAS_NAMES[type(layer)][1]
    if isinstance(layer, Dense):
        if len(shape) != 1:
            raise CnnlabError(f"{name} needs a flat input, got {shape}; add a flatten layer first")
        return (layer.units,)
    if isinstance(layer, Dropout | BatchNorm | Activation | Rescaling):
        return shape
    if len(shape) != 3:
        raise CnnlabError(f"{name} needs an image input (height, width, channels), got {shape}")
    height, width, channels = shape
    if isinstance(layer, Flatten):
        return (height * width * channels,)
    if isinstance(layer, GlobalAvgPool | GlobalMaxPool):
        return (channels,)
    window = layer.kernel if isinstance(layer, Conv) else layer.size
    stride = layer.stride if isinstance(layer, Conv) else (layer.stride or layer.size)
    if window[0] > height or window[1] > width:
        raise CnnlabError(
            f"{name}: window {window[0]}x{window[1]} is larger than its input {height}x{width}"
        )
    if isinstance(layer, Conv) and layer.padding == "same":
        rows, columns = math.ceil(height / stride[0]), math.ceil(width / stride[1])
    else:
        rows = (height - window[0]) // stride[0] + 1
        columns = (width - window[1]) // stride[1] + 1
    return (rows, columns, layer.filters if isinstance(layer, Conv) else channels)


def _check_whitening(first: LayerSpec, input_shape: tuple[int, int, int]) -> None:
    """A whitened first conv has one eigenvector (and its negation) per pair of filters."""
    if not (isinstance(first, Conv) and first.init == "whiten"):
        return
    where = "layer 0 (conv): filters"
    if first.filters % 2:
        raise CnnlabError(
            f"{where}: init 'whiten' needs an even count (half are negated copies),"
            f" got {first.filters}"
        )
    rows, columns = first.kernel
    most = 2 * rows * columns * input_shape[2]
    if first.filters > most:
        raise CnnlabError(
            f"{where}: init 'whiten' allows at most 2·{rows}·{columns}·{input_shape[2]} = {most}"
            f" (two per dimension of a {rows}x{columns}x{input_shape[2]} patch),"
            f" got {first.filters}"
        )


def parse_layers(
    specs: Sequence[Mapping[str, Any] | LayerSpec],
    input_shape: tuple[int, int, int] = INPUT_SHAPE,
    num_classes: int = NUM_CLASSES,
) -> tuple[LayerSpec, ...]:
    """Validate layer specs against the input; the net must end in a softmax over num_classes
    features (a softmax dense layer, or a softmax activation layer)."""
    if isinstance(specs, str | bytes | Mapping) or not isinstance(specs, Sequence):
        raise CnnlabError(f"layers: expected a list of layer tables, got {specs!r}")
    if not specs:
        raise CnnlabError("layers: an architecture needs at least one layer")
    layers = tuple(_parse_layer(index, spec) for index, spec in enumerate(specs))
    classes = _chain_shape(layers, tuple(input_shape))
    _check_whitening(layers[0], input_shape)
    last = layers[-1]
    if not (isinstance(last, Dense | Activation) and last.activation == "softmax"):
        raise CnnlabError(
            f"layer {len(layers) - 1}: a classifier ends with a softmax: a dense layer with"
            " activation softmax, or an activation layer softmax"
        )
    if classes != (num_classes,):
        what = "the last dense layer needs" if isinstance(last, Dense) else "the softmax needs"
        unit = "units" if isinstance(last, Dense) else "features"
        raise CnnlabError(
            f"layer {len(layers) - 1}: {what} {num_classes} {unit} (one per class),"
            f" got {classes[0] if len(classes) == 1 else classes}"
        )
    for index, layer in enumerate(layers[:-1]):
        if getattr(layer, "activation", None) == "softmax":
            raise CnnlabError(f"layer {index}: softmax is only for the last layer")
    return layers


# --- the registry -----------------------------------------------------------------------------


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
    # hundred steps; no gamma, since a scale before gelu adds nothing a conv cannot learn.
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


def forward_flops(layers: Sequence[LayerSpec], input_shape: tuple[int, ...] = INPUT_SHAPE) -> int:
    """Floating-point operations (2 per multiply-add) of one image's forward pass.

    Counts the convolutions and dense layers (residual blocks' and their projections' too), which
    are nearly all of the work; pooling, normalisation, activations, adds and dropout are left
    out.
    """
    total, shape = 0, tuple(input_shape)
    for layer in layers:
        out = output_shape(layer, shape)
        if isinstance(layer, Conv):
            total += 2 * out[0] * out[1] * out[2] * layer.kernel[0] * layer.kernel[1] * shape[2]
        elif isinstance(layer, Dense):
            total += 2 * shape[0] * layer.units
        elif isinstance(layer, Residual):
            total += forward_flops(layer.layers, shape)
            total += forward_flops(shortcut_specs(layer, shape), shape)
        shape = out
    return total


def get_architecture(name: str) -> tuple[dict[str, Any], ...]:
    """The layer specs of a registered architecture; an unknown name lists the known ones."""
    if name not in ARCHITECTURES:
        raise CnnlabError(
            f"unknown architecture {name!r}; known: {', '.join(sorted(ARCHITECTURES))}"
        )
    return ARCHITECTURES[name]


def dataset_input(config: Any) -> tuple[tuple[int, int, int], int]:
    """The (input shape, class count) of a config's named dataset, for checks before loading."""
    known = DATASET_SHAPES.get(getattr(config, "dataset", RunConfig.dataset))
    return known if known is not None else (INPUT_SHAPE, NUM_CLASSES)


def resolve_layers(
    config: Any,
    input_shape: tuple[int, int, int] | None = None,
    num_classes: int | None = None,
) -> tuple[LayerSpec, ...]:
    """A RunConfig's layers (inline or registered) with its l1/l2 overrides on every dense.

    They are checked against `input_shape` and `num_classes` (the dataset's), by default the
    config's named dataset's.
    """
    known_shape, known_classes = dataset_input(config)
    input_shape = tuple(input_shape or known_shape)
    num_classes = num_classes or known_classes
    specs = config.layers if config.layers is not None else get_architecture(config.arch)
    try:
        layers = parse_layers(specs, input_shape, num_classes)
    except CnnlabError as error:
        dataset = getattr(config, "dataset", RunConfig.dataset)
        raise CnnlabError(
            f"{config.arch} on {dataset} ({'x'.join(map(str, input_shape))} images,"
            f" {num_classes} classes): {error}"
        ) from None
    overrides = {
        key: float(value)
        for key, value in (("l1", config.l1), ("l2", config.l2))
        if value is not None
    }
    for key, value in overrides.items():
        if not value >= 0:
            raise CnnlabError(f"{key}: expected a number >= 0, got {value!r}")
    if not overrides:
        return layers
    return tuple(
        dataclasses.replace(layer, **overrides) if isinstance(layer, Dense) else layer
        for layer in layers
    )


def flat_specs(layers: Sequence[LayerSpec]) -> Iterator[LayerSpec]:
    """Every layer spec, residual blocks' inner layers and given shortcuts included, in order."""
    for layer in layers:
        yield layer
        if isinstance(layer, Residual):
            yield from flat_specs(layer.layers)
            yield from flat_specs(layer.shortcut or ())


# --- modules ----------------------------------------------------------------------------------


def activate(name: str, tensor: torch.Tensor) -> torch.Tensor:
    """`name` on a fresh output no backward pass reads: relu, tanh and sigmoid work in place."""
    if name == "relu":
        return tensor.relu_()
    if name == "tanh":
        return tensor.tanh_()
    if name == "sigmoid":
        return tensor.sigmoid_()
    return apply_activation(name, tensor)


def apply_activation(name: str, tensor: torch.Tensor) -> torch.Tensor:
    """Keras's activation `name`, out of place; linear (and a final softmax) return `tensor`."""
    if name == "relu":
        return F.relu(tensor)
    if name == "gelu":
        return F.gelu(tensor)  # exact (erf), Keras's approximate=False
    if name == "silu":
        return F.silu(tensor)
    if name == "leaky_relu":
        return F.leaky_relu(tensor, LEAKY_RELU_SLOPE)
    if name == "elu":
        return F.elu(tensor)
    if name == "tanh":
        return torch.tanh(tensor)
    if name == "sigmoid":
        return torch.sigmoid(tensor)
    return tensor  # linear; a final softmax is applied by the loss (logits out)


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's 'same' padding (before, after) of one dimension: any extra goes after."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class _Pad(torch.autograd.Function):
    """F.pad whose backward is a view of the incoming gradient, not a copy (CPU time)."""

    @staticmethod
    def forward(ctx: Any, images: torch.Tensor, padding: tuple[int, int, int, int]):
        ctx.padding, ctx.size = padding, images.shape[-2:]
        return F.pad(images, padding)

    @staticmethod
    def backward(ctx: Any, gradient: torch.Tensor):
        left, _, top, _ = ctx.padding
        height, width = ctx.size
        return gradient[..., top : top + height, left : left + width], None


def _kernel_penalty(module: KerasConv2d | KerasDense) -> torch.Tensor | None:
    """l1·Σ|W| + l2·ΣW² of a trainable kernel; Keras regularises trainable weights only."""
    terms = []
    if module.weight.requires_grad:
        if module.l1:
            terms.append(module.l1 * module.weight.abs().sum())
        if module.l2:
            terms.append(module.l2 * module.weight.square().sum())
    return sum(terms[1:], terms[0]) if terms else None


class KerasConv2d(nn.Conv2d):
    """Conv2D with TensorFlow's padding: symmetric padding is the conv's own, the rest F.pad."""

    def __init__(self, spec: Conv, in_channels: int, in_size: tuple[int, int]):
        rows, columns = (0, 0), (0, 0)
        if spec.padding == "same":
            rows = same_padding(in_size[0], spec.kernel[0], spec.stride[0])
            columns = same_padding(in_size[1], spec.kernel[1], spec.stride[1])
        symmetric = rows[0] == rows[1] and columns[0] == columns[1]
        super().__init__(
            in_channels,
            spec.filters,
            spec.kernel,
            stride=spec.stride,
            padding=(rows[0], columns[0]) if symmetric else 0,
            bias=spec.use_bias,
        )
        # F.pad order: left, right, top, bottom.
        self.extra_padding = None if symmetric else (columns[0], columns[1], rows[0], rows[1])
        self.activation, self.l1, self.l2, self.init = spec.activation, spec.l1, spec.l2, spec.init
        self.requires_grad_(spec.trainable)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.extra_padding is not None:
            images = _Pad.apply(images, self.extra_padding)
        return activate(self.activation, super().forward(images))

    def penalty(self) -> torch.Tensor | None:
        return _kernel_penalty(self)


class KerasDense(nn.Linear):
    """Dense with Keras's kernel penalty: l1·Σ|W| + l2·ΣW² (biases are never penalised)."""

    def __init__(self, spec: Dense, in_features: int):
        super().__init__(in_features, spec.units, bias=spec.use_bias)
        self.l1, self.l2, self.activation = spec.l1, spec.l2, spec.activation
        self.init = spec.init
        self.requires_grad_(spec.trainable)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return activate(self.activation, super().forward(features))

    def penalty(self) -> torch.Tensor | None:
        return _kernel_penalty(self)


class KerasBatchNorm(nn.Module):
    """BatchNormalization over dim 1 with Keras's moving statistics.

    Training normalises with the batch's mean and biased variance and moves the statistics by
    moving·momentum + batch·(1 - momentum), the variance's biased too (PyTorch's BatchNorm moves
    its variance by the unbiased one). F.batch_norm does the pass over the data; its unbiased
    update is then corrected on the C-element buffer.
    """

    def __init__(self, spec: BatchNorm, channels: int):
        super().__init__()
        self.momentum, self.epsilon = spec.momentum, spec.epsilon
        self.weight = nn.Parameter(torch.ones(channels)) if spec.scale else None
        self.bias = nn.Parameter(torch.zeros(channels)) if spec.center else None
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, tensor: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return F.batch_norm(
                tensor,
                self.running_mean,
                self.running_var,
                self.weight,
                self.bias,
                False,
                0.0,
                self.epsilon,
            )
        count = tensor.numel() // tensor.shape[1]  # values per channel in this batch
        if count == 1:
            return self._one_value_per_channel(tensor)
        # The op saves the variance buffer it updates for its backward pass: give it a copy.
        updated = self.running_var.clone()
        output = F.batch_norm(
            tensor,
            self.running_mean,
            updated,
            self.weight,
            self.bias,
            True,
            1.0 - self.momentum,
            self.epsilon,
        )
        with torch.no_grad():
            # torch: u = m·v + (1-m)·unbiased; Keras's batch variance is unbiased·(n-1)/n, so
            # Keras's v <- u - (u - m·v)/n = u·(1 - 1/n) + v·m/n.
            self.running_var.mul_(self.momentum / count).add_(updated, alpha=1.0 - 1.0 / count)
        return output

    def _one_value_per_channel(self, tensor: torch.Tensor) -> torch.Tensor:
        """F.batch_norm refuses one value per channel; Keras's variance is 0 there (output beta)."""
        with torch.no_grad():
            values = tensor.detach().reshape(-1).to(self.running_mean.dtype)
            self.running_mean.mul_(self.momentum).add_(values, alpha=1.0 - self.momentum)
            self.running_var.mul_(self.momentum)
        output = tensor - tensor  # x - mean(x): zero, and so is its gradient, as in Keras
        shape = (1, -1) + (1,) * (tensor.dim() - 2)
        if self.weight is not None:
            output = output * self.weight.reshape(shape)
        if self.bias is not None:
            output = output + self.bias.reshape(shape)
        return output

    def extra_repr(self) -> str:
        return f"{len(self.running_mean)}, momentum={self.momentum}, epsilon={self.epsilon}"


class ActivationLayer(nn.Module):
    """Keras's Activation layer; out of place, since its input may feed a shortcut too."""

    def __init__(self, activation: str):
        super().__init__()
        self.activation = activation

    def forward(self, tensor: torch.Tensor) -> torch.Tensor:
        return apply_activation(self.activation, tensor)

    def extra_repr(self) -> str:
        return self.activation


class RescalingLayer(nn.Module):
    """Keras's Rescaling: x·scale + offset."""

    def __init__(self, scale: float, offset: float):
        super().__init__()
        self.scale, self.offset = scale, offset

    def forward(self, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor * self.scale
        return tensor + self.offset if self.offset else tensor

    def extra_repr(self) -> str:
        return f"scale={self.scale}, offset={self.offset}"


class MaxPool2d(nn.MaxPool2d):
    """MaxPooling2D, 'valid' padding."""


class AvgPool2d(nn.AvgPool2d):
    """AveragePooling2D, 'valid' padding."""


class GlobalAvgPool2d(nn.Module):
    """GlobalAveragePooling2D: NCHW -> NC."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.mean((2, 3))


class GlobalMaxPool2d(nn.Module):
    """GlobalMaxPooling2D: NCHW -> NC."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.amax((2, 3))


def dropout_mask(
    shape: Sequence[int],
    rate: float,
    generator: torch.Generator | None,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """A dropout keep-mask scaled by 1/(1 - rate): one uniform draw per unit, in NCHW order.

    Keras keeps a unit where uniform noise >= rate; this is ~3x faster than bernoulli_ on the
    CPU. Lone and grouped training both draw through here, so their masks are the same.
    """
    noise = torch.rand(tuple(shape), generator=generator, device=device, dtype=dtype)
    return (noise >= rate).to(dtype).mul_(1.0 / (1.0 - rate))


class GeneratorDropout(nn.Module):
    """Dropout whose mask comes from `self.generator` (set by the trainer) so runs repeat."""

    def __init__(self, rate: float):
        super().__init__()
        self.rate = rate
        self.generator: torch.Generator | None = None

    def forward(self, tensor: torch.Tensor) -> torch.Tensor:
        if not self.training or self.rate == 0:
            return tensor
        mask = dropout_mask(tensor.shape, self.rate, self.generator, tensor.device, tensor.dtype)
        return tensor * mask

    def extra_repr(self) -> str:
        return f"rate={self.rate}"


class ChannelsLastFlatten(nn.Module):
    """NCHW -> N·(H·W·C): the dense kernel's rows index features in Keras's order."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.permute(0, 2, 3, 1).flatten(1)


def build_modules(layers: Sequence[LayerSpec], input_shape: tuple[int, ...]) -> list[nn.Module]:
    """One module per layer spec, for inputs of `input_shape` (channels-last)."""
    modules: list[nn.Module] = []
    shape = tuple(input_shape)
    for spec in layers:
        if isinstance(spec, Conv):
            modules.append(KerasConv2d(spec, shape[2], (shape[0], shape[1])))
        elif isinstance(spec, MaxPool):
            modules.append(MaxPool2d(spec.size, spec.stride or spec.size))
        elif isinstance(spec, AvgPool):
            modules.append(AvgPool2d(spec.size, spec.stride or spec.size))
        elif isinstance(spec, Dropout):
            modules.append(GeneratorDropout(spec.rate))
        elif isinstance(spec, Flatten):
            modules.append(ChannelsLastFlatten())
        elif isinstance(spec, BatchNorm):
            modules.append(KerasBatchNorm(spec, shape[-1]))
        elif isinstance(spec, Activation):
            modules.append(ActivationLayer(spec.activation))
        elif isinstance(spec, Rescaling):
            modules.append(RescalingLayer(spec.scale, spec.offset))
        elif isinstance(spec, GlobalAvgPool):
            modules.append(GlobalAvgPool2d())
        elif isinstance(spec, GlobalMaxPool):
            modules.append(GlobalMaxPool2d())
        elif isinstance(spec, Residual):
            modules.append(ResidualBlock(spec, shape))
        else:
            modules.append(KerasDense(spec, shape[0]))
        shape = output_shape(spec, shape)
    return modules


class ResidualBlock(nn.Module):
    """activation(layers(x) + shortcut(x)), as Keras's Add (and Activation) after two branches."""

    def __init__(self, spec: Residual, input_shape: tuple[int, ...]):
        super().__init__()
        self.layers = nn.ModuleList(build_modules(spec.layers, input_shape))
        self.shortcut = nn.ModuleList(build_modules(shortcut_specs(spec, input_shape), input_shape))
        self.activation = spec.activation

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        branch, shortcut = images, images
        for layer in self.layers:
            branch = layer(branch)
        for layer in self.shortcut:
            shortcut = layer(shortcut)
        return activate(self.activation, branch + shortcut)


class ConvNet(nn.Module):
    """The network a layer-spec list describes: NCHW float images in, logits out."""

    def __init__(self, layers: Sequence[LayerSpec], input_shape: tuple[int, int, int]):
        super().__init__()
        self.specs = tuple(layers)
        self.input_shape = tuple(input_shape)  # height, width, channels
        self.layers = nn.ModuleList(build_modules(self.specs, self.input_shape))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            images = layer(images)
        return images

    def penalty(self) -> torch.Tensor | None:
        """The sum of the conv and dense kernels' penalties (None when there are none)."""
        weighted = (m for m in self.modules() if isinstance(m, KerasConv2d | KerasDense))
        terms = [term for term in (module.penalty() for module in weighted) if term is not None]
        return sum(terms[1:], terms[0]) if terms else None

    def set_dropout_generator(self, generator: torch.Generator | None) -> None:
        """Draw every dropout mask from `generator` (on the device of the activations)."""
        for module in self.modules():
            if isinstance(module, GeneratorDropout):
                module.generator = generator


def _initialise_kernel(weight: torch.Tensor, init: str, generator: torch.Generator | None) -> None:
    """Keras's initialiser `init` (a whitened kernel is set from data later: glorot until then)."""
    fan_in = weight[0].numel()  # in_channels·kh·kw, or in_features
    if init == "he_normal":
        stddev = math.sqrt(2.0 / fan_in) / TRUNCATED_NORMAL_STDDEV
        nn.init.trunc_normal_(weight, 0.0, stddev, -2 * stddev, 2 * stddev, generator=generator)
    elif init == "he_uniform":
        limit = math.sqrt(6.0 / fan_in)
        nn.init.uniform_(weight, -limit, limit, generator=generator)
    else:
        nn.init.xavier_uniform_(weight, generator=generator)


def initialise(model: ConvNet, generator: torch.Generator | None = None) -> None:
    """Keras's initialisers (glorot-uniform kernels unless set, zero biases, unit batch norms),
    drawn in layer order: a residual block's layers, then its shortcut."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, KerasConv2d | KerasDense):
                _initialise_kernel(module.weight, module.init, generator)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, KerasBatchNorm):
                for parameter, value in ((module.weight, 1.0), (module.bias, 0.0)):
                    if parameter is not None:
                        parameter.fill_(value)
                module.running_mean.zero_()
                module.running_var.fill_(1.0)


# --- patch whitening --------------------------------------------------------------------------


def needs_whitening(model: ConvNet) -> bool:
    """Whether the net's first layer is a conv whose kernel `whiten_first_layer` must set."""
    first = model.specs[0]
    return isinstance(first, Conv) and first.init == "whiten"


def patch_statistics(
    images: torch.Tensor, kernel: tuple[int, int], chunk: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, covariance) in float64 on the CPU of every kernel-sized patch (valid, stride 1).

    A patch is flattened as a conv weight's row is: channel, then row, then column.
    """
    channels = images.shape[1]
    size = channels * kernel[0] * kernel[1]
    # Shifting by each channel's mean first keeps E[xxᵀ] - E[x]E[x]ᵀ from cancelling.
    shift = images.mean((0, 2, 3), dtype=torch.float64)
    total = torch.zeros(size, dtype=torch.float64, device=images.device)
    gram = torch.zeros(size, size, dtype=torch.float64, device=images.device)
    count = 0
    for part in images.split(chunk):
        centred = part.to(torch.float64) - shift[None, :, None, None]
        patches = F.unfold(centred, kernel).transpose(1, 2).reshape(-1, size)
        total += patches.sum(0)
        gram += patches.T @ patches
        count += patches.shape[0]
    centre = total / count
    covariance = gram / count - torch.outer(centre, centre)
    mean = centre + shift.repeat_interleave(kernel[0] * kernel[1])
    return mean.cpu(), covariance.cpu()


def whiten_first_layer(model: ConvNet, images: torch.Tensor, epsilon: float = 5e-4) -> None:
    """Set the first conv's kernel from `images` (float NCHW, as the net sees them).

    Half the filters are the patch covariance's leading eigenvectors, each scaled by
    1/sqrt(λ + ε·mean(λ)) so its outputs have about unit variance; the other half are their
    negations, so a following relu or gelu keeps both signs. A bias, if the layer has one, centres
    the outputs on the mean patch.
    """
    if not needs_whitening(model):
        raise CnnlabError("whiten_first_layer: the net's layer 0 is not a conv with init 'whiten'")
    conv = model.layers[0]
    mean, covariance = patch_statistics(images, conv.kernel_size)
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)  # ascending
    if not eigenvalues.mean() > 0:
        raise CnnlabError("whiten_first_layer: the images' patches do not vary; nothing to whiten")
    leading = conv.out_channels // 2
    values = eigenvalues.flip(0)[:leading]
    vectors = eigenvectors.flip(1)[:, :leading].T
    half = vectors / (values + epsilon * eigenvalues.mean()).sqrt()[:, None]
    kernel = torch.cat([half, -half])
    with torch.no_grad():
        conv.weight.copy_(kernel.reshape(conv.weight.shape))
        if conv.bias is not None:
            conv.bias.copy_(-(kernel @ mean))


def build_model(
    spec: Any,
    input_shape: tuple[int, int, int] | None = None,
    num_classes: int | None = None,
    *,
    generator: torch.Generator | None = None,
) -> ConvNet:
    """A ConvNet (on the CPU, float32) from a RunConfig, a registry name or layer specs.

    `input_shape` (height, width, channels) and `num_classes` default to the config's dataset's,
    else CIFAR-10's. A whitened first layer is left for `whiten_first_layer`.
    """
    if hasattr(spec, "arch") and hasattr(spec, "layers"):
        layers = resolve_layers(spec, input_shape, num_classes)
        input_shape = input_shape or dataset_input(spec)[0]
    else:
        input_shape = input_shape or INPUT_SHAPE
        specs = get_architecture(spec) if isinstance(spec, str) else spec
        layers = parse_layers(specs, input_shape, num_classes or NUM_CLASSES)
    model = ConvNet(layers, input_shape)
    initialise(model, generator)
    return model


def count_parameters(model: nn.Module) -> int:
    """Keras's count_params(): every parameter, frozen ones and batch norms' moving statistics
    included."""
    moving = sum(
        module.running_mean.numel() + module.running_var.numel()
        for module in model.modules()
        if isinstance(module, KerasBatchNorm)
    )
    return sum(parameter.numel() for parameter in model.parameters()) + moving


# --- the summary ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SummaryRow:
    """One line of a Keras-style summary."""

    name: str  # Keras's default layer name: conv2d, conv2d_1, ...
    kind: str  # Keras's class name: Conv2D, Dense, ...
    output_shape: tuple[int, ...]  # without the batch dimension, channels-last
    parameters: int  # all of the layer's weights, as Keras's Param # column
    non_trainable: int = 0  # of which frozen or moving statistics
    connected_to: tuple[str, ...] = ()  # a functional model's inputs: "conv2d[0][0]", ...


@dataclass
class _Node:
    """A Keras layer of the model the specs describe, and the nodes whose outputs it takes."""

    base: str
    kind: str
    output_shape: tuple[int, ...]
    parameters: int
    non_trainable: int
    parents: tuple[int, ...]


def _parameter_counts(spec: LayerSpec, shape: tuple[int, ...]) -> tuple[int, int]:
    """(all, non-trainable) weights of a layer that is not a residual block."""
    if isinstance(spec, Conv | Dense):
        inputs = spec.kernel[0] * spec.kernel[1] * shape[2] if isinstance(spec, Conv) else shape[0]
        outputs = spec.filters if isinstance(spec, Conv) else spec.units
        count = (inputs + spec.use_bias) * outputs
        return count, 0 if spec.trainable else count
    if isinstance(spec, BatchNorm):
        channels = shape[-1]
        return (2 + spec.center + spec.scale) * channels, 2 * channels
    return 0, 0


def _add_nodes(
    nodes: list[_Node], layers: Sequence[LayerSpec], shape: tuple[int, ...], parent: int
) -> tuple[int, tuple[int, ...]]:
    """Append the Keras layers of `layers` in creation order; (last node, its output shape)."""
    for spec in layers:
        if isinstance(spec, Residual):
            branch, output = _add_nodes(nodes, spec.layers, shape, parent)
            shortcut, _ = _add_nodes(nodes, shortcut_specs(spec, shape), shape, parent)
            nodes.append(_Node("add", "Add", output, 0, 0, (branch, shortcut)))
            if spec.activation != "linear":
                nodes.append(_Node("activation", "Activation", output, 0, 0, (len(nodes) - 1,)))
        else:
            output = output_shape(spec, shape)
            base, kind = _KERAS_NAMES[type(spec)]
            nodes.append(_Node(base, kind, output, *_parameter_counts(spec, shape), (parent,)))
        parent, shape = len(nodes) - 1, output
    return parent, shape


def _functional_order(nodes: Sequence[_Node]) -> list[int]:
    """Keras's order of a functional model's layers (keras/src/ops/function.py, map_graph):
    the longest path to the output first, ties in the order a depth-first walk from the output
    (through each layer's inputs in turn) first meets them."""
    depth = [0] * len(nodes)
    for index in reversed(range(len(nodes))):  # creation order is a topological order
        for parent in nodes[index].parents:
            depth[parent] = max(depth[parent], depth[index] + 1)
    met: dict[int, int] = {}
    pending = [len(nodes) - 1]
    while pending:
        index = pending.pop()
        if index not in met:
            met[index] = len(met)
            pending.extend(reversed(nodes[index].parents))
    return sorted(range(len(nodes)), key=lambda index: (-depth[index], met[index]))


def architecture_summary(
    layers: Sequence[Mapping[str, Any] | LayerSpec],
    input_shape: tuple[int, int, int] = INPUT_SHAPE,
    num_classes: int = NUM_CLASSES,
) -> tuple[list[SummaryRow], int]:
    """Keras's model.summary() rows (name, type, output shape, parameters) and the total.

    A net with residual blocks is a functional Keras model: its rows start with the InputLayer,
    follow Keras's order of a graph's layers and name each row's inputs.
    """
    specs = parse_layers(layers, input_shape, num_classes)
    nodes = [_Node("input_layer", "InputLayer", tuple(input_shape), 0, 0, ())]
    _add_nodes(nodes, specs, tuple(input_shape), 0)
    names, seen = [], {}
    for node in nodes:
        count = seen.get(node.base, 0)
        seen[node.base] = count + 1
        names.append(node.base if count == 0 else f"{node.base}_{count}")
    functional = any(isinstance(spec, Residual) for spec in specs)
    order = _functional_order(nodes) if functional else range(1, len(nodes))
    rows = [
        SummaryRow(
            names[index],
            nodes[index].kind,
            nodes[index].output_shape,
            nodes[index].parameters,
            nodes[index].non_trainable,
            tuple(f"{names[parent]}[0][0]" for parent in nodes[index].parents)
            if functional
            else (),
        )
        for index in order
    ]
    return rows, sum(row.parameters for row in rows)


def format_summary(
    name: str,
    layers: Sequence[Mapping[str, Any] | LayerSpec],
    input_shape: tuple[int, int, int] = INPUT_SHAPE,
    num_classes: int = NUM_CLASSES,
) -> str:
    """The summary as Keras prints it, for images of `input_shape` (height, width, channels)."""
    rows, total = architecture_summary(layers, input_shape, num_classes)
    functional = any(row.kind == "InputLayer" for row in rows)
    table = [("Layer (type)", "Output Shape", "Param #", "Connected to")[: 3 + functional]]
    for row in rows:
        cells = (f"{row.name} ({row.kind})", str((None, *row.output_shape)), f"{row.parameters:,}")
        table.append((*cells, ", ".join(row.connected_to) or "-")[: 3 + functional])
    widths = [max(len(line[i]) for line in table) + 4 for i in range(len(table[0]))]
    rule = "=" * sum(widths)
    lines = [f'Model: "{name}"', "_" * sum(widths)]
    for index, line in enumerate(table):
        cells = (cell.ljust(width) for cell, width in zip(line, widths, strict=True))
        lines.append("".join(cells).rstrip())
        lines.append(rule if index == 0 else "_" * sum(widths))
    lines[-1] = rule
    non_trainable = sum(row.non_trainable for row in rows)
    lines += [
        f"Total params: {total:,}",
        f"Trainable params: {total - non_trainable:,}",
        f"Non-trainable params: {non_trainable:,}",
    ]
    return "\n".join(lines)
