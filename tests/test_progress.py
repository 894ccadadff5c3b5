"""The study's progress: plain lines off a terminal, a live display on one (a pseudo-terminal)."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
import time
from pathlib import Path

import fake_studies
from cnnlab.study import progress

# The real command with fake, slowed-down training in its own process.
DRIVER = """
import sys
import time
sys.path.insert(0, {tests!r})
import fake_runs
import fake_studies
from cnnlab import cli
from cnnlab.training import runfolder
from cnnlab.training import loop
from cnnlab.execution import planning

def fit(config, data, *, device="auto", progress=None, prune=None):
    result = fake_runs.fake_fit(config, data, device=device)
    for row in result.history[:3]:
        progress({{**row, "member": 0, "epochs": config.epochs}})
        time.sleep(0.3)  # long enough for the display's next redraw to show it
    return result

loop.fit = fit
runfolder.save_run = fake_runs.fake_save_run
planning.process_count = lambda *args: 1
data = fake_runs.zeros_cifar()
import cnnlab.data.datasets
cnnlab.data.datasets.load_dataset = lambda name, source=None, **options: data
sys.exit(cli.main(["study", {study!r}, "--out", {out!r}, "--repeats", "1"]))
"""


def driver(tmp_path: Path) -> list[str]:
    study = tmp_path / "mini.toml"
    study.write_text(fake_studies.STUDY_TOML)
    code = DRIVER.format(
        tests=str(Path(__file__).parent), study=str(study), out=str(tmp_path / "out")
    )
    env = {**os.environ, "CNNLAB_FAKE_SECONDS": "0", "COLUMNS": "160"}
    return [sys.executable, "-c", code], env


def test_off_a_terminal_each_event_is_a_plain_line(tmp_path):
    command, env = driver(tmp_path)
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "training on the CPU in this process, one run after another, 1 thread(s)" in lines
    assert sum(bool(re.match(r"\[\d/5\] \w{12}  seed=0  \w", line)) for line in lines) == 5
    assert sum(bool(re.match(r"    \w{12}  epoch 3/4  loss ", line)) for line in lines) == 5
    assert sum(bool(re.match(r"    \w{12} done: train 0", line)) for line in lines) == 5
    assert "\x1b[" not in done.stdout  # no terminal codes in a log


def test_on_a_terminal_the_study_shows_a_live_display(tmp_path):
    command, env = driver(tmp_path)
    leader, follower = pty.openpty()
    child = subprocess.Popen(command, env=env, stdout=follower, stderr=follower)
    os.close(follower)
    chunks = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    assert child.wait(timeout=60) == 0
    os.close(leader)
    raw = b"".join(chunks).decode("utf-8", "replace")
    assert "\x1b[" in raw  # redrawn in place
    screen = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", raw)
    summaries = re.findall(r"(\d+)/5 runs finished \((\d+) failed, (\d+) diverged\)", screen)
    assert summaries[0][0] == "0" and summaries[-1] == ("5", "0", "0"), summaries[-3:]
    assert re.search(r"elapsed \d+:\d\d:\d\d  ETA \d+:\d\d:\d\d", screen)
    assert "epoch 3/4" in screen  # a run in flight shows its epoch
    assert screen.count(" done: train ") >= 5  # finished runs scroll above the display


def test_the_estimate_counts_work_in_flushed_flops():
    estimate = progress.Estimate({"a": 100.0, "b": 300.0})
    assert estimate.eta_seconds() is None
    estimate.finished.add("a")
    estimate.fraction["b"] = 0.5
    estimate.started_at -= 10  # 250 of 400 FLOPs in 10 s: 150 to go at 25 per second
    assert abs(estimate.eta_seconds() - 6.0) < 0.1
