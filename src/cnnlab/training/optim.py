"""Optimizers, learning-rate schedules and the weight average, chosen by a `RunConfig`.

Every optimizer below takes `lr` from its param group at each step (the trainer sets it per step
for a schedule) and is elementwise, so stacked parameters step like separate ones.

Adam. With step t counted from 1, m <- beta_1·m + (1 - beta_1)·g, v <- beta_2·v + (1 - beta_2)·g²;
the two updates differ only in where epsilon goes:

- `"adam"`, `KerasAdam`: Keras 3's convention (`keras/src/optimizers/adam.py`, op for op as its
  torch backend's `torch_adam.py` does it): epsilon is added to the raw sqrt(v) and the bias
  correction is folded into the step size,
  p <- p - alpha_t·m / (sqrt(v) + epsilon), alpha_t = lr·sqrt(1 - beta_2^t) / (1 - beta_1^t).
- `"torch_adam"`, `torch.optim.Adam`: PyTorch's convention: epsilon is added to the
  bias-corrected sqrt(v / (1 - beta_2^t)). Written in Keras's form its epsilon is
  epsilon·sqrt(1 - beta_2^t), about 30 times smaller at the first step, so the two part ways
  wherever sqrt(v) is near epsilon (by 7e-4 to 3e-3 in the registered nets' weights after three
  steps; tests/test_keras.py).

Neither uses AMSGrad: Keras's Adam defaults to `amsgrad=False` and the seed report used the
default, so `KerasAdam` has no such option.

- `"adamw"`: Keras's AdamW, which is its Adam plus weight decay (default 0.004, Keras's): a
  `KerasAdam` with `weight_decay`.
- `"sgd"`, `KerasSGD`: Keras 3's SGD (`keras/src/optimizers/sgd.py`, op for op as its torch
  backend's `torch_sgd.py`): m <- momentum·m - lr·g, then p <- p + m, or with Nesterov
  p <- p + momentum·m - lr·g; without momentum p <- p - lr·g. PyTorch's SGD keeps
  b <- momentum·b + g and steps p <- p - lr·b: the same thing while lr is constant, not when a
  schedule changes it (Keras's velocity carries the old steps' learning rates).

Weight decay (`RunConfig.weight_decay`, `config.weight_decay(config)`) is Keras 3's decoupled
form: before each update, p <- p·(1 - wd·lr) on every parameter that has a gradient, lr being the
step's learning rate. Keras's generic `BaseOptimizer._apply_weight_decay` writes it
p - p·wd·lr; its torch backend (`torch_optimizer.py`), whose rounding cnnlab follows, multiplies
by 1 - wd·lr, computed in the learning rate's float type. `"torch_adam"` with a decay is
`torch.optim.AdamW`, whose decoupled decay is the same p·(1 - lr·wd). None of these is the L2
penalty of `torch.optim.Adam(weight_decay=...)`, which adds wd·p to the gradient.

Schedules (`learning_rate_at`) are Keras's `LearningRateSchedule`s evaluated at the 0-based step
count, and `WeightAverage` is the exponential moving average of the weights used to evaluate.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from cnnlab.config import RunConfig, check_value, weight_decay
from cnnlab.errors import CnnlabError

# The host float types that round 1 - wd·lr as Keras does for weights of these dtypes.
_HOST_FLOATS = {torch.float32: np.float32, torch.float64: np.float64}


class KerasAdam(torch.optim.Optimizer):
    """Adam with Keras 3's update: epsilon on the raw sqrt(v), bias correction in the step size.

    Elementwise per tensor, so it steps stacked (grouped) parameters as it steps lone ones.
    The step count is a float32 tensor on each parameter's device and the step size alpha_t is
    computed there, in the parameter's dtype as Keras does, in every mode: a step never reads a
    value back to the host, and with `capturable=True` it can be recorded in a CUDA graph.
    `capturable` changes no arithmetic; it also tells `load_state_dict` to move step counts onto
    the parameters' devices, as it does for PyTorch's optimizers. Each parameter counts its own
    steps (PyTorch's state layout); Keras counts one `iterations` for all, the same thing as long
    as every parameter gets a gradient at every step, as in cnnlab's nets. `weight_decay` is
    Keras's decoupled decay (see `decay_weights`); 0 skips it, leaving the update as it was.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-7,
        *,
        weight_decay: float = 0.0,
        capturable: bool = False,
    ):
        if not lr > 0:
            raise ValueError(f"lr: expected a positive number, got {lr}")
        if not all(0 <= beta < 1 for beta in betas):
            raise ValueError(f"betas: expected two numbers in [0, 1), got {betas}")
        if not eps >= 0:
            raise ValueError(f"eps: expected a number >= 0, got {eps}")
        _check_weight_decay(weight_decay)
        defaults = {
            "lr": lr,
            "betas": tuple(betas),
            "eps": eps,
            "weight_decay": weight_decay,
            "capturable": capturable,
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One Keras Adam update of every parameter that has a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            # alpha_t is computed in each parameter's dtype (Keras casts to the variable's).
            beta_1, beta_2 = group["betas"]
            for params in _buckets(group, "KerasAdam"):
                states = [self._state(param) for param in params]
                if group["weight_decay"]:
                    decay_weights(params, weight_decay=group["weight_decay"], lr=group["lr"])
                keras_adam_update(
                    params,
                    [param.grad for param in params],
                    [state["exp_avg"] for state in states],
                    [state["exp_avg_sq"] for state in states],
                    [state["step"] for state in states],
                    lr=group["lr"],
                    beta_1=beta_1,
                    beta_2=beta_2,
                    eps=group["eps"],
                )
        return loss

    def _state(self, param: torch.Tensor) -> dict[str, torch.Tensor]:
        """A parameter's moments and step count, created at its first step."""
        state = self.state[param]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32, device=param.device)
            state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        elif state["step"].device != param.device:
            # A state_dict loaded without capturable keeps the step where it was saved.
            state["step"] = state["step"].to(param.device, torch.float32)
        return state


