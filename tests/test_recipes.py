"""The modern options of a run in the training loop: each off by default, each doing its job.

Off, the loop is Keras's plain loop bit for bit (a copy of the loop before the options existed
is the reference). On: augmentation seeded per run and epoch, the schedule's rate at every step,
label smoothing in every reported loss, the weight average scored and saved, test-time
augmentation on held-out scores only, and runs that a grouped network cannot train kept alone.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cnnlab.config import ConfigError, RunConfig
from cnnlab.errors import CnnlabError
from cnnlab.execution import planning
from cnnlab.nn import modules
from cnnlab.training import augment, group_plan, loop, optim
from cnnlab.training.device import images_to_device, normalise

CPU = torch.device("cpu")
BASE = RunConfig(arch="tiny", train_size=200, epochs=2, batch_size=32, seed=3)


def keras_loop_before_the_options(model, optimizer, images, labels, batch_size, generator):
    """loop.train_one_epoch as it was before the modern options (the reference)."""
    model.train()
    order = torch.randperm(len(labels), generator=generator).to(images.device)
    loss_sum = torch.zeros((), device=images.device)
    correct = torch.zeros((), device=images.device, dtype=torch.long)
    for start in range(0, len(labels), batch_size):
        batch = order[start : start + batch_size]
        batch_labels = labels[batch]
        logits = model(normalise(images[batch])).float()
        loss = F.cross_entropy(logits, batch_labels)
        penalty = model.penalty()
        if penalty is not None:
            loss = loss + penalty
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach() * len(batch)
        correct += (logits.argmax(1) == batch_labels).sum()
    return (torch.stack([loss_sum, correct.float()]) / len(labels)).tolist()


@pytest.mark.parametrize("arch", ["seed", "tiny"])
@pytest.mark.parametrize("optimizer", ["adam", "torch_adam"])
def test_without_the_options_the_loop_is_the_old_one_bit_for_bit(tiny_cifar, arch, optimizer):
    config = dataclasses.replace(BASE, arch=arch, optimizer=optimizer)
    on_device = loop.to_device(config, tiny_cifar, CPU)
    count = on_device.train_count
    images, labels = on_device.images[:count], on_device.labels[:count]
    nets = []
    for _ in range(2):
        init, shuffles, dropout = loop.generators(config.seed, CPU)
        model = modules.ConvNet(on_device.layers, on_device.input_shape)
        modules.initialise(model, init)
        model.set_dropout_generator(dropout)
        nets.append((model, loop.make_optimizer(model, config), shuffles))
    (new, new_optimizer, new_shuffles), (old, old_optimizer, old_shuffles) = nets
    recipe = loop.make_recipe(config, new, count)
    for epoch in (1, 2):
        scores = loop.train_one_epoch(
            new, new_optimizer, images, labels, 32, new_shuffles, recipe=recipe, epoch=epoch
        )
        reference = keras_loop_before_the_options(
            old, old_optimizer, images, labels, 32, old_shuffles
        )
        assert list(scores[:2]) == reference  # the data loss is a third, added reading
    for name, tensor in new.state_dict().items():
        assert torch.equal(tensor, old.state_dict()[name]), name


def test_plain_configs_make_a_recipe_that_does_nothing():
    recipe = loop.make_recipe(BASE, modules.build_model("tiny"), 180)
    assert (recipe.augmentation, recipe.schedule, recipe.average) == (None, None, None)
    assert recipe.label_smoothing == 0.0 and recipe.epoch_generator(1, CPU) is None


# --- each option --------------------------------------------------------------------------------


def test_augmentation_is_seeded_by_run_and_epoch(tiny_cifar):
    config = dataclasses.replace(BASE, flip=True, crop_padding=2, cutout=4)
    first = loop.fit(config, tiny_cifar, device="cpu")
    again = loop.fit(config, tiny_cifar, device="cpu")
    plain = loop.fit(BASE, tiny_cifar, device="cpu")
    for name, tensor in first.state_dict.items():
        assert torch.equal(tensor, again.state_dict[name]), name
    assert not torch.equal(first.state_dict["layers.0.weight"], plain.state_dict["layers.0.weight"])
    recipe = loop.make_recipe(config, modules.build_model("tiny"), 180)
    images = torch.from_numpy(tiny_cifar.train_images[:8]).permute(0, 3, 1, 2)
    epoch_one = recipe.augment(images, recipe.epoch_generator(1, CPU))
    expected = augment.augment_batch(
        images,
        flip=True,
        crop_padding=2,
        crop_padding_mode="reflect",
        cutout=4,
        generator=augment.epoch_generator(3, 1, CPU),
    )
    assert torch.equal(epoch_one, expected)
    assert not torch.equal(epoch_one, recipe.augment(images, recipe.epoch_generator(2, CPU)))


class _Groups:
    """An optimizer stand-in that records the learning rate of every step."""

    def __init__(self):
        self.param_groups = [{"lr": None}, {"lr": None}]


@pytest.mark.parametrize("schedule", ["step", "cosine", "linear"])
def test_the_schedule_sets_every_steps_rate(schedule):
    config = dataclasses.replace(
        BASE,
        epochs=4,
        learning_rate=0.1,
        lr_schedule=schedule,
        lr_warmup_epochs=1,
        lr_warmup_start=0.2,
        lr_final=0.05,
        lr_step_epochs=1,
    )
    recipe = loop.make_recipe(config, modules.build_model("tiny"), 180)
    assert recipe.steps_per_epoch == 6  # 180 images in batches of 32, the last one partial
    groups, rates = _Groups(), []
    for _ in range(24):
        recipe.before_step(groups)
        assert groups.param_groups[0]["lr"] == groups.param_groups[1]["lr"]
        rates.append(groups.param_groups[0]["lr"])
        recipe.after_step(torch.nn.Linear(1, 1))
    assert rates == [optim.learning_rate_at(step, 24, 6, config) for step in range(24)]
    assert rates[0] == pytest.approx(0.02) and max(rates) == pytest.approx(0.1)


def test_a_warm_up_alone_schedules_a_constant_rate():
    config = dataclasses.replace(BASE, epochs=3, lr_warmup_epochs=1)
    assert loop.make_recipe(config, modules.build_model("tiny"), 180).schedule is config


def test_label_smoothing_is_in_every_reported_loss(tiny_cifar):
    model = modules.build_model("tiny", generator=torch.Generator().manual_seed(0))
    images = images_to_device(tiny_cifar.test_images, CPU)
    labels = torch.from_numpy(tiny_cifar.test_labels)
    with torch.no_grad():
        logits = model(normalise(images)).double().numpy()
    smoothing, classes = 0.2, 10
    targets = np.full((len(labels), classes), smoothing / classes)
    targets[np.arange(len(labels)), labels.numpy()] += 1 - smoothing
    log_softmax = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    keras_formula = float(-(targets * log_softmax).sum(1).mean())  # Keras's smoothed targets
    penalty = model.penalty().item()
    evaluated = loop.evaluate_model(model, images, labels, label_smoothing=smoothing)
    assert evaluated.loss == pytest.approx(keras_formula + penalty, rel=1e-5)
    plain = loop.evaluate_model(model, images, labels)
    assert abs(plain.loss - evaluated.loss) > 1e-3


def test_the_weight_average_is_scored_and_saved_and_the_live_weights_train_on(tiny_cifar):
    config = dataclasses.replace(BASE, ema=0.8)
    on_device = loop.to_device(config, tiny_cifar, CPU)
    lone = loop.LoneNet(config, on_device)
    lone.train_epoch()
    live = {k: v.clone() for k, v in lone.model.state_dict().items()}
    averaged = lone.recipe.average.state_dict(lone.model)
    assert not torch.equal(live["layers.0.weight"], averaged["layers.0.weight"])
    saved = lone.state_dict(0)
    for name, tensor in averaged.items():
        assert torch.equal(saved[name], tensor), name
    (scored,) = lone.evaluate(on_device.images, on_device.labels)
    copy = modules.ConvNet(on_device.layers, on_device.input_shape)
    copy.load_state_dict(averaged)
    expected = loop.evaluate_model(copy, on_device.images, on_device.labels)
    assert (scored.loss, scored.accuracy) == (expected.loss, expected.accuracy)
    for name, tensor in lone.model.state_dict().items():
        assert torch.equal(tensor, live[name]), name  # restored after scoring and saving


def test_test_time_augmentation_scores_held_out_images_only(tiny_cifar):
    config = dataclasses.replace(BASE, tta="flip-translate")
    on_device = loop.to_device(config, tiny_cifar, CPU)
    lone = loop.LoneNet(config, on_device)
    images, labels = on_device.images[:40], on_device.labels[:40]
    (held_out,) = lone.evaluate(images, labels)
    (subset,) = lone.evaluate(images, labels, test_time=False)
    with_tta = loop.evaluate_model(lone.model, images, labels, tta="flip-translate")
    without = loop.evaluate_model(lone.model, images, labels)
    assert (held_out.loss, subset.loss) == (with_tta.loss, without.loss)
    assert held_out.loss != subset.loss


def test_a_run_with_every_option_trains_and_reports_as_any_run(tiny_cifar):
    config = dataclasses.replace(
        BASE,
        optimizer="sgd",
        learning_rate=0.05,
        momentum=0.9,
        nesterov=True,
        weight_decay=5e-4,
        lr_schedule="linear",
        lr_warmup_epochs=0.5,
        label_smoothing=0.1,
        ema=0.9,
        flip=True,
        crop_padding=2,
        cutout=4,
        tta="flip",
        epochs=3,
    )
    result = loop.fit(config, tiny_cifar, device="cpu")
    assert result.status == "done" and len(result.history) == 3
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    assert result.metrics["test_accuracy"] > 0.3  # the synthetic classes are easy


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"crop_padding": 32}, "crop_padding: 32 pixels: expected 0 to 31"),
        ({"crop_padding": 33, "crop_padding_mode": "constant"}, "expected 0 to 32"),
        ({"cutout": 33}, "cutout: 33 pixels: expected 0 to 32"),
        ({"momentum": 0.9}, "momentum: only the sgd optimizer uses it, not adam"),
        ({"optimizer": "sgd", "nesterov": True}, "nesterov: needs momentum > 0"),
        ({"lr_warmup_epochs": 2.0}, "lr_warmup_epochs: 2.0 must be fewer than the 2 epochs"),
    ],
)
def test_options_that_cannot_run_are_refused_before_training(tiny_cifar, changes, message):
    config = dataclasses.replace(BASE, **changes)
    with pytest.raises(ConfigError, match=message):
        loop.subset_indices(config, tiny_cifar)


# --- what trains alone ------------------------------------------------------------------------


def test_only_the_seed_vocabulary_and_plain_loop_train_grouped():
    assert group_plan.groupable(RunConfig()) and group_plan.groupable(RunConfig(arch="seed-deep"))
    assert group_plan.groupable(RunConfig(optimizer="torch_adam", l1=0.5, seed=9))
    for changes in (
        {"flip": True},
        {"lr_schedule": "cosine"},
        {"ema": 0.9},
        {"tta": "flip"},
        {"label_smoothing": 0.1},
        {"optimizer": "sgd"},
        {"optimizer": "adam", "weight_decay": 1e-4},
        {"arch": "tiny-modern"},
        {
            "arch": "gelu",
            "layers": (
                {"type": "conv", "filters": 4, "kernel": 3, "activation": "gelu"},
                {"type": "flatten"},
                {"type": "dense", "units": 10, "activation": "softmax"},
            ),
        },
        {
            "arch": "nobias",
            "layers": (
                {"type": "conv", "filters": 4, "kernel": 3, "use_bias": False},
                {"type": "flatten"},
                {"type": "dense", "units": 10, "activation": "softmax"},
            ),
        },
    ):
        assert not group_plan.groupable(dataclasses.replace(RunConfig(), **changes)), changes


def test_runs_that_cannot_be_grouped_are_groups_of_their_own():
    plain = [RunConfig(seed=seed) for seed in range(3)]
    modern = [RunConfig(seed=seed, flip=True) for seed in range(2)]
    assert group_plan.plan_groups([*plain, *modern], max_members=8) == [[0, 1, 2], [3], [4]]
    assert planning.schedule(modern, torch.device("cpu")) == [[0], [1]]


def test_an_unknown_option_value_is_a_one_line_error(tiny_cifar):
    with pytest.raises(CnnlabError, match="tta: expected one of none, flip, flip-translate"):
        loop.fit(dataclasses.replace(BASE, tta="rotate"), tiny_cifar, device="cpu")
