"""SENet: conv blocks with squeeze-excitation (Hu et al. 2018), strided or max-pooled.

Plain PyTorch, nothing of cnnlab's: `build` is the factory cnnlab calls with the images'
(height, width, channels), the class count, and the fields a study sets by keyword.
"""

from __future__ import annotations

import torch
from torch import nn

POOLS = ("stride", "max")  # how each block halves the image: a strided conv or a 2x2 max-pool


class SqueezeExcitation(nn.Module):
    """Each channel scaled by a gate computed from all channels' means."""

    def __init__(self, channels: int, ratio: int):
        super().__init__()
        hidden = max(channels // ratio, 1)
        self.squeeze = nn.Conv2d(channels, hidden, 1)
        self.act = nn.ReLU(inplace=True)
        self.excite = nn.Conv2d(hidden, channels, 1)
        self.gate = nn.Sigmoid()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        weights = images.mean((2, 3), keepdim=True)
        return images * self.gate(self.excite(self.act(self.squeeze(weights))))


def block(inputs: int, outputs: int, pool: str, ratio: int) -> nn.Sequential:
    """conv 3x3, relu, conv 3x3 (strided with pool "stride"), relu, SE, 2x2 max-pool ("max")."""
    stride = 2 if pool == "stride" else 1
    layers = [
        nn.Conv2d(inputs, outputs, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(outputs, outputs, 3, stride=stride, padding=1),
        nn.ReLU(inplace=True),
        SqueezeExcitation(outputs, ratio),
    ]
    if pool == "max":
        layers.append(nn.MaxPool2d(2, ceil_mode=True))
    return nn.Sequential(*layers)


class SENet(nn.Module):
    """`depth` blocks, each doubling the width and halving the image; global average, linear."""

    def __init__(self, channels, num_classes, width, depth, pool, ratio, dropout):
        super().__init__()
        widths = [width * 2**index for index in range(depth)]
        inputs = [channels, *widths[:-1]]
        self.blocks = nn.Sequential(
            *(block(i, o, pool, ratio) for i, o in zip(inputs, widths, strict=True))
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(widths[-1], num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.blocks(images).mean((2, 3))
        return self.head(self.dropout(features))


def build(
    input_shape: tuple[int, int, int],
    num_classes: int,
    *,
    width: int = 16,
    depth: int = 2,
    pool: str = "stride",
    se_ratio: int = 4,
    dropout: float = 0.1,
) -> SENet:
    """A ConvNet with squeeze-excitation: `depth` blocks, strided or max-pooled."""
    if pool not in POOLS:
        raise ValueError(f"pool {pool!r}: expected one of {', '.join(POOLS)}")
    if not 1 <= depth <= 6 or width < 1 or se_ratio < 1:
        raise ValueError(f"depth 1-6, width and se_ratio >= 1: got {depth}, {width}, {se_ratio}")
    channels = input_shape[2]  # (height, width, channels): the blocks take any image size
    return SENet(channels, num_classes, width, depth, pool, se_ratio, dropout)
