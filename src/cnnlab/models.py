"""Layer specs -> nn.Module with Keras semantics, the registry of named architectures, summaries.

An architecture is data: a sequence of plain dicts (from TOML or JSON) such as
`{"type": "conv", "filters": 16, "kernel": 3, "stride": 2, "padding": "same",
"activation": "relu"}`.
`parse_layers` checks them strictly against the input shape; `build_model` turns them into a
`ConvNet` whose behaviour matches Keras: glorot-uniform kernels and zero biases, TensorFlow's
'same' padding (the extra row and column at the bottom/right), channels-last flatten, and an L1/L2
penalty on dense kernels. The network returns logits: a final softmax is folded into the loss.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.config import DATASET_SHAPES, RunConfig
from cnnlab.errors import CnnlabError

# Where no dataset is named, nets are checked and summarised for the default one's images.
INPUT_SHAPE, NUM_CLASSES = DATASET_SHAPES[RunConfig.dataset]  # (height, width, channels)
ACTIVATIONS = ("linear", "relu", "tanh", "sigmoid", "softmax")
PADDINGS = ("same", "valid")


# --- layer specs ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Conv:
    """Conv2D: `filters` kernels of `kernel` (rows, columns), moved by `stride`."""

    filters: int
    kernel: tuple[int, int]
    stride: tuple[int, int] = (1, 1)
    padding: str = "valid"  # "same" (TensorFlow's rule) or "valid" (no padding), as in Keras
    activation: str = "linear"


@dataclass(frozen=True)
class MaxPool:
    """MaxPooling2D with 'valid' padding; the stride defaults to the pool size, as in Keras."""

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


LayerSpec = Conv | MaxPool | Dropout | Flatten | Dense

# type -> (class, {key: kind}); kinds drive the validation in `_parse_layer`.
_LAYER_KEYS: dict[str, tuple[type, dict[str, str]]] = {
    "conv": (
        Conv,
        {
            "filters": "positive",
            "kernel": "pair",
            "stride": "pair",
            "padding": "padding",
            "activation": "activation",
        },
    ),
    "maxpool": (MaxPool, {"size": "pair", "stride": "pair"}),
    "dropout": (Dropout, {"rate": "rate"}),
    "flatten": (Flatten, {}),
    "dense": (
        Dense,
        {"units": "positive", "activation": "activation", "l1": "weight", "l2": "weight"},
    ),
}
_REQUIRED = {"conv": ("filters", "kernel"), "dropout": ("rate",), "dense": ("units",)}
_KERAS_NAMES = {
    Conv: ("conv2d", "Conv2D"),
    MaxPool: ("max_pooling2d", "MaxPooling2D"),
    Dropout: ("dropout", "Dropout"),
    Flatten: ("flatten", "Flatten"),
    Dense: ("dense", "Dense"),
}


def _check_value(where: str, key: str, kind: str, value: Any) -> Any:
    """One spec value, validated and normalised (pairs become tuples)."""

    def fail(expected: str) -> CnnlabError:
        return CnnlabError(f"{where}: {key}: expected {expected}, got {value!r}")

    is_int = isinstance(value, int) and not isinstance(value, bool)
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
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
    if kind == "activation":
        if value not in ACTIVATIONS:
            raise fail("one of " + ", ".join(ACTIVATIONS))
        return value
    if kind == "rate":
        if not is_number or not 0 <= value < 1:
            raise fail("a rate in [0, 1)")
        return float(value)
    if kind == "weight":
        if not is_number or not value >= 0:
            raise fail("a number >= 0")
        return float(value)
    raise AssertionError(kind)


def _parse_layer(index: int, spec: Mapping[str, Any] | LayerSpec) -> LayerSpec:
    if isinstance(spec, Conv | MaxPool | Dropout | Flatten | Dense):
        return spec
    where = f"layer {index}"
    if not isinstance(spec, Mapping):
        raise CnnlabError(f'{where}: expected a table like {{type = "conv", ...}}, got {spec!r}')
    kind = spec.get("type")
    if kind not in _LAYER_KEYS:
        raise CnnlabError(f"{where}: type: expected one of {', '.join(_LAYER_KEYS)}, got {kind!r}")
    cls, keys = _LAYER_KEYS[kind]
    where = f"layer {index} ({kind})"
    values: dict[str, Any] = {}
    for key, value in spec.items():
        if key == "type":
            continue
        if key not in keys:
            valid = ", ".join(keys) or "none besides type"
            raise CnnlabError(f"{where}: unknown key {key!r}; valid keys: {valid}")
        values[key] = _check_value(where, key, keys[key], value)
    for key in _REQUIRED.get(kind, ()):
        if key not in values:
            raise CnnlabError(f"{where}: missing key {key!r}")
    return cls(**values)


def output_shape(layer: LayerSpec, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The channels-last shape after `layer`; raises CnnlabError where it does not fit."""
    name = _KERAS_NAMES[type(layer)][1]
    if isinstance(layer, Dense):
        if len(shape) != 1:
            raise CnnlabError(f"{name} needs a flat input, got {shape}; add a flatten layer first")
        return (layer.units,)
    if len(shape) != 3:
        if isinstance(layer, Dropout):
            return shape
        raise CnnlabError(f"{name} needs an image input (height, width, channels), got {shape}")
    height, width, channels = shape
    if isinstance(layer, Flatten):
        return (height * width * channels,)
    if isinstance(layer, Dropout):
        return shape
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


