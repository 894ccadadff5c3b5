"""The pictures of `cnnlab explain`: feature maps per conv layer and attributions over the image.

Built with `matplotlib.figure.Figure` (never pyplot), as `cnnlab.plots` builds its figures.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from cnnlab import plots

CHANNELS_SHOWN = 32  # a conv layer's first channels drawn; wider layers say how many are left
TILE_COLUMNS = 16  # channels per row of a layer's tile grid


def _tiles(maps: np.ndarray, columns: int) -> np.ndarray:
    """C x H x W maps as one grid image, NaN (blank) between tiles and after the last."""
    channels, height, width = maps.shape
    rows = math.ceil(channels / columns)
    grid = np.full((rows * (height + 1) - 1, columns * (width + 1) - 1), np.nan)
    for index, tile in enumerate(maps):
        row, column = divmod(index, columns)
        top, left = row * (height + 1), column * (width + 1)
        grid[top : top + height, left : left + width] = tile
    return grid


def feature_maps_figure(maps: Sequence[tuple[str, np.ndarray]], title: str) -> Figure:
    """Each conv layer's channels as a grid of gray tiles, one row of axes per layer; a layer
    shares one scale (its own minimum to maximum) so its channels compare."""
    figure = Figure(figsize=(9.0, 1.0 + 1.3 * max(len(maps), 1)), layout="constrained")
    figure.suptitle(title, fontsize=11)
    if not maps:
        figure.text(0.5, 0.5, "this net has no conv layer", ha="center", va="center")
        return figure
    axes_column = figure.subplots(len(maps), 1, squeeze=False)[:, 0]
    for axes, (name, layer_maps) in zip(axes_column, maps, strict=True):
        shown = layer_maps[:CHANNELS_SHOWN].astype(np.float64)
        axes.imshow(_tiles(shown, min(TILE_COLUMNS, len(shown))), cmap="gray", aspect="equal")
        axes.set_xticks([])
        axes.set_yticks([])
        channels, height, width = layer_maps.shape
        more = f", first {CHANNELS_SHOWN}" if channels > CHANNELS_SHOWN else ""
        axes.set_title(f"{name}: {channels} x {height}x{width}{more}", fontsize=8, loc="left")
    return figure


def attributions_figure(
    image: np.ndarray, panels: Sequence[tuple[str, np.ndarray]], title: str
) -> Figure:
    """The image, then each attribution map (Grad-CAM, saliency) laid over a faded copy."""
    figure = Figure(figsize=(2.0 * (len(panels) + 1), 2.55), layout="constrained")
    figure.suptitle(title, fontsize=10)
    axes_row = figure.subplots(1, len(panels) + 1, squeeze=False)[0]
    for axes in axes_row:
        axes.set_axis_off()
    plots.show_image(axes_row[0], image)
    axes_row[0].set_title("image", fontsize=8)
    gray = np.asarray(image, dtype=np.float64).mean(axis=2)
    for axes, (name, heat) in zip(axes_row[1:], panels, strict=True):
        axes.imshow(gray, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        top = float(np.max(heat)) if np.size(heat) else 0.0
        axes.imshow(heat, cmap="jet", alpha=0.5, vmin=0, vmax=top or 1.0, interpolation="bilinear")
        # A ReLU'd Grad-CAM is zero where no region raises the class's score: say so.
        axes.set_title(name if top > 0 else f"{name} (zero)", fontsize=8)
    return figure
