"""fit(config, data) -> RunResult: the seed ConvNet trained with the semantics Keras uses.

CONTRACT (the study and speed code rely on these names):
- `RunConfig`: every number the loop uses.
- `fit(config, data, progress=None) -> RunResult`.
- `save_run(result, run_dir, class_names) -> dict[str, str]`: artifact name -> path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class RunConfig:
    """One training run; with `seed` it determines the result on the CPU."""

    arch: str = "seed"  # registry name (see `cnnlab archs`) or the name of inline `layers`
    layers: tuple[dict[str, Any], ...] | None = None  # inline layer specs; None: the registry's
    train_size: int = 5000  # images from the stratified shuffle of the 50,000 training images
    l1: float | None = None  # L1 weight on every dense kernel; None keeps the architecture's
    l2: float | None = None  # L2 weight on every dense kernel; None keeps the architecture's
    epochs: int = 20
    batch_size: int = 128
    validation_split: float = 0.1  # last fraction of the subset, held out before any shuffling
    learning_rate: float = 1e-3  # Adam step size
    beta_1: float = 0.9  # Adam first-moment decay
    beta_2: float = 0.999  # Adam second-moment decay
    epsilon: float = 1e-7  # Adam epsilon: Keras's default, not PyTorch's 1e-8
    seed: int = 0  # initialisation, dropout masks and per-epoch shuffles
    subset_seed: int = 0  # which images form the subset; the same across repeats


@dataclass
class RunResult:
    """What a run gives back: per-epoch history, final metrics and the trained weights."""

    config: RunConfig
    status: str  # "done" or "diverged"
    history: list[dict[str, float]]  # per epoch: epoch, loss, accuracy, val_loss, val_accuracy
    metrics: dict[str, Any] = field(default_factory=dict)
    state_dict: dict[str, Any] = field(default_factory=dict)