def _buckets(group: dict[str, Any], optimizer: str) -> list[list[torch.Tensor]]:
    """A param group's parameters that have a gradient, one list per (device, dtype): the
    foreach ops take tensors of one device and dtype."""
    buckets: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
    for param in group["params"]:
        if param.grad is None:
            continue
        if param.grad.is_sparse:
            raise RuntimeError(f"{optimizer} does not support sparse gradients")
        buckets.setdefault((param.device, param.dtype), []).append(param)
    return list(buckets.values())


def keras_adam_update(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    steps: list[torch.Tensor],
    *,
    lr: float,
    beta_1: float,
    beta_2: float,
    eps: float,
) -> None:
    """Keras 3's Adam step, in place, over tensors of one device and dtype (foreach ops)."""
    torch._foreach_add_(steps, 1)
    # One alpha_t per tensor, as a device tensor: no host sync, replayable from a CUDA graph.
    local_step = torch.stack(steps).to(params[0].dtype)
    beta_1_power = torch.pow(torch.full_like(local_step, beta_1), local_step)
    beta_2_power = torch.pow(torch.full_like(local_step, beta_2), local_step)
    alpha = lr * torch.sqrt(1 - beta_2_power) / (1 - beta_1_power)

    torch._foreach_mul_(exp_avgs, beta_1)
    torch._foreach_add_(exp_avgs, grads, alpha=1 - beta_1)
    torch._foreach_mul_(exp_avg_sqs, beta_2)
    torch._foreach_add_(exp_avg_sqs, torch._foreach_mul(grads, grads), alpha=1 - beta_2)

    updates = torch._foreach_mul(exp_avgs, alpha.unbind(0))
    denominators = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_add_(denominators, eps)
    torch._foreach_div_(updates, denominators)
    torch._foreach_sub_(params, updates)


class KerasSGD(torch.optim.Optimizer):
    """SGD with Keras 3's update, which differs from PyTorch's once the learning rate changes.

    m <- momentum·m - lr·g, then p <- p + m, or with Nesterov p <- p + momentum·m - lr·g;
    without momentum p <- p - lr·g (see the module docstring). `weight_decay` is Keras's
    decoupled decay (see `decay_weights`); 0 skips it.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        lr: float = 0.01,
        momentum: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
    ):
        if not lr > 0:
            raise ValueError(f"lr: expected a positive number, got {lr}")
        if not 0 <= momentum <= 1:
            raise ValueError(f"momentum: expected a number in [0, 1], got {momentum}")
        if nesterov and momentum == 0:
            # Keras would silently step without momentum; PyTorch refuses, and so do we.
            raise ValueError("nesterov: needs momentum > 0")
        _check_weight_decay(weight_decay)
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "nesterov": nesterov,
            "weight_decay": weight_decay,
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One Keras SGD update of every parameter that has a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            momentum = group["momentum"]
            for params in _buckets(group, "KerasSGD"):
                buffers = [] if momentum == 0 else [self._buffer(param) for param in params]
                if group["weight_decay"]:
                    decay_weights(params, weight_decay=group["weight_decay"], lr=group["lr"])
                keras_sgd_update(
                    params,
                    [param.grad for param in params],
                    buffers,
                    lr=group["lr"],
                    momentum=momentum,
                    nesterov=group["nesterov"],
                )
        return loss

    def _buffer(self, param: torch.Tensor) -> torch.Tensor:
        """A parameter's momentum, zero at its first step (Keras's; PyTorch's starts at g)."""
        state = self.state[param]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        return state["momentum_buffer"]


