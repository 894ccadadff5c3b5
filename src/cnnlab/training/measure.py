"""Measurements of a trained run: its weights, its activations and its gradients, read only.

Per weight layer (a conv's or dense layer's kernel): the L1 and L2 norms, the share of weights
below SMALL_WEIGHT of the layer's largest magnitude, and a histogram. On a fixed probe batch of
test images (the test set's first PROBE_IMAGES): per activation layer the share of outputs that
are zero, the share of units zero on every probe image (dead units), the mean and the spread.
Per epoch: the global and per-layer norm of the gradient of the training objective (the loss
trained on, penalty and label smoothing included) at the epoch's end, on a fixed probe batch of
training images (the training part's first GRADIENT_PROBE_IMAGES), in eval mode.

Nothing here touches the training: every measurement runs on a separate copy of the weights the
run is scored with (`Members.state_dict`: its weight average where it keeps one), built on the
meta device so building it draws no random numbers, in eval mode (no dropout mask is drawn, no
moving statistic moves). Lone and grouped runs are measured the same way, member by member.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cnnlab.config import RunConfig
from cnnlab.nn import modules
from cnnlab.nn.architectures import is_module_net
from cnnlab.nn.module_nets import loaded_module_net
from cnnlab.nn.shapes import resolve_layers
from cnnlab.training.device import images_to_device, normalise

PROBE_IMAGES = 256  # test images the activations are measured on, once per run
# Training images each epoch's gradient is measured on: a fixed batch, so epochs compare. Its
# forward and backward pass is nearly all of the cost: 2.5-3.5% of a seed run's fit time on a
# loaded 2-core CPU (64 of the 4,500 images an epoch trains on, in eval mode).
GRADIENT_PROBE_IMAGES = 64
SMALL_WEIGHT = 0.01  # a weight below this fraction of its layer's largest |w| counts as near zero
HISTOGRAM_BINS = 21  # bins over [-max|w|, max|w|]: an odd count puts zero in the middle bin
VERSION = 1  # of measurements.json's layout


def lone_model(
    layers: Sequence[Any],
    input_shape: tuple[int, int, int],
    state: dict[str, torch.Tensor],
    device: torch.device,
) -> modules.ConvNet:
    """A ConvNet holding a copy of `state`, in eval mode; building it draws no random numbers."""
    with torch.device("meta"):
        model = modules.ConvNet(layers, input_shape)
    copied = {name: torch.as_tensor(value).detach().clone() for name, value in state.items()}
    model.load_state_dict(copied, assign=True)
    return model.to(device).eval()


def weight_layers(state: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per conv or dense kernel (by its layer's state_dict prefix): norms, sparsity, histogram."""
    measured = {}
    for name, value in state.items():
        kernel = np.asarray(torch.as_tensor(value).detach().cpu(), dtype=np.float64)
        if not name.endswith(".weight") or kernel.ndim not in (2, 4):
            continue  # batch norms' 1-D factors are no kernels
        magnitudes = np.abs(kernel).ravel()
        largest = float(magnitudes.max()) if magnitudes.size else 0.0
        finite = math.isfinite(largest) and largest > 0
        counts, edges = np.histogram(
            kernel.ravel(), HISTOGRAM_BINS, range=(-largest, largest) if finite else (-1.0, 1.0)
        )
        measured[name.removesuffix(".weight")] = {
            "kind": "conv" if kernel.ndim == 4 else "dense",
            "shape": list(kernel.shape),
            "count": int(magnitudes.size),
            "l1": _number(magnitudes.sum()),
            "l2": _number(np.sqrt(np.square(magnitudes).sum())),
            "max_abs": _number(largest),
            "small_fraction": _number(np.mean(magnitudes < SMALL_WEIGHT * largest))
            if finite
            else None,
            "histogram": {"edges": [float(e) for e in edges], "counts": counts.tolist()},
        }
    return measured


# A module net's activation layers, found by their type (a net that calls F.relu in its forward
# pass has none to measure).
ACTIVATION_MODULES = {
    torch.nn.ReLU: "relu",
    torch.nn.ReLU6: "relu6",
    torch.nn.GELU: "gelu",
    torch.nn.SiLU: "silu",
    torch.nn.Mish: "mish",
    torch.nn.LeakyReLU: "leaky_relu",
    torch.nn.ELU: "elu",
    torch.nn.Hardswish: "hardswish",
    torch.nn.Tanh: "tanh",
    torch.nn.Sigmoid: "sigmoid",
}


def activation_of(module: torch.nn.Module) -> str:
    """A layer's activation: a spec layer's own, a torch activation module's by type."""
    return getattr(module, "activation", None) or ACTIVATION_MODULES.get(type(module), "linear")


