"""Runs trained as Ray tasks end as they would locally, on a real Ray head started here."""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

import fake_studies
import image_folders
import test_search
from cnnlab.config import RunConfig, run_id
from cnnlab.errors import CnnlabError
from cnnlab.execution import execute, ray_tasks
from cnnlab.study import plan
from cnnlab.study.studyfile import load_study
from cnnlab.training import group_net, loop
from cnnlab.training.metrics import HISTORY_KEYS
from proc_table import children_of, command_line, wait_gone

ray = pytest.importorskip("ray", reason="the Ray tests need Ray: pip install 'cnnlab[ray]'")

BASE = RunConfig(arch="tiny", train_size=100, epochs=2, batch_size=32)
# A loaded 2-core machine starts Ray's processes slowly.
_START_SECONDS = 120
# Fields that say how long a run took, or where: the only ones that may differ between paths.
_TIMINGS = {"fit_seconds", "eval_seconds", "seconds"}


def _ray_command() -> str:
    return str(Path(sys.executable).with_name("ray"))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def ray_address() -> str:
    """A Ray head on this machine (2 CPUs) for the module's tests; stopped afterwards."""
    port = _free_port()
    # Short: Ray's socket paths under it must fit Linux's 107 characters.
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    cache = tempfile.mkdtemp(prefix="cnnlab-ray-cache")
    command = [
        _ray_command(),
        "start",
        "--head",
        f"--port={port}",
        "--num-cpus=2",
        "--node-ip-address=127.0.0.1",
        "--include-dashboard=false",
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
    ]
    with pytest.MonkeyPatch.context() as patch:
        # No token authentication, on the head and in this driver: a token would have to be the
        # one this process's Ray loaded first (it keeps it), and a fresh machine has none.
        patch.setenv("RAY_AUTH_MODE", "disabled")
        patch.delenv("RAY_ADDRESS", raising=False)
        try:
            subprocess.run(
                command,
                env={**os.environ, "CNNLAB_CACHE": cache},
                check=True,
                capture_output=True,
                text=True,
                timeout=_START_SECONDS,
            )
            yield f"127.0.0.1:{port}"
        finally:
            stop = [_ray_command(), "stop", "--force"]
            subprocess.run(stop, capture_output=True, timeout=_START_SECONDS)
            shutil.rmtree(temp_dir, ignore_errors=True)
            shutil.rmtree(cache, ignore_errors=True)


def _train(configs, data, address, **options):
    return ray_tasks.train_on_ray(configs, data, device="cpu", address=address, **options)


def _events_on_ray(configs, data, address, **options):
    return list(_train(configs, data, address, **options))


def _assert_each_run_once(events, count: int, epochs: int) -> None:
    """Every run: one `started`, each epoch's row once and in order, then one `done`."""
    by_run = fake_studies.events_by_run(events)
    assert sorted(by_run) == list(range(count))
    for index, run_events in by_run.items():
        kinds = [event.kind for event in run_events]
        assert kinds == ["started", *["epoch"] * epochs, "result"], (index, kinds)
        assert [event.payload["epoch"] for event in run_events[1:-1]] == list(range(1, epochs + 1))
        result = run_events[-1].payload
        assert result.status == "done"
        assert [row["epoch"] for row in result.history] == list(range(1, epochs + 1))
        assert all(isinstance(weight, torch.Tensor) for weight in result.state_dict.values())


