"""cnnlab against the real Keras 3 (torch backend), for every registered architecture.

Keras's model gets cnnlab's weights (conv kernels (out, in, kh, kw) -> (kh, kw, in, out), dense
kernels transposed); then summaries, the eval forward pass, the loss with its kernel penalty,
gradients, parameters after Adam steps (dropout off) and `fit`'s running means and validation
split must agree. Keras's torch backend runs float64 models but computes Dense's matmul in
float32 (its JAX-like promotion, keras/src/backend/common/dtypes.py's BIT64_TO_BIT32_DTYPE), so
float64 comparisons carry float32 rounding from the dense layer (about 1e-8). BatchNormalization
computes in result_type(float64, "float32"), float32 by the same rule, so nets with batch norms
agree to float32's rounding.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os

os.environ["KERAS_BACKEND"] = "torch"  # before keras is imported

import keras
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cnnlab.config import RunConfig
from cnnlab.data import datasets as data_module
from cnnlab.nn import modules
from cnnlab.nn.architectures import ARCHITECTURES as REGISTRY
from cnnlab.nn.architectures import get_architecture
from cnnlab.nn.shapes import INPUT_SHAPE, NUM_CLASSES, output_shape, parse_layers, shortcut_specs
from cnnlab.nn.specs import (
    ACTIVATIONS,
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
    flat_specs,
)
from cnnlab.nn.summary import architecture_summary
from cnnlab.training import loop
from cnnlab.training.device import images_to_device
from cnnlab.training.optim import KerasAdam, make_optimizer

# Keras's torch backend calls np.array(x, copy=False) on tensors (keras/src/backend/torch/core.py).
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
# The registry's strong nets (a frozen whitened stem, no penalty) are held to Keras by
# test_strong_nets_match_keras; the tests parametrised over these train every weight.
STRONG = sorted(name for name in REGISTRY if name.startswith("strong"))
ARCHITECTURES = sorted(set(REGISTRY) - set(STRONG))
# The registered nets without batch norm: the seed report's vocabulary.
KERAS_BN_FREE = [
    name
    for name in ARCHITECTURES
    if not any(
        isinstance(layer, BatchNorm) for layer in flat_specs(parse_layers(get_architecture(name)))
    )
]
CPU = torch.device("cpu")
DEFAULT_CONFIG = RunConfig()


@pytest.fixture(autouse=True, scope="module")
def _torch_backend():
    assert keras.backend.backend() == "torch", "KERAS_BACKEND was set before this module ran"


@contextlib.contextmanager
def floatx(dtype: str):
    """Keras's default float type for the models built inside; restored afterwards."""
    previous = keras.config.floatx()
    keras.config.set_floatx(dtype)
    try:
        yield
    finally:
        keras.config.set_floatx(previous)


def layer_specs(name: str, *, dropout: bool = True) -> tuple[LayerSpec, ...]:
    """The architecture's parsed layers; without dropout, every dropout rate is 0."""
    layers = parse_layers(get_architecture(name))
    if dropout:
        return layers
    return tuple(
        dataclasses.replace(layer, rate=0.0) if isinstance(layer, Dropout) else layer
        for layer in layers
    )


