"""cnnlab against the real Keras 3 (torch backend), for every registered architecture.

Keras's model gets cnnlab's weights (conv kernels (out, in, kh, kw) -> (kh, kw, in, out), dense
kernels transposed); then summaries, the eval forward pass, the loss with its kernel penalty,
gradients, parameters after Adam steps (dropout off) and `fit`'s running means and validation
split must agree. Keras's torch backend runs float64 models but computes Dense's matmul in
float32 (its JAX-like promotion, keras/src/backend/common/dtypes.py's BIT64_TO_BIT32_DTYPE), so
float64 comparisons carry float32 rounding from the dense layer (about 1e-8).
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

from cnnlab import data as data_module
from cnnlab import models, train
from cnnlab.config import RunConfig
from cnnlab.optim import KerasAdam, make_optimizer

# Keras's torch backend calls np.array(x, copy=False) on tensors (keras/src/backend/torch/core.py).
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
ARCHITECTURES = sorted(models.ARCHITECTURES)
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


def layer_specs(name: str, *, dropout: bool = True) -> tuple[models.LayerSpec, ...]:
    """The architecture's parsed layers; without dropout, every dropout rate is 0."""
    layers = models.parse_layers(models.get_architecture(name))
    if dropout:
        return layers
    return tuple(
        dataclasses.replace(layer, rate=0.0) if isinstance(layer, models.Dropout) else layer
        for layer in layers
    )


def keras_model(layers: tuple[models.LayerSpec, ...]) -> keras.Sequential:
    """The Keras model the layer specs describe, with Keras's default layer names."""
    keras.backend.clear_session()  # restarts the name counters: conv2d, conv2d_1, ...
    stack: list = [keras.Input(shape=models.INPUT_SHAPE)]
    for layer in layers:
        if isinstance(layer, models.Conv):
            stack.append(
                keras.layers.Conv2D(
                    layer.filters,
                    layer.kernel,
                    strides=layer.stride,
                    padding=layer.padding,
                    activation=layer.activation,
                )
            )
        elif isinstance(layer, models.MaxPool):
            stack.append(keras.layers.MaxPooling2D(layer.size, strides=layer.stride))
        elif isinstance(layer, models.Dropout):
            stack.append(keras.layers.Dropout(layer.rate))
        elif isinstance(layer, models.Flatten):
            stack.append(keras.layers.Flatten())
        else:
            regularizer = keras.regularizers.L1L2(l1=layer.l1, l2=layer.l2)
            stack.append(
                keras.layers.Dense(
                    layer.units, activation=layer.activation, kernel_regularizer=regularizer
                )
            )
    return keras.Sequential(stack)


def weighted_pairs(net: models.ConvNet, model: keras.Sequential) -> list:
    """(cnnlab module, Keras layer) for every layer with weights, in order."""
    modules = [m for m in net.layers if isinstance(m, models.KerasConv2d | models.KerasDense)]
    layers = [layer for layer in model.layers if layer.weights]
    return list(zip(modules, layers, strict=True))


def keras_layout(weight: torch.Tensor) -> np.ndarray:
    """A cnnlab kernel in Keras's layout."""
    array = weight.detach().double().numpy()
    return array.transpose(2, 3, 1, 0) if array.ndim == 4 else array.T


def copy_weights(net: models.ConvNet, model: keras.Sequential) -> None:
    for module, layer in weighted_pairs(net, model):
        layer.set_weights([keras_layout(module.weight), module.bias.detach().double().numpy()])


def cnnlab_and_keras(
    name: str, dtype: str, *, dropout: bool = True, config: RunConfig = DEFAULT_CONFIG
):
    """The architecture in both frameworks with the same (cnnlab-initialised) weights; the Keras
    model compiled with the config's Adam."""
    layers = layer_specs(name, dropout=dropout)
    net = models.ConvNet(layers, models.INPUT_SHAPE)
    models.initialise(net, torch.Generator().manual_seed(config.seed))
    net.to(getattr(torch, dtype))
    with floatx(dtype):
        model = keras_model(layers)
        compile_like(model, config)
    copy_weights(net, model)
    return net, model


