"""What augment_batch costs per batch, next to a training step of a small BN conv net on the CPU.

    .venv/bin/python benchmarks/augment_cost.py [--batch 512] [--repeats 20] [--threads N]

Every time is the best of several runs (time.perf_counter), all in one process. Each option set
is augmented from the same uint8 channels-last batch of random 3x32x32 images that the training
loop would gather; the step is a forward, backward and SGD update of a small conv net with batch
norm on float32 channels-last images. Two peers, the ways the issue suggested, do the crop and
flip with the same draws and must give the same images: a per-pixel gather (advanced indexing
into the padded batch) and a loop over the (2p + 1)^2 offsets (each offset's images copied as
one slice).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.training import augment

OPTION_SETS = (
    ("flip", dict(flip=True)),
    ("crop 2 reflect", dict(crop_padding=2)),
    ("crop 4 reflect", dict(crop_padding=4)),
    ("crop 2 reflect + flip", dict(flip=True, crop_padding=2)),
    ("crop 4 reflect + flip", dict(flip=True, crop_padding=4)),
    ("crop 4 constant + flip", dict(flip=True, crop_padding=4, crop_padding_mode="constant")),
    ("crop 2 + flip + cutout 8", dict(flip=True, crop_padding=2, cutout=8)),
    ("cutout 16", dict(cutout=16)),
)
PEER_PADDINGS = (2, 4)  # crop + flip (reflect) against the per-pixel gather and the offset loop


def best_time(function: Callable[[], object], repeats: int) -> float:
    """The fastest of `repeats` runs, after one warm-up run."""
    function()
    times = []
    for _ in range(repeats):
        begin = time.perf_counter()
        function()
        times.append(time.perf_counter() - begin)
    return min(times)


def small_net() -> nn.Module:
    """Three conv-BN-GELU blocks with pooling and a linear head, channels-last."""
    layers: list[nn.Module] = []
    for in_channels, out_channels in ((3, 16), (16, 32), (32, 64)):
        layers += [
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.GELU(),
            nn.MaxPool2d(2),
        ]
    layers += [nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(64, 10)]
    return nn.Sequential(*layers).to(memory_format=torch.channels_last)


def step_time(batch: int, repeats: int) -> float:
    """Seconds of one training step of `small_net` on `batch` images."""
    generator = torch.Generator().manual_seed(0)
    net = small_net()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    images = torch.rand(batch, 3, 32, 32, generator=generator)
    images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (batch,), generator=generator)

    def step() -> None:
        optimizer.zero_grad()
        F.cross_entropy(net(images), labels).backward()
        optimizer.step()

    return best_time(step, max(3, repeats // 4))


def gather_peer(images: torch.Tensor, draws: augment.AugmentDraws) -> torch.Tensor:
    """Crop and flip by advanced indexing, one index per output pixel."""
    count, _, height, width = images.shape
    padding = draws.crop_padding
    padded = F.pad(images.float(), (padding,) * 4, mode="reflect").to(images.dtype)
    rows = draws.crop_offsets[0][:, None] + torch.arange(height)
    columns = draws.crop_offsets[1][:, None] + torch.arange(width)
    columns = torch.where(draws.flipped[:, None], columns.flip(1), columns)
    batch_index = torch.arange(count)[:, None, None]
    return padded[batch_index, :, rows[:, :, None], columns[:, None, :]].permute(0, 3, 1, 2)


def offset_loop_peer(images: torch.Tensor, draws: augment.AugmentDraws) -> torch.Tensor:
    """Crop and flip by a loop over the (2p + 1)^2 offsets, each a slice of its images."""
    _, _, height, width = images.shape
    padding = draws.crop_padding
    padded = F.pad(images.float(), (padding,) * 4, mode="reflect").to(images.dtype)
    padded = torch.where(draws.flipped[:, None, None, None], padded.flip(3), padded)
    # A flipped image's window in the mirrored padded image starts at 2p - offset.
    vertical = draws.crop_offsets[0]
    horizontal = torch.where(
        draws.flipped, 2 * padding - draws.crop_offsets[1], draws.crop_offsets[1]
    )
    output = torch.empty_like(images)
    for row in range(2 * padding + 1):
        for column in range(2 * padding + 1):
            chosen = ((vertical == row) & (horizontal == column)).nonzero().squeeze(1)
            output[chosen] = padded[chosen, :, row : row + height, column : column + width]
    return output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=512, help="images per batch")
    parser.add_argument("--repeats", type=int, default=20, help="runs per timing (best is kept)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: its default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    generator = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (args.batch, 32, 32, 3), dtype=torch.uint8, generator=generator)
    images = pixels.permute(0, 3, 1, 2)  # channels-last, as train.images_to_device stores them
    step_s = step_time(args.batch, args.repeats)
    print(
        f"batch {args.batch} of uint8 3x32x32 channels-last; best of {args.repeats}; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, Python "
        f"{platform.python_version()}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    print(f"training step of the small BN conv net: {step_s * 1e3:.1f} ms")
    print(f"{'options':<26} {'ms/batch':>9} {'% of step':>10}")
    for name, options in OPTION_SETS:
        options = dict(flip=False, crop_padding=0, crop_padding_mode="reflect", cutout=0) | options
        seconds = best_time(
            lambda options=options: augment.augment_batch(images, **options, generator=generator),
            args.repeats,
        )
        print(f"{name:<26} {seconds * 1e3:>9.3f} {100 * seconds / step_s:>9.2f}%")

    print(
        f"\n{'crop + flip, reflect':<22} {'cnnlab ms':>9} {'gather ms':>9} {'ratio':>6} "
        f"{'loop ms':>8} {'ratio':>6}"
    )
    for padding in PEER_PADDINGS:
        draws = augment.draw_augmentations(
            args.batch, 32, 32, flip=True, crop_padding=padding, cutout=0, generator=generator
        )
        ours = augment.apply_augmentations(images, draws, "reflect")
        # Same images, or the times mean nothing.
        assert torch.equal(gather_peer(images, draws), ours)
        assert torch.equal(offset_loop_peer(images, draws), ours)
        ours_s = best_time(
            lambda d=draws: augment.apply_augmentations(images, d, "reflect"), args.repeats
        )
        gather_s = best_time(lambda d=draws: gather_peer(images, d), args.repeats)
        loop_s = best_time(lambda d=draws: offset_loop_peer(images, d), args.repeats)
        print(
            f"{f'padding {padding}':<22} {ours_s * 1e3:>9.3f} {gather_s * 1e3:>9.3f} "
            f"{gather_s / ours_s:>5.1f}x {loop_s * 1e3:>8.3f} {loop_s / ours_s:>5.1f}x"
        )
    print("ratio = peer time / cnnlab time (above 1: cnnlab is faster)")


if __name__ == "__main__":
    main()
