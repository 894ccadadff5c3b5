"""Shapes and sizes of layer specs, and a net checked against its input; no torch.

`output_shape` propagates a channels-last shape through a layer (a residual block's shortcut
chosen by `shortcut_specs`); `layer_weights`, `trainable_weights`, `net_size` and
`forward_flops` count what a net holds and computes. `parse_layers` checks parsed specs
(`specs.py`) against an input shape and class count, within the bounds on what a net may
allocate, and `resolve_layers` does so for a RunConfig's layers on its dataset's images.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

from cnnlab.config import DATASET_SHAPES, EVAL_BATCH_SIZE, RunConfig
from cnnlab.errors import CnnlabError
from cnnlab.nn.architectures import get_architecture
from cnnlab.nn.specs import (
    KERAS_NAMES,
    TYPE_NAMES,
    Activation,
    BatchNorm,
    Conv,
    Dense,
    Dropout,
    Flatten,
    GlobalAvgPool,
    GlobalMaxPool,
    LayerSpec,
    Rescaling,
    Residual,
    parse_specs,
)

# A run's net is refused before it is built where it would hold more (float32: 512 MiB of
# weights, before gradients and the optimizer's state; 8 GiB of layer outputs for one batch).
MAX_WEIGHTS = 1 << 27
MAX_BATCH_OUTPUTS = 1 << 31
# Where no dataset is named, nets are checked and summarised for the default one's images.
INPUT_SHAPE, NUM_CLASSES = DATASET_SHAPES[RunConfig.dataset]  # (height, width, channels)


def _chain_shape(
    layers: Sequence[LayerSpec], shape: tuple[int, ...], prefix: str = ""
) -> tuple[int, ...]:
    """The shape after `layers` in turn; an error names the layer (after `prefix`)."""
    for index, layer in enumerate(layers):
        try:
            shape = output_shape(layer, shape)
        except CnnlabError as error:
            kind = TYPE_NAMES[type(layer)]
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