def keras_layer(layer: LayerSpec):
    """The Keras layer of one (non-residual) layer spec, with Keras's default name."""
    if isinstance(layer, Conv):
        regularizer = (
            keras.regularizers.L1L2(l1=layer.l1, l2=layer.l2) if layer.l1 or layer.l2 else None
        )
        return keras.layers.Conv2D(
            layer.filters,
            layer.kernel,
            strides=layer.stride,
            padding=layer.padding,
            activation=layer.activation,
            use_bias=layer.use_bias,
            kernel_regularizer=regularizer,
            trainable=layer.trainable,
        )
    if isinstance(layer, MaxPool):
        return keras.layers.MaxPooling2D(layer.size, strides=layer.stride)
    if isinstance(layer, AvgPool):
        return keras.layers.AveragePooling2D(layer.size, strides=layer.stride)
    if isinstance(layer, Dropout):
        return keras.layers.Dropout(layer.rate)
    if isinstance(layer, Flatten):
        return keras.layers.Flatten()
    if isinstance(layer, BatchNorm):
        return keras.layers.BatchNormalization(
            momentum=layer.momentum, epsilon=layer.epsilon, center=layer.center, scale=layer.scale
        )
    if isinstance(layer, Activation):
        return keras.layers.Activation(layer.activation)
    if isinstance(layer, Rescaling):
        return keras.layers.Rescaling(layer.scale, layer.offset)
    if isinstance(layer, GlobalAvgPool):
        return keras.layers.GlobalAveragePooling2D()
    if isinstance(layer, GlobalMaxPool):
        return keras.layers.GlobalMaxPooling2D()
    regularizer = keras.regularizers.L1L2(l1=layer.l1, l2=layer.l2)
    return keras.layers.Dense(
        layer.units,
        activation=layer.activation,
        kernel_regularizer=regularizer,
        use_bias=layer.use_bias,
        trainable=layer.trainable,
    )


def keras_graph(layers, tensor, shape: tuple[int, ...]):
    """Keras's functional graph of `layers` applied to `tensor`, layers created in cnnlab's
    order: a residual block's layers, its shortcut, then Add (and its Activation)."""
    for layer in layers:
        if isinstance(layer, Residual):
            branch = keras_graph(layer.layers, tensor, shape)
            shortcut = keras_graph(shortcut_specs(layer, shape), tensor, shape)
            output = keras.layers.Add()([branch, shortcut])
            if layer.activation != "linear":
                output = keras.layers.Activation(layer.activation)(output)
        else:
            output = keras_layer(layer)(tensor)
        tensor, shape = output, output_shape(layer, shape)
    return tensor


def keras_model(layers: tuple[LayerSpec, ...]) -> keras.Model:
    """The Keras model the layer specs describe, with Keras's default layer names: Sequential,
    or functional where residual blocks need keras.layers.Add."""
    keras.backend.clear_session()  # restarts the name counters: conv2d, conv2d_1, ...
    inputs = keras.Input(shape=INPUT_SHAPE)
    if any(isinstance(layer, Residual) for layer in layers):
        return keras.Model(inputs, keras_graph(layers, inputs, INPUT_SHAPE))
    return keras.Sequential([inputs, *(keras_layer(layer) for layer in layers)])


# cnnlab's modules with weights and the base of their Keras layers' default names.
KERAS_BASES = {
    modules.KerasConv2d: "conv2d",
    modules.KerasDense: "dense",
    modules.KerasBatchNorm: "batch_normalization",
}


def weighted_pairs(net: modules.ConvNet, model: keras.Model) -> list:
    """(cnnlab module, Keras layer) for every layer with weights, in cnnlab's layer order.

    Keras names each kind's layers in creation order (conv2d, conv2d_1, ...), which is cnnlab's;
    a functional model lists its layers in its graph's order, so pairs are matched by name."""
    pairs, seen = [], {}
    for module in net.modules():
        base = KERAS_BASES.get(type(module))
        if base is not None:
            count = seen.get(base, 0)
            seen[base] = count + 1
            pairs.append((module, model.get_layer(base if count == 0 else f"{base}_{count}")))
    assert len(pairs) == len([layer for layer in model.layers if layer.weights])
    return pairs


def keras_layout(weight: torch.Tensor) -> np.ndarray:
    """A cnnlab kernel in Keras's layout."""
    array = weight.detach().double().numpy()
    return array.transpose(2, 3, 1, 0) if array.ndim == 4 else array.T


def cnnlab_weights(module: torch.nn.Module) -> list[np.ndarray]:
    """A module's weights in Keras's layouts and order (kernel, bias; gamma, beta, moving mean,
    moving variance), those it has."""
    if isinstance(module, modules.KerasBatchNorm):
        tensors = (module.weight, module.bias, module.running_mean, module.running_var)
        return [tensor.detach().double().numpy() for tensor in tensors if tensor is not None]
    bias = [] if module.bias is None else [module.bias.detach().double().numpy()]
    return [keras_layout(module.weight), *bias]


