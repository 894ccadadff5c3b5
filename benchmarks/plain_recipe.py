"""The bar for the strong recipe: an untuned airbench-style script as a PyTorch user writes it.

Three conv-pool-BN-GELU blocks (widths given), global max-pool and a linear head; SGD with
Nesterov momentum and weight decay, label smoothing 0.2, PyTorch's OneCycleLR, random crop
(reflect padding 2) and flip done per batch on the CPU, flip test-time augmentation, bfloat16
autocast, batch 512, images normalised by the usual CIFAR-10 mean and std, PyTorch's default
initialisation. Nothing here is tuned: it is the peer cnnlab's recipe is measured against
(`recipe_speed.py`). Importable: `fit_plain_recipe`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)


def build_plain_recipe_net(widths: tuple[int, int, int]) -> nn.Sequential:
    """Three conv-pool-BN-GELU blocks, then global max-pool and a linear classifier."""
    layers: list[nn.Module] = []
    channels = 3
    for width in widths:
        layers += [
            nn.Conv2d(channels, width, 3, padding=1, bias=False),
            nn.MaxPool2d(2),
            nn.BatchNorm2d(width),
            nn.GELU(),
        ]
        channels = width
    layers += [nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(channels, 10)]
    return nn.Sequential(*layers)


def to_float(images: np.ndarray) -> torch.Tensor:
    """uint8 NHWC -> normalised float NCHW."""
    pixels = torch.tensor(images, dtype=torch.float32).permute(0, 3, 1, 2) / 255.0
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return ((pixels - mean) / std).contiguous()


def augment(images: torch.Tensor, padding: int = 2) -> torch.Tensor:
    """Random crop with reflect padding and a random horizontal flip, image by image."""
    padded = F.pad(images, (padding,) * 4, mode="reflect")
    size = images.shape[-1]
    out = torch.empty_like(images)
    for index in range(len(images)):
        top, left = np.random.randint(0, 2 * padding + 1, size=2)
        crop = padded[index, :, top : top + size, left : left + size]
        out[index] = crop.flip(-1) if np.random.rand() < 0.5 else crop
    return out


@dataclass
class PlainRecipeResult:
    fit_seconds: float
    test_accuracy: float
    images_per_second: float


def fit_plain_recipe(
    train_images: np.ndarray,
    train_labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    *,
    widths: tuple[int, int, int] = (32, 64, 128),
    epochs: int = 10,
    batch_size: int = 512,
    seed: int = 0,
) -> PlainRecipeResult:
    """Train on every training image, then score the test set with flip TTA."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    x_train, y_train = to_float(train_images), torch.tensor(train_labels, dtype=torch.long)
    model = build_plain_recipe_net(widths).to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=0.2, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    steps = epochs * math.ceil(len(y_train) / batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.2, total_steps=steps)
    started = time.perf_counter()
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(y_train))
        for start in range(0, len(y_train), batch_size):
            batch = order[start : start + batch_size]
            images = augment(x_train[batch]).contiguous(memory_format=torch.channels_last)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logits = model(images)
            loss = F.cross_entropy(logits.float(), y_train[batch], label_smoothing=0.2)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
    fit_seconds = time.perf_counter() - started
    model.eval()
    x_test = to_float(test_images)
    correct = 0
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        for start in range(0, len(x_test), 1000):
            images = x_test[start : start + 1000].contiguous(memory_format=torch.channels_last)
            logits = model(images).float() + model(images.flip(-1)).float()
            correct += (logits.argmax(1).numpy() == test_labels[start : start + 1000]).sum()
    return PlainRecipeResult(
        fit_seconds, correct / len(test_labels), epochs * len(y_train) / fit_seconds
    )
