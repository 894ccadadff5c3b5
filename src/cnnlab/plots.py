"""Figures shared by the commands (data grid, history, confusion matrices, report charts).

Figures are built with `matplotlib.figure.Figure` directly, never pyplot, so importing cnnlab
chooses no plotting backend and plotting works on machines without a display.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from typing import Any

from matplotlib.figure import Figure

from cnnlab.atomic import atomic_path

# A variant this far below the median accuracy is drawn at the axis's edge (it collapsed).
COLLAPSED_BELOW = 0.15


# An axis reaching beyond this (a hand-edited 1e308 in a store) is drawn cut off at it:
# matplotlib's tick arithmetic overflows on a span near the largest float.
LARGEST_DRAWN = 1e100


def save_figure(figure: Figure, path: str | os.PathLike[str], dpi: int = 110) -> None:
    """Write `figure` as PNG (or the format of the suffix) atomically."""
    with atomic_path(path) as tmp, _as_drawn(figure):
        figure.savefig(tmp, dpi=dpi, bbox_inches="tight")


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Figures built from any number a store can hold (1e308, NaN, inf) and any class count:
    matplotlib's and NumPy's warnings (an overflow in autoscaling, a layout that cannot fit 300
    class names) kept off stderr; the figures say what they can."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@contextlib.contextmanager
def _as_drawn(figure: Figure) -> Iterator[None]:
    """How every figure is drawn: quietly, with every axis within LARGEST_DRAWN."""
    with quiet():
        for axes in figure.get_axes():
            _bound_axis(axes.get_xlim, axes.set_xlim, axes.get_xscale() == "log")
            _bound_axis(axes.get_ylim, axes.set_ylim, axes.get_yscale() == "log")
        yield


def _bound_axis(get: Any, set_: Any, log: bool) -> None:
    """An axis's limits cut to LARGEST_DRAWN (for a log axis: at least its reciprocal)."""
    import math

    low, high = (float(limit) for limit in get())
    smallest = 1 / LARGEST_DRAWN if log else -LARGEST_DRAWN
    bounded = [
        min(max(value, smallest), LARGEST_DRAWN) if not math.isnan(value) else 1.0
        for value in (low, high)
    ]
    if bounded == [low, high]:
        return
    if bounded[0] == bounded[1]:  # both cut to the same edge
        bounded = [bounded[0] / 2, bounded[0]] if bounded[0] > 0 else [bounded[0], bounded[0] / 2]
    set_(*bounded)


def plain(text: object) -> str:
    """Text from data (a class name) as it is: a '$' in it starts no formula."""
    return str(text).replace("$", r"\$")


# --- report charts (cnnlab.report.report) ---------------------------------------------------------

_TRAIN_COLOUR, _TEST_COLOUR, _TIME_COLOUR, _REPORT_COLOUR = "#1f77b4", "#d62728", "#7f7f7f", "#111"


def validation_curves_figure(curves: list[tuple[str, list[list[float]]]], title: str) -> Figure:
    """Validation accuracy per epoch, one line per label: the mean over repeats, its 95% t band."""
    import numpy as np
    from matplotlib.ticker import MaxNLocator
    from scipy import stats

    figure = Figure(figsize=(6.4, 3.8), layout="constrained")
    axes = figure.add_subplot()
    for index, (label, runs) in enumerate(curves):
        length = min((len(run) for run in runs), default=0)
        if length == 0:
            continue
        values = np.array([run[:length] for run in runs], dtype=float)
        epochs = np.arange(1, length + 1)
        mean = values.mean(axis=0)
        colour = f"C{index % 10}"
        axes.plot(epochs, mean, color=colour, label=f"{label} (n={len(runs)})", linewidth=1.6)
        if len(runs) > 1:  # the t interval of the mean, as the report's tables give it
            half = stats.t.ppf(0.975, len(runs) - 1) * stats.sem(values, axis=0)
            axes.fill_between(epochs, mean - half, mean + half, color=colour, alpha=0.15)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("epoch")
    axes.set_ylabel("validation accuracy")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    if axes.get_legend_handles_labels()[0]:
        axes.legend(fontsize="small")
    return figure


