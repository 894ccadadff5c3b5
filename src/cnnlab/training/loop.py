"""fit(config, data) -> RunResult: a ConvNet trained with the semantics Keras uses.

Keras semantics kept here: the validation part is the last fraction of the subset, cut before
any shuffling; the training part is reshuffled every epoch; the epoch's loss and accuracy are
running means over its batches with dropout active, the validation scores are taken in eval
mode after the epoch; every reported loss is the loss trained on (label smoothing and the
kernel penalty included, as Keras's compiled loss). The data stays on the device as uint8
tensors; batches are gathered there by index.

The modern options of a config (`Recipe`: augmentation, a learning-rate schedule, label
smoothing, a weight average, test-time augmentation, patch whitening) are all off by default;
off, the loop runs Keras's plain operations and nothing else.
`label_noise` (a planted harm) replaces a known share of the training part's labels before
training (`noisy_labels`); at 0 the labels are the dataset's, untouched.

`fit_members` is the one training skeleton: the data on the device, the epochs with their
history rows, progress and divergence, the final scores and the RunResult. `fit` drives it with
one network (`LoneNet`); `group_net.fit_group` with several trained as one
(`group_net.GroupMembers`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from cnnlab.config import (
    EVAL_BATCH_SIZE,
    ConfigError,
    RunConfig,
    check_config,
    check_run_augmentation,
)
from cnnlab.data.datasets import Dataset, stratified_subset, validation_split
from cnnlab.errors import CnnlabError
from cnnlab.nn import module_nets, modules
from cnnlab.nn.architectures import is_module_net, register_factory
from cnnlab.nn.shapes import resolve_layers
from cnnlab.nn.specs import LayerSpec
from cnnlab.training import augment, measure, metrics, optim
from cnnlab.training.device import (
    autocast,
    cuda_math,
    images_to_device,
    normalise,
    resolve_device,
)
from cnnlab.training.metrics import Evaluation, RunResult

WHITENING_IMAGES = 5000  # training images whose patches set a whitened first layer
# The label-noise draw's own stream, beside the run's seed: np.random.default_rng([seed, tag]).
LABEL_NOISE_STREAM = 0x6C6E  # "ln"
Progress = Callable[[dict[str, Any]], None]
# Told a run's history after each epoch; True stops the run there (`Status.PRUNED`).
Prune = Callable[[list[dict[str, float]]], bool]


@dataclass(frozen=True)
class Job:
    """A run to train: its config, and what may stop it early (a search's pruner), if anything."""

    config: RunConfig
    prune: Prune | None = None


def as_jobs(runs: Sequence[Any]) -> list[Job]:
    """Configs, jobs, or anything with a `config` and a `prune` (a study's planned run) as jobs."""
    return [_as_job(run) for run in runs]


def _as_job(run: Any) -> Job:
    if isinstance(run, Job):
        return run
    if isinstance(run, RunConfig):
        return Job(run)
    return Job(run.config, run.prune)


# --- evaluation -------------------------------------------------------------------------------


def cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, smoothing: float = 0.0, reduction: str = "mean"
) -> torch.Tensor:
    """Softmax cross-entropy of logits, with Keras's (and PyTorch's) label smoothing."""
    if smoothing:
        return F.cross_entropy(logits, labels, reduction=reduction, label_smoothing=smoothing)
    return F.cross_entropy(logits, labels, reduction=reduction)


def evaluate_model(
    model: modules.ConvNet,
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int = EVAL_BATCH_SIZE,
    precision: str = "float32",
    *,
    tta: str = "none",
    label_smoothing: float = 0.0,
) -> Evaluation:
    """Loss, accuracy and predictions of `model` on uint8 NCHW `images` (on the model's device).

    `tta` averages the logits of augmented copies (`augment.tta_logits`); the loss is the
    training objective, smoothing included (Keras's compiled loss).
    """
    was_training = model.training
    model.eval()
    cross_entropy_sum = torch.zeros((), device=images.device)
    predictions = []
    with torch.inference_mode():
        for start in range(0, len(labels), batch_size):
            batch = normalise(images[start : start + batch_size])
            with autocast(precision, images.device):
                logits = augment.tta_logits(model, batch, tta).float()
            batch_labels = labels[start : start + batch_size]
            cross_entropy_sum += cross_entropy(logits, batch_labels, label_smoothing, "sum")
            predictions.append(logits.argmax(1))
        penalty = model.penalty()
        predicted = torch.cat(predictions) if predictions else labels.new_zeros(0)
        correct = (predicted == labels).sum()
        data_loss = cross_entropy_sum / max(len(labels), 1)
        total = data_loss + (0.0 if penalty is None else penalty)
        loss, correct_count, data = torch.stack([total, correct.float(), data_loss]).tolist()
    model.train(was_training)
    return Evaluation(loss, correct_count / max(len(labels), 1), predicted.cpu().numpy(), data)