def parse_layers(
    specs: Sequence[Mapping[str, Any] | LayerSpec],
    input_shape: tuple[int, int, int] = INPUT_SHAPE,
    num_classes: int = NUM_CLASSES,
) -> tuple[LayerSpec, ...]:
    """Validate layer specs against the input; the net must end in Dense(num_classes, softmax)."""
    if isinstance(specs, str | bytes | Mapping) or not isinstance(specs, Sequence):
        raise CnnlabError(f"layers: expected a list of layer tables, got {specs!r}")
    if not specs:
        raise CnnlabError("layers: an architecture needs at least one layer")
    layers = tuple(_parse_layer(index, spec) for index, spec in enumerate(specs))
    shape: tuple[int, ...] = tuple(input_shape)
    for index, layer in enumerate(layers):
        try:
            shape = output_shape(layer, shape)
        except CnnlabError as error:
            raise CnnlabError(f"layer {index}: {error}") from None
    last = layers[-1]
    if not (isinstance(last, Dense) and last.activation == "softmax"):
        raise CnnlabError(f"layer {len(layers) - 1}: a classifier ends with a softmax dense layer")
    if last.units != num_classes:
        raise CnnlabError(
            f"layer {len(layers) - 1}: the last dense layer needs {num_classes} units (one per"
            f" class), got {last.units}"
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
}
DESCRIPTIONS = {
    "seed": "the seed report's ConvNet: two strided conv pairs, dropout, L1 dense",
    "seed-maxpool": "seed without strides, one 2x2 max-pool after the fourth conv (report, c)",
    "seed-deep": "thinner and deeper: six convs 8-8-16-16-32-32, every second strided (report, d)",
    "tiny": "one strided conv and a dense layer, for tests",
}


def forward_flops(layers: tuple[LayerSpec, ...], input_shape: tuple[int, ...] = INPUT_SHAPE) -> int:
    """Floating-point operations (2 per multiply-add) of one image's forward pass.

    Counts the convolutions and dense layers, which are nearly all of the work; pooling,
    activations and dropout are left out.
    """
    total, shape = 0, tuple(input_shape)
    for layer in layers:
        out = output_shape(layer, shape)
        if isinstance(layer, Conv):
            total += 2 * out[0] * out[1] * out[2] * layer.kernel[0] * layer.kernel[1] * shape[2]
        elif isinstance(layer, Dense):
            total += 2 * shape[0] * layer.units
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
        Dense(layer.units, layer.activation, **{"l1": layer.l1, "l2": layer.l2, **overrides})
        if isinstance(layer, Dense)
        else layer
        for layer in layers
    )


# --- modules ----------------------------------------------------------------------------------


def activate(name: str, tensor: torch.Tensor) -> torch.Tensor:
    """In place: `tensor` is a fresh conv/dense output that no backward pass reads."""
    if name == "relu":
        return tensor.relu_()
    if name == "tanh":
        return tensor.tanh_()
    if name == "sigmoid":
        return tensor.sigmoid_()
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
        )
        # F.pad order: left, right, top, bottom.
        self.extra_padding = None if symmetric else (columns[0], columns[1], rows[0], rows[1])
        self.activation = spec.activation

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.extra_padding is not None:
            images = _Pad.apply(images, self.extra_padding)
        return activate(self.activation, super().forward(images))


class KerasDense(nn.Linear):
    """Dense with Keras's kernel penalty: l1·Σ|W| + l2·ΣW² (biases are never penalised)."""

    def __init__(self, spec: Dense, in_features: int):
        super().__init__(in_features, spec.units)
        self.l1, self.l2, self.activation = spec.l1, spec.l2, spec.activation

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return activate(self.activation, super().forward(features))

    def penalty(self) -> torch.Tensor | None:
        terms = []
        if self.l1:
            terms.append(self.l1 * self.weight.abs().sum())
        if self.l2:
            terms.append(self.l2 * self.weight.square().sum())
        return sum(terms[1:], terms[0]) if terms else None


class MaxPool2d(nn.MaxPool2d):
    """MaxPooling2D, 'valid' padding."""


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