def activations(model: modules.ConvNet, images: torch.Tensor) -> dict[str, dict[str, Any]]:
    """Per layer with a non-linear activation: zero share, dead-unit share, mean and spread."""
    measured: dict[str, dict[str, Any]] = {}

    def record(name: str, kind: str):
        def hook(module, inputs, output) -> None:
            values = output.detach().float()
            zero = values == 0
            measured[name] = {
                "kind": kind,
                "activation": activation_of(module),
                "units": int(values[0].numel()),
                "zero_fraction": _number(zero.float().mean()),
                "dead_fraction": _number(zero.all(0).float().mean()),
                "mean": _number(values.mean()),
                "std": _number(values.std()) if values.numel() > 1 else 0.0,
            }

        return hook

    handles = [
        module.register_forward_hook(record(name, type(module).__name__))
        for name, module in model.named_modules()
        if activation_of(module) not in ("linear", "softmax")
    ]
    try:
        with torch.inference_mode():
            model(normalise(images))
    finally:
        for handle in handles:
            handle.remove()
    return measured


def gradient_norms(
    model: modules.ConvNet, images: torch.Tensor, labels: torch.Tensor, smoothing: float
) -> dict[str, Any]:
    """The training objective's gradient norm on `images`: global and per weight layer."""
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    logits = model(normalise(images)).float()
    loss = F.cross_entropy(logits, labels, label_smoothing=smoothing)
    penalty = model.penalty()
    if penalty is not None:
        loss = loss + penalty
    gradients = torch.autograd.grad(loss, [p for _, p in named]) if named else []
    squares: dict[str, torch.Tensor] = {}
    for (name, _), gradient in zip(named, gradients, strict=True):
        layer = name.rsplit(".", 1)[0]
        squares[layer] = squares.get(layer, 0) + gradient.double().square().sum()
    values = torch.stack(list(squares.values())).tolist() if squares else []
    per_layer = dict(zip(squares, values, strict=True))
    return {
        "global": _number(math.sqrt(sum(per_layer.values()))),
        "layers": {name: _number(math.sqrt(value)) for name, value in per_layer.items()},
    }


class Measurer:
    """Measures the members of one fit: their gradients after each epoch, the rest at the end."""

    def __init__(self, configs: Sequence[RunConfig], data: Any, on_device: Any):
        device = on_device.images.device
        probe = min(on_device.train_count, GRADIENT_PROBE_IMAGES)
        self.train_images = on_device.images[:probe]
        self.train_labels = on_device.labels[:probe]
        self.test_images = images_to_device(data.test_images[:PROBE_IMAGES], device)
        self.input_shape, self.device = on_device.input_shape, device
        # Each member's own net: grouped members differ in their penalties (l1, l2).
        self.configs, self.num_classes = list(configs), on_device.num_classes
        self.layers = [
            None
            if is_module_net(config)
            else resolve_layers(config, on_device.input_shape, on_device.num_classes)
            for config in configs
        ]
        self.smoothing = [config.label_smoothing for config in configs]
        self.gradients: list[list[dict[str, Any]]] = [[] for _ in configs]
        self.seconds = [0.0] * len(configs)  # each member's measuring time
        self.epoch_seconds = 0.0  # all members' time in `epoch`, left out of the fit time

    def epoch(self, members: Any, epoch: int, measured: Sequence[int]) -> None:
        """Each member of `measured`'s gradient norms at the end of `epoch`."""
        epoch_started = time.perf_counter()
        for member in measured:
            started = time.perf_counter()
            model = self._model(member, members.state_dict(member))
            norms = gradient_norms(
                model, self.train_images, self.train_labels, self.smoothing[member]
            )
            self.gradients[member].append({"epoch": epoch, **norms})
            self.seconds[member] += time.perf_counter() - started
        self.epoch_seconds += time.perf_counter() - epoch_started

    def finish(self, member: int, state: dict[str, Any]) -> dict[str, Any]:
        """The member's measurements: its final weights, activations and the epochs' gradients."""
        started = time.perf_counter()
        weights = weight_layers(state)
        active = activations(self._model(member, state), self.test_images)
        seconds = self.seconds[member] + time.perf_counter() - started
        return {
            "version": VERSION,
            "probe_images": {"train": len(self.train_labels), "test": len(self.test_images)},
            "small_weight": SMALL_WEIGHT,
            "weights": weights,
            "activations": active,
            "gradients": self.gradients[member],
            "seconds": seconds,
        }

    def _model(self, member: int, state: dict[str, Any]) -> torch.nn.Module:
        if self.layers[member] is None:  # a module net: its factory builds the copy
            config, shape = self.configs[member], self.input_shape
            return loaded_module_net(config, shape, self.num_classes, state, self.device)
        return lone_model(self.layers[member], self.input_shape, state, self.device)


def _number(value: Any) -> float | None:
    """A JSON-safe float: None where the value is not finite (a diverged run's weights)."""
    value = float(value)
    return value if math.isfinite(value) else None