def accuracy_versus_figure(
    x: list[float],
    train: list[tuple[float, float]],
    test: list[tuple[float, float]],
    *,
    xlabel: str,
    xscale: str,
    title: str,
    seconds: list[tuple[float, float, float]] | None = None,
    reference: dict[str, list[float | None]] | None = None,
) -> Figure:
    """Train and test accuracy against a grid field, the report's as open markers.

    Each value is (mean, half-width of its 95% confidence interval).

    `xscale` is "log" or "symlog" (symlog keeps x = 0 on the axis); `seconds` adds the fit time
    on a second y axis, each (geometric mean, low, high) of its log-scale interval.
    """
    from matplotlib.ticker import NullFormatter

    figure = Figure(figsize=(6.4, 3.8), layout="constrained")
    axes = figure.add_subplot()
    for name, values, colour in (("train", train, _TRAIN_COLOUR), ("test", test, _TEST_COLOUR)):
        axes.errorbar(
            x,
            [mean for mean, _ in values],
            yerr=[std for _, std in values],
            color=colour,
            marker="o",
            capsize=3,
            label=f"{name} (cnnlab)",
        )
        points = (reference or {}).get(f"{name}_accuracy") or []
        shown = [(xi, value) for xi, value in zip(x, points, strict=False) if value is not None]
        if shown:
            axes.scatter(
                [xi for xi, _ in shown],
                [value for _, value in shown],
                facecolors="none",
                edgecolors=colour,
                marker="s",
                s=48,
                label=f"{name} (report)",
            )
    if xscale == "symlog":
        positive = [value for value in x if value > 0]
        axes.set_xscale("symlog", linthresh=min(positive) if positive else 1.0)
    else:
        axes.set_xscale(xscale)
    axes.set_xticks(x)
    axes.set_xticklabels([f"{value:g}" for value in x])
    axes.xaxis.set_minor_formatter(NullFormatter())
    axes.set_xlabel(xlabel)
    axes.set_ylabel("accuracy")
    axes.set_ylim(0, 1)
    axes.set_title(title)
    axes.grid(alpha=0.3)
    handles, labels = axes.get_legend_handles_labels()
    if seconds is not None:
        time_axes = axes.twinx()
        time_axes.errorbar(
            x,
            [centre for centre, _, _ in seconds],
            yerr=_time_errors(seconds),
            color=_TIME_COLOUR,
            linestyle="--",
            marker="^",
            capsize=3,
            label="fit time (cnnlab)",
        )
        time_axes.set_ylabel("fit time (s)")
        time_axes.set_ylim(bottom=0)
        more_handles, more_labels = time_axes.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    axes.legend(
        handles,
        labels,
        fontsize="small",
        loc="upper center",
        bbox_to_anchor=(0.5, -0.2),
        ncol=3,
        frameon=False,
    )
    return figure


def comparison_bars_figure(
    labels: list[str],
    panels: list[tuple[str, list[tuple[float, float]], list[float | None]]],
    title: str,
) -> Figure:
    """One small bar chart per quantity (title, cnnlab (mean, interval half-width), report's)."""
    figure = Figure(figsize=(2.4 * len(panels) + 0.6, 3.2), layout="constrained")
    figure.suptitle(title)
    positions = list(range(len(labels)))
    for index, (panel_title, values, reference) in enumerate(panels):
        axes = figure.add_subplot(1, len(panels), index + 1)
        has_reference = any(value is not None for value in reference)
        offset, width = (0.2, 0.4) if has_reference else (0.0, 0.6)
        axes.bar(
            [p - offset for p in positions],
            [mean for mean, _ in values],
            width=width,
            yerr=[std for _, std in values],
            capsize=3,
            color=_TRAIN_COLOUR,
            label="cnnlab",
        )
        if has_reference:
            axes.bar(
                [p + offset for p in positions],
                [value or 0 for value in reference],
                width=width,
                color="#bbbbbb",
                edgecolor=_REPORT_COLOUR,
                label="report",
            )
        axes.set_xticks(positions)
        axes.set_xticklabels(labels, fontsize="small")
        axes.set_title(panel_title, fontsize="medium")
        axes.grid(axis="y", alpha=0.3)
        if index == 0:
            axes.legend(fontsize="x-small")
    return figure


