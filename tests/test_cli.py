"""End-to-end CLI behaviour that every command shares."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cnnlab import __version__
from cnnlab.cli import main


def test_version_through_a_subprocess():
    done = subprocess.run(
        [sys.executable, "-m", "cnnlab", "--version"], capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == f"cnnlab {__version__}"


def test_unknown_command_exits_2(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["no-such-command"])
    assert exit_.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