def test_a_missing_ray_is_one_line(tiny_cifar, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets without Ray
    with pytest.raises(
        CnnlabError, match=r"^--backend ray needs Ray: pip install 'cnnlab\[ray\]'$"
    ):
        execute.execute([BASE], tiny_cifar, backend="ray")


def test_an_unknown_backend_or_device_is_one_clear_error(tiny_cifar):
    with pytest.raises(CnnlabError, match="backend 'dask': expected one of local, ray"):
        execute.execute([BASE], tiny_cifar, backend="dask")
    with pytest.raises(CnnlabError, match="device 'mps': with --backend ray use one of"):
        execute.execute([BASE], tiny_cifar, device="mps", backend="ray")


def test_a_node_uses_its_own_copy_of_the_data_only_when_the_checksum_matches(tmp_path):
    source = _image_folder_zip(tmp_path / "cifar.zip")
    from cnnlab.data.datasets import load_cifar10

    loaded = load_cifar10(source)
    sha256 = loaded.source_sha256
    copy = ray_tasks.local_copy("cifar10", str(source), sha256)
    assert copy is not None and (copy.train_labels == loaded.train_labels).all()
    assert ray_tasks.local_copy("cifar10", str(source), "0" * 64) is None  # another file there
    assert ray_tasks.local_copy("cifar10", str(tmp_path / "absent.zip"), sha256) is None
    assert ray_tasks.local_copy("cifar10", "synthetic", "") is None


def test_the_study_file_chooses_the_backend_and_the_cluster(tmp_path):
    text = fake_studies.tiny_study_toml("tiny", "{ seed = [0] }")
    plain = tmp_path / "plain.toml"
    plain.write_text(text)
    assert (load_study(plain).backend, load_study(plain).address) == ("local", None)
    on_ray = tmp_path / "ray.toml"
    on_ray.write_text(
        text.replace("repeats = 1", 'repeats = 1\nbackend = "ray"\naddress = "h:6379"')
    )
    assert (load_study(on_ray).backend, load_study(on_ray).address) == ("ray", "h:6379")
    for line, message in [
        ('backend = "dask"', r":5: study\.backend: unknown backend 'dask'; valid: local, ray"),
        ("backend = 1", r":5: study\.backend: expected a string, got int 1"),
        ('address = ""', r":5: study\.address: empty"),
    ]:
        bad = tmp_path / "bad.toml"
        bad.write_text(text.replace("repeats = 1", f"repeats = 1\n{line}"))
        with pytest.raises(CnnlabError, match=rf"^{bad}{message}"):
            load_study(bad)


def test_run_ids_name_the_tasks():
    assert ray_tasks.task_name([BASE]) == f"cnnlab {run_id(BASE)}"
    assert ray_tasks.task_name([BASE, BASE]) == f"cnnlab {run_id(BASE)} +1"


def test_a_study_trains_on_a_ray_cluster(tiny_cifar, ray_address, tmp_path):
    # tiny_cifar has no file source: the tasks take the arrays from Ray's object store.
    study_file = tmp_path / "tiny.toml"
    study_file.write_text(
        fake_studies.tiny_study_toml("tiny", "{ seed = [0, 1, 2], l1 = [0, 0.01] }")
    )
    planned = plan.plan_runs(load_study(study_file))
    configs = [run.config for run in planned]
    execution = execute.execute(
        configs, tiny_cifar, device="cpu", backend="ray", address=ray_address
    )
    assert ray_address in execution.how
    events = list(execution)
    _assert_each_run_once(events, len(configs), epochs=2)
    for event in events:
        if event.kind == "result":
            assert event.payload.config == configs[event.index]
            assert set(event.payload.history[0]) == set(HISTORY_KEYS)
    assert not ray.is_initialized()  # the driver left the cluster it joined


def test_a_killed_ray_worker_is_retried_and_its_run_done_once(tiny_cifar, ray_address):
    # Long enough runs that the kill lands mid-run; three runs for two CPUs.
    configs = [dataclasses.replace(BASE, seed=seed, epochs=40) for seed in range(3)]
    title = f"ray::{ray_tasks.task_name([configs[0]])}"
    events, victim, most_at_once = [], None, 0
    for event in ray_tasks.train_on_ray(configs, tiny_cifar, device="cpu", address=ray_address):
        events.append(event)
        most_at_once = max(most_at_once, len(_processes_titled("ray::cnnlab ")))
        if event.kind == "epoch" and event.index == 0 and victim is None:
            victim = _process_titled(title)
            os.kill(victim, signal.SIGKILL)
    assert victim is not None
    assert wait_gone([victim]) == []
    # The run's first worker died mid-run: its result comes from the retried task, reported once.
    _assert_each_run_once(events, len(configs), epochs=40)
    # Tasks never wait while they train, which would lend their CPU to a third run.
    assert most_at_once <= 2


def test_a_run_whose_worker_dies_past_the_retries_fails_with_the_reason(tiny_cifar, ray_address):
    configs = [dataclasses.replace(BASE, epochs=40)]
    title = f"ray::{ray_tasks.task_name(configs)}"
    events = []
    for event in _train(configs, tiny_cifar, ray_address, max_retries=0):
        events.append(event)
        if event.kind == "epoch" and event.payload["epoch"] == 1:
            os.kill(_process_titled(title), signal.SIGKILL)
    assert [event.kind for event in events if event.kind != "epoch"] == ["started", "error"]
    assert events[-1].payload == "its Ray worker process died (1 try)"


def test_a_failing_run_fails_once_with_its_reason_and_the_others_finish(tiny_cifar, ray_address):
    configs = [BASE, dataclasses.replace(BASE, train_size=10_000)]
    by_run = fake_studies.events_by_run(_events_on_ray(configs, tiny_cifar, ray_address))
    assert [event.kind for event in by_run[1]] == ["started", "error"]  # not retried
    assert "train_size: 10000" in by_run[1][-1].payload
    assert "\n" not in by_run[1][-1].payload
    assert by_run[0][-1].kind == "result"


def test_runs_on_ray_end_as_the_same_runs_trained_locally(tiny_cifar, ray_address):
    configs = [
        dataclasses.replace(BASE, seed=0),
        dataclasses.replace(BASE, seed=1, l1=1e-2),
        dataclasses.replace(BASE, seed=2, train_size=150),
    ]
    by_run = fake_studies.events_by_run(_events_on_ray(configs, tiny_cifar, ray_address))
    saved = torch.get_num_threads()
    torch.set_num_threads(1)  # a Ray task's threads (cpus_per_run): then the arithmetic is equal
    try:
        local = [loop.fit(config, tiny_cifar, device="cpu") for config in configs]
    finally:
        torch.set_num_threads(saved)
    for index, expected in enumerate(local):
        result = by_run[index][-1].payload
        assert result.metrics["cpu_threads"] == expected.metrics["cpu_threads"] == 1
        assert result.status == expected.status
        assert _without_timings(result.history) == _without_timings(expected.history)
        assert _without_timings(result.metrics) == _without_timings(expected.metrics)
        assert result.state_dict.keys() == expected.state_dict.keys()
        for name, weight in expected.state_dict.items():
            assert torch.equal(result.state_dict[name], weight), (index, name)


def test_a_cluster_without_what_the_runs_need_is_one_clear_error(tiny_cifar, ray_address):
    for options, message in [
        ({"device": "cuda"}, "device cuda: the Ray cluster has no GPU"),
        (
            {"cpus_per_run": 4},
            r"cpus_per_run 4: no node .* has that many CPUs \(the largest has 2\)",
        ),
    ]:
        options = {"device": "cpu", **options}
        events = ray_tasks.train_on_ray([BASE], tiny_cifar, address=ray_address, **options)
        with pytest.raises(CnnlabError, match=message):
            next(events)
        assert not ray.is_initialized()


def test_a_group_task_reports_each_member_under_its_run_index(tiny_cifar, ray_address):
    # What a GPU task does with a group (here on the CPU, where a group still trains as one).
    configs = [dataclasses.replace(BASE, seed=seed) for seed in (0, 1)]
    saved = torch.get_num_threads()
    torch.set_num_threads(1)  # the task's threads
    try:
        expected = group_net.fit_group(configs, tiny_cifar, device="cpu")
    finally:
        torch.set_num_threads(saved)
    ray.init(address=ray_address)
    try:
        mailbox = ray.remote(ray_tasks.Mailbox).remote()
        shared = ray_tasks.SharedData("cifar10", "", "", (0,), [ray.put(tiny_cifar)])
        task = ray.remote(ray_tasks.train_task)
        outcomes = ray.get(task.remote(configs, [7, 3], shared, mailbox, "cpu", 1), timeout=300)
        messages = ray.get(mailbox.take.remote())
    finally:
        ray.shutdown()
    assert sorted(message[:2] for message in messages) == [
        *[("epoch", 3)] * 2,
        *[("epoch", 7)] * 2,
        ("started", 3),
        ("started", 7),
    ]
    for (kind, result), reference in zip(outcomes, expected, strict=True):
        assert kind == "result"
        assert _without_timings(result.history) == _without_timings(reference.history)
        for name, weight in reference.state_dict.items():
            assert (result.state_dict[name] == weight.numpy()).all(), name


def test_closing_the_events_cancels_the_tasks_still_out(tiny_cifar, ray_address):
    configs = [dataclasses.replace(BASE, seed=seed, epochs=200) for seed in range(3)]
    events = ray_tasks.train_on_ray(configs, tiny_cifar, device="cpu", address=ray_address)
    first = next(event for event in events if event.kind == "epoch")
    titles = [f"ray::{ray_tasks.task_name([configs[first.index]])}"]
    training = _process_titled(titles[0])
    events.close()
    assert not ray.is_initialized()
    # A cancelled task's worker is killed (force=True): its run is neither done nor failed.
    assert wait_gone([training], seconds=60) == []


def test_a_pruned_search_on_ray_asks_scores_and_prunes_the_trials_it_does_locally(
    tiny_cifar, tmp_path, ray_address
):
    path = tmp_path / "tune.toml"
    path.write_text(test_search.PRUNED_REAL_TOML)  # the runs are judged in the Ray workers
    # Two worker processes train with one thread each, as a Ray task does: equal arithmetic.
    local = test_search._real(path, tmp_path / "local", tiny_cifar, workers=2)
    on_ray = test_search._real(
        path, tmp_path / "ray", tiny_cifar, backend="ray", address=ray_address
    )
    assert on_ray["trials"] == local["trials"] and len(local["runs"]) == 7
    assert {status for status, _, _ in local["runs"].values()} == {"done", "pruned"}
    for identifier, (status, metrics, history) in local["runs"].items():
        assert on_ray["runs"][identifier] == [status, metrics, history], identifier


# Last: Ray's core keeps the authentication mode of the first instance this process started or
# joined (token, by default, for a local one), so a later join of a head without a token fails.
def test_a_local_ray_instance_trains_is_shut_down_and_leaves_the_environment(
    tiny_cifar, monkeypatch
):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)  # Ray's default: token authentication
    before = dict(os.environ)
    events = list(ray_tasks.train_on_ray([BASE], tiny_cifar, device="cpu"))
    _assert_each_run_once(events, 1, epochs=2)
    assert not ray.is_initialized()
    # Ray had set RAY_AUTH_MODE=token and PYTHONBREAKPOINT (its debugger) here for good.
    assert dict(os.environ) == before


