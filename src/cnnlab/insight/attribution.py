"""What a trained net computes for one image: every conv layer's feature maps, Grad-CAM and
gradient saliency.

The attributions are Captum's (`LayerGradCam`, `Saliency`), not our own: Grad-CAM (Selvaraju et
al. 2017) on the net's last conv layer (a residual block's sum where the last conv sits in one),
plain gradient saliency (Simonyan et al. 2014) on the pixels, both for a given class's logit.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.nn.facts import layer_facts
from cnnlab.nn.module_nets import last_conv
from cnnlab.nn.modules import ConvNet, KerasConv2d, ResidualBlock
from cnnlab.nn.specs import Conv, Residual


@dataclass
class ImageInsight:
    """One image through a trained net: its outputs, feature maps and attributions."""

    probabilities: np.ndarray  # softmax over the classes
    predicted: int
    feature_maps: list[tuple[str, np.ndarray]]  # (conv layer name, channels x height x width)
    grad_cam: dict[int, np.ndarray]  # class -> height x width at the input's size, >= 0
    saliency: dict[
        int, np.ndarray
    ]  # class -> height x width, |d logit / d pixel| max over channels
    grad_cam_layer: str | None  # the layer Grad-CAM looks at; None for a net without convs


def conv_layers(model: ConvNet) -> list[tuple[str, KerasConv2d]]:
    """Every conv module with its Keras name (conv2d, conv2d_1, ...), in creation order; a
    module net's nn.Conv2d modules by their own names."""
    if not model.specs:
        return [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    facts = layer_facts(model.specs, model.input_shape)
    names = [fact.name for fact in facts if fact.kind == "Conv2D"]
    convs = [module for module in model.modules() if isinstance(module, KerasConv2d)]
    assert len(names) == len(convs), (names, convs)
    return list(zip(names, convs, strict=True))


def _blocks_post_order(module: nn.Module) -> Iterator[ResidualBlock]:
    """Residual blocks in the order their Add layers are created (inner blocks first)."""
    for child in module.children():
        yield from _blocks_post_order(child)
    if isinstance(module, ResidualBlock):
        yield module


def grad_cam_target(model: ConvNet, layer: str | None = None) -> tuple[str, nn.Module] | None:
    """The layer Grad-CAM reads: `layer` (a conv layer's name, as `conv_layers` names them; a
    module net's any module by its own name), else the last top-level conv layer or residual
    block (its Add) before the features go flat; a module net's last nn.Conv2d whose output is
    an image (`module_nets.last_conv`)."""
    if layer is not None:
        return named_layer(model, layer)
    if not model.specs:
        return last_conv(model, model.input_shape)
    conv_names = {id(module): name for name, module in conv_layers(model)}
    adds = [fact.name for fact in layer_facts(model.specs, model.input_shape) if fact.kind == "Add"]
    add_names = {
        id(block): name for block, name in zip(_blocks_post_order(model), adds, strict=True)
    }
    for spec, module in reversed(list(zip(model.specs, model.layers, strict=True))):
        if isinstance(spec, Conv):
            return conv_names[id(module)], module
        if isinstance(spec, Residual):
            return add_names[id(module)], module
    return None


def named_layer(model: ConvNet, layer: str) -> tuple[str, nn.Module]:
    """The layer `layer` names, or one line listing the names that would do."""
    known = dict(conv_layers(model))
    if not model.specs:
        modules = dict(model.named_modules())
        known.update(modules)
        known.update({name.removeprefix("net."): module for name, module in modules.items()})
    if layer in known and layer:
        return layer, known[layer]
    convs = [name.removeprefix("net.") for name, _ in conv_layers(model)]
    shown = ", ".join(convs[:12]) + (", ..." if len(convs) > 12 else "")
    raise CnnlabError(f"--layer {layer!r}: the net has no such layer; its conv layers: {shown}")


def feature_maps(model: ConvNet, image: torch.Tensor) -> list[tuple[str, np.ndarray]]:
    """Each conv layer's output (after its activation) for one float NCHW image."""
    captured: dict[str, np.ndarray] = {}
    handles = []
    for name, module in conv_layers(model):

        def keep(_module, _inputs, output, name=name):
            captured[name] = output[0].detach().float().cpu().numpy().copy()

        handles.append(module.register_forward_hook(keep))
    try:
        with torch.no_grad():
            model(image)
    finally:
        for handle in handles:
            handle.remove()
    return [(name, captured[name]) for name, _ in conv_layers(model)]


def grad_cam(
    model: ConvNet, image: torch.Tensor, target_class: int, layer: str | None = None
) -> np.ndarray | None:
    """Captum's Grad-CAM (ReLU'd) of `target_class` on `layer` (default: the last conv layer,
    `grad_cam_target`), upsampled bilinearly to the input's size; None for a net without
    convs."""
    from captum.attr import LayerAttribution, LayerGradCam

    target = grad_cam_target(model, layer)
    if target is None:
        return None
    cam = LayerGradCam(model, target[1]).attribute(
        image.clone().requires_grad_(True), target=target_class, relu_attributions=True
    )
    upsampled = LayerAttribution.interpolate(cam.detach(), tuple(image.shape[2:]), "bilinear")
    return upsampled[0, 0].float().cpu().numpy()


def saliency(model: ConvNet, image: torch.Tensor, target_class: int) -> np.ndarray:
    """Captum's gradient saliency: |d logit / d pixel|, the largest over the channels."""
    from captum.attr import Saliency

    gradient = Saliency(model).attribute(image.clone().requires_grad_(True), target=target_class)
    return gradient.detach()[0].amax(0).float().cpu().numpy()


def class_count(model: ConvNet) -> int:
    """How many classes the net scores (the width of its logits for one blank image)."""
    height, width, channels = model.input_shape
    model.eval()
    with torch.no_grad():
        return int(model(torch.zeros(1, channels, height, width)).shape[1])


def explain_image(
    model: ConvNet, image: np.ndarray, classes: Sequence[int] = (), layer: str | None = None
) -> ImageInsight:
    """One uint8 image (height x width x channels) through `model` (on the CPU, eval mode):
    feature maps, and Grad-CAM (on `layer`, default the last conv layer) and saliency for the
    predicted class and each of `classes`."""
    model.eval()
    pixels = np.array(image, dtype=np.uint8)  # a writable copy: kept arrays may be read-only
    tensor = torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        logits = model(tensor)[0].float()
    probabilities = F.softmax(logits, 0).cpu().numpy()
    predicted = int(logits.argmax())
    wanted = dict.fromkeys([*classes, predicted])
    cams = {cls: grad_cam(model, tensor, cls, layer) for cls in wanted}
    target = grad_cam_target(model, layer)
    return ImageInsight(
        probabilities,
        predicted,
        feature_maps(model, tensor),
        {cls: cam for cls, cam in cams.items() if cam is not None},
        {cls: saliency(model, tensor, cls) for cls in wanted},
        None if target is None else target[0],
    )
