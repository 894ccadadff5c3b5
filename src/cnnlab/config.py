"""A run's configuration and the one table of rules for its values (no torch import).

The study-file parser (with its file:line prefix), the `cnnlab train` flags and the training loop
all ask `check_value` / `check_config` whether a value is valid, so the three never disagree.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from cnnlab.errors import CnnlabError

PRECISIONS = ("float32", "bfloat16")  # forward-pass arithmetic
# The named datasets and their images' (height, width, channels) and class count; "images" is
# any image-folder dataset, whose shape is known once it is loaded (see cnnlab.data.datasets).
DATASET_SHAPES: dict[str, tuple[tuple[int, int, int], int] | None] = {
    "cifar10": ((32, 32, 3), 10),
    "cifar100": ((32, 32, 3), 100),
    "cifar100-coarse": ((32, 32, 3), 20),
    "mnist": ((28, 28, 1), 10),
    "fashion-mnist": ((28, 28, 1), 10),
    "digits": ((8, 8, 1), 10),
    "images": None,
}
# Keras's Adam update (default), PyTorch's Adam update, Keras's AdamW and Keras's SGD (optim.py)
OPTIMIZERS = ("adam", "torch_adam", "adamw", "sgd")
LR_SCHEDULES = ("constant", "step", "cosine", "linear")  # per step, after any warm-up (optim.py)
PADDING_MODES = ("reflect", "constant")  # how a random crop pads its borders (augment.py)
TTA_MODES = ("none", "flip", "flip-translate")  # test-time augmentation (augment.py)
# Forward passes `augment.tta_logits` makes per image in each mode (FLOP estimates count them).
TTA_VIEWS = {"none": 1, "flip": 2, "flip-translate": 6}
BACKENDS = ("local", "ray")  # where runs train: this machine, or Ray tasks (execution.ray_tasks)
ADAMW_WEIGHT_DECAY = 0.004  # Keras's AdamW default, what weight_decay None means for "adamw"
EVAL_BATCH_SIZE = 1000  # images per forward pass when evaluating (no gradients kept)
# SQLite stores integers as signed 64-bit; seeds also feed NumPy's SeedSequence.
MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class RunConfig:
    """One training run; with `seed` it determines the result on the CPU."""

    dataset: str = "cifar10"  # one of DATASET_SHAPES (see `cnnlab data info --dataset NAME`)
    arch: str = "seed"  # registry name (see `cnnlab archs`) or the name of inline `layers`
    layers: tuple[dict[str, Any], ...] | None = None  # inline layer specs; None: the registry's
    train_size: int = 5000  # images from the stratified shuffle of the training set
    l1: float | None = None  # L1 weight on every dense kernel; None keeps the architecture's
    l2: float | None = None  # L2 weight on every dense kernel; None keeps the architecture's
    epochs: int = 20  # passes over the training part
    batch_size: int = 128  # images per optimisation step
    validation_split: float = 0.1  # last fraction of the subset, held out before any shuffling
    optimizer: str = "adam"  # "adam": Keras's update; "torch_adam": PyTorch's; "adamw", "sgd":
    # Keras's AdamW and SGD (see optim.py)
    learning_rate: float = 1e-3  # step size (Keras's Adam default; a schedule's peak)
    beta_1: float = 0.9  # Adam first-moment decay
    beta_2: float = 0.999  # Adam second-moment decay
    epsilon: float = 1e-7  # Adam epsilon: Keras's default, not PyTorch's 1e-8
    seed: int = 0  # initialisation, dropout masks and per-epoch shuffles
    subset_seed: int = 0  # which images form the subset; the same across repeats
    precision: str = "float32"  # forward-pass compute: "float32" (TF32 on CUDA) or "bfloat16"
    # Modern training. Every field below is off by default, so the seed's Keras semantics stay;
    # each follows the convention named beside it (README: "Modern layers and recipes").
    momentum: float = 0.0  # sgd only: Keras's SGD form, m <- momentum·m - lr·g, p <- p + m
    nesterov: bool = False  # sgd only: Keras's Nesterov form, p <- p + momentum·m - lr·g
    weight_decay: float | None = None  # Keras 3's decoupled p <- p - lr·wd·p before each step,
    # on every trainable tensor; None: the optimizer's default (adamw 0.004 as Keras's, else 0)
    lr_schedule: str = "constant"  # per step after the warm-up: constant, step, cosine, linear
    lr_warmup_epochs: float = 0.0  # linear warm-up from lr_warmup_start·lr to lr (Keras's form)
    lr_warmup_start: float = 0.0  # the warm-up's first learning rate, a fraction of the peak
    lr_final: float = 0.0  # cosine, linear: the last step's fraction of the peak (Keras's alpha)
    lr_step_epochs: float = 10.0  # step: epochs between decays (Keras's staircase decay)
    lr_step_factor: float = 0.1  # step: the learning rate's factor at each decay
    label_smoothing: float = 0.0  # targets (1 - s)·one_hot + s/classes, as Keras and PyTorch
    ema: float = 0.0  # momentum of a per-step average of the weights used to evaluate; 0: off
    flip: bool = False  # mirror each training image left-right with probability 1/2
    crop_padding: int = 0  # pixels: pad each side, crop back at a random offset; 0: off
    crop_padding_mode: str = "reflect"  # the crop's border: reflect, or constant (zeros)
    cutout: int = 0  # pixels: zero a random square this wide in each training image; 0: off
    tta: str = "none"  # validation and test scores: none, flip, flip-translate (logits averaged)
    label_noise: float = 0.0  # share of the training part's labels replaced, before training,
    # by a wrong class drawn uniformly (a planted harm of known size, for calibration); 0: off
    deterministic: bool = False  # CUDA: deterministic kernels, no TF32, no autotuner, trained
    # alone (never grouped), so a resumed run repeats itself on the same GPU (docs/cuda.md)
    # A module net (an installed package's factory, nn/architectures.py); None for spec nets,
    # so their run ids stay as they were.
    arch_fields: dict[str, Any] | None = None  # the factory's own fields, by keyword
    arch_package: str | None = None  # the distribution that provides `arch`, as planned


@dataclass(frozen=True)
class Rule:
    """What one run field accepts: its type, a check of the value, and a line of help."""

    kind: type  # int, float, str or bool (layers have rules of their own, in nn/specs.py)
    check: Callable[[Any], str | None]  # the reason a value is invalid, or None
    help: str
    choices: tuple[str, ...] = ()
    none_means: str = "the architecture's"  # what a default of None stands for, in --help


def _at_least(low: int) -> Callable[[Any], str | None]:
    return lambda value: None if value >= low else f"must be at least {low}, got {value}"


def _finite_not_negative(value: float) -> str | None:
    if not math.isfinite(value):
        return f"must be a finite number, got {value}"
    return None if value >= 0 else f"must not be negative, got {value}"


def _positive_finite(value: float) -> str | None:
    if not math.isfinite(value) or value <= 0:
        return f"must be a positive finite number, got {value}"
    return None


def _fraction(value: float) -> str | None:
    return None if 0 < value < 1 else f"must be between 0 and 1 (exclusive), got {value}"


def _decay(value: float) -> str | None:
    return None if 0 <= value < 1 else f"must be in [0, 1), got {value}"


def _decay_factor(value: float) -> str | None:
    return None if 0 < value <= 1 else f"must be in (0, 1], got {value}"


def _pixels(value: int) -> str | None:
    # The largest images any reader admits are 1024 pixels wide (README: Limits).
    return None if 0 <= value <= 1024 else f"must be between 0 and 1024 pixels, got {value}"


def _seed(value: int) -> str | None:
    if not 0 <= value <= MAX_SEED:
        return f"must be between 0 and {MAX_SEED}, got {value}"
    return None


def _one_of(choices: tuple[str, ...]) -> Callable[[Any], str | None]:
    return lambda value: None if value in choices else f"expected one of {', '.join(choices)}"


def _any(value: Any) -> str | None:
    return None


RULES: dict[str, Rule] = {
    "dataset": Rule(
        str,
        _one_of(tuple(DATASET_SHAPES)),
        "the images and classes to train on",
        tuple(DATASET_SHAPES),
    ),
    "arch": Rule(str, _any, "architecture: a registered name (see `cnnlab archs`)"),
    "train_size": Rule(int, _at_least(1), "training images: a stratified subset of this size"),
    "l1": Rule(float, _finite_not_negative, "L1 weight on the dense kernels"),
    "l2": Rule(float, _finite_not_negative, "L2 weight on the dense kernels"),
    "epochs": Rule(int, _at_least(1), "passes over the training part"),
    "batch_size": Rule(int, _at_least(1), "images per optimisation step"),
    "validation_split": Rule(float, _fraction, "last fraction of the subset held out"),
    "optimizer": Rule(
        str,
        _one_of(OPTIMIZERS),
        "adam: Keras's Adam (default); torch_adam: PyTorch's; adamw, sgd: Keras's",
        OPTIMIZERS,
    ),
    "learning_rate": Rule(float, _positive_finite, "step size (the peak, with a schedule)"),
    "beta_1": Rule(float, _decay, "Adam first-moment decay"),
    "beta_2": Rule(float, _decay, "Adam second-moment decay"),
    "epsilon": Rule(float, _finite_not_negative, "Adam epsilon (Keras's 1e-7)"),
    "seed": Rule(int, _seed, "initialisation, dropout masks and shuffles"),
    "subset_seed": Rule(int, _seed, "which images form the subset (same across repeats)"),
    "precision": Rule(
        str, _one_of(PRECISIONS), "forward-pass arithmetic; bfloat16 is opt-in", PRECISIONS
    ),
    "momentum": Rule(float, _decay, "sgd momentum, Keras's form"),
    "nesterov": Rule(bool, _any, "sgd Nesterov momentum, Keras's form"),
    "weight_decay": Rule(
        float,
        _finite_not_negative,
        "decoupled weight decay, x the learning rate",
        none_means="the optimizer's: adamw 0.004, else 0",
    ),
    "lr_schedule": Rule(
        str, _one_of(LR_SCHEDULES), "learning rate per step after the warm-up", LR_SCHEDULES
    ),
    "lr_warmup_epochs": Rule(float, _finite_not_negative, "epochs of linear warm-up"),
    "lr_warmup_start": Rule(float, _finite_not_negative, "warm-up's first lr, x learning_rate"),
    "lr_final": Rule(float, _finite_not_negative, "cosine/linear: last lr, x learning_rate"),
    "lr_step_epochs": Rule(float, _positive_finite, "step schedule: epochs between decays"),
    "lr_step_factor": Rule(float, _decay_factor, "step schedule: factor at each decay"),
    "label_smoothing": Rule(float, _decay, "share of each target spread over all classes"),
    "ema": Rule(float, _decay, "momentum of the weight average used to evaluate (0: off)"),
    "flip": Rule(bool, _any, "mirror training images left-right at random"),
    "crop_padding": Rule(int, _pixels, "random crop: pixels of padding per side (0: off)"),
    "crop_padding_mode": Rule(
        str, _one_of(PADDING_MODES), "random crop's padding: reflect or constant", PADDING_MODES
    ),
    "cutout": Rule(int, _pixels, "side of a random square zeroed per image (0: off)"),
    "tta": Rule(str, _one_of(TTA_MODES), "test-time augmentation of val/test scores", TTA_MODES),
    "label_noise": Rule(float, _decay, "share of training labels made wrong (0: off)"),
    "deterministic": Rule(bool, _any, "CUDA: reproducible on the same GPU, slower (docs/cuda.md)"),
}
FIELDS = tuple(field.name for field in dataclasses.fields(RunConfig))
# The fields that came after the seed's vocabulary: at their defaults a run trains as Keras's
# plain loop (the grouped CUDA path, `group_plan.groupable`, trains only such runs).
MODERN_FIELDS = FIELDS[FIELDS.index("momentum") :]
# Every field but inline layers and a module net's fields and package (set by name elsewhere).
SETTABLE = tuple(name for name in FIELDS if name in RULES)
DEFAULTS = {field.name: field.default for field in dataclasses.fields(RunConfig)}


class ConfigError(CnnlabError):
    """A run field with an invalid value; `key` names the field."""

    def __init__(self, key: str, reason: str):
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


def check_value(name: str, value: Any) -> Any:
    """`value` checked and coerced for run field `name` (ints become floats where floats go)."""
    rule = RULES.get(name)
    if rule is None:
        raise ConfigError(name, f"unknown run field; valid fields: {', '.join(SETTABLE)}")
    if rule.kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(name, f"expected true or false, got {_show(value)}")
    elif rule.kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(name, f"expected a number, got {_show(value)}")
        value = float(value)
    elif not isinstance(value, rule.kind) or isinstance(value, bool):
        raise ConfigError(name, f"expected {_KIND_NAMES[rule.kind]}, got {_show(value)}")
    reason = rule.check(value)
    if reason is not None:
        raise ConfigError(name, reason)
    return value


def check_config(
    config: RunConfig, *, available: int | None = None, classes: int | None = None
) -> None:
    """Raise ConfigError naming the first field of `config` that cannot run.

    `available` and `classes` describe the dataset when it is known (the training images there
    and its class count); without them only the dataset-free rules apply.
    """
    for name in SETTABLE:
        value = getattr(config, name)
        if value is not None or DEFAULTS[name] is not None:
            check_value(name, value)
    _check_combination(config)
    check_arch_fields(config.arch_fields)
    if config.arch_package is not None and not isinstance(config.arch_package, str):
        raise ConfigError("arch_package", f"expected a string, got {_show(config.arch_package)}")
    low = classes or 1
    if available is not None and not low <= config.train_size <= available:
        raise ConfigError(
            "train_size",
            f"{config.train_size} must be between {low} (one image per class) and"
            f" {available:,} (the training images available)",
        )


FIELD_KINDS = (bool, int, float, str)  # what a module net's factory field may hold


def check_arch_fields(fields: Any) -> None:
    """A module net's fields: None, or names mapped to booleans, numbers or strings."""
    if fields is None:
        return
    if not isinstance(fields, dict):
        raise ConfigError("arch_fields", f"expected a table of fields, got {_show(fields)}")
    for name, value in fields.items():
        if not isinstance(name, str) or name in DEFAULTS:
            raise ConfigError("arch_fields", f"{name!r} is not a factory field's name")
        if not isinstance(value, FIELD_KINDS) or (
            isinstance(value, float) and not math.isfinite(value)
        ):
            raise ConfigError(
                name, f"expected true/false, a finite number or a string, got {_show(value)}"
            )


