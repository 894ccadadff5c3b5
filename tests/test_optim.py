"""optim: KerasAdam against a NumPy transcription of Keras 3's Adam; torch_adam is torch's."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch

from cnnlab.config import ConfigError, RunConfig
from cnnlab.optim import KerasAdam, make_optimizer

SHAPES = ((4, 3, 3, 3), (4,), (36, 10), (10,))
STEPS = 6


def gradient_sequence(seed: int = 0) -> list[list[np.ndarray]]:
    """Per step, one float64 gradient per shape; magnitudes from 1e-12 to 1, so that sqrt(v)
    is near epsilon for some entries (where Keras's and PyTorch's conventions part)."""
    rng = np.random.default_rng(seed)
    return [
        [rng.normal(size=shape) * 10.0 ** rng.integers(-12, 1, size=shape) for shape in SHAPES]
        for _ in range(STEPS)
    ]


def initial_parameters(seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(size=shape) for shape in SHAPES]


def numpy_adam(
    parameters: list[np.ndarray],
    gradients: list[list[np.ndarray]],
    *,
    lr: float,
    beta_1: float,
    beta_2: float,
    epsilon: float,
    convention: str,
) -> list[np.ndarray]:
    """Adam in float64 NumPy: "keras" transcribes keras/src/optimizers/adam.py's update_step,
    "torch" is torch.optim.Adam's documented algorithm."""
    parameters = [p.copy() for p in parameters]
    moments = [np.zeros_like(p) for p in parameters]
    velocities = [np.zeros_like(p) for p in parameters]
    for step, step_gradients in enumerate(gradients, start=1):
        for index, gradient in enumerate(step_gradients):
            moments[index] += (gradient - moments[index]) * (1 - beta_1)
            velocities[index] += (np.square(gradient) - velocities[index]) * (1 - beta_2)
            m, v = moments[index], velocities[index]
            if convention == "keras":
                alpha = lr * np.sqrt(1 - beta_2**step) / (1 - beta_1**step)
                parameters[index] -= m * alpha / (np.sqrt(v) + epsilon)
            else:
                corrected_m = m / (1 - beta_1**step)
                corrected_v = v / (1 - beta_2**step)
                parameters[index] -= lr * corrected_m / (np.sqrt(corrected_v) + epsilon)
    return parameters


def run_optimizer(
    optimizer_factory, gradients: list[list[np.ndarray]], dtype: torch.dtype = torch.float64
) -> list[np.ndarray]:
    parameters = [torch.nn.Parameter(torch.tensor(p, dtype=dtype)) for p in initial_parameters()]
    optimizer = optimizer_factory(parameters)
    for step_gradients in gradients:
        for parameter, gradient in zip(parameters, step_gradients, strict=True):
            parameter.grad = torch.tensor(gradient, dtype=dtype)
        optimizer.step()
    return [p.detach().double().numpy() for p in parameters]


def max_difference(first: list[np.ndarray], second: list[np.ndarray]) -> float:
    return max(float(np.max(np.abs(a - b))) for a, b in zip(first, second, strict=True))


CONFIG = RunConfig(learning_rate=2e-3, beta_1=0.8, beta_2=0.99, epsilon=1e-7)
HYPERPARAMETERS = {"lr": 2e-3, "beta_1": 0.8, "beta_2": 0.99, "epsilon": 1e-7}


def test_keras_adam_follows_keras_formula_in_float64():
    gradients = gradient_sequence()
    keras = numpy_adam(initial_parameters(), gradients, **HYPERPARAMETERS, convention="keras")
    torch_style = numpy_adam(initial_parameters(), gradients, **HYPERPARAMETERS, convention="torch")
    ours = run_optimizer(lambda params: make_optimizer(params, CONFIG), gradients)
    assert max_difference(ours, keras) < 1e-14
    # The gradients are chosen so the two conventions visibly differ: the test can fail.
    assert max_difference(ours, torch_style) > 1e-4


def test_torch_adam_is_pytorchs_update():
    config = dataclasses.replace(CONFIG, optimizer="torch_adam")
    gradients = gradient_sequence()
    optimizer = make_optimizer([torch.nn.Parameter(torch.zeros(2))], config)
    assert type(optimizer) is torch.optim.Adam
    assert optimizer.defaults["eps"] == config.epsilon
    ours = run_optimizer(lambda params: make_optimizer(params, config), gradients)
    torch_style = numpy_adam(initial_parameters(), gradients, **HYPERPARAMETERS, convention="torch")
    keras = numpy_adam(initial_parameters(), gradients, **HYPERPARAMETERS, convention="keras")
    assert max_difference(ours, torch_style) < 1e-14
    assert max_difference(ours, keras) > 1e-4


def test_default_optimizer_is_keras_adam_with_the_configs_values():
    optimizer = make_optimizer([torch.nn.Parameter(torch.zeros(2))], RunConfig())
    assert type(optimizer) is KerasAdam
    group = optimizer.param_groups[0]
    assert (group["lr"], group["betas"], group["eps"]) == (1e-3, (0.9, 0.999), 1e-7)


