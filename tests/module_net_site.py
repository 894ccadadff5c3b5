"""The example module-net package, installed for the tests without pip or a network.

`make_site` writes what `pip install` leaves in site-packages for an editable install: each
distribution's dist-info (METADATA and entry_points.txt, the latter read from the example's own
pyproject.toml) in a folder that goes on sys.path (or PYTHONPATH), beside a package of bad
factories. `importlib.metadata` finds entry points there as in any site-packages, in this
process and in the worker processes a study spawns.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "cnnlab-senet"
GROUP = "cnnlab.architectures"

BAD_NETS = """
import torch
from torch import nn


def raises(input_shape, num_classes, *, width: int = 4):
    raise RuntimeError("out of ideas")


def not_module(input_shape, num_classes):
    return "a net"


def wrong_classes(input_shape, num_classes):
    return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes + 1))


def no_linear(input_shape, num_classes):
    return nn.Sequential(nn.Conv2d(input_shape[2], num_classes, 3), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten())


def no_default(input_shape, num_classes, width):
    return nn.Linear(1, 1)
"""
BAD_ENTRY_POINTS = {
    "raises": "bad_nets:raises",
    "not_module": "bad_nets:not_module",
    "wrong_classes": "bad_nets:wrong_classes",
    "no_linear": "bad_nets:no_linear",
    "no_default": "bad_nets:no_default",
    "gone": "bad_nets_gone:build",
}


def _dist_info(site: Path, name: str, version: str, entry_points: dict[str, str]) -> None:
    folder = site / f"{name.replace('-', '_')}-{version}.dist-info"
    folder.mkdir(parents=True)
    (folder / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = [f"{key} = {value}" for key, value in entry_points.items()]
    (folder / "entry_points.txt").write_text(f"[{GROUP}]\n" + "\n".join(lines) + "\n")


def make_site(site: Path) -> Path:
    """`site` holding cnnlab-senet's metadata and the bad-nets package; returns `site`."""
    project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]
    entry_points = project["entry-points"][GROUP]
    _dist_info(site, project["name"], project["version"], entry_points)
    _dist_info(site, "bad-nets", "0.1", BAD_ENTRY_POINTS)
    (site / "bad_nets.py").write_text(BAD_NETS)
    return site


def import_paths(site: Path) -> list[str]:
    """What goes on sys.path: the site and the example's sources (an editable install's)."""
    return [str(site), str(EXAMPLE / "src")]


def environment(site: Path) -> dict[str, str]:
    """This process's environment, with the worktree's cnnlab and the site on PYTHONPATH."""
    paths = [str(ROOT / "src"), *import_paths(site)]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