# --- helpers ----------------------------------------------------------------------------------


def _process_titled(title: str, seconds: float = 60) -> int:
    """The pid of the process whose title (Ray sets it to the task's name) is `title`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = [pid for pid in _processes_titled(title) if command_line(pid).strip() == title]
        if found:
            return found[0]
        time.sleep(0.05)
    raise AssertionError(f"no process titled {title!r}")


def _processes_titled(start: str) -> list[int]:
    """Pids of the processes whose title starts with `start`."""
    pids = [int(entry.name) for entry in Path("/proc").glob("[0-9]*")]
    return [pid for pid in pids if command_line(pid).startswith(start)]


def _without_timings(value):
    if isinstance(value, list):
        return [_without_timings(item) for item in value]
    return {key: item for key, item in value.items() if key not in _TIMINGS}


def _image_folder_zip(path: Path) -> Path:
    """A tiny CIFAR-10 source: two 32x32 PNGs per class and split, as a zip of image folders."""
    import io
    import zipfile

    from PIL import Image

    from cnnlab.data.datasets import CLASS_NAMES

    with zipfile.ZipFile(path, "w") as archive:
        for split in ("train", "test"):
            for number, name in enumerate(CLASS_NAMES):
                for copy in range(2):
                    buffer = io.BytesIO()
                    Image.new("RGB", (32, 32), (number * 20, copy * 50, 10)).save(buffer, "PNG")
                    archive.writestr(f"{split}/{name}/{copy}.png", buffer.getvalue())
    return path


def test_a_study_through_the_command_resumes_after_its_driver_is_killed(ray_address, tmp_path):
    from cnnlab.store import Store

    data = image_folders.write_png_folder(tmp_path / "pngs")
    study_file = tmp_path / "tiny.toml"
    study_file.write_text(
        fake_studies.tiny_study_toml("ray", "{ seed = [0, 1, 2, 3], l1 = [0.0, 0.01] }").replace(
            "epochs = 2", "epochs = 4"
        )
    )
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "CNNLAB_CACHE": str(tmp_path / "cache")}

    def cnnlab_study(out: Path, *options: str) -> subprocess.Popen:
        command = [sys.executable, "-m", "cnnlab", "study", str(study_file), "--data", str(data)]
        return subprocess.Popen(
            [*command, "--out", str(out), *options],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    out = tmp_path / "ray"
    driver = cnnlab_study(out, "--backend", "ray", "--address", ray_address)
    deadline = time.monotonic() + _START_SECONDS * 2
    while time.monotonic() < deadline and driver.poll() is None:
        try:
            with Store.open(out, create=False) as store:
                if sum(r.status == "done" for r in store.runs()) >= 2:
                    break
        except CnnlabError:
            pass
        time.sleep(0.2)
    driver.send_signal(signal.SIGKILL)  # the driver: Ray's tasks for it end with it
    driver.communicate()
    with Store.open(out, create=False) as store:
        interrupted = [r.status for r in store.runs()]
    assert interrupted.count("done") >= 2 and len(interrupted) == 8
    resumed = cnnlab_study(out, "--backend", "ray", "--address", ray_address)
    _, stderr = resumed.communicate(timeout=_START_SECONDS * 3)
    assert resumed.returncode == 0, stderr
    local = cnnlab_study(tmp_path / "local", "--workers", "2")
    _, stderr = local.communicate(timeout=_START_SECONDS * 3)
    assert local.returncode == 0, stderr
    with Store.open(out) as through_ray, Store.open(tmp_path / "local") as here:
        ours = {r.id: r for r in through_ray.runs()}
        theirs = {r.id: r for r in here.runs()}
    assert sorted(ours) == sorted(theirs) and {r.status for r in ours.values()} == {"done"}
    for identifier, record in theirs.items():
        # A run is a pure function of its config: Ray's tasks and local workers agree exactly.
        expected = {k: v for k, v in record.metrics.items() if k not in _TIMINGS}
        assert {k: v for k, v in ours[identifier].metrics.items() if k not in _TIMINGS} == expected


def _descendants(pid: int) -> set[int]:
    found, todo = set(), [pid]
    while todo:
        children = children_of(todo.pop())
        found.update(children)
        todo.extend(children)
    return found


def test_a_killed_driver_takes_the_local_ray_it_started_with_it(tmp_path):
    # Not the module's head (`ray_address`): a Ray this driver starts, then the driver killed.
    data = image_folders.write_png_folder(tmp_path / "pngs")
    study_file = tmp_path / "tiny.toml"
    study_file.write_text(
        fake_studies.tiny_study_toml("reaped", "{ seed = [0, 1] }").replace(
            "epochs = 2", "epochs = 200"
        )
    )
    env = {**os.environ, "CNNLAB_CACHE": str(tmp_path / "cache")}
    env.pop("RAY_ADDRESS", None)
    command = [sys.executable, "-m", "cnnlab", "study", str(study_file), "--data", str(data)]
    driver = subprocess.Popen(
        [*command, "--out", str(tmp_path / "out"), "--backend", "ray"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    seen: set[int] = set()
    deadline = time.monotonic() + _START_SECONDS * 2
    try:
        # Until both runs train in Ray workers ("ray::train_task", titled with the run id).
        while time.monotonic() < deadline and driver.poll() is None:
            seen |= _descendants(driver.pid)
            if sum(command_line(pid).startswith("ray::cnnlab ") for pid in seen) >= 2:
                break
            time.sleep(0.2)
        seen |= _descendants(driver.pid)
        assert sum(command_line(pid).startswith("ray::cnnlab ") for pid in seen) >= 2, "no tasks"
        assert any("raylet" in command_line(pid) for pid in seen)
        assert driver.poll() is None
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    # Ray's own fate sharing ends the head processes; its workers and agents lingered on.
    left = wait_gone(sorted(seen), seconds=10)
    assert left == [], [command_line(pid) for pid in left]
