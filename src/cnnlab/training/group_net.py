"""Several runs of one architecture trained at once, as one grouped network.

A group's members share the architecture, the training subset, batch size, epochs and Adam
settings; each keeps its own seed (initialisation, shuffles, dropout masks) and its own L1/L2
weights. The members' parameters are stacked: convolution kernels as (G·filters, in, kh, kw)
used with `groups=G`, dense kernels as (G, units, in) used with a batched matrix product. The
parameters of different members never meet (the losses are summed, so each member's gradient
is its own; Adam is elementwise), so a member follows the trajectory it would follow alone and a
member that diverges cannot disturb the others.

Randomness: each member is initialised by `modules.initialise` from its own generator, exactly
as `loop.fit` does, and shuffles with its own CPU generator. Dropout masks come from the
member's dropout generator: drawn step by step, in the order a lone run draws them
(`masks="step"`, the default on the CPU, so a member ends with a lone run's weights), or drawn
for a whole epoch at once (`masks="epoch"`, the default on CUDA, where the step is replayed from
a CUDA graph and nothing inside an epoch may wait for the host).

On CUDA a capture holds `device.GATE` alone and draws its streams from `device.STREAMS`; a
failed capture restores the thread's stream and ends graph capture in this process
(`CAPTURE_FAILED`). docs/cuda.md argues why threads side by side cannot spoil a capture.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.config import RunConfig
from cnnlab.data.datasets import Dataset
from cnnlab.nn import modules, specs
from cnnlab.nn.shapes import output_shape, resolve_layers
from cnnlab.training import loop
from cnnlab.training.device import GATE, STREAMS, autocast, cuda_math, normalise, resolve_device
from cnnlab.training.group_plan import MEMBER_FIELDS, group_key, groupable
from cnnlab.training.metrics import Evaluation, RunResult

# Set by the first failed capture: afterwards every group in this process trains eagerly, since
# some PyTorch versions leave the allocator believing a capture is still under way.
CAPTURE_FAILED = threading.Event()


class GroupNet(nn.Module):
    """G initialised `ConvNet`s of one architecture as one network with stacked parameters.

    Input: float images (b, G·C, H, W), member g's images in channels g·C..(g+1)·C.
    Output: logits (G, b, classes).
    """

    def __init__(self, nets: Sequence[modules.ConvNet]):
        super().__init__()
        self.members = len(nets)
        self.specs = nets[0].specs
        self.input_shape = nets[0].input_shape
        # A tuple, not a ModuleList: the lone modules lend their settings, not their parameters.
        self.lone_layers = tuple(nets[0].layers)
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        l1, l2 = [], []
        for index, module in enumerate(self.lone_layers):
            if isinstance(module, modules.KerasConv2d):
                self.weights.append(torch.cat([net.layers[index].weight for net in nets]))
                self.biases.append(torch.cat([net.layers[index].bias for net in nets]))
            elif isinstance(module, modules.KerasDense):
                self.weights.append(torch.stack([net.layers[index].weight for net in nets]))
                self.biases.append(torch.stack([net.layers[index].bias for net in nets]))
                l1.append([net.layers[index].l1 for net in nets])
                l2.append([net.layers[index].l2 for net in nets])
        # (dense layers, G): each member's penalty weights, applied per member.
        self.register_buffer("l1", torch.tensor(l1, dtype=torch.float32).reshape(len(l1), -1))
        self.register_buffer("l2", torch.tensor(l2, dtype=torch.float32).reshape(len(l2), -1))

    def forward(self, images: torch.Tensor, masks: Sequence[torch.Tensor] = ()) -> torch.Tensor:
        """Logits; `masks` holds one scaled keep-mask per dropout layer while training."""
        members, tensor = self.members, images
        parameters = iter(zip(self.weights, self.biases, strict=True))
        pending_masks = iter(masks)
        for module in self.lone_layers:
            if isinstance(module, modules.KerasConv2d):
                weight, bias = next(parameters)
                if module.extra_padding is not None:
                    tensor = F.pad(tensor, module.extra_padding)
                tensor = F.conv2d(
                    tensor, weight, bias, module.stride, module.padding, groups=members
                )
                tensor = modules.activate(module.activation, tensor)
            elif isinstance(module, modules.MaxPool2d):
                tensor = F.max_pool2d(tensor, module.kernel_size, module.stride)
            elif isinstance(module, modules.GeneratorDropout):
                if self.training and module.rate > 0:
                    tensor = tensor * next(pending_masks)
            elif isinstance(module, modules.ChannelsLastFlatten):
                batch, channels, height, width = tensor.shape
                tensor = tensor.reshape(batch, members, channels // members, height, width)
                tensor = tensor.permute(1, 0, 3, 4, 2).reshape(members, batch, -1)
            else:
                weight, bias = next(parameters)
                tensor = torch.baddbmm(bias.unsqueeze(1), tensor, weight.transpose(1, 2))
                tensor = modules.activate(module.activation, tensor)
        return tensor

    def penalties(self) -> torch.Tensor:
        """Each member's kernel penalty, shape (G,)."""
        total = torch.zeros(self.members, device=self.l1.device)
        dense_weights = [w for w in self.weights if w.dim() == 3]
        for weight, l1, l2 in zip(dense_weights, self.l1, self.l2, strict=True):
            total = total + l1 * weight.abs().sum((1, 2)) + l2 * weight.square().sum((1, 2))
        return total

    def dropout_shapes(self, batch: int) -> list[tuple[int, ...]]:
        """A lone member's activation shape at each dropout layer, for a batch of `batch`."""
        shapes, shape = [], self.input_shape
        for spec in self.specs:
            if isinstance(spec, specs.Dropout) and spec.rate > 0:
                lone = (batch, shape[2], shape[0], shape[1]) if len(shape) == 3 else (batch, *shape)
                shapes.append(lone)
            shape = output_shape(spec, shape)
        return shapes

    def mask_buffers(self, batch: int, device: torch.device) -> list[torch.Tensor]:
        """Zeroed static buffers, in the group layout, for the masks of a batch of `batch`."""
        buffers = []
        for shape in self.dropout_shapes(batch):
            if len(shape) == 4:
                group_shape = (shape[0], self.members * shape[1], *shape[2:])
            else:
                group_shape = (self.members, *shape)
            buffers.append(torch.zeros(group_shape, device=device))
        return buffers

    def member_state_dict(self, member: int) -> dict[str, torch.Tensor]:
        """Member `member`'s weights under the names of a lone `ConvNet`'s state_dict."""
        state, parameters = {}, iter(zip(self.weights, self.biases, strict=True))
        for index, module in enumerate(self.lone_layers):
            if isinstance(module, modules.KerasConv2d | modules.KerasDense):
                weight, bias = next(parameters)
                if weight.dim() == 3:
                    state[f"layers.{index}.weight"] = weight[member]
                    state[f"layers.{index}.bias"] = bias[member]
                else:
                    filters = module.out_channels
                    rows = slice(member * filters, (member + 1) * filters)
                    state[f"layers.{index}.weight"] = weight[rows]
                    state[f"layers.{index}.bias"] = bias[rows]
        return {name: value.detach().cpu().clone() for name, value in state.items()}


