"""optim: the optimizers against NumPy transcriptions of Keras 3's formulas, the schedules against
loops over theirs, the weight average against a loop (tests/test_keras_optim.py: the real Keras)."""

from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
import pytest
import torch

from cnnlab.config import ConfigError, RunConfig
from cnnlab.errors import CnnlabError
from cnnlab.training.optim import (
    KerasAdam,
    KerasSGD,
    WeightAverage,
    learning_rate_at,
    make_optimizer,
    steps_per_epoch,
)

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
    lr: float | list[float],
    beta_1: float,
    beta_2: float,
    epsilon: float,
    convention: str,
    weight_decay: float = 0.0,
) -> list[np.ndarray]:
    """Adam in float64 NumPy: "keras" transcribes keras/src/optimizers/adam.py's update_step
    after BaseOptimizer._apply_weight_decay, "torch" is torch.optim.Adam's documented algorithm
    (AdamW's with a weight decay). `lr` is one rate or one per step."""
    parameters = [p.copy() for p in parameters]
    moments = [np.zeros_like(p) for p in parameters]
    velocities = [np.zeros_like(p) for p in parameters]
    rates = per_step(lr, len(gradients))
    for step, (rate, step_gradients) in enumerate(zip(rates, gradients, strict=True), start=1):
        for index, gradient in enumerate(step_gradients):
            if convention == "keras":
                parameters[index] -= parameters[index] * weight_decay * rate
            else:
                parameters[index] *= 1 - rate * weight_decay
            moments[index] += (gradient - moments[index]) * (1 - beta_1)
            velocities[index] += (np.square(gradient) - velocities[index]) * (1 - beta_2)
            m, v = moments[index], velocities[index]
            if convention == "keras":
                alpha = rate * np.sqrt(1 - beta_2**step) / (1 - beta_1**step)
                parameters[index] -= m * alpha / (np.sqrt(v) + epsilon)
            else:
                corrected_m = m / (1 - beta_1**step)
                corrected_v = v / (1 - beta_2**step)
                parameters[index] -= rate * corrected_m / (np.sqrt(corrected_v) + epsilon)
    return parameters


def numpy_sgd(
    parameters: list[np.ndarray],
    gradients: list[list[np.ndarray]],
    *,
    lr: float | list[float],
    momentum: float,
    nesterov: bool,
    weight_decay: float = 0.0,
) -> list[np.ndarray]:
    """SGD in float64 NumPy, transcribing keras/src/optimizers/sgd.py's update_step after
    BaseOptimizer._apply_weight_decay. `lr` is one rate or one per step."""
    parameters = [p.copy() for p in parameters]
    velocities = [np.zeros_like(p) for p in parameters]
    for rate, step_gradients in zip(per_step(lr, len(gradients)), gradients, strict=True):
        for index, gradient in enumerate(step_gradients):
            parameters[index] -= parameters[index] * weight_decay * rate
            if momentum == 0:
                parameters[index] -= gradient * rate
                continue
            velocities[index] = velocities[index] * momentum - gradient * rate
            if nesterov:
                parameters[index] += velocities[index] * momentum - gradient * rate
            else:
                parameters[index] += velocities[index]
    return parameters


def per_step(lr: float | list[float], steps: int) -> list[float]:
    return list(lr) if isinstance(lr, list) else [lr] * steps


def run_optimizer(
    optimizer_factory,
    gradients: list[list[np.ndarray]],
    dtype: torch.dtype = torch.float64,
    learning_rates: list[float] | None = None,
) -> list[np.ndarray]:
    """The parameters after one step per gradient list; `learning_rates` set each step's lr in
    the param groups first, as the trainer's schedule does."""
    parameters = [torch.nn.Parameter(torch.tensor(p, dtype=dtype)) for p in initial_parameters()]
    optimizer = optimizer_factory(parameters)
    for step, step_gradients in enumerate(gradients):
        if learning_rates is not None:
            for group in optimizer.param_groups:
                group["lr"] = learning_rates[step]
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
    config = dataclasses.replace(RunConfig(), optimizer="rmsprop")
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
    """group_net.py stacks a group's members into one tensor: the update must be elementwise."""
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


