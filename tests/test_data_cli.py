"""`cnnlab data info|show|fetch` end to end: what they print, write, and refuse."""

from __future__ import annotations

import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from cnnlab.cli import main
from test_data import make_source, tiny_arrays


@pytest.fixture
def tiny_folder(tmp_path: Path) -> Path:
    return make_source("png folder", tmp_path, tiny_arrays())


def test_info_prints_the_facts_then_answers_from_the_cache(tiny_folder: Path, capsys):
    assert main(["data", "info", "--data", str(tiny_folder)]) == 0
    first = capsys.readouterr().out
    assert f"source: {tiny_folder.resolve()}" in first
    assert any(line.startswith("sha256: ") and len(line) == 72 for line in first.splitlines())
    lines = {line.split()[0]: line.split()[1:] for line in first.splitlines() if line.strip()}
    assert lines["cat"] == ["5", "2"] and lines["total"] == ["50", "20"]
    mean_line = next(line for line in first.splitlines() if line.startswith("train mean"))
    std_line = next(line for line in first.splitlines() if line.startswith("train std"))
    # Uniform random pixels: mean about 0.5, std about 0.29.
    assert all(0.45 < float(value) < 0.55 for value in mean_line.split()[-3:])
    assert all(0.25 < float(value) < 0.33 for value in std_line.split()[-3:])
    assert "decoded now and cached" in first
    assert main(["data", "info", "--data", str(tiny_folder)]) == 0
    assert "(loaded from the cache)" in capsys.readouterr().out


def test_show_writes_a_png_grid(tiny_folder: Path, tmp_path: Path, capsys):
    out = tmp_path / "grid.png"
    assert (
        main(["data", "show", "--data", str(tiny_folder), "--out", str(out), "--per-class", "2"])
        == 0
    )
    with Image.open(out) as grid:
        assert grid.format == "PNG" and grid.width > 100 and grid.height > 300
    assert "2 train images per class" in capsys.readouterr().out


@pytest.mark.parametrize("per_class", ["0", "3"])  # the test split has 2 per class
def test_show_refuses_an_impossible_count_and_writes_nothing(
    per_class: str, tiny_folder: Path, tmp_path: Path, capsys
):
    out = tmp_path / "grid.png"
    arguments = ["data", "show", "--data", str(tiny_folder), "--out", str(out)]
    assert main([*arguments, "--split", "test", "--per-class", per_class]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"cnnlab: error: images per class {per_class} is not in 1..2")
    assert error.count("\n") == 1 and not out.exists()


def test_bad_source_is_one_line_and_exit_2(tmp_path: Path, capsys):
    assert main(["data", "info", "--data", str(tmp_path / "missing")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("cnnlab: error: --data ") and error.count("\n") == 1


def test_fetch_offline_is_one_line_naming_the_alternatives(monkeypatch, tmp_path: Path, capsys):
    def refuse(url: str, timeout: float):
        raise urllib.error.URLError(OSError(-3, "Temporary failure in name resolution"))

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    assert main(["data", "fetch", "--dest", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert "no network" in error and "--data PATH or CNNLAB_DATA" in error
    assert error.count("\n") == 1 and list(tmp_path.iterdir()) == []


def test_info_through_a_subprocess(tiny_folder: Path):
    done = subprocess.run(
        [sys.executable, "-m", "cnnlab", "data", "info", "--data", str(tiny_folder)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "total" in done.stdout and done.stderr == ""