def _to_group_layout(members_first: torch.Tensor) -> torch.Tensor:
    """(G, b, C, H, W) -> (b, G·C, H, W), or (G, b, F) unchanged (dense-side masks)."""
    if members_first.dim() == 3:
        return members_first
    members, batch, channels, height, width = members_first.shape
    return members_first.transpose(0, 1).reshape(batch, members * channels, height, width)


class _Dropout:
    """Each member's keep-masks, scaled by 1/keep, in the group layout."""

    def __init__(
        self,
        net: GroupNet,
        generators: Sequence[torch.Generator],
        device: torch.device,
        mode: str,
    ):
        self.rates = [
            m.rate
            for m in net.lone_layers
            if isinstance(m, modules.GeneratorDropout) and m.rate > 0
        ]
        self.net, self.generators, self.device = net, generators, device
        self.mode = mode
        self.epoch_masks: list[torch.Tensor] = []

    def start_epoch(self, samples: int) -> None:
        """In epoch mode, draw every mask of the coming epoch (one row per training sample)."""
        if self.mode != "epoch":
            return
        shapes = self.net.dropout_shapes(samples)
        self.epoch_masks = [
            torch.stack(
                [modules.dropout_mask(shape, rate, g, self.device) for g in self.generators]
            )
            for shape, rate in zip(shapes, self.rates, strict=True)
        ]

    def for_step(self, start: int, batch: int) -> list[torch.Tensor]:
        """The masks of the batch of `batch` samples starting at position `start`."""
        if self.mode == "epoch":
            return [_to_group_layout(m[:, start : start + batch]) for m in self.epoch_masks]
        # Step mode: a lone run draws each dropout layer's mask in layer order per step.
        shapes = self.net.dropout_shapes(batch)
        per_member = [
            [
                modules.dropout_mask(shape, rate, g, self.device)
                for shape, rate in zip(shapes, self.rates, strict=True)
            ]
            for g in self.generators
        ]
        return [
            _to_group_layout(torch.stack([member[layer] for member in per_member]))
            for layer in range(len(shapes))
        ]


