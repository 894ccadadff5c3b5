"""A module net (an installed package's `nn.Module`, see `nn/architectures.py`) as cnnlab trains it.

`build_module_net` calls the factory with the run's input shape, class count and fields, its
random draws made from the run's own initialisation stream (torch's global generator is put back
after), and wraps the net in a `ModuleNet`: the `penalty` and dropout stream the loop asks every
net for. `check_module_net` builds it once and runs a forward pass before anything trains, so a
factory that raises, returns no `nn.Module` or outputs the wrong shape is one line naming its
package. The weights stay a plain state_dict (the wrapper's names: "net." + the net's own):
`load_run` calls the factory again with the recorded fields and loads them into it.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from cnnlab.config import ConfigError, RunConfig
from cnnlab.errors import CnnlabError
from cnnlab.nn.architectures import check_module_fields, load_factory, module_architecture
from cnnlab.nn.shapes import MAX_WEIGHTS

PROBE_BATCH = 2  # images in the forward pass that checks a module net's output
# Swapping torch's global generator is process-wide: one forward pass draws from it at a time.
_GLOBAL_RNG = threading.Lock()


class ModuleNet(nn.Module):
    """A user's net: NCHW float images in, logits out, with the loop's `penalty` and streams.

    `l1`, `l2` weigh Σ|W| and ΣW² of every trainable `nn.Linear` weight (the seed's penalty on
    its dense kernel); the net's own modules are its business. In training mode the forward pass
    draws its random numbers (nn.Dropout's masks) from the run's dropout stream.
    """

    specs: tuple = ()  # no layer specs: the net is the package's

    def __init__(self, net: nn.Module, input_shape: tuple[int, int, int], l1=None, l2=None):
        super().__init__()
        self.net = net
        self.input_shape = tuple(input_shape)  # height, width, channels
        self.l1, self.l2 = l1 or 0.0, l2 or 0.0
        self.generator: torch.Generator | None = None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if not self.training or self.generator is None:
            return self.net(images)
        with drawing_from(self.generator):
            return self.net(images)

    def penalty(self) -> torch.Tensor | None:
        """l1·Σ|W| + l2·ΣW² over the trainable Linear weights (None with both at 0)."""
        terms = []
        for module in linear_layers(self.net):
            if module.weight.requires_grad:
                if self.l1:
                    terms.append(self.l1 * module.weight.abs().sum())
                if self.l2:
                    terms.append(self.l2 * module.weight.square().sum())
        return sum(terms[1:], terms[0]) if terms else None

    def set_dropout_generator(self, generator: torch.Generator | None) -> None:
        self.generator = generator


def linear_layers(net: nn.Module) -> list[nn.Linear]:
    return [module for module in net.modules() if isinstance(module, nn.Linear)]


@contextlib.contextmanager
def drawing_from(generator: torch.Generator) -> Iterator[None]:
    """torch's default generator of `generator`'s device holds `generator`'s state meanwhile."""
    cuda = generator.device.type == "cuda"
    get_state = (
        (lambda: torch.cuda.get_rng_state(generator.device)) if cuda else torch.get_rng_state
    )

    def set_state(state: torch.Tensor) -> None:
        if cuda:
            torch.cuda.set_rng_state(state, generator.device)
        else:
            torch.set_rng_state(state)

    with _GLOBAL_RNG:
        saved = get_state()
        set_state(generator.get_state())
        try:
            yield
        finally:
            generator.set_state(get_state())
            set_state(saved)


def _label(config: RunConfig) -> str:
    return module_architecture(config.arch, config.arch_package).label()


def call_factory(
    config: RunConfig, input_shape: tuple[int, int, int], num_classes: int, seed: int = 0
) -> nn.Module:
    """The factory's net for these images and classes, its random draws from `seed` (torch's
    global CPU generator is restored after); anything but an nn.Module is refused."""
    factory = load_factory(config.arch, config.arch_package)
    fields = check_module_fields(config)
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(seed)
        try:
            net = factory(tuple(input_shape), num_classes, **fields)
        except Exception as error:  # the user's code: any failure is theirs to read
            raise CnnlabError(
                f"{_label(config)}: the factory raised {type(error).__name__}: {error}"
            ) from None
        if not isinstance(net, nn.Module):
            raise CnnlabError(
                f"{_label(config)}: the factory returned a {type(net).__name__}, not a"
                " torch.nn.Module"
            )
        if any(isinstance(p, nn.parameter.UninitializedParameter) for p in net.parameters()):
            # Lazy modules take their shapes, and draw their weights, on a first batch.
            _forward(net.eval(), _label(config), input_shape)
            net.train()
    return net


def _forward(model: nn.Module, label: str, input_shape: tuple[int, int, int]) -> object:
    """`model` on a batch of PROBE_BATCH zero images; a failure is one line."""
    height, width, channels = input_shape
    try:
        with torch.no_grad():
            return model(torch.zeros(PROBE_BATCH, channels, height, width))
    except Exception as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise CnnlabError(
            f"{label}: its forward pass fails on {height}x{width}x{channels} images:"
            f" {type(error).__name__}: {reason}"
        ) from None


def build_module_net(
    config: RunConfig,
    input_shape: tuple[int, int, int],
    num_classes: int,
    generator: torch.Generator | None = None,
) -> ModuleNet:
    """The run's net on the CPU in float32; its initial weights drawn from `generator`."""
    seed = 0 if generator is None else int(torch.randint(2**62, (1,), generator=generator))
    net = call_factory(config, input_shape, num_classes, seed)
    return ModuleNet(net, input_shape, config.l1, config.l2).float()


def loaded_module_net(
    config: RunConfig,
    input_shape: tuple[int, int, int],
    num_classes: int,
    state: dict[str, Any],
    device: torch.device | str = "cpu",
) -> ModuleNet:
    """A copy of a run's net holding `state`, in eval mode on `device`."""
    model = build_module_net(config, input_shape, num_classes)
    model.load_state_dict({name: torch.as_tensor(value) for name, value in state.items()})
    return model.to(device).eval()


_CHECKED: dict[tuple, None] = {}


def check_module_net(config: RunConfig, input_shape: tuple[int, int, int], num_classes: int):
    """Build the net and run a batch through it: one line naming the package for a factory
    that fails, a net without trainable weights, an L1/L2 weight without a Linear layer, or
    an output that is not one logit per class. Each net is checked once per process."""
    key = (
        id(load_factory(config.arch, config.arch_package)),  # a factory passed to fit, too
        config.arch,
        config.arch_package,
        repr(sorted((config.arch_fields or {}).items())),
        tuple(input_shape),
        num_classes,
        bool(config.l1 or config.l2),
    )
    if key in _CHECKED:
        return
    model = build_module_net(config, input_shape, num_classes)
    label = _label(config)
    weights = sum(parameter.numel() for parameter in model.parameters())
    if weights > MAX_WEIGHTS:
        raise CnnlabError(
            f"{label}: holds {weights:,} weights; at most {MAX_WEIGHTS:,} are allowed"
        )
    if not any(parameter.requires_grad for parameter in model.parameters()):
        raise CnnlabError(f"{label}: the net has no trainable weights")
    for name in ("l1", "l2"):
        if getattr(config, name) and not linear_layers(model.net):
            raise ConfigError(
                name, f"weighs the Linear layers' weights, and {label} has no nn.Linear"
            )
    _check_output(model, label, input_shape, num_classes)
    _CHECKED[key] = None


def _check_output(model: ModuleNet, label: str, input_shape, num_classes: int) -> None:
    output = _forward(model.eval(), label, input_shape)
    expected = (PROBE_BATCH, num_classes)
    shape = tuple(output.shape) if isinstance(output, torch.Tensor) else None
    if shape != expected:
        got = f"shape {shape}" if shape is not None else f"a {type(output).__name__}"
        raise CnnlabError(
            f"{label}: outputs {got} for a batch of {PROBE_BATCH} images; expected {expected}:"
            f" one logit per class ({num_classes} classes)"
        )


# --- what a module net holds and computes -----------------------------------------------------


def flop_count(model: nn.Module, input_shape: tuple[int, int, int]) -> int:
    """FLOPs of one image's forward pass, as `torch.utils.flop_counter` counts them (2 per
    multiply-add, of matrix products and convolutions: what nearly all the work is)."""
    from torch.utils.flop_counter import FlopCounterMode

    height, width, channels = input_shape
    device = next(model.parameters(), torch.zeros(0)).device
    counter = FlopCounterMode(display=False)
    training = model.training
    try:
        with counter, torch.no_grad():
            model.eval()(torch.zeros(1, channels, height, width, device=device))
    finally:
        model.train(training)
    return int(counter.get_total_flops())


def receptive_field(
    model: nn.Module, layer: nn.Module, input_shape: tuple[int, int, int], draws: int = 8
) -> tuple[int, int] | None:
    """The input pixels (rows, columns) that move `layer`'s central output unit, found by
    autograd: on a copy whose weights are all positive, over `draws` random positive images (a
    max-pool passes one pixel's gradient per image), the span of every pixel reached."""
    import copy

    probe = copy.deepcopy(model).eval()
    with torch.no_grad():
        for parameter in probe.parameters():
            parameter.fill_(0.05)
    target = dict(zip(map(id, model.modules()), probe.modules(), strict=True))[id(layer)]
    captured: list[torch.Tensor] = []
    handle = target.register_forward_hook(lambda _m, _i, output: captured.append(output))
    height, width, channels = input_shape
    reached = torch.zeros(height, width, dtype=torch.bool)
    generator = torch.Generator().manual_seed(0)
    try:
        for _ in range(draws):
            images = torch.rand(1, channels, height, width, generator=generator) + 0.5
            images.requires_grad_(True)
            captured.clear()
            probe(images)
            output = captured[0]
            if output.dim() != 4:
                return None
            output[0, :, output.shape[2] // 2, output.shape[3] // 2].sum().backward()
            reached |= images.grad[0].abs().sum(0) > 0
    finally:
        handle.remove()
    rows, columns = reached.nonzero().T
    if len(rows) == 0:
        return None
    return int(rows.max() - rows.min() + 1), int(columns.max() - columns.min() + 1)


def last_conv(model: nn.Module, input_shape: tuple[int, int, int]) -> tuple[str, nn.Module] | None:
    """The last nn.Conv2d to run whose output is still an image (more than 1x1: a
    squeeze-excitation's 1x1 gate sees everything), else the last to run; None without one."""
    order: list[tuple[str, nn.Module, int]] = []

    def note(name: str):
        def hook(module, _inputs, output) -> None:
            order.append((name, module, output.shape[-2] * output.shape[-1]))

        return hook

    handles = [
        module.register_forward_hook(note(name))
        for name, module in model.named_modules()
        if isinstance(module, nn.Conv2d)
    ]
    height, width, channels = input_shape
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, channels, height, width))
    finally:
        for handle in handles:
            handle.remove()
    spatial = [(name, module) for name, module, size in order if size > 1]
    chosen = spatial or [(name, module) for name, module, _ in order]
    return chosen[-1] if chosen else None