# --- training ---------------------------------------------------------------------------------


@dataclass
class Recipe:
    """A run's options beyond Keras's plain loop, ready for the steps; each off for the seed."""

    seed: int  # the run's seed: augmentation draws from (seed, epoch) streams
    label_smoothing: float = 0.0
    augmentation: dict[str, Any] | None = None  # augment.augment_batch's options; None: off
    schedule: RunConfig | None = None  # whose lr_* fields set each step's rate; None: constant
    steps_per_epoch: int = 1
    average: optim.WeightAverage | None = None  # the weights evaluated instead of the live ones
    step: int = 0  # optimisation steps taken so far

    def augment(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """A batch augmented from the epoch's stream (unchanged when nothing is augmented)."""
        if generator is None:
            return images
        return augment.augment_batch(images, **self.augmentation, generator=generator)

    def epoch_generator(self, epoch: int, device: torch.device) -> torch.Generator | None:
        """The epoch's augmentation stream, or None when nothing is augmented."""
        if self.augmentation is None:
            return None
        return augment.epoch_generator(self.seed, epoch, device)

    def before_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Set the scheduled learning rate of the coming step."""
        if self.schedule is not None:
            per_epoch, total = self.steps_per_epoch, self.steps_per_epoch * self.schedule.epochs
            rate = optim.learning_rate_at(self.step, total, per_epoch, self.schedule)
            for group in optimizer.param_groups:
                group["lr"] = rate

    def after_step(self, model: torch.nn.Module) -> None:
        """Count the step and fold the new weights into the average."""
        self.step += 1
        if self.average is not None:
            self.average.update(model)


def make_recipe(config: RunConfig, model: torch.nn.Module, train_count: int) -> Recipe:
    """The config's modern options for a run of `train_count` training images."""
    augmentation = None
    if config.flip or config.crop_padding or config.cutout:
        augmentation = {
            "flip": config.flip,
            "crop_padding": config.crop_padding,
            "crop_padding_mode": config.crop_padding_mode,
            "cutout": config.cutout,
        }
    scheduled = config.lr_schedule != "constant" or config.lr_warmup_epochs > 0
    return Recipe(
        config.seed,
        config.label_smoothing,
        augmentation,
        config if scheduled else None,
        optim.steps_per_epoch(train_count, config.batch_size),
        optim.WeightAverage(model, config.ema) if config.ema > 0 else None,
    )


def train_one_epoch(
    model: modules.ConvNet,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    generator: torch.Generator,
    precision: str = "float32",
    recipe: Recipe | None = None,
    epoch: int = 1,
) -> tuple[float, float, float]:
    """One pass over a fresh shuffle; (loss, accuracy, data loss), running means over batches."""
    model.train()
    recipe = recipe or Recipe(seed=0)
    order = torch.randperm(len(labels), generator=generator).to(images.device)
    augmentation = recipe.epoch_generator(epoch, images.device)
    loss_sum = torch.zeros((), device=images.device)
    data_loss_sum = torch.zeros((), device=images.device)
    correct = torch.zeros((), device=images.device, dtype=torch.long)
    for start in range(0, len(labels), batch_size):
        batch = order[start : start + batch_size]
        batch_labels = labels[batch]
        batch_images = recipe.augment(images[batch], augmentation)
        with autocast(precision, images.device):
            logits = model(normalise(batch_images)).float()
        data_loss = cross_entropy(logits, batch_labels, recipe.label_smoothing)
        penalty = model.penalty()
        loss = data_loss if penalty is None else data_loss + penalty
        recipe.before_step(optimizer)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        recipe.after_step(model)
        # Keras weights each batch's loss by its size; no host sync until the epoch ends.
        loss_sum += loss.detach() * len(batch)
        data_loss_sum += data_loss.detach() * len(batch)
        correct += (logits.argmax(1) == batch_labels).sum()
    sums = torch.stack([loss_sum, correct.float(), data_loss_sum])
    loss_mean, accuracy, data_loss_mean = (sums / len(labels)).tolist()
    return loss_mean, accuracy, data_loss_mean


def data_input(data: Dataset) -> tuple[tuple[int, int, int], int]:
    """The (height, width, channels) of a dataset's images and its class count."""
    return tuple(data.train_images.shape[1:]), len(data.class_names)


def layers_for(config: RunConfig, data: Dataset) -> tuple[LayerSpec, ...]:
    """The config's layers, checked against the dataset's images and classes; a module net has
    none, and is built and run on a batch instead (`module_nets.check_module_net`)."""
    if is_module_net(config):
        module_nets.check_module_net(config, *data_input(data))
        return ()
    return resolve_layers(config, *data_input(data))


def subset_indices(config: RunConfig, data: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """(training part, validation part) of the run's subset: Keras holds out the last fraction."""
    check_config(config, available=len(data.train_labels), classes=len(data.class_names))
    layers_for(config, data)  # the net must fit the images and the classes
    check_run_augmentation(config, *data.train_images.shape[1:3])
    subset = stratified_subset(data.train_labels, config.train_size, config.subset_seed)
    train_part, validation_part = validation_split(subset, config.validation_split)
    if len(train_part) == 0 or len(validation_part) == 0:
        raise CnnlabError(
            f"validation_split {config.validation_split} of {config.train_size} images leaves"
            f" {len(train_part)} to train on and {len(validation_part)} to validate on"
        )
    if config.label_noise and len(data.class_names) < 2:
        raise ConfigError("label_noise", "needs at least 2 classes (a wrong one to draw)")
    return train_part, validation_part


def noisy_labels(
    config: RunConfig, labels: np.ndarray, train_count: int, classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """(labels trained on, positions replaced): `config.label_noise` of the training part wrong.

    `labels` are the subset's, its training part (the first `train_count`) first. Exactly
    round(label_noise · train_count) training positions, drawn without replacement, each get a
    class drawn uniformly from the other classes; the validation part is never touched. The
    draw is its own stream of the run's seed (`LABEL_NOISE_STREAM`): no other stream moves.
    At 0 `labels` come back as they are (the same array) and no position is replaced.
    """
    count = round(config.label_noise * train_count)
    if count == 0:
        return labels, np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng([config.seed, LABEL_NOISE_STREAM])
    positions = np.sort(rng.choice(train_count, size=count, replace=False))
    shifts = rng.integers(1, classes, size=count)  # 1 .. classes-1: never the true class
    noisy = labels.copy()
    noisy[positions] = (labels[positions].astype(np.int64) + shifts) % classes
    return noisy, positions


def make_optimizer(
    model: torch.nn.Module, config: RunConfig, *, capturable: bool = False
) -> torch.optim.Optimizer:
    """The config's optimizer over `model`'s parameters (see `cnnlab.training.optim`).

    `capturable` keeps every step's state on the GPU so the step can be replayed from a CUDA
    graph.
    """
    return optim.make_optimizer(list(model.parameters()), config, capturable=capturable)


def generators(seed: int, device: torch.device) -> tuple[torch.Generator, ...]:
    """Independent streams for initialisation, shuffles (CPU) and dropout (on the device)."""
    init_seed, shuffle_seed, dropout_seed = np.random.SeedSequence(seed).generate_state(3)
    dropout = torch.Generator(device=device)
    dropout.manual_seed(int(dropout_seed))
    return (
        torch.Generator().manual_seed(int(init_seed)),
        torch.Generator().manual_seed(int(shuffle_seed)),
        dropout,
    )


# --- the training skeleton --------------------------------------------------------------------


@dataclass
class OnDevice:
    """A run's subset on the device, its training part first, then its validation part."""

    ordered: np.ndarray  # indices into the dataset's training images, in that order
    train_count: int  # how many of them are the training part
    images: torch.Tensor  # uint8 NCHW, channels-last
    labels: torch.Tensor  # int64, as trained on (label noise included)
    input_shape: tuple[int, int, int]  # one image: height, width, channels
    num_classes: int
    layers: tuple[LayerSpec, ...]  # the config's net, checked against the dataset
    subset_labels: np.ndarray  # `labels` on the host, in the dataset's dtype
    noisy: np.ndarray  # positions in the training part whose label noise replaced (none at 0)


def to_device(config: RunConfig, data: Dataset, device: torch.device) -> OnDevice:
    """The subset `config` trains on, as tensors on `device`."""
    train_part, validation_part = subset_indices(config, data)
    ordered = np.concatenate([train_part, validation_part])
    images = images_to_device(data.train_images[ordered], device)
    shape, classes = data_input(data)
    subset_labels, noisy = noisy_labels(
        config, data.train_labels[ordered], len(train_part), classes
    )
    labels = torch.from_numpy(subset_labels.astype(np.int64)).to(device)
    layers = layers_for(config, data)
    return OnDevice(
        ordered, len(train_part), images, labels, shape, classes, layers, subset_labels, noisy
    )


class Members(Protocol):
    """What `fit_members` drives: one network, or several trained as one."""

    count: int  # how many runs

    def train_epoch(self) -> list[tuple[float, float, float]]:
        """One epoch; each member's (loss, accuracy, data loss), running means over its batches."""
        ...

    def evaluate(
        self, images: torch.Tensor, labels: torch.Tensor, *, test_time: bool = True
    ) -> list[Evaluation]:
        """Each member's scores on the same uint8 NCHW images, in eval mode.

        `test_time`: held-out images (validation, test), which the run's test-time augmentation
        applies to; False for the training subset's final score.
        """
        ...

    def state_dict(self, member: int) -> dict[str, torch.Tensor]:
        """A member's weights on the CPU, under a lone `ConvNet`'s names."""
        ...

    def parameter_count(self, member: int) -> int: ...


def fit_members(
    jobs: Sequence[Job | RunConfig],
    data: Dataset,
    on_device: OnDevice,
    members: Members,
    progress: Progress | None = None,
    *,
    measurements: bool = True,
) -> list[RunResult]:
    """Train `members` (one per job; they share epochs and data) and score them.

    `progress` gets each member's epoch row with "member", "epochs", "elapsed" and "eta". A
    member whose loss stops being finite stops there (`Status.DIVERGED`); the others go on.
    A job's `prune` may stop its member after an epoch (`Status.PRUNED`), the same way.
    `measurements` adds each member's `measure.Measurer` readings; they read, never change, the
    training, and their time is left out of the fit time.
    """
    jobs = as_jobs(jobs)
    configs = [job.config for job in jobs]
    measurer = measure.Measurer(configs, data, on_device) if measurements else None
    epochs = configs[0].epochs
    histories: list[list[dict[str, float]]] = [[] for _ in configs]
    diverged: list[int | None] = [None] * len(configs)
    pruned: list[int | None] = [None] * len(configs)
    final_states: list[dict[str, torch.Tensor] | None] = [None] * len(configs)
    validation = slice(on_device.train_count, None)
    started = time.perf_counter()
    for epoch in range(1, epochs + 1):
        epoch_started = time.perf_counter()
        scores = members.train_epoch()
        validations = members.evaluate(on_device.images[validation], on_device.labels[validation])
        now = time.perf_counter()
        for member, member_scores in enumerate(scores):
            if diverged[member] is not None or pruned[member] is not None:
                continue
            row = metrics.history_row(
                epoch, member_scores, validations[member], now - epoch_started
            )
            histories[member].append(row)
            if progress is not None:
                elapsed = now - started
                remaining = elapsed / epoch * (epochs - epoch)
                info = {"member": member, "epochs": epochs, "elapsed": elapsed, "eta": remaining}
                progress({**row, **info})
            if not (np.isfinite(row["loss"]) and np.isfinite(row["val_loss"])):
                diverged[member] = epoch
                final_states[member] = members.state_dict(member)
            elif (prune := jobs[member].prune) is not None and prune(histories[member]):
                pruned[member] = epoch
                final_states[member] = members.state_dict(member)
        going = [m for m in range(len(configs)) if diverged[m] is None and pruned[m] is None]
        if measurer is not None:
            measurer.epoch(members, epoch, going)
        if not going:
            break
    fit_seconds = time.perf_counter() - started - (measurer.epoch_seconds if measurer else 0.0)
    trained = (histories, diverged, pruned, final_states)
    results = _score(configs, data, on_device, members, trained, fit_seconds)
    for member, result in enumerate(results if measurer is not None else ()):
        result.measurements = measurer.finish(member, result.state_dict)
    return results


def _score(configs, data, on_device, members, trained, fit_seconds) -> list[RunResult]:
    """The members' final scores on their whole subset and the test set, as RunResults."""
    histories, diverged, pruned, final_states = trained
    device = on_device.images.device
    evaluated = time.perf_counter()
    test_images = images_to_device(data.test_images, device)
    test_labels = torch.from_numpy(data.test_labels.astype(np.int64)).to(device)
    train_scores = members.evaluate(on_device.images, on_device.labels, test_time=False)
    test_scores = members.evaluate(test_images, test_labels)
    provenance = metrics.Provenance(
        data_source=str(data.source),
        data_sha256=data.source_sha256,
        device=str(device),
        cpu_threads=torch.get_num_threads(),
        fit_seconds=fit_seconds,
        eval_seconds=time.perf_counter() - evaluated,
        group_size=members.count,
        input_shape=on_device.input_shape,
    )
    labels = (on_device.subset_labels, data.test_labels)
    results = [
        metrics.make_result(
            config,
            histories[member],
            diverged[member],
            labels,
            (train_scores[member], test_scores[member]),
            data.class_names,
            members.parameter_count(member),
            provenance,
            final_states[member] or members.state_dict(member),
            pruned_epoch=pruned[member],
        )
        for member, config in enumerate(configs)
    ]
    for result in results:
        if result.config.label_noise:  # such a run trains alone: `on_device` is its own
            result.metrics["label_noise_count"] = len(on_device.noisy)
    return results


def new_net(
    config: RunConfig, on_device: OnDevice, generator: torch.Generator
) -> modules.ConvNet | module_nets.ModuleNet:
    """A run's untrained net on the CPU, its initial weights drawn from `generator`."""
    if is_module_net(config):
        shape, classes = on_device.input_shape, on_device.num_classes
        return module_nets.build_module_net(config, shape, classes, generator)
    model = modules.ConvNet(on_device.layers, on_device.input_shape)
    modules.initialise(model, generator)
    return model


class LoneNet:
    """One net (a `ConvNet` or a module net) as `Members`: Keras's loop, one batch per step."""

    count = 1

    def __init__(self, config: RunConfig, on_device: OnDevice):
        device = on_device.images.device
        init_generator, self.shuffle_generator, dropout_generator = generators(config.seed, device)
        self.model = new_net(config, on_device, init_generator).to(device)
        if modules.needs_whitening(self.model):
            first = on_device.images[: min(on_device.train_count, WHITENING_IMAGES)]
            modules.whiten_first_layer(self.model, normalise(first))
        self.model.set_dropout_generator(dropout_generator)
        self.optimizer = make_optimizer(self.model, config)
        self.recipe = make_recipe(config, self.model, on_device.train_count)
        self.config, self.on_device, self.epoch = config, on_device, 0

    def train_epoch(self) -> list[tuple[float, float, float]]:
        count = self.on_device.train_count
        self.epoch += 1
        scores = train_one_epoch(
            self.model,
            self.optimizer,
            self.on_device.images[:count],
            self.on_device.labels[:count],
            self.config.batch_size,
            self.shuffle_generator,
            self.config.precision,
            self.recipe,
            self.epoch,
        )
        return [scores]

    def evaluate(
        self, images: torch.Tensor, labels: torch.Tensor, *, test_time: bool = True
    ) -> list[Evaluation]:
        config = self.config
        with self._evaluated_weights():
            scores = evaluate_model(
                self.model,
                images,
                labels,
                precision=config.precision,
                tta=config.tta if test_time else "none",
                label_smoothing=config.label_smoothing,
            )
        return [scores]

    def state_dict(self, member: int) -> dict[str, torch.Tensor]:
        with self._evaluated_weights():
            return {
                name: value.detach().cpu().clone()
                for name, value in self.model.state_dict().items()
            }

    def parameter_count(self, member: int) -> int:
        return modules.count_parameters(self.model)

    def _evaluated_weights(self) -> contextlib.AbstractContextManager:
        """The weight average in place of the live weights while scoring or saving, if any."""
        average = self.recipe.average
        return contextlib.nullcontext() if average is None else average.applied(self.model)


def fit(
    config: RunConfig,
    data: Dataset,
    *,
    device: str = "auto",
    progress: Progress | None = None,
    measurements: bool = True,
    prune: Prune | None = None,
    factory: Callable[..., torch.nn.Module] | None = None,
) -> RunResult:
    """Train `config` on `data` as Keras would; `progress` gets each epoch's row as it ends.

    `measurements` (on by default) records `measure.Measurer`'s readings in the result.
    `prune`, told the history after each epoch, may stop the run there (`Status.PRUNED`).
    `factory` trains a module net straight from Python: `factory(input_shape, num_classes,
    **config.arch_fields)` under the name `config.arch` (which no architecture may have).
    """
    if factory is not None:
        register_factory(config.arch, factory)
        try:
            return fit(
                config,
                data,
                device=device,
                progress=progress,
                measurements=measurements,
                prune=prune,
            )
        finally:
            register_factory(config.arch, None)
    target = resolve_device(device)
    # The deterministic run field's math, else TF32 and the autotuner (docs/cuda.md).
    on_cuda = target.type == "cuda"
    fast_math = cuda_math(config.deterministic) if on_cuda else contextlib.nullcontext()
    with fast_math:
        on_device = to_device(config, data, target)
        lone = LoneNet(config, on_device)
        job = Job(config, prune)
        result = fit_members([job], data, on_device, lone, progress, measurements=measurements)[0]
    if isinstance(lone.model, module_nets.ModuleNet):  # no specs to count: measure it
        result.metrics["forward_flops"] = module_nets.flop_count(lone.model, on_device.input_shape)
    return result