# --- SGD ----------------------------------------------------------------------------------------

RATES = [0.05, 0.02, 0.1, 0.001, 0.07, 0.03]  # one per step, as a schedule sets them
assert len(RATES) == STEPS


@pytest.mark.parametrize(
    ("momentum", "nesterov", "decay"),
    [(0.0, False, 0.0), (0.9, False, 0.0), (0.9, True, 0.0), (0.8, True, 0.01), (0.0, False, 0.3)],
)
def test_keras_sgd_follows_keras_formula_as_the_rate_changes(momentum, nesterov, decay):
    gradients = gradient_sequence(seed=8)
    keras = numpy_sgd(
        initial_parameters(),
        gradients,
        lr=RATES,
        momentum=momentum,
        nesterov=nesterov,
        weight_decay=decay,
    )
    ours = run_optimizer(
        lambda params: KerasSGD(params, 0.5, momentum, nesterov, decay),
        gradients,
        learning_rates=RATES,
    )
    assert max_difference(ours, keras) < 1e-14
    # Each option changes the trajectory by far more than the tolerance: the test can fail.
    plain = numpy_sgd(initial_parameters(), gradients, lr=RATES, momentum=0.0, nesterov=False)
    if (momentum, decay) != (0.0, 0.0):
        assert max_difference(ours, plain) > 1e-4


@pytest.mark.parametrize("nesterov", [False, True])
def test_keras_sgd_is_torch_sgd_only_while_the_rate_is_constant(nesterov):
    """Keras's velocity carries past learning rates, PyTorch's buffer carries raw gradients."""
    gradients = gradient_sequence(seed=9)

    def keras_form(params):
        return KerasSGD(params, 0.5, momentum=0.9, nesterov=nesterov)

    def torch_form(params):
        return torch.optim.SGD(params, lr=0.5, momentum=0.9, nesterov=nesterov)

    constant = [0.05] * STEPS
    assert (
        max_difference(
            run_optimizer(keras_form, gradients, learning_rates=constant),
            run_optimizer(torch_form, gradients, learning_rates=constant),
        )
        < 1e-14
    )
    assert (
        max_difference(
            run_optimizer(keras_form, gradients, learning_rates=RATES),
            run_optimizer(torch_form, gradients, learning_rates=RATES),
        )
        > 1e-3
    )


def test_sgd_config_makes_keras_sgd():
    config = RunConfig(
        optimizer="sgd", learning_rate=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    optimizer = make_optimizer([torch.nn.Parameter(torch.zeros(2))], config)
    assert type(optimizer) is KerasSGD
    group = optimizer.param_groups[0]
    assert (group["lr"], group["momentum"], group["nesterov"], group["weight_decay"]) == (
        0.1,
        0.9,
        True,
        5e-4,
    )


def test_keras_sgd_steps_stacked_parameters_like_separate_ones():
    rng = np.random.default_rng(10)
    separate = [torch.nn.Parameter(torch.tensor(rng.normal(size=(3, 5)))) for _ in range(2)]
    stacked = torch.nn.Parameter(torch.stack([p.detach().clone() for p in separate]))
    settings = {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01}
    optimizers = [KerasSGD(separate, **settings), KerasSGD([stacked], **settings)]
    for rate in RATES:
        gradients = [torch.tensor(rng.normal(size=(3, 5))) for _ in range(2)]
        for parameter, gradient in zip(separate, gradients, strict=True):
            parameter.grad = gradient
        stacked.grad = torch.stack(gradients)
        for optimizer in optimizers:
            optimizer.param_groups[0]["lr"] = rate
            optimizer.step()
    torch.testing.assert_close(stacked.detach(), torch.stack(separate).detach(), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"lr": 0.0}, "lr"),
        ({"momentum": 1.5}, "momentum"),
        ({"nesterov": True}, "nesterov"),
        ({"weight_decay": -1.0}, "weight_decay"),
        ({"weight_decay": float("nan")}, "weight_decay"),
    ],
)
def test_invalid_sgd_hyperparameters_are_rejected(arguments, message):
    with pytest.raises(ValueError, match=message):
        KerasSGD([torch.nn.Parameter(torch.zeros(2))], **arguments)


