"""Layer specs: a net's layers as plain data, checked strictly, their shapes and the registry.

An architecture is data: a sequence of plain dicts (from TOML or JSON) such as
`{"type": "conv", "filters": 16, "kernel": 3, "stride": 2, "padding": "same",
"activation": "relu"}`. `parse_layers` checks them strictly against the input shape and returns
frozen dataclasses that keep Keras's names and defaults: beyond the seed report's layers (conv,
maxpool, dropout, flatten, dense), Keras's BatchNormalization, Activation, Rescaling,
AveragePooling2D, the global pools and residual blocks (Add of a branch and a shortcut, as a
functional Keras model builds them). The registry of named architectures (`architectures.py`) is
plain data too. This module imports no torch: a study file, `cnnlab archs` and `cnnlab summary`
check nets without it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cnnlab.config import DATASET_SHAPES, EVAL_BATCH_SIZE, RunConfig
from cnnlab.errors import CnnlabError
from cnnlab.nn.architectures import get_architecture

# A run's net is refused before it is built where it would hold more (float32: 512 MiB of
# weights, before gradients and the optimizer's state; 8 GiB of layer outputs for one batch).
MAX_WEIGHTS = 1 << 27
MAX_BATCH_OUTPUTS = 1 << 31
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
    name = KERAS_NAMES[type(layer)][1]
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


def parse_specs(specs: Sequence[Mapping[str, Any] | LayerSpec]) -> tuple[LayerSpec, ...]:
    """Each layer's keys and values checked, before any input shape is known."""
    if isinstance(specs, str | bytes | Mapping) or not isinstance(specs, Sequence):
        raise CnnlabError(f"layers: expected a list of layer tables, got {specs!r}")
    if not specs:
        raise CnnlabError("layers: an architecture needs at least one layer")
    return tuple(_parse_layer(index, spec) for index, spec in enumerate(specs))


def parse_layers(
    specs: Sequence[Mapping[str, Any] | LayerSpec],
    input_shape: tuple[int, int, int] = INPUT_SHAPE,
    num_classes: int = NUM_CLASSES,
) -> tuple[LayerSpec, ...]:
    """Validate layer specs against the input; the net must end in a softmax over num_classes
    features (a softmax dense layer, or a softmax activation layer)."""
    layers = parse_specs(specs)
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
    weights = net_size(layers, input_shape)[0]
    if weights > MAX_WEIGHTS:
        raise CnnlabError(
            f"layers: the net holds {weights:,} weights; at most {MAX_WEIGHTS:,} are allowed"
            " (narrower or fewer conv and dense layers)"
        )
    if trainable_weights(layers, input_shape) == 0:
        raise CnnlabError(
            "layers: the net has nothing to train (no weights, or every one trainable = false)"
        )
    return layers


def trainable_weights(layers: Sequence[LayerSpec], input_shape: tuple[int, ...]) -> int:
    """How many of a net's weights the optimizer updates (not frozen, not moving statistics)."""
    total, shape = 0, tuple(input_shape)
    for layer in layers:
        if isinstance(layer, Residual):
            total += trainable_weights(layer.layers, shape)
            total += trainable_weights(shortcut_specs(layer, shape), shape)
        else:
            count, frozen = layer_weights(layer, shape)
            total += count - frozen
        shape = output_shape(layer, shape)
    return total


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


def layer_weights(spec: LayerSpec, shape: tuple[int, ...]) -> tuple[int, int]:
    """(all, non-trainable) weights of a layer that is not a residual block, on input `shape`."""
    if isinstance(spec, Conv | Dense):
        inputs = spec.kernel[0] * spec.kernel[1] * shape[2] if isinstance(spec, Conv) else shape[0]
        outputs = spec.filters if isinstance(spec, Conv) else spec.units
        count = (inputs + spec.use_bias) * outputs
        return count, 0 if spec.trainable else count
    if isinstance(spec, BatchNorm):
        channels = shape[-1]
        return (2 + spec.center + spec.scale) * channels, 2 * channels
    return 0, 0


def net_size(layers: Sequence[LayerSpec], input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    """(weights, outputs, largest output) of a net: the numbers it holds, the numbers its layers
    output for one image (a residual block's branch, shortcut and sum each count) and the most
    that one layer outputs for one image."""
    weights = outputs = largest = 0
    shape = tuple(input_shape)
    for layer in layers:
        out = output_shape(layer, shape)
        if isinstance(layer, Residual):
            for part in (layer.layers, shortcut_specs(layer, shape)):
                part_weights, part_outputs, part_largest = net_size(part, shape)
                weights, outputs = weights + part_weights, outputs + part_outputs
                largest = max(largest, part_largest)
        else:
            weights += layer_weights(layer, shape)[0]
        outputs += math.prod(out)
        largest = max(largest, math.prod(out))
        shape = out
    return weights, outputs, largest


def _check_batch_size(
    layers: Sequence[LayerSpec], input_shape: tuple[int, ...], config: Any
) -> None:
    """The memory of a run's batches is bounded before anything is allocated: the layer outputs
    a training batch keeps for the backward pass, and one layer's output for an evaluation
    batch (the weights are bounded by `parse_layers`)."""
    _, outputs, largest = net_size(layers, input_shape)
    batch = min(
        getattr(config, "batch_size", RunConfig.batch_size),
        getattr(config, "train_size", RunConfig.train_size),
    )
    if outputs * batch > MAX_BATCH_OUTPUTS:
        raise CnnlabError(
            f"batch_size {batch}: the layers output {outputs:,} numbers per image,"
            f" {outputs * batch:,} per batch, kept for the backward pass; at most"
            f" {MAX_BATCH_OUTPUTS:,} are allowed (a smaller batch_size, or narrower layers)"
        )
    if largest * EVAL_BATCH_SIZE > MAX_BATCH_OUTPUTS:
        raise CnnlabError(
            f"a layer outputs {largest:,} numbers per image, {largest * EVAL_BATCH_SIZE:,} for"
            f" an evaluation batch of {EVAL_BATCH_SIZE:,}; at most {MAX_BATCH_OUTPUTS:,} are"
            " allowed (narrower layers)"
        )


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
        _check_batch_size(layers, input_shape, config)
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
