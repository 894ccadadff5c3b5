"""The built networks (layer specs -> nn.Module) and their Keras semantics."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import special
from torch.utils.flop_counter import FlopCounterMode

from cnnlab.errors import CnnlabError
from cnnlab.nn import modules
from cnnlab.nn.architectures import ARCHITECTURES, get_architecture
from cnnlab.nn.shapes import NUM_CLASSES, forward_flops, parse_layers
from cnnlab.nn.specs import ACTIVATIONS, BatchNorm, Conv
from cnnlab.nn.summary import architecture_summary, format_summary

# Keras's model.summary() totals for the seed report's networks.
KERAS_PARAMETERS = {"seed": 37_146, "seed-maxpool": 98_586, "seed-deep": 22_994}


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_every_registered_architecture_trains(name):
    model = modules.build_model(name, generator=torch.Generator().manual_seed(0))
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    logits = model(images)
    assert logits.shape == (3, NUM_CLASSES)
    assert torch.isfinite(logits).all()
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2]))
    penalty = model.penalty()
    (loss if penalty is None else loss + penalty).backward()
    for parameter_name, parameter in model.named_parameters():
        if not parameter.requires_grad:  # a frozen layer (trainable = false) gets no gradient
            assert parameter.grad is None, parameter_name
            continue
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), parameter_name
    rows, total = architecture_summary(get_architecture(name))
    assert modules.count_parameters(model) == total == sum(row.parameters for row in rows)
    if name in KERAS_PARAMETERS:
        assert total == KERAS_PARAMETERS[name]


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_forward_flops_agree_with_torchs_flop_counter(name):
    model = modules.build_model(name, generator=torch.Generator().manual_seed(0)).eval()
    with FlopCounterMode(display=False) as counter:
        model(torch.rand(1, 3, 32, 32))
    layers = parse_layers(get_architecture(name))
    assert forward_flops(layers) == counter.get_total_flops() > 0


HEAD = [{"type": "flatten"}, {"type": "dense", "units": 10, "activation": "softmax"}]


@pytest.mark.parametrize(
    ("layers", "message"),
    [
        ([{"type": "dense", "units": 10, "activation": "softmax"}], "flat input"),
        ([{"type": "conv", "filters": 4, "kernel": 3, "stride": 0}, *HEAD], "stride"),
        ([{"type": "conv", "filters": -4, "kernel": 3}, *HEAD], "filters"),
        ([{"type": "dropout", "rate": 1.5}, *HEAD], r"rate in \[0, 1\)"),
        ([{"type": "conv", "filters": 4, "kernel": 33}, *HEAD], "larger than its input"),
        ([{"type": "maxpool", "size": 40}, *HEAD], "larger than its input"),
        ([{"type": "conv", "filters": 4, "kernel": 3, "stides": 2}, *HEAD], "unknown key 'stides'"),
        ([{"type": "convolution", "filters": 4}, *HEAD], "type"),
        ([{"type": "conv", "kernel": 3}, *HEAD], "missing key 'filters'"),
        ([{"type": "flatten"}, {"type": "dense", "units": 10}], "softmax"),
        ([{"type": "flatten"}, {"type": "dense", "units": 7, "activation": "softmax"}], "10 units"),
        ([{"type": "conv", "filters": 4, "kernel": 3, "padding": "full"}, *HEAD], "padding"),
        ([], "at least one layer"),
    ],
)
def test_invalid_layer_specs_name_the_layer_and_key(layers, message):
    with pytest.raises(CnnlabError, match=message) as error:
        modules.build_model(layers)
    if layers:
        assert "layer" in str(error.value)


def test_glorot_uniform_kernels_and_zero_biases():
    model = modules.build_model("seed", generator=torch.Generator().manual_seed(0))
    for module in model.layers:
        if isinstance(module, modules.KerasConv2d | modules.KerasDense):
            weight = module.weight.detach()
            receptive = weight[0, 0].numel() if weight.dim() == 4 else 1
            fan_in, fan_out = weight.shape[1] * receptive, weight.shape[0] * receptive
            limit = math.sqrt(6 / (fan_in + fan_out))
            assert weight.abs().max() <= limit
            # A uniform(-limit, limit) has std limit/sqrt(3); PyTorch's default would be smaller.
            assert weight.std().item() == pytest.approx(limit / math.sqrt(3), rel=0.15)
            assert torch.count_nonzero(module.bias) == 0


def tf_same_conv_reference(image, kernel, stride):
    """TensorFlow's 'same' convolution by loops: image (C, H, W), kernel (F, C, KH, KW)."""
    channels, height, width = image.shape
    filters, _, kernel_h, kernel_w = kernel.shape
    out_h, out_w = math.ceil(height / stride), math.ceil(width / stride)
    pad_h = max((out_h - 1) * stride + kernel_h - height, 0)
    pad_w = max((out_w - 1) * stride + kernel_w - width, 0)
    padded = np.zeros((channels, height + pad_h, width + pad_w))
    # TensorFlow puts the smaller half first: any extra row/column goes to the bottom/right.
    padded[:, pad_h // 2 : pad_h // 2 + height, pad_w // 2 : pad_w // 2 + width] = image
    out = np.zeros((filters, out_h, out_w))
    for f in range(filters):
        for row in range(out_h):
            for column in range(out_w):
                window = padded[
                    :,
                    row * stride : row * stride + kernel_h,
                    column * stride : column * stride + kernel_w,
                ]
                out[f, row, column] = np.sum(window * kernel[f])
    return out


@settings(max_examples=25, deadline=None)
@given(
    size=st.integers(4, 9),
    kernel=st.integers(1, 4),
    stride=st.integers(1, 3),
    seed=st.integers(0, 2**16),
)
def test_same_padding_matches_tensorflow(size, kernel, stride, seed):
    spec = Conv(filters=2, kernel=(kernel, kernel), stride=(stride, stride), padding="same")
    conv = modules.KerasConv2d(spec, 3, (size, size)).double()
    rng = np.random.default_rng(seed)
    image = rng.normal(size=(3, size, size))
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(rng.normal(size=tuple(conv.weight.shape))))
        conv.bias.zero_()
        ours = conv(torch.from_numpy(image)[None])[0].numpy()
    np.testing.assert_allclose(
        ours, tf_same_conv_reference(image, conv.weight.detach().numpy(), stride)
    )


