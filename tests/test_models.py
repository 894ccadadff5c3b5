"""Layer specs, the registry and the Keras semantics of the built networks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.flop_counter import FlopCounterMode

from cnnlab import models
from cnnlab.errors import CnnlabError

# Keras's model.summary() totals for the seed report's networks.
KERAS_PARAMETERS = {"seed": 37_146, "seed-maxpool": 98_586, "seed-deep": 22_994}


@pytest.mark.parametrize("name", sorted(models.ARCHITECTURES))
def test_every_registered_architecture_trains(name):
    model = models.build_model(name, generator=torch.Generator().manual_seed(0))
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    logits = model(images)
    assert logits.shape == (3, models.NUM_CLASSES)
    assert torch.isfinite(logits).all()
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2]))
    (loss + model.penalty()).backward()
    for parameter_name, parameter in model.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), parameter_name
    rows, total = models.architecture_summary(models.get_architecture(name))
    assert models.count_parameters(model) == total == sum(row.parameters for row in rows)
    if name in KERAS_PARAMETERS:
        assert total == KERAS_PARAMETERS[name]


@pytest.mark.parametrize("name", sorted(models.ARCHITECTURES))
def test_forward_flops_agree_with_torchs_flop_counter(name):
    model = models.build_model(name, generator=torch.Generator().manual_seed(0)).eval()
    with FlopCounterMode(display=False) as counter:
        model(torch.rand(1, 3, 32, 32))
    layers = models.parse_layers(models.get_architecture(name))
    assert models.forward_flops(layers) == counter.get_total_flops() > 0


def test_seed_summary_matches_the_report_table():
    rows, _ = models.architecture_summary(models.get_architecture("seed"))
    assert [(row.name, row.output_shape, row.parameters) for row in rows] == [
        ("conv2d", (32, 32, 16), 448),
        ("conv2d_1", (16, 16, 16), 2320),
        ("conv2d_2", (16, 16, 32), 4640),
        ("conv2d_3", (8, 8, 32), 9248),
        ("dropout", (8, 8, 32), 0),
        ("flatten", (2048,), 0),
        ("dense", (10,), 20490),
    ]
    text = models.format_summary("seed", models.get_architecture("seed"))
    assert "Total params: 37,146" in text and "(None, 16, 16, 16)" in text


def test_unknown_architecture_lists_the_known_ones():
    with pytest.raises(CnnlabError, match="known: seed, seed-deep, seed-maxpool, tiny"):
        models.get_architecture("resnet")


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
        models.build_model(layers)
    if layers:
        assert "layer" in str(error.value)


def test_config_l1_overrides_every_dense_kernel():
    class Config:
        arch, layers, l1, l2 = "seed", None, 0.5, None

    (dense,) = [layer for layer in models.resolve_layers(Config) if isinstance(layer, models.Dense)]
    assert (dense.l1, dense.l2) == (0.5, 0.0)
    Config.l1 = None
    (dense,) = [layer for layer in models.resolve_layers(Config) if isinstance(layer, models.Dense)]
    assert dense.l1 == 1e-4


def test_glorot_uniform_kernels_and_zero_biases():
    model = models.build_model("seed", generator=torch.Generator().manual_seed(0))
    for module in model.layers:
        if isinstance(module, models.KerasConv2d | models.KerasDense):
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
    spec = models.Conv(filters=2, kernel=(kernel, kernel), stride=(stride, stride), padding="same")
    conv = models.KerasConv2d(spec, 3, (size, size)).double()
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
    spec = models.Conv(filters=1, kernel=(3, 3), stride=(2, 2), padding="same")
    conv = models.KerasConv2d(spec, 1, (8, 8))
    image = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    symmetric = torch.nn.functional.conv2d(image, conv.weight, conv.bias, stride=2, padding=1)
    assert conv(image).shape == symmetric.shape
    assert not torch.allclose(conv(image), symmetric)


def test_flatten_is_channels_last_like_keras():
    layers = [{"type": "flatten"}, {"type": "dense", "units": 10, "activation": "softmax"}]
    model = models.build_model(layers, input_shape=(2, 3, 4))
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
    model = models.build_model(layers, generator=torch.Generator().manual_seed(0))
    dense = model.layers[-1]
    with torch.no_grad():
        dense.bias.fill_(100.0)
    weight = dense.weight.detach()
    expected = 0.01 * weight.abs().sum() + 0.5 * weight.square().sum()
    assert model.penalty().item() == pytest.approx(expected.item(), rel=1e-6)
    unregularised = models.build_model([*layers[:2], {**layers[2], "l1": 0, "l2": 0}])
    assert unregularised.penalty() is None


def test_dropout_masks_come_from_the_generator():
    dropout = models.GeneratorDropout(0.5)
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
    spec = models.Conv(filters=2, kernel=(3, 3), stride=(2, 2), padding="same")
    conv = models.KerasConv2d(spec, 2, (6, 6)).double()
    images = torch.rand(2, 2, 6, 6, dtype=torch.float64, requires_grad=True)
    assert conv.extra_padding == (0, 1, 0, 1)  # the case that goes through the custom pad
    assert torch.autograd.gradcheck(conv, (images,))