def keras_sgd_update(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    momentum_buffers: list[torch.Tensor],
    *,
    lr: float,
    momentum: float,
    nesterov: bool,
) -> None:
    """Keras 3's SGD step, in place, in its torch backend's op order (foreach ops).

    `momentum_buffers` is empty when `momentum` is 0.
    """
    if momentum == 0:
        torch._foreach_add_(params, grads, alpha=-lr)
        return
    torch._foreach_mul_(momentum_buffers, momentum)
    torch._foreach_add_(momentum_buffers, grads, alpha=-lr)
    if nesterov:
        torch._foreach_add_(params, grads, alpha=-lr)
        torch._foreach_add_(params, momentum_buffers, alpha=momentum)
    else:
        torch._foreach_add_(params, momentum_buffers)


def decay_weights(params: list[torch.Tensor], *, weight_decay: float, lr: float) -> None:
    """Keras 3's decoupled weight decay, p <- p·(1 - wd·lr), over tensors of one dtype."""
    # Keras's torch backend computes the factor in its learning-rate variable's float type,
    # float32 beside float32 weights: the same rounding here keeps float32 runs bit-equal.
    host_float = _HOST_FLOATS.get(params[0].dtype, np.float64)
    with np.errstate(all="ignore"):  # beyond float32 the factor is inf or nan, as in Keras: the
        factor = host_float(1) - host_float(weight_decay) * host_float(lr)  # run then diverges
    torch._foreach_mul_(params, float(factor))


def _check_weight_decay(value: float) -> None:
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"weight_decay: expected a finite number >= 0, got {value}")


def make_optimizer(
    parameters: Sequence[torch.nn.Parameter], config: RunConfig, *, capturable: bool = False
) -> torch.optim.Optimizer:
    """The optimizer `config.optimizer` names over the trainable `parameters` (module docstring).

    Frozen parameters (requires_grad False) are left out: they get no state and no decay.
    """
    parameters = [parameter for parameter in parameters if parameter.requires_grad]
    name = check_value("optimizer", config.optimizer)
    if not parameters:
        raise CnnlabError(f"optimizer {name}: the network has no trainable parameters")
    decay = weight_decay(config)
    betas = (config.beta_1, config.beta_2)
    if name in ("adam", "adamw"):
        return KerasAdam(
            parameters,
            config.learning_rate,
            betas,
            config.epsilon,
            weight_decay=decay,
            capturable=capturable,
        )
    if name == "sgd":
        return KerasSGD(parameters, config.learning_rate, config.momentum, config.nesterov, decay)
    # One kernel per tensor: the step costs 0.4 ms instead of 0.7 ms on the CPU (measured).
    fused = parameters[0].device.type in ("cpu", "cuda")
    if decay:
        return torch.optim.AdamW(
            parameters,
            lr=config.learning_rate,
            betas=betas,
            eps=config.epsilon,
            weight_decay=decay,
            fused=fused,
            capturable=capturable,
        )
    return torch.optim.Adam(
        parameters,
        lr=config.learning_rate,
        betas=betas,
        eps=config.epsilon,
        fused=fused,
        capturable=capturable,
    )


# --- learning-rate schedules ------------------------------------------------------------------


