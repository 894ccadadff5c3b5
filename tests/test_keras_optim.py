"""cnnlab's optimizers and schedules against the real Keras 3 (torch backend).

Keras's SGD (momentum, Nesterov, weight decay), AdamW and Adam with a weight decay are given the
same variables and gradients as ours for several steps, with the learning rate changed between
steps as a schedule does; their schedules are evaluated at every step of a run. Investigated:
in Keras's torch backend the learning rate is a variable of Keras's float type (floatx), and the
weight decay's factor 1 - wd·lr is computed in that type (torch_optimizer.py), not in the
weights'. With floatx set to the weights' dtype, as here, nothing else is rounded to float32,
and cnnlab's optimizers (which round the factor in the weights' dtype) equal Keras's bit for bit
in float32 and in float64. The schedules are computed by Keras in floatx (float64 here) with
torch's cos and pow, by cnnlab in Python floats: they agree to the last bit or two.
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

from cnnlab.config import RunConfig
from cnnlab.training.optim import KerasAdam, KerasSGD, learning_rate_at, make_optimizer

# Keras's torch backend calls np.array(x, copy=False) on tensors (keras/src/backend/torch/core.py).
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
SHAPES = ((4, 3, 3, 3), (4,), (36, 10), (10,))
RATES = (0.05, 0.02, 0.011, 0.2, 0.07, 0.001)  # one per step: Keras reads its variable each step


@pytest.fixture(autouse=True, scope="module")
def _torch_backend():
    assert keras.backend.backend() == "torch", "KERAS_BACKEND was set before this module ran"


@contextlib.contextmanager
def floatx(dtype: str):
    """Keras's default float type (its learning-rate variables', its schedules') inside."""
    previous = keras.config.floatx()
    keras.config.set_floatx(dtype)
    try:
        yield
    finally:
        keras.config.set_floatx(previous)


def keras_and_ours(keras_optimizer, config: RunConfig, dtype: str, seed: int):
    """(Keras's variables, cnnlab's parameters) after one step per rate in RATES."""
    rng = np.random.default_rng(seed)
    start = [rng.normal(size=shape).astype(dtype) for shape in SHAPES]
    variables = [keras.Variable(value) for value in start]
    parameters = [torch.nn.Parameter(torch.from_numpy(value.copy())) for value in start]
    optimizer = make_optimizer(parameters, config)
    for rate in RATES:
        keras_optimizer.learning_rate = rate
        for group in optimizer.param_groups:
            group["lr"] = rate
        gradients = [
            (rng.normal(size=s) * 10.0 ** rng.integers(-6, 1, size=s)).astype(dtype) for s in SHAPES
        ]
        keras_optimizer.apply_gradients(
            zip([torch.from_numpy(g) for g in gradients], variables, strict=True)
        )
        for parameter, gradient in zip(parameters, gradients, strict=True):
            parameter.grad = torch.from_numpy(gradient)
        optimizer.step()
    return [keras.ops.convert_to_numpy(v) for v in variables], [
        p.detach().numpy() for p in parameters
    ]


def assert_bit_equal(keras_values: list[np.ndarray], ours: list[np.ndarray]) -> None:
    for keras_value, our_value in zip(keras_values, ours, strict=True):
        np.testing.assert_array_equal(our_value, keras_value)


# A decay whose factor 1 - wd·lr rounds differently in float32 than through float64 at one of
# RATES: the float32 comparisons hold only if Keras's float32 rounding is reproduced.
DECAY = 0.097


def test_the_decay_factors_float32_rounding_matters_at_one_rate():
    def float32_factor(rate: float) -> np.float32:
        return np.float32(1) - np.float32(DECAY) * np.float32(rate)

    assert any(float32_factor(rate) != np.float32(1 - DECAY * rate) for rate in RATES)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(
    ("momentum", "nesterov", "decay"),
    [(0.0, False, None), (0.9, False, None), (0.9, True, DECAY), (0.0, False, DECAY)],
)
def test_keras_sgd_equals_kerass_sgd(dtype, momentum, nesterov, decay):
    config = RunConfig(optimizer="sgd", momentum=momentum, nesterov=nesterov, weight_decay=decay)
    with floatx(dtype):
        reference = keras.optimizers.SGD(
            learning_rate=RATES[0], momentum=momentum, nesterov=nesterov, weight_decay=decay
        )
        keras_values, ours = keras_and_ours(reference, config, dtype, seed=1)
    assert isinstance(make_optimizer([torch.nn.Parameter(torch.zeros(1))], config), KerasSGD)
    assert_bit_equal(keras_values, ours)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_adamw_equals_kerass_adamw(dtype):
    """Keras's AdamW is its Adam with a decay; its default decay is "adamw"'s."""
    config = RunConfig(optimizer="adamw")
    with floatx(dtype):
        reference = keras.optimizers.AdamW(learning_rate=RATES[0])
        keras_values, ours = keras_and_ours(reference, config, dtype, seed=2)
    assert reference.weight_decay == 0.004
    assert_bit_equal(keras_values, ours)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_adam_with_weight_decay_equals_kerass(dtype):
    config = RunConfig(optimizer="adam", weight_decay=DECAY)
    with floatx(dtype):
        reference = keras.optimizers.Adam(learning_rate=RATES[0], weight_decay=DECAY)
        keras_values, ours = keras_and_ours(reference, config, dtype, seed=3)
    assert isinstance(make_optimizer([torch.nn.Parameter(torch.zeros(1))], config), KerasAdam)
    assert_bit_equal(keras_values, ours)