# --- weight decay and frozen parameters -----------------------------------------------------------


def test_adam_with_weight_decay_follows_keras_formula():
    config = dataclasses.replace(CONFIG, weight_decay=0.05)
    gradients = gradient_sequence(seed=11)
    ours = run_optimizer(
        lambda params: make_optimizer(params, config), gradients, learning_rates=RATES
    )
    keras = numpy_adam(
        initial_parameters(),
        gradients,
        **{**HYPERPARAMETERS, "lr": RATES},
        convention="keras",
        weight_decay=0.05,
    )
    undecayed = numpy_adam(
        initial_parameters(), gradients, **{**HYPERPARAMETERS, "lr": RATES}, convention="keras"
    )
    assert max_difference(ours, keras) < 1e-14
    assert max_difference(ours, undecayed) > 1e-4


def test_adamw_is_keras_adam_with_kerass_default_decay():
    config = dataclasses.replace(CONFIG, optimizer="adamw")
    optimizer = make_optimizer([torch.nn.Parameter(torch.zeros(2))], config)
    assert type(optimizer) is KerasAdam
    assert optimizer.param_groups[0]["weight_decay"] == 0.004
    gradients = gradient_sequence(seed=12)
    ours = run_optimizer(
        lambda params: make_optimizer(params, config), gradients, learning_rates=RATES
    )
    keras = numpy_adam(
        initial_parameters(),
        gradients,
        **{**HYPERPARAMETERS, "lr": RATES},
        convention="keras",
        weight_decay=0.004,
    )
    undecayed = numpy_adam(
        initial_parameters(), gradients, **{**HYPERPARAMETERS, "lr": RATES}, convention="keras"
    )
    assert max_difference(ours, keras) < 1e-14
    assert max_difference(ours, undecayed) > 1e-6
    explicit = dataclasses.replace(config, weight_decay=0.0)
    optimizer = make_optimizer([torch.nn.Parameter(torch.zeros(2))], explicit)
    assert optimizer.defaults["weight_decay"] == 0.0


def test_torch_adam_with_weight_decay_is_torchs_adamw():
    config = dataclasses.replace(CONFIG, optimizer="torch_adam", weight_decay=0.05)
    optimizer = make_optimizer([torch.nn.Parameter(torch.zeros(2))], config)
    assert type(optimizer) is torch.optim.AdamW
    assert optimizer.defaults["weight_decay"] == 0.05
    gradients = gradient_sequence(seed=13)
    ours = run_optimizer(
        lambda params: make_optimizer(params, config), gradients, learning_rates=RATES
    )
    torch_style = numpy_adam(
        initial_parameters(),
        gradients,
        **{**HYPERPARAMETERS, "lr": RATES},
        convention="torch",
        weight_decay=0.05,
    )
    assert max_difference(ours, torch_style) < 1e-14


def pinned_keras_adam_update(params, grads, exp_avgs, exp_avg_sqs, steps, *, lr, b1, b2, eps):
    """keras_adam_update as it was before weight decay existed (commit 469abf8), op for op."""
    torch._foreach_add_(steps, 1)
    local_step = torch.stack(steps).to(params[0].dtype)
    beta_1_power = torch.pow(torch.full_like(local_step, b1), local_step)
    beta_2_power = torch.pow(torch.full_like(local_step, b2), local_step)
    alpha = lr * torch.sqrt(1 - beta_2_power) / (1 - beta_1_power)
    torch._foreach_mul_(exp_avgs, b1)
    torch._foreach_add_(exp_avgs, grads, alpha=1 - b1)
    torch._foreach_mul_(exp_avg_sqs, b2)
    torch._foreach_add_(exp_avg_sqs, torch._foreach_mul(grads, grads), alpha=1 - b2)
    updates = torch._foreach_mul(exp_avgs, alpha.unbind(0))
    denominators = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_add_(denominators, eps)
    torch._foreach_div_(updates, denominators)
    torch._foreach_sub_(params, updates)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_adam_without_decay_is_bit_identical_to_the_update_before_decay(dtype):
    gradients = gradient_sequence(seed=14)
    ours = run_optimizer(lambda params: make_optimizer(params, CONFIG), gradients, dtype)
    params = [torch.tensor(p, dtype=dtype) for p in initial_parameters()]
    moments = [torch.zeros_like(p) for p in params]
    velocities = [torch.zeros_like(p) for p in params]
    steps = [torch.zeros((), dtype=torch.float32) for _ in params]
    for step_gradients in gradients:
        grads = [torch.tensor(g, dtype=dtype) for g in step_gradients]
        pinned_keras_adam_update(
            params, grads, moments, velocities, steps, lr=2e-3, b1=0.8, b2=0.99, eps=1e-7
        )
    for first, second in zip(ours, params, strict=True):
        np.testing.assert_array_equal(first, second.double().numpy())


