"""Training-time augmentation and test-time augmentation: pure batch transforms on the device.

`augment_batch` takes an NCHW batch (uint8 or float) and returns a new one of the same shape,
dtype and memory format, on the same device. Its transforms, applied in this order:

- random crop with padding, as torchvision's `RandomCrop(size, padding, padding_mode=...)`:
  each side padded by p pixels (reflect: mirrored without repeating the edge, as `np.pad`'s
  "reflect"; constant: zeros), then cropped back to the original size at a window offset drawn
  uniformly per image in [0, 2p] for each axis: a translation by -p..p;
- horizontal flip, as torchvision's `RandomHorizontalFlip(0.5)`: each image mirrored
  left-right with probability 1/2;
- cutout (DeVries & Taylor 2017, "Improved regularization of convolutional neural networks with
  cutout"): a square of side s centred at a pixel drawn uniformly per image, clipped at the
  borders, set to 0 in every channel. It covers rows [cy - s//2, cy - s//2 + s) and the same for
  columns: the authors' own code for their (even) sizes, centred for odd ones.

The draws, all from the one `torch.Generator` passed in and only for the transforms enabled,
in this order (`draw_augmentations`): crop, one `randint(0, 2p + 1, (2, N))` (row 0: vertical
offsets, row 1: horizontal); flip, one `rand(N)` (flipped where below 1/2); cutout,
`randint(0, H, (N,))` then `randint(0, W, (N,))` (the centres' rows, then columns). Enabling a
later transform never changes an earlier one's draws; nothing is drawn when all are off.

`tta_logits` is airbench's test-time augmentation (Keller Jordan, airbench94's `infer`), which
averages logits, not probabilities. none: the images' logits. flip: the mean of the logits of
the images and of their mirrors. flip-translate (airbench's level 2): half the flip mean plus
half the mean of the flip means of two translated copies, the top-left and bottom-right
windows of the images reflect-padded by one pixel (shifted one pixel down-right and up-left).

`epoch_generator` gives each (run seed, epoch) its own stream, apart from the streams of
`train.generators`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from cnnlab.config import TTA_MODES, check_augmentation
from cnnlab.errors import CnnlabError

# The last word of every augmentation seed ("augm" in ASCII). SeedSequence pads its entropy
# with zeros, so [seed, 0] alone would be SeedSequence(seed), the very pool train.generators
# splits into the initialisation, shuffle and dropout streams.
AUGMENT_STREAM_TAG = 0x6175676D


@dataclass(frozen=True)
class AugmentDraws:
    """Everything random about one augmented batch; None where a transform is off."""

    crop_padding: int  # pixels padded on each side before the crop (0: no crop)
    crop_offsets: torch.Tensor | None  # int64 (2, N): the window's top row and left column
    flipped: torch.Tensor | None  # bool (N,): which images are mirrored after the crop
    cutout: int  # the square's side in pixels (0: no cutout)
    cutout_centres: torch.Tensor | None  # int64 (2, N): each square's centre row and column


def draw_augmentations(
    count: int,
    height: int,
    width: int,
    *,
    flip: bool,
    crop_padding: int,
    cutout: int,
    generator: torch.Generator,
) -> AugmentDraws:
    """Draw the random parts of augmenting `count` images, in the order the module documents."""
    device = generator.device
    crop_offsets = flipped = cutout_centres = None
    if crop_padding > 0:
        bound = 2 * crop_padding + 1
        crop_offsets = torch.randint(0, bound, (2, count), generator=generator, device=device)
    if flip:
        flipped = torch.rand(count, generator=generator, device=device) < 0.5
    if cutout > 0:
        rows = torch.randint(0, height, (count,), generator=generator, device=device)
        columns = torch.randint(0, width, (count,), generator=generator, device=device)
        cutout_centres = torch.stack([rows, columns])
    return AugmentDraws(crop_padding, crop_offsets, flipped, cutout, cutout_centres)


def augment_batch(
    images: torch.Tensor,
    *,
    flip: bool,
    crop_padding: int,
    crop_padding_mode: str,
    cutout: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """Random crop, then flip, then cutout of NCHW `images`; the input itself when all are off."""
    if images.dim() != 4:
        raise CnnlabError(f"augment_batch: expected an NCHW batch, got shape {tuple(images.shape)}")
    count, _, height, width = images.shape
    check_augmentation(
        height,
        width,
        crop_padding=crop_padding,
        crop_padding_mode=crop_padding_mode,
        cutout=cutout,
    )
    if not flip and crop_padding == 0 and cutout == 0:
        return images
    draws = draw_augmentations(
        count,
        height,
        width,
        flip=flip,
        crop_padding=crop_padding,
        cutout=cutout,
        generator=generator,
    )
    return apply_augmentations(images, draws, crop_padding_mode)


def apply_augmentations(
    images: torch.Tensor, draws: AugmentDraws, crop_padding_mode: str
) -> torch.Tensor:
    """`images` (NCHW) cropped, flipped and cut out as `draws` say; same dtype and layout."""
    # Pixels in NHWC order make every output row a contiguous run of the source (see
    # crop_and_flip); the training batches are channels-last already, so this is a view.
    pixels = images.permute(0, 2, 3, 1).contiguous()
    if draws.crop_offsets is not None or draws.flipped is not None:
        pixels = crop_and_flip(pixels, draws, crop_padding_mode)
    elif draws.cutout_centres is not None:
        pixels = pixels.clone()
    if draws.cutout_centres is not None:
        cut_out(pixels, draws.cutout, draws.cutout_centres)
    augmented = pixels.permute(0, 3, 1, 2)
    if augmented.stride() != images.stride():
        augmented = torch.empty_like(images).copy_(augmented)
    return augmented


def crop_and_flip(pixels: torch.Tensor, draws: AugmentDraws, padding_mode: str) -> torch.Tensor:
    """NHWC `pixels` translated and mirrored as `draws` say, as one gather of whole rows."""
    # Each image row is laid out once, padded on both sides, followed by its own mirror image
    # (padded too) when flips are drawn. Every output row is then a contiguous window of one
    # such extended row, so crop and flip cost one row-wise index_select: about 10x faster on a
    # CPU than a per-pixel gather or a loop over the offsets (benchmarks/augment_cost.py).
    count, height, width, channels = pixels.shape
    padding = draws.crop_padding
    reflect = padding_mode == "reflect" and padding > 0
    rows = pixels.reshape(count * height, width, channels)
    pieces, mirror_start = extended_row_pieces(rows, padding, reflect, draws.flipped is not None)
    extended_width = sum(piece.shape[1] for piece in pieces)
    # In constant mode a source row above or below the image is the extra all-zero last row.
    zero_row = padding > 0 and not reflect
    extended = pixels.new_empty((count * height + zero_row, extended_width, channels))
    torch.cat(pieces, dim=1, out=extended[: count * height])
    if zero_row:
        extended[-1] = 0

    device = pixels.device
    output_rows = torch.arange(height, device=device)
    if draws.crop_offsets is None:
        vertical = horizontal = torch.zeros(count, dtype=torch.int64, device=device)
    else:
        vertical, horizontal = draws.crop_offsets
    source_rows = vertical[:, None] - padding + output_rows  # (count, height), -p..H-1+p
    image_starts = torch.arange(count, device=device)[:, None] * height
    if reflect:
        source_rows = reflect_index(source_rows, height) + image_starts
    else:
        outside = (source_rows < 0) | (source_rows >= height)
        source_rows = torch.where(outside, count * height, source_rows + image_starts)
    # The window's first pixel within its extended row: a flip of a crop at offset d is the
    # crop at offset 2p - d of the mirrored padded row.
    columns = horizontal
    if draws.flipped is not None:
        columns = torch.where(draws.flipped, mirror_start + 2 * padding - horizontal, horizontal)
    starts = (source_rows * extended_width + columns[:, None]).reshape(-1)

    flat = extended.view(-1)
    window_count = max(flat.numel() // channels - width + 1, 0)  # 0 for an empty batch
    windows = flat.as_strided((window_count, width * channels), (channels, 1))
    return windows.index_select(0, starts).view(count, height, width, channels)


def extended_row_pieces(
    rows: torch.Tensor, padding: int, reflect: bool, with_mirror: bool
) -> tuple[list[torch.Tensor], int]:
    """The column pieces of each extended row (N*H, W, C), and where its mirrored copy starts."""
    # Reflect: the row padded by its own mirror without repeating the edge pixel; with the
    # mirror appended it is the row's periodic reflection [x_p..x_1, x_0..x_W-1, x_W-2..x_0,
    # x_1..x_p], in which the mirrored padded row starts at W - 1. Constant: [0_p, row, 0_p,
    # mirror, 0_p]. Every piece costs a pass over the rows, so there are as few as possible.
    width = rows.shape[1]
    if reflect:
        if with_mirror:
            mirror = rows.flip(1)
            pieces = [
                mirror[:, width - 1 - padding : width - 1],
                rows,
                mirror[:, 1:],
                rows[:, 1 : padding + 1],
            ]
            return pieces, width - 1
        left = torch.arange(padding, 0, -1, device=rows.device)
        right = torch.arange(width - 2, width - 2 - padding, -1, device=rows.device)
        return [rows.index_select(1, left), rows, rows.index_select(1, right)], 0
    if padding == 0:  # a flip alone
        return [rows, rows.flip(1)], width
    zeros = rows.new_zeros(()).expand(rows.shape[0], padding, rows.shape[2])
    if with_mirror:
        return [zeros, rows, zeros, rows.flip(1), zeros], width + padding
    return [zeros, rows, zeros], 0


def reflect_index(positions: torch.Tensor, size: int) -> torch.Tensor:
    """Positions in -size+1..2*size-2 mirrored into 0..size-1 without repeating the edge."""
    mirrored = positions.abs()
    return torch.where(mirrored >= size, 2 * (size - 1) - mirrored, mirrored)


def cut_out(pixels: torch.Tensor, side: int, centres: torch.Tensor) -> None:
    """Zero, in place, each NHWC image's side x side square at `centres`, clipped at the borders."""
    count, height, width, channels = pixels.shape
    steps = torch.arange(side, device=pixels.device) - side // 2
    # Coordinates beyond a border are clamped onto it: the clamped pixel lies inside the
    # clipped square (which always holds its centre), so zeroing it twice changes nothing.
    rows = (centres[0][:, None] + steps).clamp(0, height - 1)
    columns = (centres[1][:, None] + steps).clamp(0, width - 1)
    image_starts = torch.arange(count, device=pixels.device)[:, None, None] * height
    indices = ((image_starts + rows[:, :, None]) * width + columns[:, None, :]).reshape(-1)
    pixels.view(count * height * width, channels).index_fill_(0, indices, 0)