# The fields each check between fields reads: `_check_combination`'s, then those made against
# the data (`check_config`'s train_size, `check_augmentation`, and `shapes.resolve_layers`, whose
# batch memory grows with batch_size and train_size). Each check is monotone in every number it
# reads, so a search space runs everywhere if each group runs at every combination of its
# numbers' ends and its other fields' choices (`cnnlab.study.search.corners`): a new check
# between fields names its fields here.
COMBINED_FIELDS: tuple[tuple[str, ...], ...] = (
    ("optimizer", "momentum", "nesterov"),
    ("lr_warmup_epochs", "epochs"),
    ("optimizer", "weight_decay", "learning_rate"),
    ("dataset", "train_size", "batch_size", "arch"),
    ("dataset", "crop_padding", "crop_padding_mode", "cutout"),
)


def _check_combination(config: RunConfig) -> None:
    """Fields that are valid alone but not together (each named, never silently ignored)."""
    if config.optimizer != "sgd":
        for name in ("momentum", "nesterov"):
            if getattr(config, name) != DEFAULTS[name]:
                raise ConfigError(name, f"only the sgd optimizer uses it, not {config.optimizer}")
    if config.nesterov and config.momentum == 0:
        raise ConfigError("nesterov", "needs momentum > 0")
    if config.lr_warmup_epochs >= config.epochs and config.lr_warmup_epochs > 0:
        raise ConfigError(
            "lr_warmup_epochs",
            f"{config.lr_warmup_epochs} must be fewer than the {config.epochs} epochs",
        )
    if weight_decay(config) * config.learning_rate > 2:
        # p <- p·(1 - wd·lr) every step: past 2 the weights grow without bound (and overflow).
        raise ConfigError(
            "weight_decay",
            f"{weight_decay(config):g} x learning_rate {config.learning_rate:g} must be at most 2"
            " (beyond, every step multiplies the weights by more than 1 in size: no run trains)",
        )