@pytest.mark.parametrize("name", ["adam", "adamw", "torch_adam", "sgd"])
def test_frozen_parameters_are_left_out(name):
    """A frozen layer gets no optimizer state and no weight decay."""
    config = RunConfig(optimizer=name, weight_decay=0.1, learning_rate=0.1)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    model[0].requires_grad_(False)
    frozen = [p.detach().clone() for p in model[0].parameters()]
    optimizer = make_optimizer(list(model.parameters()), config)
    given = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert given == {id(p) for p in model[1].parameters()}
    model(torch.ones(5, 3)).sum().backward()
    trained = [p.detach().clone() for p in model[1].parameters()]
    optimizer.step()
    for before, after in zip(frozen, model[0].parameters(), strict=True):
        assert torch.equal(before, after)
    assert not any(torch.equal(b, a) for b, a in zip(trained, model[1].parameters(), strict=True))


def test_no_trainable_parameters_is_one_clear_error():
    frozen = torch.nn.Parameter(torch.zeros(2), requires_grad=False)
    with pytest.raises(CnnlabError, match="no trainable parameters"):
        make_optimizer([frozen], RunConfig())


# --- schedules ------------------------------------------------------------------------------------


def reference_rates(total_steps: int, steps_per_epoch: int, config: RunConfig) -> np.ndarray:
    """Every step's learning rate (and a few past the end) by the formulas, vectorised in NumPy."""
    steps = np.arange(total_steps + 4, dtype=np.float64)
    peak = config.learning_rate
    warmup = round(config.lr_warmup_epochs * steps_per_epoch)
    start = config.lr_warmup_start * peak
    since = steps - warmup
    decay_steps = total_steps - warmup
    fraction = np.clip(since, 0, decay_steps) / decay_steps if decay_steps > 0 else 1 + 0 * steps
    end = config.lr_final * peak
    after = {
        "constant": peak + 0 * steps,
        "cosine": peak
        * ((1 - config.lr_final) * 0.5 * (1 + np.cos(np.pi * fraction)) + config.lr_final),
        "linear": (peak - end) * (1 - fraction) + end,
        "step": peak
        * config.lr_step_factor ** np.floor(since / round(config.lr_step_epochs * steps_per_epoch)),
    }[config.lr_schedule]
    warming = start + (peak - start) * steps / max(warmup, 1)
    return np.where(steps < warmup, warming, after)


SCHEDULE_CONFIGS = [
    # (schedule, warm-up epochs, warm-up start, steps per epoch, epochs)
    ("constant", 1.5, 0.1, 4, 5),
    ("cosine", 0.0, 0.0, 7, 4),
    ("cosine", 1.3, 0.05, 7, 4),  # W = 9, D = 19
    ("linear", 2.0, 0.0, 5, 6),  # the one-cycle / triangular schedule
    ("linear", 0.1, 0.0, 3, 3),  # W rounds to 0: no warm-up
    ("step", 0.0, 0.0, 6, 5),  # decays every 1.5 epochs = 9 steps
    ("step", 1.0, 0.2, 6, 5),
    ("cosine", 1.6, 0.0, 1, 2),  # W = 2 = every step: D = 0
]