def variants_figure(
    labels: list[str],
    accuracy: list[tuple[float, float]],
    seconds: list[tuple[float, float, float]],
    title: str,
) -> Figure:
    """Per variant (the first on top, a dashed line at its mean): test accuracy as dots and fit
    time as bars, each a mean and its 95% interval (times: geometric, from the log scale, so
    never below zero). A variant that collapsed far below the others
    is marked at the accuracy axis's left edge with its value, so it does not squash the rest."""
    figure = Figure(figsize=(8.0, 0.45 * len(labels) + 1.4), layout="constrained")
    figure.suptitle(title)
    positions = list(range(len(labels)))[::-1]
    dots, bars = figure.add_subplot(1, 2, 1), figure.add_subplot(1, 2, 2)
    _accuracy_dots(dots, positions, accuracy)
    means = [centre for centre, _, _ in seconds]
    bars.barh(
        positions, means, xerr=_time_errors(seconds), capsize=3, color=_TIME_COLOUR, alpha=0.8
    )
    bars.axvline(means[0], color=_REPORT_COLOUR, linestyle="--", linewidth=1)
    for axes, panel_title in ((dots, "test accuracy"), (bars, "fit time (s)")):
        axes.set_yticks(positions)
        axes.set_yticklabels(labels if axes is dots else [], fontsize="small")
        axes.set_title(panel_title, fontsize="medium")
        axes.grid(axis="x", alpha=0.3)
    return figure


def _time_errors(seconds: list[tuple[float, float, float]]) -> list[list[float]]:
    """Error bars of times given as (centre, low, high): asymmetric, never below zero."""
    return [[c - low for c, low, _ in seconds], [high - c for c, _, high in seconds]]