class _Stepper:
    """One optimisation step of the whole group, from static buffers: eager or a CUDA graph.

    The step reads its batch from `self.indices` and `self.masks` and adds each member's summed
    loss, correct count and data loss to `self.loss_sum` / `self.correct` / `self.data_loss_sum`,
    so it never syncs with the host.
    The same code runs eagerly (CPU, and CUDA's last partial batch) or is captured once and
    replayed (CUDA, full batches).
    """

    def __init__(self, net, optimizer, images, labels, batch, config, totals=None, streams=None):
        self.net, self.optimizer, self.images, self.labels = net, optimizer, images, labels
        self.stream_device = streams or images.device  # the device a capture's streams are on
        self.memory_format = torch.channels_last  # what the lone path's NHWC images amount to
        self.precision = config.precision
        device, members = images.device, net.members
        self.indices = torch.zeros((members, batch), dtype=torch.long, device=device)
        self.masks = net.mask_buffers(batch, device)
        if totals is None:
            totals = tuple(torch.zeros(members, device=device) for _ in range(3))
        self.loss_sum, self.correct, self.data_loss_sum = totals  # shared by a group's steppers
        self.graph: torch.cuda.CUDAGraph | None = None

    def _step(self) -> None:
        members, batch = self.indices.shape
        images = normalise(self.images[self.indices])  # (G, b, C, H, W)
        images = _to_group_layout(images).contiguous(memory_format=self.memory_format)
        labels = self.labels[self.indices]  # (G, b)
        with autocast(self.precision, images.device):
            logits = self.net(images, self.masks).float()
        cross_entropy = F.cross_entropy(
            logits.reshape(members * batch, -1), labels.reshape(-1), reduction="none"
        ).view(members, batch)
        data_losses = cross_entropy.mean(1)
        losses = data_losses + self.net.penalties()
        self.optimizer.zero_grad(set_to_none=self.graph is None)
        losses.sum().backward()
        self.optimizer.step()
        with torch.no_grad():
            self.loss_sum += losses.detach() * batch
            self.correct += (logits.argmax(2) == labels).sum(1)
            self.data_loss_sum += data_losses.detach() * batch

    def capture(self, warmup_batches: Callable[[], None]) -> None:
        """Capture the step in a CUDA graph; `warmup_batches` runs real steps first.

        The warm-up is ordinary CUDA work (under the caller's shared `GATE`); the capture holds
        `GATE` alone, so no other thread's CUDA call can spoil it (docs/cuda.md). Its streams
        come from `STREAMS`: no other live holder has them. A failed capture restores the
        thread's stream, and the group (and every later one in this process) trains eagerly.
        """
        device = self.stream_device
        previous = torch.cuda.current_stream(device)
        with contextlib.ExitStack() as held:
            try:
                side = held.enter_context(STREAMS.dedicated(device))
            except RuntimeError as error:  # every stream is taken: warm up, then train eagerly
                warmup_batches()
                self._train_eagerly(error, previous)
                return
            side.wait_stream(previous)
            with torch.cuda.stream(side):
                warmup_batches()
            previous.wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        self.optimizer.zero_grad(set_to_none=True)
        try:
            with GATE.exclusive(), STREAMS.dedicated(device) as capture_stream:
                capture = torch.cuda.graph(
                    graph, stream=capture_stream, capture_error_mode="thread_local"
                )
                self.graph = graph  # set first so _step keeps the grads' memory in place
                with capture:
                    self._step()
        except RuntimeError as error:
            # Capture records kernels without running them: nothing was trained, so the
            # remaining steps can run eagerly, only slower.
            self._train_eagerly(error, previous)

    def _train_eagerly(self, error: RuntimeError, stream: torch.cuda.Stream) -> None:
        """After a failed capture: back to `stream`, no graph here or later in this process."""
        self.graph = None
        CAPTURE_FAILED.set()
        # torch.cuda.graph leaves its capture stream current when capture_end raises.
        torch.cuda.set_stream(stream)
        warnings.warn(f"CUDA graph capture failed, training eagerly: {error}", stacklevel=3)

    def run(self, indices: torch.Tensor, masks: Sequence[torch.Tensor]) -> None:
        self.indices.copy_(indices, non_blocking=True)
        for static, mask in zip(self.masks, masks, strict=True):
            static.copy_(mask, non_blocking=True)
        if self.graph is not None:
            self.graph.replay()
        else:
            self._step()


