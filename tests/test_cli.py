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


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (["no-such-command"], "cnnlab: error: argument COMMAND: invalid choice"),
        (["train", "--epochs", "x"], "cnnlab train: error: argument --epochs: invalid int"),
        (["study", "s.toml", "--backend", "dask"], "cnnlab study: error: argument --backend"),
        ([], "cnnlab: error: the following arguments are required: COMMAND"),
    ],
)
def test_a_mistake_in_the_arguments_is_one_line(capsys, arguments, expected):
    with pytest.raises(SystemExit) as exit_:
        main(arguments)
    error = capsys.readouterr().err
    assert exit_.value.code == 2 and error.count("\n") == 1, error
    assert error.startswith(expected) and error.rstrip().endswith("--help)")


_CTRL_C_IN_AN_EXEC = """
import signal
from cnnlab import cli
from cnnlab.cli import inspection
signal.signal(signal.SIGINT, signal.default_int_handler)  # as at a terminal
# A Ctrl-C landing while a lazy import defines a dataclass: inside an exec() of a string.
inspection.cmd_results = lambda args: exec("raise KeyboardInterrupt")
raise SystemExit(cli.main(["results", "anywhere"]))
"""


def test_a_ctrl_c_inside_an_exec_still_exits_130_not_by_sigint(tmp_path):
    # Run as `python -m`, as `python -m cnnlab` runs: its exit path honours CPython's mark.
    (tmp_path / "ctrl_c_in_an_exec.py").write_text(_CTRL_C_IN_AN_EXEC)
    done = subprocess.run(
        [sys.executable, "-m", "ctrl_c_in_an_exec"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert (done.returncode, done.stderr) == (130, "cnnlab: interrupted\n")