def test_stride_2_same_padding_is_not_pytorchs_symmetric_padding():
    spec = Conv(filters=1, kernel=(3, 3), stride=(2, 2), padding="same")
    conv = modules.KerasConv2d(spec, 1, (8, 8))
    image = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    symmetric = torch.nn.functional.conv2d(image, conv.weight, conv.bias, stride=2, padding=1)
    assert conv(image).shape == symmetric.shape
    assert not torch.allclose(conv(image), symmetric)


def test_flatten_is_channels_last_like_keras():
    layers = [{"type": "flatten"}, {"type": "dense", "units": 10, "activation": "softmax"}]
    model = modules.build_model(layers, input_shape=(2, 3, 4))
    rng = np.random.default_rng(0)
    images_nhwc = rng.normal(size=(5, 2, 3, 4))
    keras_kernel = rng.normal(size=(2 * 3 * 4, 10))  # Keras's Dense kernel is (inputs, units)
    dense = model.layers[1]
    with torch.no_grad():
        dense.weight.copy_(torch.from_numpy(keras_kernel.T))
        dense.bias.copy_(torch.arange(10.0))
        logits = model(torch.from_numpy(images_nhwc).float().permute(0, 3, 1, 2))
    expected = images_nhwc.reshape(5, -1) @ keras_kernel + np.arange(10)
    np.testing.assert_allclose(logits.numpy(), expected, rtol=1e-5, atol=1e-5)


def test_penalty_is_l1_and_l2_on_dense_kernels_not_biases():
    layers = [
        {"type": "conv", "filters": 2, "kernel": 3},
        {"type": "flatten"},
        {"type": "dense", "units": 10, "activation": "softmax", "l1": 0.01, "l2": 0.5},
    ]
    model = modules.build_model(layers, generator=torch.Generator().manual_seed(0))
    dense = model.layers[-1]
    with torch.no_grad():
        dense.bias.fill_(100.0)
    weight = dense.weight.detach()
    expected = 0.01 * weight.abs().sum() + 0.5 * weight.square().sum()
    assert model.penalty().item() == pytest.approx(expected.item(), rel=1e-6)
    unregularised = modules.build_model([*layers[:2], {**layers[2], "l1": 0, "l2": 0}])
    assert unregularised.penalty() is None


def test_dropout_masks_come_from_the_generator():
    dropout = modules.GeneratorDropout(0.5)
    activations = torch.ones(4, 1000)
    masks = []
    for _ in range(2):
        dropout.generator = torch.Generator().manual_seed(7)
        masks.append(dropout(activations))
    assert torch.equal(masks[0], masks[1])
    assert set(masks[0].unique().tolist()) == {0.0, 2.0}  # kept units are scaled by 1/(1-rate)
    assert masks[0].mean().item() == pytest.approx(1.0, abs=0.05)
    dropout.eval()
    assert torch.equal(dropout(activations), activations)


def test_asymmetric_padding_gradients_are_exact():
    spec = Conv(filters=2, kernel=(3, 3), stride=(2, 2), padding="same")
    conv = modules.KerasConv2d(spec, 2, (6, 6)).double()
    images = torch.rand(2, 2, 6, 6, dtype=torch.float64, requires_grad=True)
    assert conv.extra_padding == (0, 1, 0, 1)  # the case that goes through the custom pad
    assert torch.autograd.gradcheck(conv, (images,))