def weight_decay(config: RunConfig) -> float:
    """The weight decay a config trains with: its own, else its optimizer's default."""
    if config.weight_decay is not None:
        return config.weight_decay
    return ADAMW_WEIGHT_DECAY if config.optimizer == "adamw" else 0.0


def check_workers(requested: int | None) -> None:
    """A user's count of runs side by side: None (the device's choice) or at least 1."""
    if requested is not None and (isinstance(requested, bool) or requested < 1):
        raise CnnlabError(f"workers {requested!r}: must be at least 1 (1 trains in this process)")


@dataclass(frozen=True)
class Execution:
    """Where and how a study's runs train: one value, made at the edge (the CLI's options, or
    the caller's), and handed down whole.

    `device`: "auto", "cpu", "cuda" or "cuda:N". `workers`: runs side by side (CPU worker
    processes; default one per core) or groups of runs (CUDA streams; default all, up to 8); 1
    trains one after another in this process. `backend`: "local" or "ray" (None: the study
    file's, else local); `address`: the Ray cluster to join (None: the study file's, else
    $RAY_ADDRESS, else a local Ray). `connect_timeout`: seconds an MLflow server or a Ray cluster
    may take to answer (None: $CNNLAB_CONNECT_TIMEOUT, else 5).
    """

    device: str = "auto"
    workers: int | None = None
    backend: str | None = None
    address: str | None = None
    connect_timeout: float | str | None = None

    def __post_init__(self) -> None:
        check_workers(self.workers)
        if self.backend is not None and self.backend not in BACKENDS:
            raise CnnlabError(f"backend {self.backend!r}: expected one of {', '.join(BACKENDS)}")

    def for_study(self, backend: str | None, address: str | None) -> Execution:
        """These settings, with a study file's backend and address where these leave them
        unset; an address is refused without the Ray backend (it would connect to nothing)."""
        chosen = replace(
            self,
            backend=self.backend or backend or "local",
            address=self.address if self.address is not None else address,
        )
        if chosen.address and chosen.backend != "ray":
            raise CnnlabError(
                f"address {chosen.address!r} is for the Ray backend: add --backend ray"
            )
        return chosen


