"""The public API from the package root, and the README's "From Python" snippet, run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import cnnlab
import fake_runs
from cnnlab.execution import planning
from cnnlab.training import loop, runfolder

ROOT = Path(__file__).parents[1]


def readme_snippet() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## From Python") :]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


def test_every_public_name_resolves_and_lists():
    for name in cnnlab.__all__:
        assert getattr(cnnlab, name) is not None, name
    assert set(dir(cnnlab)) >= {"fit", "run_study", "load_results", "write_report", "convolve2d"}
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = cnnlab.nope


def test_importing_the_package_and_its_convolution_loads_no_torch():
    script = (
        "import sys, cnnlab, cnnlab.conv.convolve; cnnlab.convolve2d; print('torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.stdout.strip() == "False", done.stderr


def test_the_readme_snippet_runs(tmp_path, monkeypatch, capsys):
    # Real API calls; fake training (instant, in this process) and black images.
    data = fake_runs.zeros_cifar()
    monkeypatch.setattr(cnnlab, "load_cifar10", lambda *args: data)
    monkeypatch.setattr(loop, "fit", fake_runs.fake_fit)
    monkeypatch.setattr(cnnlab, "fit", fake_runs.fake_fit)
    monkeypatch.setattr(runfolder, "_save_files", fake_runs.fake_save_run)
    monkeypatch.setattr(planning, "process_count", lambda *args: 1)
    monkeypatch.chdir(tmp_path)
    os.symlink(ROOT / "studies", tmp_path / "studies")
    namespace: dict = {}
    exec(compile(readme_snippet(), "README.md", "exec"), namespace)
    printed = capsys.readouterr().out
    assert printed.startswith("0.496 [0.248, ")  # the fake run: its test accuracy, its history
    statuses = sorted(record.status for record in namespace["records"])
    assert statuses == ["diverged"] + ["done"] * 10  # the fake diverges at L1 100
    assert (tmp_path / "results" / "seed" / "report.html").stat().st_size > 10_000