@pytest.mark.parametrize(("schedule", "warmup", "start", "per_epoch", "epochs"), SCHEDULE_CONFIGS)
def test_schedules_follow_their_formulas(schedule, warmup, start, per_epoch, epochs):
    config = RunConfig(
        learning_rate=0.1,
        epochs=epochs,
        lr_schedule=schedule,
        lr_warmup_epochs=warmup,
        lr_warmup_start=start,
        lr_final=0.02,
        lr_step_epochs=1.5,
        lr_step_factor=0.3,
    )
    total = per_epoch * epochs
    expected = reference_rates(total, per_epoch, config)
    ours = [learning_rate_at(step, total, per_epoch, config) for step in range(total + 4)]
    np.testing.assert_allclose(ours, expected, rtol=1e-14, atol=0)


def test_warmup_boundaries_and_the_ends_of_the_decay():
    config = RunConfig(
        learning_rate=0.1,
        lr_schedule="cosine",
        lr_warmup_epochs=2.0,
        lr_warmup_start=0.1,
        lr_final=0.05,
    )
    per_epoch, total = 5, 100  # W = 10, D = 90

    def rate(step: int) -> float:
        return learning_rate_at(step, total, per_epoch, config)

    assert rate(0) == pytest.approx(0.01, rel=1e-15)  # the warm-up's start, lr_warmup_start·peak
    assert rate(9) == pytest.approx(0.01 + 0.09 * 0.9, rel=1e-15)  # the warm-up's last step
    assert rate(10) == 0.1  # the peak, on the first step after it
    assert rate(10 + 45) == pytest.approx((0.1 + 0.005) / 2, rel=1e-14)  # cosine's midpoint
    assert rate(total) == pytest.approx(0.005, rel=1e-14)  # lr_final·peak, and stays there
    assert rate(total + 50) == rate(total)
    linear = dataclasses.replace(config, lr_schedule="linear")
    assert learning_rate_at(10 + 30, total, per_epoch, linear) == pytest.approx(
        0.1 - (0.1 - 0.005) / 3, rel=1e-14
    )


def test_step_schedule_decays_on_the_counted_step():
    """Every 0.3 epochs of 100 steps is every 30 steps, though 0.3·100 is 30.000000000000004."""
    config = RunConfig(learning_rate=1.0, lr_schedule="step", lr_step_epochs=0.3)
    rates = [learning_rate_at(step, 1000, 100, config) for step in (29, 30, 59, 60)]
    assert rates == [1.0, 0.1, 0.1, pytest.approx(0.01, rel=1e-15)]


@pytest.mark.parametrize("schedule", ["constant", "cosine", "linear", "step"])
def test_no_step_left_after_the_warmup_counts_as_decayed(schedule):
    """D = 0: Keras's schedules would divide 0 by 0; the decay is complete instead."""
    config = RunConfig(
        learning_rate=0.1,
        epochs=2,
        lr_schedule=schedule,
        lr_warmup_epochs=1.6,
        lr_final=0.2,
        lr_step_epochs=1.0,
    )
    expected = {"constant": 0.1, "cosine": 0.02, "linear": 0.02, "step": 0.1}[schedule]
    rates = [learning_rate_at(step, 2, 1, config) for step in range(2, 4)]
    assert rates[0] == pytest.approx(expected, rel=1e-15)
    assert all(math.isfinite(rate) for rate in rates)


def test_steps_per_epoch_counts_the_partial_batch():
    assert [steps_per_epoch(count, 128) for count in (0, 1, 128, 129, 4500)] == [0, 1, 1, 2, 36]


def test_schedule_arguments_are_checked():
    with pytest.raises(ValueError, match="step"):
        learning_rate_at(-1, 10, 2, RunConfig())
    with pytest.raises(ConfigError, match="lr_schedule"):
        learning_rate_at(0, 10, 2, RunConfig(lr_schedule="exponential"))


# --- the weight average ---------------------------------------------------------------------------


