"""Keras's model.summary() of layer specs: its rows, parameter counts and printed table.

The counts come from the specs alone (a conv's or dense layer's kernel and bias, a batch norm's
gamma, beta and moving statistics, a frozen layer's weights as non-trainable), so summaries load
no torch; tests/test_keras.py holds them to Keras's own. A net with residual blocks is a
functional Keras model: its rows start with the InputLayer, follow Keras's order of a graph's
layers and name each row's inputs. With `detail`, each row also shows its multiply-accumulates,
activation memory and receptive field per image (`cnnlab.nn.facts`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cnnlab.nn.facts import (
    format_bytes,
    format_field,
    layer_facts,
    total_activation_bytes,
    total_macs,
)
from cnnlab.nn.shapes import (
    INPUT_SHAPE,
    NUM_CLASSES,
    layer_weights,
    output_shape,
    parse_layers,
    shortcut_specs,
)
from cnnlab.nn.specs import KERAS_NAMES, LAYER_TYPES, LayerSpec, Residual


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
            base, kind = KERAS_NAMES[type(spec)]
            nodes.append(_Node(base, kind, output, *layer_weights(spec, shape), (parent,)))
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


DETAIL_HEADERS = ("MACs", "Act. memory", "Receptive field", "Jump")


def _detail_cells(layers: Sequence[LayerSpec], input_shape: tuple[int, int, int]) -> dict:
    """Row name -> the detail columns' cells; the InputLayer's are blank."""
    cells = {"input_layer": ("-", "-", "1x1", "1x1")}
    for fact in layer_facts(layers, input_shape):
        cells[fact.name] = (
            f"{fact.macs:,}",
            format_bytes(fact.activation_bytes),
            format_field(fact.receptive_field),
            "-" if fact.jump is None else format_field(fact.jump),
        )
    return cells


def format_summary(
    name: str,
    layers: Sequence[Mapping[str, Any] | LayerSpec],
    input_shape: tuple[int, int, int] = INPUT_SHAPE,
    num_classes: int = NUM_CLASSES,
    *,
    detail: bool = False,
) -> str:
    """The summary as Keras prints it, for images of `input_shape` (height, width, channels);
    `detail` adds per-layer MACs, activation memory and receptive field (size and jump)."""
    rows, total = architecture_summary(layers, input_shape, num_classes)
    functional = any(row.kind == "InputLayer" for row in rows)
    headers = ("Layer (type)", "Output Shape", "Param #", "Connected to")[: 3 + functional]
    table = [(*headers, *(DETAIL_HEADERS if detail else ()))]
    specs = parse_layers(layers, input_shape, num_classes) if detail else ()
    details = _detail_cells(specs, input_shape) if detail else {}
    for row in rows:
        cells = (f"{row.name} ({row.kind})", str((None, *row.output_shape)), f"{row.parameters:,}")
        cells = (*cells, ", ".join(row.connected_to) or "-")[: 3 + functional]
        table.append((*cells, *details.get(row.name, ())))
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
    if detail:
        facts = layer_facts(specs, input_shape)
        lines += [
            f"Multiply-accumulates per image: {total_macs(facts):,} (conv and dense kernels)",
            f"Activation memory per image: {format_bytes(total_activation_bytes(facts))}"
            " (float32 layer outputs)",
        ]
    return "\n".join(lines)


def summary(
    net: Any,
    input_shape: tuple[int, int, int] | None = None,
    num_classes: int | None = None,
    *,
    detail: bool = True,
    name: str | None = None,
) -> str:
    """The detailed summary of a built net (`cnnlab.build_model(...)`), a registry name or layer
    specs; a built net brings its own input shape and classes."""
    from cnnlab.nn.architectures import get_architecture

    if hasattr(net, "specs") and hasattr(net, "input_shape"):  # a ConvNet, without importing torch
        layers, input_shape = tuple(net.specs), input_shape or tuple(net.input_shape)
        shape = tuple(input_shape)
        for spec in layers:
            shape = output_shape(spec, shape)
        num_classes = num_classes or shape[0]
        name = name or "convnet"
    elif isinstance(net, str):
        layers, name = get_architecture(net), name or net
    elif all(isinstance(layer, Mapping | LAYER_TYPES) for layer in net):
        layers, name = tuple(net), name or "convnet"
    else:
        raise TypeError(
            f"summary: expected a ConvNet, an architecture name or layer specs: {net!r}"
        )
    return format_summary(
        name, layers, input_shape or INPUT_SHAPE, num_classes or NUM_CLASSES, detail=detail
    )