def _accuracy_dots(axes, positions: list[int], accuracy: list[tuple[float, float]]) -> None:
    """Dots with error bars on an axis fitted to the variants that did not collapse."""
    middle = sorted(mean for mean, _ in accuracy)[len(accuracy) // 2]
    shown = [(m, s) for m, s in accuracy if m >= middle - COLLAPSED_BELOW] or accuracy
    low, high = min(m - s for m, s in shown), max(m + s for m, s in shown)
    margin = max(0.01, (high - low) * 0.15)
    left, right = max(0.0, low - margin), min(1.0, high + margin)
    for position, (mean, std) in zip(positions, accuracy, strict=True):
        if mean >= left:
            axes.errorbar([mean], [position], xerr=[std], fmt="o", capsize=4, color=_TEST_COLOUR)
        else:
            axes.plot([left], [position], marker="<", color=_TEST_COLOUR, clip_on=False)
            axes.annotate(
                f"{mean:.3f}", (left, position), xytext=(8, -3), textcoords="offset points",
                fontsize="small", color=_TEST_COLOUR,
            )  # fmt: skip
    axes.axvline(accuracy[0][0], color=_REPORT_COLOUR, linestyle="--", linewidth=1)
    axes.set_xlim(left, right)
    axes.set_ylim(-0.5, len(positions) - 0.5)


def compute_figure(
    labels: list[str],
    accuracy: list[tuple[float, float]],
    seconds: list[float],
    flops: list[float | None],
    title: str,
) -> Figure:
    """Test accuracy (mean, interval half-width) against fit seconds and training FLOPs."""
    panels = [("fit time (s)", seconds)]
    if all(value is not None for value in flops):
        panels.append(("training FLOPs", flops))
    figure = Figure(figsize=(4.0 * len(panels) + 0.6, 3.6), layout="constrained")
    figure.suptitle(title)
    for index, (xlabel, x) in enumerate(panels):
        axes = figure.add_subplot(1, len(panels), index + 1)
        for place, (label, value, (mean, half)) in enumerate(zip(labels, x, accuracy, strict=True)):
            colour = f"C{place % 10}"
            axes.errorbar([value], [mean], yerr=[half], fmt="o", capsize=3, color=colour)
            axes.annotate(
                label, (value, mean), xytext=(4, 4), textcoords="offset points",
                fontsize="x-small", color=colour,
            )  # fmt: skip
        axes.set_xscale("log")
        axes.set_xlabel(f"{xlabel} (log scale)")
        axes.set_ylabel("test accuracy" if index == 0 else "")
        axes.grid(alpha=0.3)
    return figure


def repeats_needed_figure(
    curves: list[tuple[str, list[float], list[int | None]]],
    repeats: int,
    difference: float,
    title: str,
) -> Figure:
    """Runs per point needed against the difference to detect, one line per experiment."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    figure = Figure(figsize=(6.4, 3.8), layout="constrained")
    axes = figure.add_subplot()
    for index, (label, differences, needed) in enumerate(curves):
        shown = [(d, n) for d, n in zip(differences, needed, strict=True) if n is not None]
        axes.plot(
            [d for d, _ in shown], [n for _, n in shown], marker=".", color=f"C{index % 10}",
            label=label,
        )  # fmt: skip
    axes.axhline(repeats, color=_REPORT_COLOUR, linestyle="--", linewidth=1, label="this study")
    axes.axvline(difference, color=_TIME_COLOUR, linestyle=":", linewidth=1)
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("difference in test accuracy to detect (log scale)")
    axes.set_ylabel("runs per point (log scale)")
    most = max([repeats, *(n for _, _, needed in curves for n in needed if n is not None)])
    axes.set_yticks([n for n in (2, 3, 5, 10, 20, 50, 100, 200, 500, 1000) if n <= most * 1.5])
    axes.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axes.yaxis.set_minor_formatter(NullFormatter())
    axes.set_title(title)
    axes.grid(alpha=0.3, which="both")
    axes.legend(fontsize="small")
    return figure


NUMBERED_UP_TO = 30  # classes whose matrix shows each cell's count (more would be unreadable)
NAMED_UP_TO = 40  # class names on each axis; with more classes, every k-th is named


def confusion_matrix_figure(matrix: list[list[int]], class_names: list[str], title: str) -> Figure:
    """A confusion matrix (rows: true class, columns: predicted) drawn as one image, in memory
    that grows with the pixels, not the classes: counts in the cells up to NUMBERED_UP_TO
    classes, up to NAMED_UP_TO names on each axis."""
    import numpy as np

    counts = np.asarray(matrix)
    classes = len(counts)
    figure = Figure(figsize=(6.0, 5.2), layout="constrained")
    axes = figure.add_subplot()
    image = axes.imshow(counts, cmap="Blues", interpolation="nearest")
    figure.colorbar(image, ax=axes, shrink=0.8)
    step = -(-classes // NAMED_UP_TO) if classes else 1
    ticks = list(range(0, classes, step))
    names = [plain(class_names[i]) if i < len(class_names) else str(i) for i in ticks]
    axes.set_xticks(ticks, names, rotation=45 if step == 1 else 90, ha="right", fontsize="small")
    axes.set_yticks(ticks, names, fontsize="small")
    if classes <= NUMBERED_UP_TO:
        threshold = counts.max() / 2 if counts.size else 0
        for (row, column), value in np.ndenumerate(counts):
            colour = "white" if value > threshold else "black"
            axes.text(column, row, str(value), ha="center", va="center", fontsize=7, color=colour)
    axes.set_xlabel("predicted" if step == 1 else f"predicted (one class in {step} named)")
    axes.set_ylabel("true")
    axes.set_title(title)
    return figure


def convolution_figure(image, panels, title: str) -> Figure:
    """The input image beside each kernel's 8-bit output, titled with the kernel (and its matrix).

    `image` is H x W x 3 or H x W uint8; `panels` holds (kernel name, kernel array, uint8 pixels).
    """
    count = 1 + len(panels)
    columns = min(count, 4)
    rows = -(-count // columns)
    height, width = image.shape[:2]
    panel_width = 3.4
    panel_height = panel_width * height / width + 0.8  # room for the title and the matrix
    figure = Figure(figsize=(panel_width * columns, panel_height * rows + 0.2))
    axes_grid = figure.subplots(rows, columns, squeeze=False)
    entries = [("input", None, image), *panels]
    for axes, (name, kernel, pixels) in zip(axes_grid.flat, entries, strict=False):
        if pixels.ndim == 2:
            axes.imshow(pixels, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        else:
            axes.imshow(pixels, interpolation="nearest")
        axes.set_xticks([])
        axes.set_yticks([])
        axes.set_title(name, fontsize=11)
        if kernel is not None:
            axes.set_xlabel(_kernel_text(kernel), family="monospace", fontsize=8)
    for axes in list(axes_grid.flat)[count:]:
        axes.set_visible(False)
    figure.suptitle(title, fontsize=11)
    figure.set_layout_engine("constrained")
    return figure


def _kernel_text(kernel) -> str:
    """A small kernel as aligned rows of numbers; a large one as its shape."""
    if kernel.ndim != 2 or max(kernel.shape) > 5:
        return " x ".join(str(size) for size in kernel.shape) + " kernel"
    cells = [[f"{value:.3g}" for value in row] for row in kernel.tolist()]
    width = max(len(cell) for row in cells for cell in row)
    return "\n".join(" ".join(cell.rjust(width) for cell in row) for row in cells)


# --- training runs (cnnlab.training.loop) ---------------------------------------------------------


def history_figure(history: list[dict[str, float]], title: str) -> Figure:
    """Keras-style history: accuracy and loss per epoch, train and validation, side by side."""
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(9.6, 3.6), layout="constrained")
    figure.suptitle(title)
    epochs = [row["epoch"] for row in history]
    for index, (metric, label) in enumerate((("accuracy", "accuracy"), ("loss", "loss"))):
        axes = figure.add_subplot(1, 2, index + 1)
        axes.plot(
            epochs, [row[metric] for row in history], color=_TRAIN_COLOUR, marker=".", label="train"
        )
        axes.plot(
            epochs,
            [row[f"val_{metric}"] for row in history],
            color=_TEST_COLOUR,
            marker=".",
            label="validation",
        )
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_xlabel("epoch")
        axes.set_ylabel(label)
        axes.set_title(f"model {label}")
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small")
    return figure


# --- data (cnnlab data show) ------------------------------------------------------------------


def show_image(axes, image) -> None:
    """A uint8 image (H x W x C) as it looks: colour as it is, one channel in grays."""
    import numpy as np

    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] == 1:
        axes.imshow(image[:, :, 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    else:
        axes.imshow(image, interpolation="nearest")


def class_samples_figure(
    images: list[list[object]], class_names: list[str] | tuple[str, ...], title: str
) -> Figure:
    """A grid of small images: one row per class, named on the left; `images[row]` per class."""
    columns = max(len(row) for row in images)
    figure = Figure(figsize=(1.2 + 0.62 * columns, 0.66 * len(images) + 0.5), layout="constrained")
    figure.suptitle(title)
    grid = figure.add_gridspec(len(images), columns, wspace=0.04, hspace=0.04)
    for row, (class_name, row_images) in enumerate(zip(class_names, images, strict=True)):
        for column in range(columns):
            axes = figure.add_subplot(grid[row, column])
            axes.set_xticks([])
            axes.set_yticks([])
            for spine in axes.spines.values():
                spine.set_visible(False)
            if column < len(row_images):
                show_image(axes, row_images[column])
            if column == 0:
                axes.set_ylabel(plain(class_name), rotation=0, ha="right", va="center", fontsize=9)
    return figure


# --- what the best run learned (cnnlab.report.report) ---------------------------------------------


def misclassified_figure(images, true_names: list[str], predicted_names: list[str], title: str):
    """A grid of misclassified images, each titled with its true and predicted class."""
    columns = min(8, max(len(images), 1))
    rows = -(-len(images) // columns)
    figure = Figure(figsize=(1.15 * columns + 0.2, 1.42 * rows + 0.45), layout="constrained")
    figure.suptitle(title, fontsize=11)
    axes_grid = figure.subplots(rows, columns, squeeze=False)
    for axes in axes_grid.flat:
        axes.set_axis_off()
    for axes, image, true, predicted in zip(
        axes_grid.flat, images, true_names, predicted_names, strict=False
    ):
        show_image(axes, image)
        axes.set_title(f"{plain(true)}\n→ {plain(predicted)}", fontsize=8, linespacing=1.15)
    return figure


def kernel_picture(kernel):
    """A C x kh x kw kernel as a kh x kw x 3 picture in 0..1, stretched over its own range."""
    import numpy as np

    kernel = np.asarray(kernel, dtype=np.float64)
    low, high = kernel.min(), kernel.max()
    stretched = (kernel - low) / (high - low) if high > low else np.full_like(kernel, 0.5)
    picture = np.moveaxis(stretched, 0, -1)
    return picture if picture.shape[2] == 3 else picture.mean(axis=2)


def kernels_figure(kernels, title: str) -> Figure:
    """A conv layer's kernels (filters x 3 x kh x kw): each as an RGB picture, then per channel.

    The RGB row stretches each filter to its own range (a colour shows which input colour it
    weighs up); the channel rows share one symmetric scale, so their strengths compare. Each row
    is one image of the kernels side by side (one axes per row keeps the figure quick to draw).
    """
    import numpy as np
    from matplotlib import colormaps

    kernels = np.asarray(kernels, dtype=np.float64)
    filters, channels, _, kernel_width = kernels.shape
    limit = float(np.abs(kernels).max()) or 1.0
    rgb = channels == 3
    rows = [("RGB", _side_by_side([kernel_picture(k) for k in kernels], 1.0))] if rgb else []
    names = ("red", "green", "blue") if rgb else [f"in {c}" for c in range(channels)]
    rows += [(name, _side_by_side(list(kernels[:, c]), np.nan)) for c, name in enumerate(names)]
    width = 0.42 * filters * (kernel_width + 1) / 4 + 1.4
    figure = Figure(figsize=(width, 0.55 * len(rows) + 0.75), layout="constrained")
    figure.suptitle(title, fontsize=11)
    axes_column = figure.subplots(len(rows), 1, squeeze=False)[:, 0]
    diverging = colormaps["RdBu_r"].with_extremes(bad="white")
    centres = [index * (kernel_width + 1) + (kernel_width - 1) / 2 for index in range(filters)]
    image = None
    for axes, (name, pixels) in zip(axes_column, rows, strict=True):
        if pixels.ndim == 3:
            axes.imshow(pixels, interpolation="nearest")
        else:
            image = axes.imshow(
                pixels, cmap=diverging, vmin=-limit, vmax=limit, interpolation="nearest"
            )
        axes.set_yticks([])
        axes.set_xticks(centres if axes is axes_column[0] else [])
        axes.set_xticklabels(
            [str(index + 1) for index in range(filters)] if axes is axes_column[0] else [],
            fontsize=7,
        )
        axes.xaxis.set_ticks_position("top")
        axes.tick_params(length=0)
        for spine in axes.spines.values():
            spine.set_visible(False)
        axes.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
    if image is not None:
        colourbar = figure.colorbar(image, ax=list(axes_column), shrink=0.9, pad=0.01)
        colourbar.ax.tick_params(labelsize=7)
    return figure


def _side_by_side(tiles, gap_value):
    """Equal-sized tiles (H x W or H x W x 3) in one row, one column of `gap_value` between."""
    import numpy as np

    height, width = tiles[0].shape[:2]
    row = np.full((height, len(tiles) * (width + 1) - 1, *tiles[0].shape[2:]), gap_value)
    for index, tile in enumerate(tiles):
        row[:, index * (width + 1) : index * (width + 1) + width] = tile
    return row


def responses_figure(image, hand, learned, title: str, columns: int = 6) -> Figure:
    """An image, the hand-made kernels' responses, then each learned kernel's response.

    `image` is H x W x 3 uint8; `hand` holds (name, kernel, response) with 2-D kernels;
    `learned` holds (name, RGB picture of the kernel, response). Responses are signed: white is
    0, red positive, blue negative, each panel scaled to its own 99.5th percentile of |value|.
    """
    import numpy as np

    height, width = image.shape[:2]
    panel_width = 9.6 / columns
    panel_height = panel_width * height / width
    learned_rows = max(-(-len(learned) // columns), 1)
    top_height = panel_height + 1.15  # titles above, the kernel's matrix below
    bottom_height = (panel_height + 0.3) * learned_rows + 0.35
    figure = Figure(figsize=(9.6, top_height + bottom_height + 0.35), layout="constrained")
    figure.suptitle(title, fontsize=11)
    top, bottom = figure.subfigures(2, 1, height_ratios=[top_height, bottom_height])
    top.suptitle("hand-made kernels (the seed's part 1), on the red channel", fontsize=10)
    bottom.suptitle(
        "learned first-layer kernels (part 2), on all three channels, summed", fontsize=10
    )

    def show(axes, response) -> None:
        limit = float(np.percentile(np.abs(response), 99.5)) or 1.0
        axes.imshow(response, cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")

    top_axes = top.subplots(1, columns, squeeze=False)[0]
    top_axes[0].imshow(image, interpolation="nearest")
    top_axes[0].set_title("input", fontsize=9)
    for axes, (name, kernel, response) in zip(top_axes[1:], hand, strict=False):
        show(axes, response)
        axes.set_title(name, fontsize=9)
        axes.set_xlabel(_kernel_text(kernel), family="monospace", fontsize=7)
    for axes in top_axes:
        axes.set_xticks([])
        axes.set_yticks([])
        for spine in axes.spines.values():
            spine.set_visible(bool(axes.images))
    for axes in top_axes[1 + len(hand) :]:
        axes.set_visible(False)
    bottom_axes = list(bottom.subplots(learned_rows, columns, squeeze=False).flat)
    for axes in bottom_axes:
        axes.set_xticks([])
        axes.set_yticks([])
    for axes, (name, picture, response) in zip(bottom_axes, learned, strict=False):
        show(axes, response)
        axes.set_title(name, fontsize=9)
        inset = axes.inset_axes((0.0, 0.0, 0.22, 0.22 * width / height))
        inset.imshow(picture, interpolation="nearest")
        inset.set_xticks([])
        inset.set_yticks([])
    for axes in bottom_axes[len(learned) :]:
        axes.set_visible(False)
    return figure


def png_bytes(figure: Figure) -> bytes:
    """A figure as PNG bytes, as the report embeds it."""
    import io

    buffer = io.BytesIO()
    with _as_drawn(figure):
        figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()