def random_batch(rng: np.random.Generator, size: int, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """Channels-last images in [0, 1) and labels."""
    images = rng.random((size, *models.INPUT_SHAPE)).astype(dtype)
    return images, rng.integers(0, models.NUM_CLASSES, size=size)


def channels_first(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2)


def cnnlab_loss(net: models.ConvNet, images: np.ndarray, labels: np.ndarray) -> torch.Tensor:
    """cnnlab's training loss (train.train_one_epoch's): cross-entropy of logits + penalty."""
    loss = F.cross_entropy(net(channels_first(images)), torch.from_numpy(labels))
    penalty = net.penalty()
    return loss if penalty is None else loss + penalty


def parameter_gaps(net: models.ConvNet, model: keras.Sequential) -> tuple[float, float]:
    """(largest absolute difference, norm of the differences / norm of the weights) between the
    two models' weights."""
    largest, squared_difference, squared_weights = 0.0, 0.0, 0.0
    for module, layer in weighted_pairs(net, model):
        theirs = [keras.ops.convert_to_numpy(variable) for variable in layer.weights]
        ours = [keras_layout(module.weight), module.bias.detach().double().numpy()]
        for mine, reference in zip(ours, theirs, strict=True):
            difference = mine - reference
            largest = max(largest, float(np.max(np.abs(difference))))
            squared_difference += float(np.sum(np.square(difference)))
            squared_weights += float(np.sum(np.square(reference)))
    return largest, (squared_difference / squared_weights) ** 0.5


def compile_like(model: keras.Sequential, config: RunConfig) -> None:
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
    rows, total = models.architecture_summary(models.get_architecture(name))
    assert [row.name for row in rows] == [layer.name for layer in model.layers]
    assert [row.kind for row in rows] == [type(layer).__name__ for layer in model.layers]
    assert [row.output_shape for row in rows] == [
        tuple(layer.output.shape[1:]) for layer in model.layers
    ]
    assert [row.parameters for row in rows] == [layer.count_params() for layer in model.layers]
    assert total == model.count_params() == models.count_parameters(net)


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
        cnnlab_optimizer = train.make_optimizer(net, config)
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
    6.7e-4..2.6e-3 (relative 5e-4..2e-3)."""
    keras_largest, keras_relative = adam_gaps(name, "adam")
    torch_largest, torch_relative = adam_gaps(name, "torch_adam")
    assert keras_largest < 2e-6 and keras_relative < 5e-7
    assert torch_largest > 1e-4 and torch_relative > 1e-4


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_keras_adam_is_keras_update_bit_for_bit(dtype):
    """Given the same gradients, KerasAdam's parameters equal keras.optimizers.Adam's exactly."""
    rng = np.random.default_rng(4)
    shapes = [tuple(p.shape) for p in models.build_model("tiny").parameters()]
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
    labels = rng.integers(0, models.NUM_CLASSES, size=count)
    images = rng.integers(0, 128, size=(count, *models.INPUT_SHAPE), dtype=np.uint8)
    images[np.arange(count), :, :, labels % 3] += (labels * 12).astype(np.uint8)[:, None, None]
    train_part, validation_part = data_module.validation_split(np.arange(count), split)
    assert (len(train_part), len(validation_part)) == (42, 8)  # Keras floors 42.5

    config = RunConfig(batch_size=batch_size, validation_split=split)
    net, model = cnnlab_and_keras("seed", "float32", dropout=False, config=config)
    optimizer = train.make_optimizer(net, config)
    train_images = train.images_to_device(images[train_part], CPU)
    train_labels = torch.from_numpy(labels[train_part])
    validation_images = train.images_to_device(images[validation_part], CPU)
    validation_labels = torch.from_numpy(labels[validation_part])
    shuffles, mirror = torch.Generator().manual_seed(6), torch.Generator().manual_seed(6)
    for _ in range(2):
        order = torch.randperm(len(train_part), generator=mirror).numpy()
        loss, accuracy = train.train_one_epoch(
            net, optimizer, train_images, train_labels, batch_size, shuffles
        )
        validation = train.evaluate_model(net, validation_images, validation_labels)
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