def small_net() -> torch.nn.Module:
    """A float64 net with BatchNorm statistics, an integer buffer and a frozen layer."""
    generator = torch.Generator().manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(2, 3, 3),
        torch.nn.BatchNorm2d(3),
        torch.nn.Flatten(),
        torch.nn.Linear(12, 2),
    ).double()
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator, dtype=torch.float64))
    net[3].requires_grad_(False)
    return net


def train_step(net: torch.nn.Module, generator: torch.Generator) -> None:
    """A stand-in optimizer step: every weight and BatchNorm's statistics move."""
    net.train()
    net(torch.randn(4, 2, 4, 4, generator=generator, dtype=torch.float64))
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator, dtype=torch.float64))


def floating_state(net: torch.nn.Module) -> dict[str, np.ndarray]:
    return {
        name: tensor.numpy().copy()
        for name, tensor in net.state_dict().items()
        if tensor.is_floating_point()
    }


@pytest.mark.parametrize("momentum", [0.0, 0.9, 0.999])
def test_weight_average_follows_the_loop(momentum):
    net, generator = small_net(), torch.Generator().manual_seed(1)
    average = WeightAverage(net, momentum)
    expected: dict[str, np.ndarray] = {}
    for update in range(5):
        train_step(net, generator)
        average.update(net)
        for name, live in floating_state(net).items():
            if update == 0:
                expected[name] = live  # Keras's first step: momentum 0
            else:
                expected[name] = momentum * expected[name] + (1 - momentum) * live
    averaged = average.state_dict(net)
    assert list(averaged) == list(net.state_dict())
    assert set(expected) == {name for name in averaged if name != "1.num_batches_tracked"}
    for name, values in expected.items():
        np.testing.assert_allclose(averaged[name].numpy(), values, rtol=1e-13, atol=1e-15)
    # BatchNorm's statistics are averaged (momentum 0 keeps the last); its step count is live.
    same = np.array_equal(averaged["1.running_mean"].numpy(), net[1].running_mean.numpy())
    assert same == (momentum == 0)
    assert int(averaged["1.num_batches_tracked"]) == 5


def test_weight_average_first_update_copies():
    net, generator = small_net(), torch.Generator().manual_seed(2)
    average = WeightAverage(net, 0.99)
    train_step(net, generator)
    average.update(net)
    state = net.state_dict()
    for name, tensor in average.state_dict(net).items():
        assert torch.equal(tensor, state[name])
        if tensor.is_floating_point():
            assert tensor.data_ptr() != state[name].data_ptr()  # a copy, not the live tensor


def test_weight_average_updates_in_place():
    """No new storage per step: the averages stay the tensors they were."""
    net, generator = small_net(), torch.Generator().manual_seed(3)
    average = WeightAverage(net, 0.9)
    pointers = [tensor.data_ptr() for tensor in average.averages]
    for _ in range(3):
        train_step(net, generator)
        average.update(net)
    assert [tensor.data_ptr() for tensor in average.averages] == pointers


def test_applied_swaps_the_average_in_and_restores_bit_for_bit():
    net, generator = small_net(), torch.Generator().manual_seed(4)
    average = WeightAverage(net, 0.9)
    for _ in range(3):
        train_step(net, generator)
        average.update(net)
    before = {name: tensor.clone() for name, tensor in net.state_dict().items()}
    reference = copy.deepcopy(net)
    reference.load_state_dict(average.state_dict(net))
    reference.eval()
    images = torch.randn(3, 2, 4, 4, generator=generator, dtype=torch.float64)
    with average.applied(net) as applied:
        assert applied is net
        net.eval()
        torch.testing.assert_close(net(images), reference(images), rtol=0, atol=0)
        assert not torch.equal(net[0].weight, before["0.weight"])
    for name, tensor in net.state_dict().items():
        assert torch.equal(tensor, before[name]), name
    with pytest.raises(RuntimeError, match="inside"), average.applied(net):
        raise RuntimeError("inside")
    for name, tensor in net.state_dict().items():
        assert torch.equal(tensor, before[name]), name


def test_weight_average_momentum_is_checked():
    with pytest.raises(ValueError, match="momentum"):
        WeightAverage(small_net(), 1.0)
