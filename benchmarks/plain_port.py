"""The seed ConvNet as a typical PyTorch user writes it: the peer cnnlab is measured against.

nn.Sequential with padding=1 (symmetric, unlike TensorFlow's 'same' for stride 2), PyTorch's
default initialisation, torch's Adam defaults except the learning rate (so epsilon 1e-8), a
DataLoader over a TensorDataset of float tensors with shuffle=True, batch 128, `.item()` on every
step, and the same held-out last 10% validated after each epoch. Importable: other benchmarks
reuse `build_plain_net`, `fit_plain` and `evaluate_plain`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def _conv(in_channels: int, out_channels: int, kernel: int = 3, stride: int = 1) -> list[nn.Module]:
    # What a port usually writes for Keras's 'same': symmetric padding=(kernel-1)//2.
    return [
        nn.Conv2d(in_channels, out_channels, kernel, stride, padding=(kernel - 1) // 2),
        nn.ReLU(),
    ]


def build_plain_net(arch: str = "seed") -> nn.Sequential:
    """The seed study's nets with PyTorch's defaults (the same parameter counts as Keras's)."""
    if arch == "seed":
        body = [*_conv(3, 16), *_conv(16, 16, stride=2), *_conv(16, 32), *_conv(32, 32, stride=2)]
        features = 8 * 8 * 32
    elif arch == "seed-maxpool":
        body = [*_conv(3, 16), *_conv(16, 16), *_conv(16, 32), *_conv(32, 32), nn.MaxPool2d(2)]
        features = 16 * 16 * 32
    elif arch == "seed-deep":
        body = [
            *_conv(3, 8), *_conv(8, 8, kernel=2, stride=2), *_conv(8, 16),
            *_conv(16, 16, stride=2), *_conv(16, 32), *_conv(32, 32, stride=2),
        ]  # fmt: skip
        features = 4 * 4 * 32
    else:
        raise ValueError(f"the plain port has no {arch!r}")
    return nn.Sequential(*body, nn.Dropout(0.5), nn.Flatten(), nn.Linear(features, 10))


def to_tensors(images: np.ndarray, labels: np.ndarray) -> TensorDataset:
    """uint8 NHWC -> float NCHW in [0, 1], as most tutorials prepare CIFAR-10."""
    pixels = torch.tensor(images, dtype=torch.float32).permute(0, 3, 1, 2).contiguous() / 255.0
    return TensorDataset(pixels, torch.tensor(labels, dtype=torch.long))


@dataclass
class PlainResult:
    """The trained net, the training loop's wall time and per-epoch history."""

    model: nn.Sequential
    fit_seconds: float
    history: list[dict[str, float]]


def evaluate_plain(
    model: nn.Module, dataset: TensorDataset, device: str | torch.device = "cpu"
) -> tuple[float, float]:
    """(mean loss, accuracy) in eval mode, batch 128 through a DataLoader."""
    model.eval()
    loss_sum, correct = 0.0, 0
    with torch.no_grad():
        for images, labels in DataLoader(dataset, batch_size=128):
            images, labels = images.to(device), labels.to(device)
            logits = model(images)
            loss_sum += nn.functional.cross_entropy(logits, labels, reduction="sum").item()
            correct += (logits.argmax(1) == labels).sum().item()
    return loss_sum / len(dataset), correct / len(dataset)


def fit_plain(
    train_images: np.ndarray,
    train_labels: np.ndarray,
    *,
    epochs: int = 20,
    l1: float = 1e-4,
    learning_rate: float = 1e-3,
    validation_split: float = 0.1,
    seed: int = 0,
    arch: str = "seed",
    device: str | torch.device = "cpu",
) -> PlainResult:
    """Train on the first (1 - validation_split) of the images, validate on the rest per epoch."""
    torch.manual_seed(seed)
    split_at = int(len(train_labels) * (1 - validation_split))
    train_set = to_tensors(train_images[:split_at], train_labels[:split_at])
    validation_set = to_tensors(train_images[split_at:], train_labels[split_at:])
    model = build_plain_net(arch).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    loader = DataLoader(train_set, batch_size=128, shuffle=True)
    history = []
    started = time.perf_counter()
    for epoch in range(1, epochs + 1):
        model.train()
        loss_sum, correct, seen = 0.0, 0, 0
        for images, labels in loader:
            images, labels = images.to(device), labels.to(device)
            optimizer.zero_grad()
            logits = model(images)
            loss = nn.functional.cross_entropy(logits, labels) + l1 * model[-1].weight.abs().sum()
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * len(labels)
            correct += (logits.argmax(1) == labels).sum().item()
            seen += len(labels)
        val_loss, val_accuracy = evaluate_plain(model, validation_set, device)
        history.append(
            {
                "epoch": epoch,
                "loss": loss_sum / seen,
                "accuracy": correct / seen,
                "val_loss": val_loss,
                "val_accuracy": val_accuracy,
            }
        )
    return PlainResult(model, time.perf_counter() - started, history)
