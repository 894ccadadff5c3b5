"""The step a CUDA graph captures never waits for the host and never draws random numbers.

A host synchronisation inside a capture is an error (or, in relaxed modes, a value frozen at
capture time), and a random op replays the numbers drawn at capture. The grouped step is run
here on the CPU under a dispatch mode that sees every ATen op it calls, for the seed study's
nets with each optimizer a group can train.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from cnnlab.config import RunConfig
from cnnlab.training import group_net, group_plan, loop

# Ops that read a value back to the host (or need its size there) before they can finish.
SYNCING = {
    "_local_scalar_dense",
    "item",
    "is_nonzero",
    "equal",
    "nonzero",
    "masked_select",
    "unique",
    "_unique",
    "_unique2",
    "unique_consecutive",
    "repeat_interleave",
    "lift_fresh",  # a tensor made from host data inside the step: a host-to-device copy
}
# Words of the random ops' names: rand, randn, randint, randperm, bernoulli, normal_, uniform_ ...
RANDOM = (
    "rand",
    "bernoulli",
    "normal",
    "uniform",
    "exponential",
    "cauchy",
    "geometric",
    "multinomial",
    "poisson",
    "dropout",
    "random",
)


class NoHostSync(TorchDispatchMode):
    """Fails on any op that syncs with the host, draws random numbers, or copies to the host."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__.lstrip("_") if func.overloadpacket else str(func)
        if func.overloadpacket.__name__ in SYNCING or name in SYNCING:
            raise AssertionError(f"host synchronisation in the captured step: {func}")
        if name.startswith("index") and _boolean_index(args):
            # A boolean mask becomes indices through nonzero, which needs its count on the host.
            raise AssertionError(f"host synchronisation in the captured step: {func} by a mask")
        if any(word in name for word in RANDOM):
            raise AssertionError(f"random op in the captured step: {func}")
        if name in ("to_copy", "copy", "copy_", "copy_from"):
            devices = {t.device for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor)}
            target = kwargs.get("device")
            if len(devices) > 1 or (target is not None and torch.device(target) not in devices):
                raise AssertionError(f"a copy between devices in the captured step: {func}")
        return func(*args, **kwargs)


def _boolean_index(args) -> bool:
    indices = args[1] if len(args) > 1 and isinstance(args[1], list | tuple) else ()
    return any(
        isinstance(index, torch.Tensor) and index.dtype in (torch.bool, torch.uint8)
        for index in indices
    )


SEED_NETS = ("seed", "seed-maxpool", "seed-deep")


def captured_step(config: RunConfig, data) -> group_net._Stepper:
    """A group's full-batch stepper, warmed up and marked as capturing, as a capture runs it."""
    configs = [config, dataclasses.replace(config, seed=1, l1=0.0)]
    on_device = loop.to_device(config, data, torch.device("cpu"))
    members = group_net.GroupMembers(configs, on_device, masks="epoch", cuda_graph=True)
    members.dropout.start_epoch(on_device.train_count)
    orders = torch.arange(config.batch_size).repeat(2, 1)
    members.full.run(orders, members.dropout.for_step(0, config.batch_size))  # a warm-up step
    members.full.graph = object()  # what capture sets before the captured step
    return members.full


@pytest.mark.parametrize("optimizer", group_plan.GROUP_OPTIMIZERS)
@pytest.mark.parametrize("arch", SEED_NETS)
def test_the_captured_step_has_no_host_sync_and_no_random_op(tiny_cifar, arch, optimizer):
    config = RunConfig(arch=arch, train_size=100, batch_size=16, optimizer=optimizer, l1=1e-4)
    assert group_plan.groupable(config)
    stepper = captured_step(config, tiny_cifar)
    before = [parameter.detach().clone() for parameter in stepper.net.parameters()]
    with NoHostSync():
        stepper._step()
    # The step really ran under the mode: every weight moved.
    assert all(
        not torch.equal(old, new.detach())
        for old, new in zip(before, stepper.net.parameters(), strict=True)
    )


def test_the_mode_sees_what_it_guards():
    # Each kind of forbidden op, as a step could sneak it in, is caught.
    values = torch.ones(4)
    for sneaked in (
        lambda: values.sum().item(),
        lambda: float(values.sum()),
        lambda: values[values > 0],
        lambda: torch.rand(3),
        lambda: torch.nn.functional.dropout(values, 0.5),
        lambda: values.bernoulli_(0.5),
        lambda: torch.tensor([1.0, 2.0]),
        lambda: values.nonzero(),
    ):
        with pytest.raises(AssertionError, match="captured step"), NoHostSync():
            sneaked()