# Bumped when the same config starts to give different results (a fidelity fix), so that a
# resumed study retrains instead of mixing old results with new ones.
ID_VERSION = 2


def run_id(config: RunConfig) -> str:
    """12 hex digits of the SHA-256 of the config's fields that differ from their defaults.

    Omitting defaults keeps a run's id when a later version adds a field whose default keeps
    the old behaviour. The id covers the seed (a field like any other).
    """
    values = dataclasses.asdict(config)
    changed = {name: value for name, value in values.items() if value != DEFAULTS[name]}
    canonical = json.dumps({"id": ID_VERSION, **changed}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


_KIND_NAMES = {int: "an integer", str: "a string", float: "a number", bool: "true or false"}


def _show(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"


def check_run_augmentation(config: RunConfig, height: int, width: int) -> None:
    """`check_augmentation` with a run's own options, for its height x width images."""
    check_augmentation(
        height,
        width,
        crop_padding=config.crop_padding,
        crop_padding_mode=config.crop_padding_mode,
        cutout=config.cutout,
    )


def check_augmentation(
    height: int, width: int, *, crop_padding: int, crop_padding_mode: str, cutout: int
) -> None:
    """Raise ConfigError (naming the field) when these options cannot augment height x width.

    Reflect padding needs fewer pixels than the image's side; any padding or cutout is at most
    the side, which also bounds the padded batch's memory by the images' own size.
    """
    if crop_padding_mode not in PADDING_MODES:
        raise ConfigError(
            "crop_padding_mode",
            f"unknown mode {crop_padding_mode!r}; expected one of {', '.join(PADDING_MODES)}",
        )
    side = min(height, width)
    limit = side - 1 if crop_padding_mode == "reflect" else side
    for name, value, most in (("crop_padding", crop_padding, limit), ("cutout", cutout, side)):
        if not 0 <= value <= most:
            raise ConfigError(
                name,
                f"{value} pixels: expected 0 to {most} for {height}x{width} images"
                + (" with reflect padding" if name == "crop_padding" and most < side else ""),
            )