class ConvNet(nn.Module):
    """The network a layer-spec list describes: NCHW float images in, logits out."""

    def __init__(self, layers: Sequence[LayerSpec], input_shape: tuple[int, int, int]):
        super().__init__()
        self.specs = tuple(layers)
        self.input_shape = tuple(input_shape)  # height, width, channels
        modules: list[nn.Module] = []
        shape: tuple[int, ...] = tuple(input_shape)
        for spec in self.specs:
            if isinstance(spec, Conv):
                modules.append(KerasConv2d(spec, shape[2], (shape[0], shape[1])))
            elif isinstance(spec, MaxPool):
                modules.append(MaxPool2d(spec.size, spec.stride or spec.size))
            elif isinstance(spec, Dropout):
                modules.append(GeneratorDropout(spec.rate))
            elif isinstance(spec, Flatten):
                modules.append(ChannelsLastFlatten())
            else:
                modules.append(KerasDense(spec, shape[0]))
            shape = output_shape(spec, shape)
        self.layers = nn.ModuleList(modules)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            images = layer(images)
        return images

    def penalty(self) -> torch.Tensor | None:
        """The sum of the dense kernels' regularisation terms (None when there are none)."""
        dense = [module.penalty() for module in self.layers if isinstance(module, KerasDense)]
        terms = [term for term in dense if term is not None]
        return sum(terms[1:], terms[0]) if terms else None

    def set_dropout_generator(self, generator: torch.Generator | None) -> None:
        """Draw every dropout mask from `generator` (on the device of the activations)."""
        for module in self.layers:
            if isinstance(module, GeneratorDropout):
                module.generator = generator


def initialise(model: ConvNet, generator: torch.Generator | None = None) -> None:
    """Keras's defaults: glorot-uniform kernels, zero biases, drawn in layer order."""
    with torch.no_grad():
        for module in model.layers:
            if isinstance(module, KerasConv2d | KerasDense):
                nn.init.xavier_uniform_(module.weight, generator=generator)
                nn.init.zeros_(module.bias)


def build_model(
    spec: Any,
    input_shape: tuple[int, int, int] | None = None,
    num_classes: int | None = None,
    *,
    generator: torch.Generator | None = None,
) -> ConvNet:
    """A ConvNet (on the CPU, float32) from a RunConfig, a registry name or layer specs.

    `input_shape` (height, width, channels) and `num_classes` default to the config's dataset's,
    else CIFAR-10's.
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
    """Trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# --- the summary ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SummaryRow:
    """One line of a Keras-style summary."""

    name: str  # Keras's default layer name: conv2d, conv2d_1, ...
    kind: str  # Keras's class name: Conv2D, Dense, ...
    output_shape: tuple[int, ...]  # without the batch dimension, channels-last
    parameters: int


def architecture_summary(
    layers: Sequence[Mapping[str, Any] | LayerSpec],
    input_shape: tuple[int, int, int] = INPUT_SHAPE,
    num_classes: int = NUM_CLASSES,
) -> tuple[list[SummaryRow], int]:
    """Keras's model.summary() rows (name, type, output shape, parameters) and the total."""
    specs = parse_layers(layers, input_shape, num_classes)
    rows, seen = [], {}
    shape: tuple[int, ...] = tuple(input_shape)
    for spec in specs:
        base, kind = _KERAS_NAMES[type(spec)]
        count = seen.get(base, 0)
        seen[base] = count + 1
        new_shape = output_shape(spec, shape)
        if isinstance(spec, Conv):
            parameters = (spec.kernel[0] * spec.kernel[1] * shape[2] + 1) * spec.filters
        elif isinstance(spec, Dense):
            parameters = (shape[0] + 1) * spec.units
        else:
            parameters = 0
        name = base if count == 0 else f"{base}_{count}"
        rows.append(SummaryRow(name, kind, new_shape, parameters))
        shape = new_shape
    return rows, sum(row.parameters for row in rows)


def format_summary(
    name: str,
    layers: Sequence[Mapping[str, Any] | LayerSpec],
    input_shape: tuple[int, int, int] = INPUT_SHAPE,
    num_classes: int = NUM_CLASSES,
) -> str:
    """The summary as Keras prints it, for images of `input_shape` (height, width, channels)."""
    rows, total = architecture_summary(layers, input_shape, num_classes)
    table = [("Layer (type)", "Output Shape", "Param #")]
    table += [
        (f"{row.name} ({row.kind})", str((None, *row.output_shape)), f"{row.parameters:,}")
        for row in rows
    ]
    widths = [max(len(line[i]) for line in table) + 4 for i in range(3)]
    rule = "=" * sum(widths)
    lines = [f'Model: "{name}"', "_" * sum(widths)]
    for index, line in enumerate(table):
        cells = (cell.ljust(width) for cell, width in zip(line, widths, strict=True))
        lines.append("".join(cells).rstrip())
        lines.append(rule if index == 0 else "_" * sum(widths))
    lines[-1] = rule
    lines += [f"Total params: {total:,}", f"Trainable params: {total:,}", "Non-trainable params: 0"]
    return "\n".join(lines)