def module_summary(model: ModuleNet, name: str, num_classes: int) -> str:
    """A module net's layers (each leaf module's output shape and parameters), its totals, its
    FLOPs and MACs per image and the receptive field of its last Conv2d."""
    shape = model.input_shape
    outputs: dict[str, tuple[int, ...]] = {}
    leaves = [(n, m) for n, m in model.net.named_modules() if not list(m.children()) and n]

    def keep(leaf: str):
        def hook(_module, _inputs, output) -> None:  # None: the output passes unchanged
            if isinstance(output, torch.Tensor):
                outputs.setdefault(leaf, tuple(output.shape[1:]))

        return hook

    handles = [module.register_forward_hook(keep(n)) for n, module in leaves]
    try:
        flops = flop_count(model, shape)
    finally:
        for handle in handles:
            handle.remove()
    lines = [f'Module net "{name}" on {"x".join(map(str, shape))} images, {num_classes} classes']
    lines.append(f"{'Layer (type)':<44}{'Output shape':<22}{'Param #':>10}")
    for leaf, module in leaves:
        count = sum(p.numel() for p in module.parameters(recurse=False))
        shown = str(outputs.get(leaf, "-"))
        lines.append(f"{f'{leaf} ({type(module).__name__})':<44}{shown:<22}{count:>10,}")
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    lines += [
        f"Total params: {total:,}",
        f"Trainable params: {trainable:,}",
        f"Non-trainable params: {total - trainable:,}",
        f"FLOPs per image: {flops:,} (torch.utils.flop_counter); MACs: {flops // 2:,}",
    ]
    conv = last_conv(model.net, shape)
    if conv is not None:
        field = receptive_field(model, conv[1], shape)
        shown = "x".join(map(str, field)) if field else "-"
        lines.append(
            f"Receptive field of {conv[0]} (the last image-shaped Conv2d): {shown} (autograd)"
        )
    return "\n".join(lines)