def epoch_generator(seed: int, epoch: int, device: torch.device | str) -> torch.Generator:
    """The augmentation stream of one epoch of the run with `seed`, on `device`."""
    entropy = [seed, epoch, AUGMENT_STREAM_TAG]
    (state,) = np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)
    generator = torch.Generator(device=device)
    generator.manual_seed(int(state))
    return generator


def tta_logits(
    forward: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, mode: str
) -> torch.Tensor:
    """Logits of float NCHW `images` averaged over `mode`'s copies (see the module docstring)."""
    if mode not in TTA_MODES:
        raise CnnlabError(f"tta: unknown mode {mode!r}; expected one of {', '.join(TTA_MODES)}")
    if mode == "none":
        return forward(images)
    logits = mirror_mean(forward, images)
    if mode == "flip":
        return logits
    height, width = images.shape[-2:]
    if min(height, width) < 2:
        raise CnnlabError(f"tta: flip-translate needs images of at least 2x2, got {height}x{width}")
    padded = F.pad(images, (1, 1, 1, 1), mode="reflect")
    windows = [padded[:, :, :height, :width], padded[:, :, 2:, 2:]]
    translated = [same_layout(window, images) for window in windows]
    translated_logits = torch.stack([mirror_mean(forward, copy) for copy in translated]).mean(0)
    return 0.5 * logits + 0.5 * translated_logits


def mirror_mean(
    forward: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor
) -> torch.Tensor:
    """The mean of the logits of `images` and of their left-right mirrors."""
    return 0.5 * forward(images) + 0.5 * forward(same_layout(images.flip(-1), images))


def same_layout(copy: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`copy` with the strides of `like` (same shape), so a channels-last net stays fast."""
    if copy.stride() == like.stride():
        return copy
    return torch.empty_like(like).copy_(copy)