def copy_weights(net: modules.ConvNet, model: keras.Model) -> None:
    for module, layer in weighted_pairs(net, model):
        layer.set_weights(cnnlab_weights(module))


def cnnlab_and_keras(
    name: str, dtype: str, *, dropout: bool = True, config: RunConfig = DEFAULT_CONFIG
):
    """The architecture in both frameworks with the same (cnnlab-initialised) weights; the Keras
    model compiled with the config's Adam."""
    layers = layer_specs(name, dropout=dropout)
    net = modules.ConvNet(layers, INPUT_SHAPE)
    modules.initialise(net, torch.Generator().manual_seed(config.seed))
    net.to(getattr(torch, dtype))
    with floatx(dtype):
        model = keras_model(layers)
        compile_like(model, config)
    copy_weights(net, model)
    return net, model


def random_batch(rng: np.random.Generator, size: int, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """Channels-last images in [0, 1) and labels."""
    images = rng.random((size, *INPUT_SHAPE)).astype(dtype)
    return images, rng.integers(0, NUM_CLASSES, size=size)


def channels_first(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2)


def cnnlab_loss(net: modules.ConvNet, images: np.ndarray, labels: np.ndarray) -> torch.Tensor:
    """cnnlab's training loss (loop.train_one_epoch's): cross-entropy of logits + penalty."""
    loss = F.cross_entropy(net(channels_first(images)), torch.from_numpy(labels))
    penalty = net.penalty()
    return loss if penalty is None else loss + penalty


def parameter_gaps(net: modules.ConvNet, model: keras.Model) -> tuple[float, float]:
    """(largest absolute difference, norm of the differences / norm of the weights) between the
    two models' weights."""
    largest, squared_difference, squared_weights = 0.0, 0.0, 0.0
    for module, layer in weighted_pairs(net, model):
        theirs = [keras.ops.convert_to_numpy(variable) for variable in layer.weights]
        ours = cnnlab_weights(module)
        for mine, reference in zip(ours, theirs, strict=True):
            difference = mine - reference
            largest = max(largest, float(np.max(np.abs(difference))))
            squared_difference += float(np.sum(np.square(difference)))
            squared_weights += float(np.sum(np.square(reference)))
    return largest, (squared_difference / squared_weights) ** 0.5


def compile_like(model: keras.Model, config: RunConfig) -> None:
    """Keras's Adam with the config's values, the loss and metric the seed report compiled."""
    optimizer = keras.optimizers.Adam(
        learning_rate=config.learning_rate,
        beta_1=config.beta_1,
        beta_2=config.beta_2,
        epsilon=config.epsilon,
    )
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])


# --- structure, forward pass, loss, gradients ---------------------------------------------------


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_summary_matches_keras(name):
    net, model = cnnlab_and_keras(name, "float32")
    rows, total = architecture_summary(get_architecture(name))
    assert [row.name for row in rows] == [layer.name for layer in model.layers]
    assert [row.kind for row in rows] == [type(layer).__name__ for layer in model.layers]
    assert [row.output_shape for row in rows] == [
        tuple(layer.output.shape[1:]) for layer in model.layers
    ]
    assert [row.parameters for row in rows] == [layer.count_params() for layer in model.layers]
    assert total == model.count_params() == modules.count_parameters(net)


