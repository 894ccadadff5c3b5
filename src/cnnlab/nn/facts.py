"""Per-layer facts of a net from its layer specs alone: shape, parameters, MACs, memory and
receptive field.

Without training and without torch (a study file, `cnnlab summary --detail` and the report
compare architectures with them). Multiply-accumulates count the conv and dense kernels (a
residual block's projections too), as fvcore counts them: biases, pooling, normalisation,
activations and adds are left out, so twice the total is `shapes.forward_flops`. The receptive
field is the usual arithmetic (Araujo et al., "Computing receptive fields of convolutional neural
networks", Distill 2019): after a window k with stride s, field += (k - 1)·jump and jump *= s;
padding is not clipped, so a field can exceed the image. A flat layer (flatten, global pooling,
dense) sees the whole image: its field and jump are None.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cnnlab.nn.shapes import (
    INPUT_SHAPE,
    NUM_CLASSES,
    layer_weights,
    output_shape,
    parse_layers,
    shortcut_specs,
)
from cnnlab.nn.specs import (
    KERAS_NAMES,
    LAYER_TYPES,
    AvgPool,
    Conv,
    Dense,
    LayerSpec,
    MaxPool,
    Residual,
)

BYTES_PER_VALUE = 4  # float32 activations
Pair = tuple[int, int]


@dataclass(frozen=True)
class LayerFacts:
    """What one Keras layer of a net is and costs, for one image."""

    name: str  # Keras's default layer name, as the summary's rows: conv2d, conv2d_1, ...
    kind: str  # Keras's class name: Conv2D, Dense, Add, ...
    output_shape: tuple[int, ...]  # channels-last, without the batch dimension
    parameters: int  # as Keras's Param # column (moving statistics included)
    macs: int  # multiply-accumulates of its kernel per image (0 for layers without one)
    activation_bytes: int  # its float32 output per image
    receptive_field: Pair | None  # input pixels (rows, columns) an output unit sees; None: all
    jump: Pair | None  # input pixels between neighbouring output units; None: flat output


@dataclass
class _Field:
    """The receptive field and jump of a layer's outputs (None once the features are flat)."""

    size: Pair | None = (1, 1)
    jump: Pair | None = (1, 1)


def _window(spec: LayerSpec) -> tuple[Pair, Pair] | None:
    """(window, stride) of a layer that slides one, else None."""
    if isinstance(spec, Conv):
        return spec.kernel, spec.stride
    if isinstance(spec, MaxPool | AvgPool):
        return spec.size, spec.stride or spec.size
    return None


def _next_field(spec: LayerSpec, field: _Field, out: tuple[int, ...]) -> _Field:
    if len(out) != 3 or field.size is None or field.jump is None:
        return _Field(None, None)
    window = _window(spec)
    if window is None:
        return field
    (rows, columns), (down, across) = window
    size = (
        field.size[0] + (rows - 1) * field.jump[0],
        field.size[1] + (columns - 1) * field.jump[1],
    )
    return _Field(size, (field.jump[0] * down, field.jump[1] * across))


def _macs(spec: LayerSpec, shape: tuple[int, ...], out: tuple[int, ...]) -> int:
    if isinstance(spec, Conv):
        return math.prod(out) * spec.kernel[0] * spec.kernel[1] * shape[2]
    if isinstance(spec, Dense):
        return shape[0] * spec.units
    return 0


def _walk(
    rows: list[tuple[str, ...]],
    layers: Sequence[LayerSpec],
    shape: tuple[int, ...],
    field: _Field,
) -> tuple[tuple[int, ...], _Field]:
    """Append (base, kind, shape, parameters, macs, field) per Keras layer in creation order."""
    for spec in layers:
        if isinstance(spec, Residual):
            out, branch = _walk(rows, spec.layers, shape, field)
            _, shortcut = _walk(rows, shortcut_specs(spec, shape), shape, field)
            # Both paths land on the same grid (same jump); the sum sees the wider field.
            assert branch.size is not None and shortcut.size is not None
            size = (max(branch.size[0], shortcut.size[0]), max(branch.size[1], shortcut.size[1]))
            field = _Field(size, branch.jump)
            rows.append(("add", "Add", out, 0, 0, field))
            if spec.activation != "linear":
                rows.append(("activation", "Activation", out, 0, 0, field))
        else:
            out = output_shape(spec, shape)
            field = _next_field(spec, field, out)
            base, kind = KERAS_NAMES[type(spec)]
            parameters = layer_weights(spec, shape)[0]
            rows.append((base, kind, out, parameters, _macs(spec, shape, out), field))
        shape = out
    return shape, field


def layer_facts(
    layers: Sequence[Mapping[str, Any] | LayerSpec],
    input_shape: tuple[int, int, int] = INPUT_SHAPE,
    num_classes: int = NUM_CLASSES,
) -> list[LayerFacts]:
    """The facts of every Keras layer of a net (a residual block's inner layers, shortcut, Add
    and activation included) in creation order, for images of `input_shape` (height, width,
    channels). Parsed specs are taken as they are; plain dicts are checked against
    `num_classes` first."""
    if all(isinstance(layer, LAYER_TYPES) for layer in layers):
        specs: Sequence[LayerSpec] = tuple(layers)  # type: ignore[arg-type]
    else:
        specs = parse_layers(layers, input_shape, num_classes)
    rows: list[tuple[Any, ...]] = []
    _walk(rows, specs, tuple(input_shape), _Field())
    seen: dict[str, int] = {}
    facts = []
    for base, kind, out, parameters, macs, field in rows:
        count = seen.get(base, 0)
        seen[base] = count + 1
        name = base if count == 0 else f"{base}_{count}"
        size = math.prod(out) * BYTES_PER_VALUE
        facts.append(LayerFacts(name, kind, out, parameters, macs, size, field.size, field.jump))
    return facts


def total_macs(facts: Sequence[LayerFacts]) -> int:
    """Multiply-accumulates of one image's forward pass."""
    return sum(fact.macs for fact in facts)


def total_activation_bytes(facts: Sequence[LayerFacts]) -> int:
    """Bytes of every layer's float32 output for one image (what training keeps per image)."""
    return sum(fact.activation_bytes for fact in facts)


def format_field(pair: Pair | None) -> str:
    """'7x7', or 'all' for a flat layer that sees the whole image."""
    return "all" if pair is None else f"{pair[0]}x{pair[1]}"


def format_bytes(count: int) -> str:
    """Bytes as B, KiB or MiB with one decimal."""
    if count < 1024:
        return f"{count} B"
    if count < 1024 * 1024:
        return f"{count / 1024:.1f} KiB"
    return f"{count / (1024 * 1024):.1f} MiB"