# --- schedules ------------------------------------------------------------------------------------

PER_EPOCH, EPOCHS = 7, 6
TOTAL = PER_EPOCH * EPOCHS
BASE = RunConfig(
    learning_rate=0.1,
    epochs=EPOCHS,
    lr_warmup_epochs=1.3,  # W = round(9.1) = 9 warm-up steps
    lr_warmup_start=0.05,
    lr_final=0.02,
    lr_step_epochs=1.5,  # every round(10.5) = 10 steps
    lr_step_factor=0.3,
)
WARMUP = 9
STEPS = range(TOTAL + 5)  # past the end too: the decay stays at its end


def keras_rate(schedule, step: int) -> float:
    with floatx("float64"):
        return float(keras.ops.convert_to_numpy(schedule(step)))


def assert_rates_match(config: RunConfig, keras_rates: dict[int, float]) -> None:
    """Our rates at the given steps equal Keras's to float64 rounding (cos and pow differ
    between libm and torch by an ulp at most)."""
    ours = [learning_rate_at(step, TOTAL, PER_EPOCH, config) for step in keras_rates]
    np.testing.assert_allclose(ours, list(keras_rates.values()), rtol=1e-14, atol=0)


@pytest.mark.parametrize("warmup", [0.0, 1.3])
def test_cosine_is_kerass_cosine_decay_with_its_warmup(warmup):
    config = dataclasses.replace(BASE, lr_schedule="cosine", lr_warmup_epochs=warmup)
    warmup_steps = WARMUP if warmup else 0
    with floatx("float64"):
        schedule = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=BASE.lr_warmup_start * BASE.learning_rate,
            decay_steps=TOTAL - warmup_steps,
            alpha=BASE.lr_final,
            warmup_target=BASE.learning_rate,
            warmup_steps=warmup_steps,
        )
    assert_rates_match(config, {step: keras_rate(schedule, step) for step in STEPS})


def keras_warmup(step: int) -> float:
    """The warm-up's rate, by Keras's CosineDecay (the schedule whose warm-up cnnlab uses)."""
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=BASE.lr_warmup_start * BASE.learning_rate,
        decay_steps=TOTAL - WARMUP,
        warmup_target=BASE.learning_rate,
        warmup_steps=WARMUP,
    )
    return keras_rate(schedule, step)


def test_linear_is_kerass_polynomial_decay_after_the_warmup():
    config = dataclasses.replace(BASE, lr_schedule="linear")
    with floatx("float64"):
        schedule = keras.optimizers.schedules.PolynomialDecay(
            initial_learning_rate=BASE.learning_rate,
            decay_steps=TOTAL - WARMUP,
            end_learning_rate=BASE.lr_final * BASE.learning_rate,
            power=1.0,
        )
    rates = {
        step: keras_rate(schedule, step - WARMUP) if step >= WARMUP else keras_warmup(step)
        for step in STEPS
    }
    assert_rates_match(config, rates)


def test_step_is_kerass_staircase_exponential_decay_after_the_warmup():
    config = dataclasses.replace(BASE, lr_schedule="step")
    with floatx("float64"):
        schedule = keras.optimizers.schedules.ExponentialDecay(
            initial_learning_rate=BASE.learning_rate,
            decay_steps=10,
            decay_rate=BASE.lr_step_factor,
            staircase=True,
        )
    rates = {
        step: keras_rate(schedule, step - WARMUP) if step >= WARMUP else keras_warmup(step)
        for step in STEPS
    }
    assert_rates_match(config, rates)
    # The staircase: three distinct rates over the first 30 steps after the warm-up.
    assert len({rates[step] for step in range(WARMUP, WARMUP + 30)}) == 3