@pytest.mark.parametrize("name", STRONG)
def test_strong_nets_match_keras(name):
    """Summary (the frozen stem's weights are non-trainable) and the eval forward pass."""
    net, model = cnnlab_and_keras(name, "float64")
    rows, total = architecture_summary(get_architecture(name))
    assert [(row.name, row.kind) for row in rows] == [
        (layer.name, type(layer).__name__) for layer in model.layers
    ]
    assert total == model.count_params() == modules.count_parameters(net)
    frozen = sum(row.non_trainable for row in rows)
    assert frozen == sum(int(np.prod(v.shape)) for v in model.non_trainable_weights)
    images, _ = random_batch(np.random.default_rng(1), 3, "float64")
    net.eval()
    with torch.no_grad(), floatx("float64"):
        probabilities = keras.ops.convert_to_numpy(model(images, training=False))
        ours = torch.softmax(net(channels_first(images)), dim=1).numpy()
    np.testing.assert_allclose(ours, probabilities, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_eval_forward_and_loss_match_keras(name):
    """Dropout layers at their real rates: eval mode must ignore them in both."""
    net, model = cnnlab_and_keras(name, "float64")
    images, labels = random_batch(np.random.default_rng(1), 6, "float64")
    net.eval()
    with torch.no_grad(), floatx("float64"):
        probabilities = keras.ops.convert_to_numpy(model(images, training=False))
        keras_loss = model.compute_loss(
            x=images, y=torch.from_numpy(labels), y_pred=model(images), training=False
        )
        loss = cnnlab_loss(net, images, labels)
        ours = torch.softmax(net(channels_first(images)), dim=1).numpy()
    np.testing.assert_allclose(ours, probabilities, rtol=0, atol=1e-7)
    assert net.penalty() is not None  # every registered net has an L1 dense kernel
    assert float(loss) == pytest.approx(float(keras_loss), rel=1e-7)


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_gradients_match_keras(name):
    net, model = cnnlab_and_keras(name, "float64", dropout=False)
    images, labels = random_batch(np.random.default_rng(2), 6, "float64")
    with floatx("float64"):
        keras_loss = model.compute_loss(
            x=images, y=torch.from_numpy(labels), y_pred=model(images, training=True)
        )
        keras_gradients = torch.autograd.grad(
            keras_loss, [variable.value for variable in model.trainable_variables]
        )
    gradients = torch.autograd.grad(cnnlab_loss(net, images, labels), list(net.parameters()))
    assert len(gradients) == len(keras_gradients)
    for ours, theirs in zip(gradients, keras_gradients, strict=True):
        np.testing.assert_allclose(keras_layout(ours), theirs.numpy(), rtol=1e-6, atol=1e-7)


# --- the optimizer ------------------------------------------------------------------------------


def adam_gaps(name: str, optimizer: str, steps: int = 3) -> tuple[float, float]:
    """`parameter_gaps` after `steps` Adam steps on the same batches, in float64."""
    config = dataclasses.replace(RunConfig(), optimizer=optimizer)
    net, model = cnnlab_and_keras(name, "float64", dropout=False, config=config)
    rng = np.random.default_rng(3)
    with floatx("float64"):
        cnnlab_optimizer = loop.make_optimizer(net, config)
        for _ in range(steps):
            images, labels = random_batch(rng, 8, "float64")
            model.train_on_batch(images, labels)
            loss = cnnlab_loss(net, images, labels)
            cnnlab_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            cnnlab_optimizer.step()
    return parameter_gaps(net, model)


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_adam_steps_match_keras(name):
    """Measured after 3 steps: Keras's update leaves 4e-8..2.4e-7 (relative 9e-9..5e-8: the
    float32 dense matmul's rounding, amplified where sqrt(v) is near epsilon); PyTorch's leaves
    6.7e-4..2.6e-3 (relative 5e-4..2e-3). tiny-modern's batch norms keep its gradients far above
    epsilon, where the two updates differ least: PyTorch's leaves 2.8e-4 (relative 4e-5, still
    2000x Keras's 2e-8), so the relative gap is held to Keras's there."""
    keras_largest, keras_relative = adam_gaps(name, "adam")
    torch_largest, torch_relative = adam_gaps(name, "torch_adam")
    assert keras_largest < 2e-6 and keras_relative < 5e-7
    assert torch_largest > 1e-4
    assert torch_relative > (1e-4 if name in KERAS_BN_FREE else 100 * keras_relative)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_keras_adam_is_keras_update_bit_for_bit(dtype):
    """Given the same gradients, KerasAdam's parameters equal keras.optimizers.Adam's exactly."""
    rng = np.random.default_rng(4)
    shapes = [tuple(p.shape) for p in modules.build_model("tiny").parameters()]
    start = [rng.normal(size=shape).astype(dtype) for shape in shapes]
    config = RunConfig()
    with floatx(dtype):
        variables = [keras.Variable(value) for value in start]
        reference = keras.optimizers.Adam(
            learning_rate=config.learning_rate,
            beta_1=config.beta_1,
            beta_2=config.beta_2,
            epsilon=config.epsilon,
        )
        parameters = [torch.nn.Parameter(torch.from_numpy(value.copy())) for value in start]
        optimizer = make_optimizer(parameters, config)
        assert isinstance(optimizer, KerasAdam)
        for _ in range(5):
            # Magnitudes from 1e-10 to 1: some entries have sqrt(v) near epsilon.
            gradients = [
                (rng.normal(size=s) * 10.0 ** rng.integers(-10, 1, size=s)).astype(dtype)
                for s in shapes
            ]
            reference.apply_gradients(
                zip([torch.from_numpy(g) for g in gradients], variables, strict=True)
            )
            for parameter, gradient in zip(parameters, gradients, strict=True):
                parameter.grad = torch.from_numpy(gradient)
            optimizer.step()
    for variable, parameter in zip(variables, parameters, strict=True):
        np.testing.assert_array_equal(
            parameter.detach().numpy(), keras.ops.convert_to_numpy(variable)
        )


# --- fit: running means over unequal batches, the validation split -------------------------------


def test_fit_history_matches_keras():
    """Two epochs of `fit(validation_split=0.15, shuffle=False, batch_size=16)` on 50 images
    (42 train in batches 16+16+10, 8 validation), against cnnlab's train_one_epoch and
    evaluate_model fed the same order: Keras gets each epoch's images in the order cnnlab's
    shuffle generator will draw."""
    count, split, batch_size = 50, 0.15, 16
    rng = np.random.default_rng(5)
    labels = rng.integers(0, NUM_CLASSES, size=count)
    images = rng.integers(0, 128, size=(count, *INPUT_SHAPE), dtype=np.uint8)
    images[np.arange(count), :, :, labels % 3] += (labels * 12).astype(np.uint8)[:, None, None]
    train_part, validation_part = data_module.validation_split(np.arange(count), split)
    assert (len(train_part), len(validation_part)) == (42, 8)  # Keras floors 42.5

    config = RunConfig(batch_size=batch_size, validation_split=split)
    net, model = cnnlab_and_keras("seed", "float32", dropout=False, config=config)
    optimizer = loop.make_optimizer(net, config)
    train_images = images_to_device(images[train_part], CPU)
    train_labels = torch.from_numpy(labels[train_part])
    validation_images = images_to_device(images[validation_part], CPU)
    validation_labels = torch.from_numpy(labels[validation_part])
    shuffles, mirror = torch.Generator().manual_seed(6), torch.Generator().manual_seed(6)
    for _ in range(2):
        order = torch.randperm(len(train_part), generator=mirror).numpy()
        loss, accuracy, _ = loop.train_one_epoch(
            net, optimizer, train_images, train_labels, batch_size, shuffles
        )
        validation = loop.evaluate_model(net, validation_images, validation_labels)
        epoch_images = np.concatenate([images[train_part][order], images[validation_part]])
        epoch_labels = np.concatenate([labels[train_part][order], labels[validation_part]])
        history = model.fit(
            epoch_images.astype(np.float32) / 255,
            epoch_labels,
            batch_size=batch_size,
            epochs=1,
            validation_split=split,
            shuffle=False,
            verbose=0,
        ).history
        assert loss == pytest.approx(history["loss"][0], rel=1e-5)
        assert accuracy == pytest.approx(history["accuracy"][0], abs=1e-6)
        assert validation.loss == pytest.approx(history["val_loss"][0], rel=1e-5)
        assert validation.accuracy == pytest.approx(history["val_accuracy"][0], abs=1e-6)
    assert parameter_gaps(net, model)[0] < 1e-5


# --- the modern layers ------------------------------------------------------------------------


@pytest.mark.parametrize("name", [name for name in ACTIVATIONS if name != "softmax"])
def test_activations_match_keras(name):
    values = np.random.default_rng(6).normal(scale=3, size=(5, 40))
    with floatx("float64"):
        theirs = keras.ops.convert_to_numpy(keras.activations.get(name)(values))
    ours = modules.apply_activation(name, torch.from_numpy(values)).numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize(
    ("shape", "options"),
    [
        ((6, 5, 4, 3), {}),
        ((6, 5, 4, 3), {"momentum": 0.8, "epsilon": 0.01, "center": False}),
        ((9, 4), {"scale": False, "momentum": 0.5}),  # flat: the features are the channels
    ],
)
def test_batch_normalization_matches_keras(shape, options):
    """Outputs and moving statistics over training calls, then the eval output. Keras computes
    BatchNormalization in result_type(float64, "float32"), float32 by its JAX-like promotion, so
    float64 models agree to float32's rounding."""
    spec = BatchNorm(**options)
    channels = shape[-1]
    ours = modules.KerasBatchNorm(spec, channels).double()
    rng = np.random.default_rng(7)
    with torch.no_grad():
        for parameter in (ours.weight, ours.bias):
            if parameter is not None:
                parameter.copy_(torch.from_numpy(rng.normal(size=channels)))
    with floatx("float64"):
        keras.backend.clear_session()
        theirs = keras_layer(spec)
        theirs.build((None, *shape[1:]))
        theirs.set_weights(cnnlab_weights(ours))

        def both(batch: np.ndarray, training: bool) -> tuple[np.ndarray, np.ndarray]:
            mine = ours.train(training)(torch.from_numpy(batch).movedim(-1, 1)).movedim(1, -1)
            keras_output = theirs(batch, training=training)
            return mine.detach().numpy(), keras.ops.convert_to_numpy(keras_output)

        for _ in range(3):
            batch = rng.normal(loc=2, scale=3, size=shape)
            mine, reference = both(batch, training=True)
            np.testing.assert_allclose(mine, reference, rtol=1e-6, atol=1e-6)
        for mine, reference in zip(cnnlab_weights(ours), theirs.get_weights(), strict=True):
            np.testing.assert_allclose(mine, reference, rtol=1e-6, atol=1e-7)
        mine, reference = both(rng.normal(size=shape), training=False)
        np.testing.assert_allclose(mine, reference, rtol=1e-6, atol=1e-6)


# Every new layer type and key: frozen and bias-free layers, nested blocks, a given shortcut, a
# block's own activation, and a projection beside a longer branch (Keras lists it early).
MODERN_LAYERS = (
    {
        "type": "conv",
        "filters": 6,
        "kernel": 3,
        "padding": "same",
        "activation": "elu",
        "l2": 1e-2,
        "trainable": False,
    },
    {"type": "batchnorm", "center": False, "momentum": 0.9, "epsilon": 1e-5},
    {"type": "activation", "activation": "leaky_relu"},
    {
        "type": "residual",
        "layers": [
            {
                "type": "conv",
                "filters": 6,
                "kernel": 3,
                "padding": "same",
                "use_bias": False,
                "l1": 1e-3,
            },
            {"type": "batchnorm", "scale": False},
            {
                "type": "residual",
                "layers": [
                    {
                        "type": "conv",
                        "filters": 6,
                        "kernel": 2,
                        "padding": "same",
                        "activation": "tanh",
                    }
                ],
                "activation": "sigmoid",
            },
            {"type": "dropout", "rate": 0.0},
        ],
        "shortcut": [{"type": "activation", "activation": "silu"}],
        "activation": "relu",
    },
    {"type": "avgpool", "size": 3, "stride": 2},
    {
        "type": "residual",
        "layers": [
            {"type": "conv", "filters": 8, "kernel": 3, "stride": 3, "padding": "same"},
            {"type": "batchnorm"},
            {"type": "activation", "activation": "gelu"},
        ],
    },
    {"type": "globalmaxpool"},
    {"type": "dense", "units": 12, "activation": "silu", "use_bias": False},
    {"type": "dense", "units": 10, "activation": "softmax", "l2": 1e-3},
)


def test_modern_layers_match_keras():
    layers = parse_layers(MODERN_LAYERS)
    net = modules.ConvNet(layers, INPUT_SHAPE)
    modules.initialise(net, torch.Generator().manual_seed(8))
    net.double()
    with floatx("float64"):
        model = keras_model(layers)
        compile_like(model, DEFAULT_CONFIG)
    copy_weights(net, model)
    rows, total = architecture_summary(MODERN_LAYERS)
    assert [(row.name, row.kind) for row in rows] == [
        (layer.name, type(layer).__name__) for layer in model.layers
    ]
    assert rows[-5].name == "conv2d_4"  # the projection, listed before its block's batch norm
    assert [row.output_shape for row in rows] == [
        tuple(layer.output.shape[1:]) for layer in model.layers
    ]
    assert [(row.parameters, row.non_trainable) for row in rows] == [
        (layer.count_params(), sum(int(np.prod(w.shape)) for w in layer.non_trainable_weights))
        for layer in model.layers
    ]
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert total == model.count_params() == modules.count_parameters(net)
    assert total - sum(row.non_trainable for row in rows) == trainable
    rng = np.random.default_rng(9)
    images, labels = random_batch(rng, 6, "float64")
    with floatx("float64"):
        # Training mode: batch statistics, moving statistics updated, and the loss's gradients.
        net.train()
        keras_probabilities = model(images, training=True)
        keras_loss = model.compute_loss(
            x=images, y=torch.from_numpy(labels), y_pred=keras_probabilities, training=True
        )
        keras_gradients = torch.autograd.grad(
            keras_loss, [variable.value for variable in model.trainable_variables]
        )
        loss = cnnlab_loss(net, images, labels)
        assert loss.item() == pytest.approx(keras_loss.item(), rel=1e-7)
        by_variable = dict(zip(map(id, model.trainable_variables), keras_gradients, strict=True))
        trained = [p for p in net.parameters() if p.requires_grad]
        gradients = dict(zip(map(id, trained), torch.autograd.grad(loss, trained), strict=True))
        for module, layer in weighted_pairs(net, model):
            mine = [p for p in module.parameters() if p.requires_grad]
            assert len(mine) == len(layer.trainable_weights)
            for parameter, variable in zip(mine, layer.trainable_weights, strict=True):
                np.testing.assert_allclose(
                    keras_layout(gradients[id(parameter)]),
                    by_variable[id(variable)].numpy(),
                    rtol=0,
                    atol=5e-6,  # Keras's batch norms compute in float32 (measured: 1.2e-6)
                )
        assert parameter_gaps(net, model)[0] < 1e-6  # moving statistics (float32 in Keras)
        net.eval()
        with torch.no_grad():
            ours = torch.softmax(net(channels_first(images)), dim=1).numpy()
        theirs = keras.ops.convert_to_numpy(model(images, training=False))
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-7)


@pytest.mark.parametrize(
    ("init", "keras_name"), [("he_normal", "HeNormal"), ("he_uniform", "HeUniform")]
)
def test_he_initialisers_draw_from_kerass_distributions(init, keras_name):
    """Two samples of a (3, 3, 16, 64) kernel, ours and Keras's, from one distribution."""
    from scipy import stats

    spec = Conv(64, (3, 3), init=init)
    net = modules.ConvNet([spec, Flatten(), Dense(10, "softmax")], (8, 8, 16))
    modules.initialise(net, torch.Generator().manual_seed(10))
    ours = net.layers[0].weight.detach().numpy().ravel()
    theirs = keras.ops.convert_to_numpy(
        getattr(keras.initializers, keras_name)(seed=11)((3, 3, 16, 64))
    ).ravel()
    assert stats.ks_2samp(ours, theirs).pvalue > 0.01
    assert (
        abs(ours).max() <= abs(theirs).max() * 1.01 and abs(theirs).max() <= abs(ours).max() * 1.01
    )
    glorot = keras.ops.convert_to_numpy(keras.initializers.GlorotUniform(seed=12)((3, 3, 16, 64)))
    assert stats.ks_2samp(ours, glorot.ravel()).pvalue < 1e-6  # the test tells them apart