# --- the seed report's nets are untouched ------------------------------------------------------

# Computed with modules.py as it was before the modern layers (commit 469abf8): the first 16 hex
# digits of the sha256 of the seeded initial parameters and of the printed summary, the loss of
# one seeded training step, and two entries each of the first kernel's and the last bias's
# gradients.
PINNED = {
    "seed": (
        "ea415814d678b009",
        "5bc3ad52a7cbd8b6",
        2.3353540897369385,
        [0.01743944361805916, 0.030833199620246887],
        [-0.15247628092765808, -0.15148554742336273],
    ),
    "seed-maxpool": (
        "bbda6598019d6263",
        "689dd640408eba17",
        2.362852096557617,
        [0.04123273491859436, 0.021327055990695953],
        [-0.1343458592891693, -0.14916735887527466],
    ),
    "seed-deep": (
        "8f1424602a7a4d7b",
        "4652b6092efb4967",
        2.331923484802246,
        [0.019533822312951088, 0.014062419533729553],
        [-0.15130296349525452, -0.14942917227745056],
    ),
    "tiny": (
        "9e2c29e5f58f64d3",
        "b0e4c1686773e1ce",
        2.6333401203155518,
        [0.14164869487285614, 0.007104482501745224],
        [-0.16246254742145538, -0.16273736953735352],
    ),
}


def short_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def seeded_step(model: modules.ConvNet) -> torch.Tensor:
    """The loss of one training step on seeded images and dropout masks; gradients left set."""
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    model.set_dropout_generator(torch.Generator().manual_seed(2))
    logits = model(images)
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2, 3])) + model.penalty()
    loss.backward()
    return loss


@pytest.mark.parametrize("name", sorted(PINNED))
def test_the_seed_report_nets_are_unchanged(name):
    weights, summary, loss, first_gradient, last_gradient = PINNED[name]
    model = modules.build_model(name, generator=torch.Generator().manual_seed(0))
    parameters = b"".join(p.detach().numpy().tobytes() for p in model.parameters())
    assert short_sha256(parameters) == weights
    text = format_summary(name, get_architecture(name))
    assert short_sha256(text.encode()) == summary
    assert seeded_step(model).item() == pytest.approx(loss, rel=1e-6)
    first, last = model.layers[0].weight.grad, model.layers[-1].bias.grad
    np.testing.assert_allclose(first.flatten()[:2].numpy(), first_gradient, rtol=1e-5)
    np.testing.assert_allclose(last[:2].numpy(), last_gradient, rtol=1e-5)


def test_seed_net_is_plain_torch_bit_for_bit():
    """The seed net restated with plain torch ops on this machine: same draws, same bits."""
    model = modules.build_model("seed", generator=torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(0)
    shapes = [(16, 3), (16, 16), (32, 16), (32, 32)]
    kernels = [torch.empty(out, into, 3, 3) for out, into in shapes]
    dense = torch.empty(10, 2048)
    for weight in [*kernels, dense]:
        torch.nn.init.xavier_uniform_(weight, generator=generator)
    convs = [module for module in model.layers if isinstance(module, modules.KerasConv2d)]
    for module, kernel in zip([*convs, model.layers[-1]], [*kernels, dense], strict=True):
        assert torch.equal(module.weight, kernel) and not module.bias.any()
    reference = [torch.nn.Parameter(t) for t in [*kernels, dense]]
    biases = [torch.nn.Parameter(torch.zeros(len(t))) for t in reference]
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    tensor = images
    for index in range(4):
        if index % 2:  # stride 2 on an even side: TensorFlow pads one row and column after
            tensor = F.conv2d(F.pad(tensor, (0, 1, 0, 1)), reference[index], biases[index], 2)
        else:
            tensor = F.conv2d(tensor, reference[index], biases[index], 1, 1)
        tensor = tensor.relu_()
    noise = torch.rand(tensor.shape, generator=torch.Generator().manual_seed(2))
    tensor = tensor * (noise >= 0.5).float().mul_(2.0)
    logits = F.linear(tensor.permute(0, 2, 3, 1).flatten(1), reference[4], biases[4])
    loss = F.cross_entropy(logits, torch.tensor([0, 1, 2, 3])) + 1e-4 * reference[4].abs().sum()
    loss.backward()
    assert torch.equal(seeded_step(model), loss.detach())
    ours = [p.grad for p in model.parameters()]
    theirs = [
        g for pair in zip(reference, biases, strict=True) for g in (pair[0].grad, pair[1].grad)
    ]
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))


# --- activations ------------------------------------------------------------------------------