def _evaluate_group(net: GroupNet, images, labels, precision, batch_size=loop.EVAL_BATCH_SIZE):
    """Per member: (loss, accuracy, predictions) in eval mode, every member on the same images."""
    net.eval()
    members = net.members
    cross_entropy = torch.zeros(members, device=images.device)
    predictions = []
    with torch.inference_mode():
        for start in range(0, len(labels), batch_size):
            batch_images = normalise(images[start : start + batch_size])
            with autocast(precision, images.device):
                logits = net(batch_images.repeat(1, members, 1, 1)).float()
            batch_labels = labels[start : start + batch_size]
            cross_entropy += (
                F.cross_entropy(
                    logits.reshape(-1, logits.shape[2]),
                    batch_labels.repeat(members),
                    reduction="none",
                )
                .view(members, -1)
                .sum(1)
            )
            predictions.append(logits.argmax(2))
        predicted = torch.cat(predictions, 1) if predictions else labels.new_zeros((members, 0))
        count = max(len(labels), 1)
        data_losses = cross_entropy / count
        losses = data_losses + net.penalties()
        accuracies = (predicted == labels).sum(1).float() / count
        scores = torch.stack([losses, accuracies, data_losses]).cpu()
    net.train()
    predicted = predicted.cpu().numpy()
    return [
        Evaluation(float(scores[0, m]), float(scores[1, m]), predicted[m], float(scores[2, m]))
        for m in range(members)
    ]


def fit_group(
    runs: Sequence[RunConfig | loop.Job],
    data: Dataset,
    *,
    device: str = "auto",
    masks: str | None = None,
    cuda_graph: bool | None = None,
    progress: loop.Progress | None = None,
) -> list[RunResult]:
    """Train compatible runs (configs or `loop.Job`s; see `group_key`) together; one RunResult
    per run, in order.

    `masks` "step" or "epoch" and `cuda_graph` default to what suits the device (see the module
    docstring); `progress` gets each member's epoch row with its index under "member"; a job's
    `prune` may stop its member after an epoch, as a diverged one stops (`loop.fit_members`).
    On CUDA the group trains in TF32 (fp32 storage, fp32 accumulation), or in the deterministic
    mode its runs ask for (`RunConfig.deterministic`, docs/cuda.md).
    """
    jobs = loop.as_jobs(runs)
    configs = [job.config for job in jobs]
    if len({group_key(config) for config in configs}) != 1:
        raise ValueError("fit_group needs runs that differ only in " + ", ".join(MEMBER_FIELDS))
    if len(configs) > 1 and any(config.label_noise for config in configs):
        # Each seed draws its own wrong labels; a group shares one set (`groupable` says no).
        raise ValueError("fit_group cannot share labels among runs with label_noise")
    target = resolve_device(device)
    on_cuda = target.type == "cuda"
    on_target = contextlib.ExitStack()
    if on_cuda:
        # Streams, graphs and the device-wide synchronisations of a capture all go to the
        # current device: make it the target's, whichever thread calls.
        on_target.enter_context(torch.cuda.device(target))
        on_target.enter_context(cuda_math(configs[0].deterministic))
    with on_target:
        on_device = loop.to_device(configs[0], data, target)
        members = GroupMembers(
            configs,
            on_device,
            masks=masks or ("epoch" if on_cuda else "step"),
            cuda_graph=on_cuda if cuda_graph is None else cuda_graph,
        )
        return loop.fit_members(jobs, data, on_device, members, progress)