def test_unknown_optimizer_is_a_config_error():
    config = dataclasses.replace(RunConfig(), optimizer="sgd")
    with pytest.raises(ConfigError, match="optimizer"):
        make_optimizer([torch.nn.Parameter(torch.zeros(2))], config)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_capturable_gives_the_same_results_eagerly(dtype):
    gradients = gradient_sequence(seed=3)
    eager = run_optimizer(lambda params: KerasAdam(params), gradients, dtype)
    captured = run_optimizer(lambda params: KerasAdam(params, capturable=True), gradients, dtype)
    for first, second in zip(eager, captured, strict=True):
        np.testing.assert_array_equal(first, second)


def test_float32_matches_keras_formula_at_float32_rounding():
    gradients = gradient_sequence(seed=4)
    keras = numpy_adam(initial_parameters(), gradients, **HYPERPARAMETERS, convention="keras")
    ours = run_optimizer(lambda params: make_optimizer(params, CONFIG), gradients, torch.float32)
    for first, second in zip(ours, keras, strict=True):
        np.testing.assert_allclose(first, second, rtol=1e-5, atol=1e-6)


def test_stacked_parameters_step_like_separate_ones():
    """batched.py stacks a group's members into one tensor: the update must be elementwise."""
    rng = np.random.default_rng(5)
    separate = [torch.nn.Parameter(torch.tensor(rng.normal(size=(3, 5)))) for _ in range(2)]
    stacked = torch.nn.Parameter(torch.stack([p.detach().clone() for p in separate]))
    optimizers = [KerasAdam(separate), KerasAdam([stacked])]
    for _ in range(4):
        gradients = [torch.tensor(rng.normal(size=(3, 5)) * 1e-6) for _ in range(2)]
        for parameter, gradient in zip(separate, gradients, strict=True):
            parameter.grad = gradient
        stacked.grad = torch.stack(gradients)
        for optimizer in optimizers:
            optimizer.step()
    torch.testing.assert_close(stacked.detach(), torch.stack(separate).detach(), rtol=0, atol=0)


def test_mixed_dtypes_and_missing_gradients():
    """Each dtype's step size is computed in that dtype; a parameter without a gradient is left
    alone and gets no state."""
    gradients = gradient_sequence(seed=6)
    single = [
        torch.nn.Parameter(torch.tensor(p, dtype=torch.float32)) for p in initial_parameters()
    ]
    double = [torch.nn.Parameter(torch.tensor(p)) for p in initial_parameters()]
    idle = torch.nn.Parameter(torch.ones(3))
    optimizer = KerasAdam([*single, *double, idle], **_torch_names(HYPERPARAMETERS))
    for step_gradients in gradients:
        for parameter, gradient in zip(single, step_gradients, strict=True):
            parameter.grad = torch.tensor(gradient, dtype=torch.float32)
        for parameter, gradient in zip(double, step_gradients, strict=True):
            parameter.grad = torch.tensor(gradient)
        optimizer.step()
    keras = numpy_adam(initial_parameters(), gradients, **HYPERPARAMETERS, convention="keras")
    assert max_difference([p.detach().numpy() for p in double], keras) < 1e-14
    for first, second in zip(single, keras, strict=True):
        np.testing.assert_allclose(first.detach().numpy(), second, rtol=1e-5, atol=1e-6)
    assert torch.equal(idle.detach(), torch.ones(3))
    assert idle not in optimizer.state


def _torch_names(hyperparameters: dict[str, float]) -> dict:
    return {
        "lr": hyperparameters["lr"],
        "betas": (hyperparameters["beta_1"], hyperparameters["beta_2"]),
        "eps": hyperparameters["epsilon"],
    }


@pytest.mark.parametrize("capturable", [False, True])
def test_state_dict_round_trip_continues_the_same_trajectory(capturable):
    gradients = gradient_sequence(seed=7)
    parameters = [torch.nn.Parameter(torch.tensor(p)) for p in initial_parameters()]
    optimizer = KerasAdam(parameters, capturable=capturable)

    def step(optimizer_, parameters_, step_gradients):
        for parameter, gradient in zip(parameters_, step_gradients, strict=True):
            parameter.grad = torch.tensor(gradient)
        optimizer_.step()

    for step_gradients in gradients[:3]:
        step(optimizer, parameters, step_gradients)
    saved_parameters = copy.deepcopy(parameters)
    restored = KerasAdam(saved_parameters, capturable=capturable)
    restored.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    for step_gradients in gradients[3:]:
        step(optimizer, parameters, step_gradients)
        step(restored, saved_parameters, step_gradients)
    for first, second in zip(parameters, saved_parameters, strict=True):
        assert torch.equal(first, second)
    assert float(restored.state[saved_parameters[0]]["step"]) == STEPS


@pytest.mark.parametrize(
    ("arguments", "message"),
    [({"lr": 0.0}, "lr"), ({"betas": (0.9, 1.0)}, "betas"), ({"eps": -1.0}, "eps")],
)
def test_invalid_hyperparameters_are_rejected(arguments, message):
    with pytest.raises(ValueError, match=message):
        KerasAdam([torch.nn.Parameter(torch.zeros(2))], **arguments)
