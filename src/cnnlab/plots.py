"""Figures shared by the commands (data grid, history, confusion matrices, report charts).

Figures are built with `matplotlib.figure.Figure` directly, never pyplot, so importing cnnlab
chooses no plotting backend and plotting works on machines without a display.
"""

from __future__ import annotations

import os

from matplotlib.figure import Figure

from cnnlab.atomic import atomic_path


def save_figure(figure: Figure, path: str | os.PathLike[str], dpi: int = 110) -> None:
    """Write `figure` as PNG (or the format of the suffix) atomically."""
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=dpi, bbox_inches="tight")