def reference_activation(name: str, values: np.ndarray) -> np.ndarray:
    """Keras's activations in float64 NumPy."""
    formulas = {
        "linear": lambda x: x,
        "relu": lambda x: np.maximum(x, 0),
        "gelu": lambda x: 0.5 * x * (1 + special.erf(x / math.sqrt(2))),  # exact, not tanh
        "silu": lambda x: x / (1 + np.exp(-x)),
        "leaky_relu": lambda x: np.where(x > 0, x, 0.2 * x),  # Keras's slope, not torch's 0.01
        "elu": lambda x: np.where(x > 0, x, np.expm1(x)),
        "tanh": np.tanh,
        "sigmoid": lambda x: 1 / (1 + np.exp(-x)),
    }
    return formulas[name](values)


@pytest.mark.parametrize("name", [name for name in ACTIVATIONS if name != "softmax"])
def test_activations_match_keras_formulas(name):
    values = np.random.default_rng(0).normal(scale=3, size=(4, 50))
    tensor = torch.from_numpy(values)
    ours = modules.apply_activation(name, tensor)
    np.testing.assert_allclose(ours.numpy(), reference_activation(name, values), rtol=1e-12)
    assert torch.equal(tensor, torch.from_numpy(values))  # out of place: an input may be shared
    assert torch.equal(modules.activate(name, tensor.clone()), ours)
    layer = modules.build_model([{"type": "activation", "activation": name}, *HEAD]).layers[0]
    assert torch.equal(layer(tensor), ours)


# --- batch normalisation ----------------------------------------------------------------------


def keras_moving_statistics(batches, momentum, axes):
    """Keras's moving mean and variance after `batches`, in float64 NumPy."""
    channels = batches[0].shape[1]
    mean, variance = np.zeros(channels), np.ones(channels)
    for batch in batches:
        mean = mean * momentum + batch.mean(axis=axes) * (1 - momentum)
        variance = variance * momentum + batch.var(axis=axes) * (1 - momentum)  # biased
    return mean, variance


