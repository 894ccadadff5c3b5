"""Layer specs -> nn.Module with Keras semantics: the modules, initialisers and patch whitening.

`build_model` turns layer specs (`cnnlab.nn.specs`: checked, plain data) into a `ConvNet` whose
behaviour matches Keras: glorot-uniform kernels and zero biases, TensorFlow's 'same' padding (the
extra row and column at the bottom/right), channels-last flatten, an L1/L2 penalty on kernels,
and Keras's BatchNormalization with its moving-statistics formula (not PyTorch's). The network
returns logits: a final softmax is folded into the loss.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.nn.architectures import get_architecture, is_module_net
from cnnlab.nn.module_nets import build_module_net
from cnnlab.nn.shapes import (
    INPUT_SHAPE,
    NUM_CLASSES,
    dataset_input,
    output_shape,
    parse_layers,
    resolve_layers,
    shortcut_specs,
)
from cnnlab.nn.specs import (
    Activation,
    AvgPool,
    BatchNorm,
    Conv,
    Dense,
    Dropout,
    Flatten,
    GlobalAvgPool,
    GlobalMaxPool,
    LayerSpec,
    MaxPool,
    Rescaling,
    Residual,
)

LEAKY_RELU_SLOPE = 0.2  # Keras's default negative slope (PyTorch's is 0.01)
# The standard deviation of a unit normal truncated at ±2: Keras divides by it so that the
# truncated draws keep the variance scaling's standard deviation.
TRUNCATED_NORMAL_STDDEV = 0.87962566103423978


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
    if not model.specs:  # a module net: the package's net sets its own weights
        return False
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
) -> nn.Module:
    """A ConvNet (on the CPU, float32) from a RunConfig, a registry name or layer specs; a
    module net's config gives its `module_nets.ModuleNet`.

    `input_shape` (height, width, channels) and `num_classes` default to the config's dataset's,
    else CIFAR-10's. A whitened first layer is left for `whiten_first_layer`.
    """
    if hasattr(spec, "arch") and is_module_net(spec):
        shape, classes = dataset_input(spec)
        return build_module_net(spec, input_shape or shape, num_classes or classes, generator)
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
    included (a module net's torch batch norms too)."""
    moving = sum(
        module.running_mean.numel() + module.running_var.numel()
        for module in model.modules()
        if isinstance(module, KerasBatchNorm | nn.modules.batchnorm._NormBase)
        and module.running_mean is not None
    )
    return sum(parameter.numel() for parameter in model.parameters()) + moving