class GroupMembers:
    """A `GroupNet` as `loop.Members`: every member's step in one pass (see the docstring).

    `stream_device`: the CUDA device a graph's streams are made on (default: the images').
    """

    def __init__(
        self,
        configs: Sequence[RunConfig],
        on_device: loop.OnDevice,
        *,
        masks: str,
        cuda_graph: bool,
        stream_device: torch.device | None = None,
    ):
        target = on_device.images.device
        nets, self.shufflers, droppers = [], [], []
        for member in configs:
            init_generator, shuffle_generator, dropout_generator = loop.generators(
                member.seed, target
            )
            net = modules.ConvNet(
                resolve_layers(member, on_device.input_shape, on_device.num_classes),
                on_device.input_shape,
            )
            modules.initialise(net, init_generator)
            nets.append(net)
            self.shufflers.append(shuffle_generator)
            droppers.append(dropout_generator)
        self.nets, self.count = nets, len(nets)
        self.net = GroupNet(nets).to(target)
        self.config, self.on_device, self.cuda_graph = configs[0], on_device, cuda_graph
        self.optimizer = loop.make_optimizer(self.net, self.config, capturable=cuda_graph)
        self.dropout = _Dropout(self.net, droppers, target, masks)
        images, labels = on_device.images, on_device.labels
        batch, count = self.config.batch_size, on_device.train_count
        stream_device = stream_device or target
        self.full = _Stepper(
            self.net, self.optimizer, images, labels, batch, self.config, streams=stream_device
        )
        totals = (self.full.loss_sum, self.full.correct, self.full.data_loss_sum)
        self.last = _Stepper(
            self.net, self.optimizer, images, labels, count % batch, self.config, totals
        )

    def train_epoch(self) -> list[tuple[float, float, float]]:
        count, batch, full = self.on_device.train_count, self.config.batch_size, self.full
        target = self.on_device.images.device
        orders = torch.stack([torch.randperm(count, generator=g) for g in self.shufflers]).to(
            target, non_blocking=True
        )
        self.dropout.start_epoch(count)
        for total in (full.loss_sum, full.correct, full.data_loss_sum):
            total.zero_()
        steps = [(start, min(batch, count - start)) for start in range(0, count, batch)]
        position = 0
        capture = self.cuda_graph and full.graph is None and not CAPTURE_FAILED.is_set()
        if capture and len(steps) > 3 and steps[3][1] == batch:
            warmup = steps[:3]

            def run_warmup() -> None:
                for start, size in warmup:
                    full.run(orders[:, start : start + size], self.dropout.for_step(start, size))

            full.capture(run_warmup)
            position = len(warmup)
        for start, size in steps[position:]:
            stepper = full if size == batch else self.last
            stepper.run(orders[:, start : start + size], self.dropout.for_step(start, size))
        scores = (torch.stack([full.loss_sum, full.correct, full.data_loss_sum]) / count).cpu()
        return [tuple(float(score) for score in scores[:, m]) for m in range(self.count)]

    def evaluate(
        self, images: torch.Tensor, labels: torch.Tensor, *, test_time: bool = True
    ) -> list[Evaluation]:
        # Grouped runs have no test-time augmentation (`groupable`): test_time changes nothing.
        return _evaluate_group(self.net, images, labels, self.config.precision)

    def state_dict(self, member: int) -> dict[str, torch.Tensor]:
        return self.net.member_state_dict(member)

    def parameter_count(self, member: int) -> int:
        return modules.count_parameters(self.nets[member])


def train_together(
    jobs: Sequence[loop.Job],
    data: Dataset,
    *,
    device: str = "auto",
    progress: loop.Progress | None = None,
) -> list[RunResult]:
    """Train one scheduled group: `loop.fit` for a lone run on the CPU or one that cannot be
    grouped (`groupable`), else `fit_group`."""
    target = resolve_device(device)
    if len(jobs) == 1 and (target.type != "cuda" or not groupable(jobs[0].config)):
        job = jobs[0]
        return [loop.fit(job.config, data, device=device, progress=progress, prune=job.prune)]
    return fit_group(jobs, data, device=device, progress=progress)