@pytest.mark.parametrize(
    ("shape", "options"),
    [
        ((6, 3, 5, 4), {}),
        ((6, 3, 5, 4), {"momentum": 0.5, "epsilon": 0.1}),
        ((6, 3, 5, 4), {"center": False}),
        ((6, 3, 5, 4), {"scale": False, "momentum": 0.0}),
        ((7, 5), {"momentum": 0.9}),  # a flat input: the features are the channels
    ],
)
def test_batch_norm_is_keras_batch_normalization(shape, options):
    spec = BatchNorm(**options)
    norm = modules.KerasBatchNorm(spec, shape[1]).double()
    rng = np.random.default_rng(1)
    with torch.no_grad():
        for parameter in (norm.weight, norm.bias):
            if parameter is not None:
                parameter.copy_(torch.from_numpy(rng.normal(size=shape[1])))
    axes = (0,) if len(shape) == 2 else (0, 2, 3)
    batches = [rng.normal(loc=3, scale=2, size=shape) for _ in range(4)]
    for batch in batches:
        tensor = torch.from_numpy(batch)
        expected = F.batch_norm(tensor, None, None, norm.weight, norm.bias, True, 0.0, spec.epsilon)
        np.testing.assert_allclose(norm(tensor).detach(), expected.detach(), rtol=1e-12)
    mean, variance = keras_moving_statistics(batches, spec.momentum, axes)
    np.testing.assert_allclose(norm.running_mean.numpy(), mean, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(norm.running_var.numpy(), variance, rtol=1e-13)
    # PyTorch's own layer in eval mode with the same statistics and weights.
    torch_norm = (torch.nn.BatchNorm1d if len(shape) == 2 else torch.nn.BatchNorm2d)(
        shape[1], eps=spec.epsilon, affine=False
    ).double()
    torch_norm.running_mean.copy_(norm.running_mean)
    torch_norm.running_var.copy_(norm.running_var)
    tensor = torch.from_numpy(batches[0])
    expected = torch_norm.eval()(tensor)
    view = (1, -1) + (1,) * (len(shape) - 2)
    if norm.weight is not None:
        expected = expected * norm.weight.detach().reshape(view)
    if norm.bias is not None:
        expected = expected + norm.bias.detach().reshape(view)
    np.testing.assert_allclose(norm.eval()(tensor).detach(), expected, rtol=1e-12, atol=1e-14)
    names = {name for name, _ in norm.named_parameters()}
    assert names == {name for name, kept in (("weight", spec.scale), ("bias", spec.center)) if kept}


def test_batch_norm_is_not_torchs_moving_variance():
    """PyTorch moves its variance by the unbiased batch variance; Keras by the biased one."""
    batch = torch.randn(4, 2, 2, 2, generator=torch.Generator().manual_seed(0))
    ours = modules.KerasBatchNorm(BatchNorm(momentum=0.0), 2)
    theirs = torch.nn.BatchNorm2d(2, momentum=1.0)
    ours(batch)
    theirs(batch)
    assert torch.allclose(ours.running_mean, theirs.running_mean)
    np.testing.assert_allclose(ours.running_var, batch.var((0, 2, 3), unbiased=False), rtol=1e-6)
    np.testing.assert_allclose(ours.running_var * 16 / 15, theirs.running_var, rtol=1e-6)


def test_batch_norm_of_one_value_per_channel_is_kerass():
    """F.batch_norm refuses it; Keras's batch variance is 0, so the output is beta."""
    norm = modules.KerasBatchNorm(BatchNorm(momentum=0.5), 3)
    with torch.no_grad():
        norm.bias.copy_(torch.tensor([1.0, 2.0, 3.0]))
    features = torch.tensor([[4.0, -2.0, 0.5]], requires_grad=True)
    output = norm(features)
    assert torch.equal(output.detach(), torch.tensor([[1.0, 2.0, 3.0]]))
    output.sum().backward()
    assert not features.grad.any()
    assert torch.equal(norm.running_mean, torch.tensor([2.0, -1.0, 0.25]))
    assert torch.equal(norm.running_var, torch.full((3,), 0.5))


def test_batch_norm_under_bfloat16_autocast_and_channels_last():
    conv = modules.KerasConv2d(Conv(8, (3, 3), padding="same", use_bias=False), 3, (6, 6))
    norm = modules.KerasBatchNorm(BatchNorm(momentum=0.0), 8)
    images = torch.randn(5, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    images = images.contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        features = conv(images)
        output = norm(features)
    assert features.dtype == output.dtype == torch.bfloat16
    assert norm.running_var.dtype == torch.float32
    reference = features.detach().float()
    np.testing.assert_allclose(norm.running_mean, reference.mean((0, 2, 3)), rtol=1e-3, atol=1e-4)
    biased = reference.var((0, 2, 3), unbiased=False)
    np.testing.assert_allclose(norm.running_var, biased, rtol=1e-3)
    expected = (reference - reference.mean((0, 2, 3), keepdim=True)) / (
        biased.reshape(1, -1, 1, 1) + 1e-3
    ).sqrt()
    np.testing.assert_allclose(output.float().detach(), expected, atol=0.05)
    output.float().sum().backward()
    assert torch.isfinite(conv.weight.grad).all()


# --- pools ------------------------------------------------------------------------------------


def test_average_and_global_pools_match_torchs():
    images = torch.randn(2, 3, 7, 9, generator=torch.Generator().manual_seed(0))
    average = {"type": "avgpool", "size": [3, 2], "stride": [2, 3]}
    model = modules.build_model([average, *HEAD], input_shape=(7, 9, 3))
    assert torch.equal(model.layers[0](images), torch.nn.AvgPool2d((3, 2), (2, 3))(images))
    # 'valid' padding: (7 - 3)//2 + 1 rows, (9 - 2)//3 + 1 columns.
    assert architecture_summary([average, *HEAD], (7, 9, 3))[0][0].output_shape == (3, 3, 3)
    dense = HEAD[1]
    global_average, global_max = (
        modules.build_model([{"type": kind}, dense], input_shape=(7, 9, 3)).layers[0]
        for kind in ("globalavgpool", "globalmaxpool")
    )
    expected = F.adaptive_avg_pool2d(images, 1).flatten(1)
    np.testing.assert_allclose(global_average(images), expected, rtol=1e-6)
    assert torch.equal(global_max(images), F.adaptive_max_pool2d(images, 1).flatten(1))


# --- residual blocks --------------------------------------------------------------------------


def conv_reference(image, kernel, bias, stride, padding):
    """A conv by loops in float64: image (C, H, W), kernel (F, C, KH, KW), TF 'same' or 'valid'."""
    if padding == "same":
        return tf_same_conv_reference(image, kernel, stride) + bias[:, None, None]
    filters, _, kernel_h, kernel_w = kernel.shape
    out_h = (image.shape[1] - kernel_h) // stride + 1
    out_w = (image.shape[2] - kernel_w) // stride + 1
    out = np.zeros((filters, out_h, out_w))
    for row in range(out_h):
        for column in range(out_w):
            top, left = row * stride, column * stride
            window = image[:, top : top + kernel_h, left : left + kernel_w]
            out[:, row, column] = np.tensordot(kernel, window, axes=3) + bias
    return out


def numpy_weights(module):
    return module.weight.detach().numpy(), module.bias.detach().numpy()


@pytest.mark.parametrize(("size", "stride"), [((8, 6), 2), ((9, 9), 3)])
def test_residual_block_with_projection_matches_a_numpy_loop(size, stride):
    """relu(conv(relu(conv_strided(x))) + projection(x)): TF 'same' padding inside, a 1x1
    strided projection on the shortcut (the filters and the size change)."""
    block = {
        "type": "residual",
        "layers": [
            {"type": "conv", "filters": 5, "kernel": 3, "stride": stride, "padding": "same"},
            {"type": "activation", "activation": "relu"},
            {"type": "conv", "filters": 5, "kernel": 2, "padding": "same"},
        ],
        "activation": "relu",
    }
    model = modules.build_model(
        [block, *HEAD], input_shape=(*size, 3), generator=torch.Generator().manual_seed(0)
    ).double()
    residual = model.layers[0]
    first, second = residual.layers[0], residual.layers[2]
    (projection,) = residual.shortcut
    assert projection.kernel_size == (1, 1) and projection.stride == (stride, stride)
    rng = np.random.default_rng(0)
    with torch.no_grad():
        for module in (first, second, projection):
            module.bias.copy_(torch.from_numpy(rng.normal(size=module.bias.shape)))
    image = rng.normal(size=(3, *size))
    with torch.no_grad():
        ours = residual(torch.from_numpy(image)[None])[0].numpy()
    hidden = np.maximum(conv_reference(image, *numpy_weights(first), stride, "same"), 0)
    branch = conv_reference(hidden, *numpy_weights(second), 1, "same")
    shortcut = conv_reference(image, *numpy_weights(projection), stride, "valid")
    np.testing.assert_allclose(ours, np.maximum(branch + shortcut, 0), rtol=1e-10)


def test_residual_identity_shortcut_adds_the_input():
    same = {"type": "conv", "filters": 3, "kernel": 3, "padding": "same"}
    model = modules.build_model(
        [{"type": "residual", "layers": [same]}, *HEAD], input_shape=(5, 5, 3)
    ).double()
    residual = model.layers[0]
    assert len(residual.shortcut) == 0
    image = np.random.default_rng(0).normal(size=(3, 5, 5))
    with torch.no_grad():
        ours = residual(torch.from_numpy(image)[None])[0].numpy()
    branch = conv_reference(image, *numpy_weights(residual.layers[0]), 1, "same")
    np.testing.assert_allclose(ours, branch + image, rtol=1e-10)


# --- initialisers, frozen layers, biases, counts ----------------------------------------------


@pytest.mark.parametrize("init", ["he_normal", "he_uniform"])
def test_he_initialisers_scale_by_fan_in(init):
    layers = [
        {"type": "conv", "filters": 64, "kernel": 3, "init": init},
        {"type": "globalavgpool"},
        {"type": "dense", "units": 10, "activation": "softmax", "init": init},
    ]
    model = modules.build_model(layers, input_shape=(8, 8, 32), generator=torch.Generator())
    for module, fan_in in ((model.layers[0], 32 * 3 * 3), (model.layers[-1], 64)):
        weight = module.weight.detach()
        if init == "he_normal":  # a normal truncated at two of its (widened) deviations
            bound = 2 * math.sqrt(2 / fan_in) / 0.87962566103423978
        else:
            bound = math.sqrt(6 / fan_in)
        assert weight.abs().max().item() <= bound
        if weight.numel() > 10_000:
            assert weight.std().item() == pytest.approx(math.sqrt(2 / fan_in), rel=0.03)
            assert weight.abs().max().item() > 0.97 * bound


def test_initialise_draws_blocks_then_shortcuts_in_layer_order():
    layers = [
        {"type": "conv", "filters": 4, "kernel": 3, "padding": "same", "init": "he_uniform"},
        {"type": "batchnorm"},
        {
            "type": "residual",
            "layers": [
                {"type": "conv", "filters": 6, "kernel": 3, "stride": 2, "padding": "same"},
                {
                    "type": "residual",
                    "layers": [{"type": "conv", "filters": 6, "kernel": 1, "init": "he_normal"}],
                },
            ],
        },
        {"type": "flatten"},
        {"type": "dense", "units": 10, "activation": "softmax"},
    ]
    model = modules.build_model(layers, input_shape=(6, 6, 3))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.fill_(7.0)
        for buffer in model.buffers():
            buffer.fill_(7.0)
    modules.initialise(model, torch.Generator().manual_seed(5))
    generator = torch.Generator().manual_seed(5)
    expected = [
        torch.empty(4, 3, 3, 3).uniform_(
            -math.sqrt(6 / 27), math.sqrt(6 / 27), generator=generator
        ),
        torch.nn.init.xavier_uniform_(torch.empty(6, 4, 3, 3), generator=generator),
        torch.nn.init.trunc_normal_(
            torch.empty(6, 6, 1, 1),
            0.0,
            math.sqrt(2 / 6) / 0.87962566103423978,
            -2 * math.sqrt(2 / 6) / 0.87962566103423978,
            2 * math.sqrt(2 / 6) / 0.87962566103423978,
            generator=generator,
        ),
        torch.nn.init.xavier_uniform_(torch.empty(6, 4, 1, 1), generator=generator),  # projection
        torch.nn.init.xavier_uniform_(torch.empty(10, 54), generator=generator),
    ]
    kernels = [
        m.weight for m in model.modules() if isinstance(m, modules.KerasConv2d | modules.KerasDense)
    ]
    for ours, theirs in zip(kernels, expected, strict=True):
        assert torch.equal(ours, theirs)
    norm = model.layers[1]
    assert (norm.weight == 1).all() and not norm.bias.any() and not norm.running_mean.any()
    assert (norm.running_var == 1).all()
    biases = [m.bias for m in model.modules() if getattr(m, "bias", None) is not None]
    assert all(not bias.any() for bias in biases if bias is not norm.bias)


def test_frozen_and_biasless_layers_count_as_keras_counts_them():
    layers = [
        {"type": "conv", "filters": 4, "kernel": 3, "trainable": False, "l2": 0.5},
        {"type": "batchnorm", "center": False},
        {"type": "conv", "filters": 2, "kernel": 3, "use_bias": False, "l1": 0.25, "l2": 0.5},
        {"type": "flatten"},
        {"type": "dense", "units": 10, "activation": "softmax", "use_bias": False, "l1": 0.125},
    ]
    model = modules.build_model(layers, input_shape=(6, 6, 3), generator=torch.Generator())
    frozen, norm, conv, dense = model.layers[0], model.layers[1], model.layers[2], model.layers[4]
    assert not frozen.weight.requires_grad and not frozen.bias.requires_grad
    assert conv.bias is None and dense.bias is None and norm.bias is None
    assert [name for name, _ in model.named_parameters()] == [
        "layers.0.weight",
        "layers.0.bias",
        "layers.1.weight",
        "layers.2.weight",
        "layers.4.weight",
    ]
    # Keras regularises trainable weights only: the frozen kernel's l2 is not in the loss.
    expected = (
        0.25 * conv.weight.abs().sum() + 0.5 * conv.weight.square().sum()
    ) + 0.125 * dense.weight.abs().sum()
    assert model.penalty().item() == pytest.approx(expected.item(), rel=1e-6)
    rows, total = architecture_summary(layers, (6, 6, 3))
    conv_frozen, norm_count = 3 * 3 * 3 * 4 + 4, 3 * 4  # gamma, moving mean, moving variance
    assert [(row.parameters, row.non_trainable) for row in rows] == [
        (conv_frozen, conv_frozen),
        (norm_count, 8),
        (3 * 3 * 4 * 2, 0),
        (0, 0),
        (2 * 2 * 2 * 10, 0),
    ]
    assert modules.count_parameters(model) == total == conv_frozen + norm_count + 72 + 80
    text = format_summary("frozen", layers, (6, 6, 3))
    frozen_count = conv_frozen + 8
    assert text.endswith(
        f"Total params: {total}\nTrainable params: {total - frozen_count}"
        f"\nNon-trainable params: {frozen_count}"
    )


def test_dropout_generator_reaches_nested_dropouts():
    layers = [
        {
            "type": "residual",
            "layers": [
                {"type": "dropout", "rate": 0.5},
                {"type": "residual", "layers": [{"type": "dropout", "rate": 0.5}]},
            ],
        },
        *HEAD,
    ]
    model = modules.build_model(layers, input_shape=(4, 4, 3))
    dropouts = [m for m in model.modules() if isinstance(m, modules.GeneratorDropout)]
    generator = torch.Generator().manual_seed(3)
    model.set_dropout_generator(generator)
    assert len(dropouts) == 2 and all(dropout.generator is generator for dropout in dropouts)
    images = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(4))
    ours = model.layers[0](images)
    # The masks are drawn in layer order: the outer block's dropout, then the inner one's.
    mirror = torch.Generator().manual_seed(3)
    outer = images * (torch.rand(2, 3, 4, 4, generator=mirror) >= 0.5).float() * 2
    inner = outer * (torch.rand(2, 3, 4, 4, generator=mirror) >= 0.5).float() * 2
    assert torch.equal(ours, (inner + outer) + images)


def test_forward_flops_count_nested_blocks_and_shortcuts():
    layers = [
        {
            "type": "residual",
            "layers": [
                {"type": "conv", "filters": 4, "kernel": 3, "stride": 2, "padding": "same"},
                {"type": "residual", "layers": [{"type": "conv", "filters": 4, "kernel": 1}]},
            ],
            "shortcut": [{"type": "avgpool"}, {"type": "conv", "filters": 4, "kernel": 1}],
        },
        {"type": "globalavgpool"},
        {"type": "dense", "units": 10, "activation": "softmax"},
    ]
    model = modules.build_model(layers, input_shape=(8, 8, 3)).eval()
    with FlopCounterMode(display=False) as counter:
        model(torch.rand(1, 3, 8, 8))
    flops = forward_flops(parse_layers(layers, (8, 8, 3)), (8, 8, 3))
    assert flops == counter.get_total_flops() == 2 * (16 * 4 * 27 + 16 * 4 * 4 + 16 * 4 * 3 + 40)


# --- patch whitening --------------------------------------------------------------------------


def correlated_images(count: int, size: int, seed: int) -> torch.Tensor:
    """Float NCHW images whose neighbouring pixels and channels are strongly correlated."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(size=(count, 3, size + 2, size + 2))
    smooth = noise[:, :, :-2, :-2] + noise[:, :, 1:-1, 1:-1] + 0.5 * noise[:, :, 2:, 2:]
    mixing = np.array([[1.0, 0.8, 0.3], [0.0, 1.0, 0.6], [0.2, 0.0, 1.0]])
    return torch.from_numpy(np.einsum("dc,nchw->ndhw", mixing, smooth) + 0.7).float()


def whitened_net(filters: int, kernel: int = 2, **keys) -> modules.ConvNet:
    first = {"type": "conv", "filters": filters, "kernel": kernel, "init": "whiten", **keys}
    return modules.build_model([first, *HEAD], input_shape=(9, 9, 3), generator=torch.Generator())


def test_whitened_outputs_have_identity_covariance_and_zero_mean():
    images = correlated_images(64, 9, seed=0)
    model = whitened_net(24)  # 2·(2·2·3): every eigenvector and its negation
    assert modules.needs_whitening(model)
    modules.whiten_first_layer(model, images, epsilon=1e-9)
    with torch.no_grad():
        outputs = model.layers[0](images).double()
    half = outputs[:, :12].permute(1, 0, 2, 3).reshape(12, -1)
    np.testing.assert_allclose(torch.cov(half, correction=0), np.eye(12), atol=2e-3)
    np.testing.assert_allclose(half.mean(1), np.zeros(12), atol=2e-4)
    assert torch.equal(outputs[:, 12:], -outputs[:, :12])


def test_whitened_kernel_is_the_leading_eigenvectors_of_a_numpy_covariance():
    images = correlated_images(16, 9, seed=1)
    model = whitened_net(6, kernel=(2, 3), use_bias=False)
    modules.whiten_first_layer(model, images)
    array = images.double().numpy()
    patches = np.array(
        [
            array[n, :, row : row + 2, column : column + 3].reshape(-1)
            for n in range(16)
            for row in range(8)
            for column in range(7)
        ]
    )
    covariance = np.cov(patches, rowvar=False, bias=True)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    leading = (
        eigenvectors[:, ::-1][:, :3].T
        / np.sqrt(eigenvalues[::-1][:3] + 5e-4 * eigenvalues.mean())[:, None]
    )
    kernel = model.layers[0].weight.detach().double().reshape(6, -1).numpy()
    signs = np.sign(np.sum(kernel[:3] * leading, axis=1))  # eigenvectors have no fixed sign
    np.testing.assert_allclose(kernel[:3], leading * signs[:, None], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(kernel[3:], -kernel[:3])
    assert model.layers[0].bias is None
    # Largest eigenvalue first: the first filter has the smallest norm.
    norms = np.linalg.norm(kernel[:3], axis=1)
    assert np.all(np.diff(norms) > 0)


def test_patch_statistics_do_not_depend_on_the_chunk():
    images = correlated_images(10, 9, seed=2)
    whole = modules.patch_statistics(images, (3, 3), chunk=100)
    parts = modules.patch_statistics(images, (3, 3), chunk=3)
    for ours, theirs in zip(whole, parts, strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=1e-12)


def test_whitening_needs_a_whiten_net_and_varied_images():
    plain = modules.build_model("tiny")
    assert not modules.needs_whitening(plain)
    with pytest.raises(CnnlabError, match="not a conv with init 'whiten'"):
        modules.whiten_first_layer(plain, torch.rand(2, 3, 32, 32))
    with pytest.raises(CnnlabError, match="do not vary"):
        modules.whiten_first_layer(whitened_net(4), torch.full((2, 3, 9, 9), 0.5))


# --- rescaling and a softmax activation at the end ----------------------------------------------


def test_rescaling_is_x_times_scale_plus_offset_and_can_end_before_a_softmax():
    layers = [
        {"type": "rescaling", "scale": 2.0, "offset": -1.0},  # [0, 1] pixels to [-1, 1]
        {"type": "conv", "filters": 4, "kernel": 3},
        {"type": "globalmaxpool"},
        {"type": "dense", "units": 10, "use_bias": False},
        {"type": "rescaling", "scale": 1 / 9},
        {"type": "activation", "activation": "softmax"},
    ]
    model = modules.build_model(layers, generator=torch.Generator().manual_seed(0))
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    conv, dense = model.layers[1], model.layers[3]
    expected = dense(conv(images * 2.0 - 1.0).amax((2, 3))) / 9
    torch.testing.assert_close(model(images), expected)  # logits: the softmax is the loss's
    rows, total = architecture_summary(layers)
    assert [row.kind for row in rows][-2:] == ["Rescaling", "Activation"]
    assert total == (3 * 3 * 3 + 1) * 4 + 4 * 10