def steps_per_epoch(train_count: int, batch_size: int) -> int:
    """Optimisation steps in an epoch of `train_count` images: Keras counts the partial batch."""
    if train_count < 0 or batch_size < 1:
        raise ValueError(
            f"steps_per_epoch: expected train_count >= 0 and batch_size >= 1,"
            f" got {train_count} and {batch_size}"
        )
    return -(-train_count // batch_size)


def learning_rate_at(step: int, total_steps: int, steps_per_epoch: int, config: RunConfig) -> float:
    """The learning rate of 0-based optimisation step `step` of a run of `total_steps`.

    Keras passes its `iterations` count, from 0, to a schedule, as the trainer passes `step`.
    A warm-up of round(lr_warmup_epochs·steps_per_epoch) steps W rises linearly from
    lr_warmup_start·peak to the peak `learning_rate` (Keras's CosineDecay warm-up); then, with
    s = step - W of D = total_steps - W decay steps, `lr_schedule` is Keras's schedule at s:
    constant; cosine, CosineDecay(alpha=lr_final); linear, PolynomialDecay(power=1, end
    lr_final·peak); step, ExponentialDecay(decay_rate=lr_step_factor, staircase=True) every
    round(lr_step_epochs·steps_per_epoch) steps (at least 1: a whole number of steps, as the
    warm-up, so a decay lands on the step a user counts). Past D steps the decay stays at its
    end; D = 0 (no step left after the warm-up) counts as decayed, where Keras would give 0/0.
    """
    if step < 0 or total_steps < 0 or steps_per_epoch < 1:
        raise ValueError(
            f"learning_rate_at: expected step >= 0, total_steps >= 0, steps_per_epoch >= 1,"
            f" got {step}, {total_steps}, {steps_per_epoch}"
        )
    schedule = check_value("lr_schedule", config.lr_schedule)
    peak = config.learning_rate
    warmup_steps = round(config.lr_warmup_epochs * steps_per_epoch)
    if step < warmup_steps:
        start = config.lr_warmup_start * peak
        # Keras's operation order: (target - initial)·(step / warmup_steps) + initial.
        return (peak - start) * (step / warmup_steps) + start
    since_warmup = step - warmup_steps
    decay_steps = total_steps - warmup_steps
    if schedule == "constant":
        return peak
    if schedule == "step":
        interval = max(1, round(config.lr_step_epochs * steps_per_epoch))
        return peak * config.lr_step_factor ** math.floor(since_warmup / interval)
    progress = 1.0 if decay_steps <= 0 else min(since_warmup, decay_steps) / decay_steps
    if schedule == "cosine":
        cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
        return peak * ((1 - config.lr_final) * cosine + config.lr_final)
    end = config.lr_final * peak
    return (peak - end) * (1 - progress) + end


# --- the weight average -----------------------------------------------------------------------


class WeightAverage:
    """An exponential moving average of a module's weights, evaluated instead of the live ones.

    After each optimizer step, `update` sets avg <- momentum·avg + (1 - momentum)·live (as a
    lerp) for every parameter and every floating-point buffer, so a BatchNorm's moving statistics
    are averaged with its weights (timm's ModelEmaV2/V3 and airbench do this; Keras's `use_ema`
    averages trainable variables only, which would pair averaged weights with live statistics
    they were not computed for). The first update copies, as Keras's momentum is 0 at its first
    step. Integer buffers (BatchNorm's num_batches_tracked) are not averaged.
    """

    def __init__(self, module: torch.nn.Module, momentum: float):
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum: expected a number in [0, 1), got {momentum}")
        self.momentum = momentum
        self.updates = 0
        self.names = [
            name for name, tensor in module.state_dict().items() if tensor.is_floating_point()
        ]
        with torch.no_grad():
            self.averages = [tensor.detach().clone() for tensor in self._live(module)]

    def _live(self, module: torch.nn.Module) -> list[torch.Tensor]:
        """The module's tensors that are averaged, in `self.names`' order (no copies)."""
        tensors = dict(module.named_parameters(remove_duplicate=False))
        tensors.update(module.named_buffers(remove_duplicate=False))
        try:
            return [tensors[name] for name in self.names]
        except KeyError as error:
            raise ValueError(f"WeightAverage: the module has no tensor {error}") from None

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> None:
        """Fold the module's current weights into the average (call after every step)."""
        live = self._live(module)
        if self.updates == 0:
            torch._foreach_copy_(self.averages, live)
        else:
            torch._foreach_lerp_(self.averages, live, 1 - self.momentum)
        self.updates += 1

    @contextlib.contextmanager
    def applied(self, module: torch.nn.Module) -> Iterator[torch.nn.Module]:
        """The module with the averaged weights inside the block, its own ones restored after."""
        live = self._live(module)
        with torch.no_grad():
            saved = [tensor.detach().clone() for tensor in live]
            torch._foreach_copy_(live, self.averages)
        try:
            yield module
        finally:
            with torch.no_grad():
                torch._foreach_copy_(live, saved)

    def state_dict(self, module: torch.nn.Module) -> dict[str, torch.Tensor]:
        """`module.state_dict()` with the averages (not copies) in place of the live tensors."""
        state = module.state_dict()
        state.update(zip(self.names, self.averages, strict=True))
        return state
