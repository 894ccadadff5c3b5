"""Hostile input to the tracking and Ray endpoints: hangs, a user's data, what is left behind.

Grown by class (issue 24): endpoints that do not answer (a closed port, a port that never
accepts, a server that accepts and says nothing, impossible addresses) end in one line within
the connect timeout with nothing written; a user's files are never turned into an MLflow
database or a log folder; an export killed at any moment, or run beside others, leaves a
database the next export completes.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fake_runs
import fake_studies
from cnnlab.cli import main
from cnnlab.config import RunConfig, check_config
from cnnlab.errors import CnnlabError
from cnnlab.store import FINISHED, Store
from cnnlab.study import runner
from cnnlab.tracking import endpoints, export

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:mlflow.*")

TIMEOUT = 2.0  # the connect timeout the endpoint tests give (seconds)
SLACK = 1.5  # what a loaded machine may add to it (thread start, the command's own work)
SRC = Path(__file__).parents[1] / "src"


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished study of 10 runs (fake training), two of them diverged."""
    folder = tmp_path_factory.mktemp("hostile-tracking")
    (folder / "mini.toml").write_text(fake_studies.STUDY_TOML)
    with fake_studies.fake_training(fake_runs.fake_fit):
        runner.run_study(
            folder / "mini.toml",
            out=folder / "out",
            data=fake_runs.zeros_cifar(),
            execution=fake_studies.IN_PROCESS,
        )
    return folder / "out"


@pytest.fixture(scope="module")
def study_file(finished) -> Path:
    return finished.parent / "mini.toml"


def closed_port() -> int:
    """A port on 127.0.0.1 where nothing listens (bound, then closed)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def silent_port():
    """A port whose backlog is full: a new connection is never accepted (no SYN-ACK)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        with socket.create_connection(listener.getsockname()):  # fills the backlog
            yield listener.getsockname()[1]


@contextlib.contextmanager
def mute_port():
    """A port that accepts connections and never says a word."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield listener.getsockname()[1]


PORTS = {"closed": contextlib.nullcontext, "silent": silent_port, "mute": mute_port}

# Every command line that names an endpoint: {port}, {study}, {file} and {out} filled in.
ENDPOINT_COMMANDS = {
    "export-http": "export {study} --mlflow http://127.0.0.1:{port}",
    "export-https": "export {study} --mlflow https://127.0.0.1:{port}/mlflow",
    "export-postgresql": "export {study} --mlflow postgresql://u@127.0.0.1:{port}/db",
    "export-mysql": "export {study} --mlflow mysql+pymysql://u@127.0.0.1:{port}/db",
    "study-log": "study {file} --out {out} --log mlflow:http://127.0.0.1:{port}",
    "study-ray": "study {file} --out {out} --backend ray --address 127.0.0.1:{port}",
    "study-ray-client": "study {file} --out {out} --backend ray --address ray://127.0.0.1:{port}",
    "study-ray-and-log": "study {file} --out {out} --backend ray --address 127.0.0.1:{port}"
    " --log mlflow:http://127.0.0.1:{port}",
}


def run_cli(argv: list[str], capsys) -> tuple[int, str, float]:
    """`cnnlab ARGV` in this process: exit code, stderr, seconds taken."""
    capsys.readouterr()
    started = time.monotonic()
    code = main(argv)
    return code, capsys.readouterr().err, time.monotonic() - started


def assert_one_line(err: str, *names: str) -> None:
    assert err.startswith("cnnlab: error: ") and err.count("\n") == 1, err
    for name in names:
        assert name in err, (name, err)


# --- class 2: endpoints that do not answer ----------------------------------------------------


@pytest.mark.parametrize(
    ("command", "port_kind"),
    [(command, port_kind) for command in ENDPOINT_COMMANDS for port_kind in PORTS],
)
def test_an_endpoint_that_does_not_answer_is_one_line_within_the_timeout(
    command, port_kind, finished, study_file, tmp_path, capsys, monkeypatch
):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    with PORTS[port_kind]() as held:
        port = held if isinstance(held, int) else closed_port()
        argv = [
            part.format(port=port, study=finished, file=study_file, out=out)
            for part in ENDPOINT_COMMANDS[command].split()
        ]
        code, err, seconds = run_cli([*argv, "--connect-timeout", str(TIMEOUT)], capsys)
    assert code == 2
    assert_one_line(err, f"127.0.0.1:{port}")
    limit = TIMEOUT if port_kind == "closed" else TIMEOUT + SLACK
    assert seconds < limit, f"{command} on a {port_kind} port took {seconds:.1f} s"
    assert not out.exists()  # no study.sqlite, no .lock: nothing was written
    assert list(tmp_path.iterdir()) == []


@contextlib.contextmanager
def answering_port(answer: Callable[[socket.socket], None]):
    """A port whose server calls `answer` with each connection it accepts, in a thread."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)

        def serve() -> None:
            with contextlib.suppress(OSError):
                connection, _ = listener.accept()
                with connection:
                    answer(connection)

        server = threading.Thread(target=serve, daemon=True)
        server.start()
        yield listener.getsockname()[1]
        server.join(timeout=TIMEOUT)


def _postgresql(connection: socket.socket) -> None:
    if connection.recv(8) == endpoints.POSTGRESQL_SSL_REQUEST:
        connection.sendall(b"N")  # no SSL here: the client may go on in the clear


def _mysql(connection: socket.socket) -> None:
    connection.sendall(bytes([10, 0, 0, 0]) + b"\x0a8.0.36\x00")  # a handshake's first bytes


@pytest.mark.parametrize(("scheme", "server"), [("postgresql", _postgresql), ("mysql", _mysql)])
def test_a_database_server_that_answers_its_protocol_passes_the_probe(scheme, server):
    with answering_port(server) as port:
        endpoints.probe_mlflow(f"{scheme}://u@127.0.0.1:{port}/db", TIMEOUT)
    # The same port without the protocol's answer is one line within the timeout.
    with answering_port(lambda connection: connection.recv(8)) as port:
        started = time.monotonic()
        with pytest.raises(CnnlabError, match=rf"127.0.0.1:{port}: .*(no answer|without)"):
            endpoints.probe_mlflow(f"{scheme}://u@127.0.0.1:{port}/db", TIMEOUT)
        assert time.monotonic() - started < TIMEOUT + SLACK


IMPOSSIBLE_PORTS = st.one_of(st.integers(max_value=0), st.integers(min_value=65536))
NOT_AN_ADDRESS = st.sampled_from(["", " ", ":", "127.0.0.1:", ":6379", "127.0.0.1:port"])


@settings(max_examples=40, deadline=None)
@given(port=IMPOSSIBLE_PORTS, scheme=st.sampled_from(["", "ray://", "http://", "https://"]))
def test_an_impossible_port_is_refused_at_once(port, scheme):
    address = f"{scheme}127.0.0.1:{port}"
    started = time.monotonic()
    with pytest.raises(CnnlabError) as raised:
        if scheme.startswith("http"):
            endpoints.probe_mlflow(address, TIMEOUT)
        else:
            endpoints.probe_ray(address, TIMEOUT)
    assert time.monotonic() - started < TIMEOUT
    assert "\n" not in str(raised.value) and "port" in str(raised.value)


@settings(max_examples=10, deadline=None)
@given(address=NOT_AN_ADDRESS)
def test_a_ray_address_that_is_no_address_is_refused_at_once(address):
    with pytest.raises(CnnlabError, match=r"address|port"):
        endpoints.probe_ray(address, TIMEOUT)


def test_an_empty_address_through_the_command_is_one_line(study_file, tmp_path, capsys):
    out = tmp_path / "out"
    code, err, _ = run_cli(
        ["study", str(study_file), "--out", str(out), "--backend", "ray", "--address", ""], capsys
    )
    assert code == 2
    assert_one_line(err, "--address", "empty")
    assert not out.exists()


@settings(max_examples=30, deadline=None)
@given(
    value=st.one_of(
        st.floats(max_value=0),
        st.floats(min_value=3600, exclude_min=True),
        st.sampled_from(["nan", "inf", "-1", "five", "", "1e400"]),
    )
)
def test_a_connect_timeout_that_is_no_duration_is_refused(value):
    with pytest.raises(CnnlabError, match="--connect-timeout"):
        endpoints.connect_timeout(str(value))


def test_the_connect_timeout_comes_from_the_flag_then_the_environment(monkeypatch):
    monkeypatch.delenv(endpoints.TIMEOUT_VARIABLE, raising=False)
    assert endpoints.connect_timeout() == endpoints.DEFAULT_CONNECT_TIMEOUT
    monkeypatch.setenv(endpoints.TIMEOUT_VARIABLE, "0.5")
    assert endpoints.connect_timeout() == 0.5
    assert endpoints.connect_timeout("7") == 7.0
    monkeypatch.setenv(endpoints.TIMEOUT_VARIABLE, "never")
    with pytest.raises(CnnlabError, match=f"\\${endpoints.TIMEOUT_VARIABLE}"):
        endpoints.connect_timeout()


class _Unavailable(http.server.BaseHTTPRequestHandler):
    """An MLflow server that is up (its /health answers) and answers every call with 503."""

    def do_GET(self):
        self.send_response(200 if self.path.endswith("/health") else 503)
        self.end_headers()

    do_POST = do_GET

    def log_message(self, *args):
        pass


@pytest.mark.slow
def test_the_mlflow_clients_own_retries_end_within_seconds(finished, tmp_path):
    # MLflow's defaults retry a 503 seven times with doubling waits: minutes with no output.
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Unavailable)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_HTTP")}
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    uri = f"http://127.0.0.1:{server.server_address[1]}"
    command = [sys.executable, "-m", "cnnlab", "export", str(finished), "--mlflow", uri]
    try:
        started = time.monotonic()
        result = subprocess.run(
            [*command, "--connect-timeout", "1"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        seconds = time.monotonic() - started
    finally:
        server.shutdown()
    assert result.returncode == 2
    assert_one_line(result.stderr, uri)
    # 3 tries of at most 6 connect timeouts, 1 + 2 s between them, and the command's start.
    assert seconds < 60, seconds


def test_the_mlflow_request_limits_leave_a_users_own_settings(monkeypatch):
    for name in ("MAX_RETRIES", "BACKOFF_FACTOR", "TIMEOUT"):
        monkeypatch.setenv(f"MLFLOW_HTTP_REQUEST_{name}", "")
        monkeypatch.delenv(f"MLFLOW_HTTP_REQUEST_{name}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "300")
    endpoints.limit_mlflow_requests(2.0)
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "2"
    assert os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] == "1"
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "300"


# --- class 3: a user's data ---------------------------------------------------------------------


def _sqlite_of_others(path: Path) -> None:
    with contextlib.closing(sqlite3.connect(path)) as connection:
        connection.execute("CREATE TABLE invoices (id INTEGER, total REAL)")
        connection.execute("INSERT INTO invoices VALUES (1, 9.5)")
        connection.commit()


USER_FILES = st.one_of(
    st.binary(max_size=2048),
    st.text(max_size=200).map(str.encode),
    st.binary(max_size=100).map(lambda tail: b"SQLite format 3\x00" + tail),
    st.just("another program's SQLite database"),
    st.just("a folder"),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(content=USER_FILES, through=st.sampled_from(["export", "log"]))
def test_a_file_that_is_no_mlflow_database_is_never_written(content, through, finished):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "results.db"
        if content == "a folder":
            path.mkdir()
        elif content == "another program's SQLite database":
            _sqlite_of_others(path)
        else:
            path.write_bytes(content)
        before = _fingerprint(Path(folder))
        with pytest.raises(CnnlabError) as raised:
            if through == "export":
                export.export_study(finished, mlflow=f"sqlite:///{path}")
            else:
                export.open_logger(f"mlflow:sqlite:///{path}")
        assert "not an MLflow database" in str(raised.value) and "\n" not in str(raised.value)
        assert _fingerprint(Path(folder)) == before  # nothing changed, nothing added beside


@pytest.mark.parametrize("store", ["a file", "a folder of the user's files"])
def test_a_file_store_uri_never_writes_into_a_users_files(store, finished, tmp_path):
    target = tmp_path / "store"
    if store == "a file":
        target.write_text("mine")
    else:
        target.mkdir()
        (target / "notes.txt").write_text("mine")
    before = _fingerprint(tmp_path)
    with pytest.raises(CnnlabError, match="not an MLflow file store"):
        export.export_study(finished, mlflow=target.as_uri())
    assert _fingerprint(tmp_path) == before


def _fingerprint(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): (
            hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "folder"
        )
        for path in sorted(folder.rglob("*"))
    }


@pytest.mark.parametrize(
    "argv",
    [
        ["export", "{study}", "--tensorboard", ""],
        ["export", "{study}", "--tensorboard", "  "],
        ["study", "{file}", "--out", "{out}", "--log", "tensorboard:"],
        ["study", "{file}", "--out", "{out}", "--log", "tensorboard: "],
    ],
)
def test_an_empty_tensorboard_folder_is_refused_not_the_current_one(
    argv, finished, study_file, tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    argv = [part.format(study=finished, file=study_file, out=tmp_path / "out") for part in argv]
    code, err, _ = run_cli(argv, capsys)
    assert code == 2
    assert_one_line(err, "tensorboard")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("where", ["under a file", "a file", "deep under a file"])
@pytest.mark.parametrize("through", ["export", "study --log"])
def test_an_unwritable_tensorboard_folder_is_an_error_before_any_work(
    where, through, finished, study_file, tmp_path, capsys
):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("mine")
    target = {"under a file": blocker / "tb", "a file": blocker}.get(where, blocker / "a" / "b")
    out = tmp_path / "out"
    if through == "export":
        argv = ["export", str(finished), "--tensorboard", str(target)]
    else:
        argv = ["study", str(study_file), "--out", str(out), "--log", f"tensorboard:{target}"]
    code, err, _ = run_cli(argv, capsys)
    assert code == 2 and "warning" not in err
    assert_one_line(err, str(target))
    assert blocker.read_text() == "mine" and sorted(tmp_path.iterdir()) == [blocker]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder")
def test_a_folder_without_write_permission_is_an_error_before_any_work(finished, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(CnnlabError, match="cannot write"):
            export.export_study(finished, tensorboard=locked / "tb")
    finally:
        locked.chmod(0o700)


# --- an export killed, or run beside others ---------------------------------------------------


def _export(study: Path, uri: str, **options) -> subprocess.Popen:
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    command = [sys.executable, "-m", "cnnlab", "export", str(study), "--mlflow", uri]
    return subprocess.Popen(command, env=env, text=True, **options)


def _records(study: Path):
    with Store.open(study, create=False) as store:
        return [record for record in store.runs(planned_only=True) if record.status in FINISHED]


# When to kill the export: moments seen in the database's folder, from the first to the last.
def _migrating(folder: Path) -> bool:
    """Whether a database in `folder` holds MLflow's first table (its schema is being built)."""
    for path in folder.iterdir():
        with contextlib.suppress(sqlite3.Error, OSError):
            if path.is_file() and "journal" not in path.name:
                uri = f"{path.as_uri()}?mode=ro"
                with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=0)) as connection:
                    query = "SELECT 1 FROM sqlite_master WHERE name = 'experiments'"
                    if connection.execute(query).fetchone():
                        return True
    return False


KILL_MOMENTS = {
    "while the schema is created": _migrating,
    "once the database is there": lambda folder: (folder / "mlflow.db").exists(),
    "after a few runs": lambda folder: len(list(folder.glob("mlartifacts/*/*"))) >= 3,
    "in the middle of a write": lambda folder: (
        len(list(folder.glob("mlartifacts/*/*"))) >= 1 and (folder / "mlflow.db-journal").exists()
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("moment", KILL_MOMENTS)
def test_an_export_killed_at_any_moment_is_completed_by_the_next(moment, finished):
    from mlflow import MlflowClient

    from test_export import assert_mlflow_holds

    with tempfile.TemporaryDirectory(dir=_memory()) as folder:
        folder = Path(folder)
        uri = f"sqlite:///{folder}/mlflow.db"
        killed = _export(finished, uri, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 300
        while killed.poll() is None and not KILL_MOMENTS[moment](folder):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        killed.send_signal(signal.SIGKILL)
        assert killed.wait() == -signal.SIGKILL, "the export ended before the moment came"
        again = _export(finished, uri, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        _, stderr = again.communicate(timeout=600)
        assert again.returncode == 0, stderr
        assert "Traceback" not in stderr
        assert_mlflow_holds(MlflowClient(uri), "mini", _records(finished), finished)
        assert sorted(path.name for path in folder.iterdir()) == ["mlartifacts", "mlflow.db"]


@pytest.mark.slow
def test_exports_side_by_side_into_one_new_database_print_no_migration_trace(finished):
    from mlflow import MlflowClient

    from test_export import assert_mlflow_holds

    with tempfile.TemporaryDirectory(dir=_memory()) as folder:
        uri = f"sqlite:///{folder}/mlflow.db"
        exports = [
            _export(finished, uri, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(3)
        ]
        outcomes = [process.communicate(timeout=600) for process in exports]
        for process, (_, stderr) in zip(exports, outcomes, strict=True):
            assert process.returncode == 0, stderr
            assert "Traceback" not in stderr and "alembic" not in stderr.lower(), stderr
        assert_mlflow_holds(MlflowClient(uri), "mini", _records(finished), finished)


def _memory() -> str | None:
    """A folder in memory where there is one: MLflow's SQLite migrations fsync a lot."""
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None


# --- class 7: a weight decay that cannot train --------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    learning_rate=st.floats(min_value=1e-6, max_value=10),
    weight_decay=st.one_of(st.floats(min_value=0, max_value=1e308), st.just(1e300)),
)
def test_a_weight_decay_whose_step_grows_the_weights_is_refused(learning_rate, weight_decay):
    config = RunConfig(learning_rate=learning_rate, weight_decay=weight_decay)
    if weight_decay * learning_rate > 2:
        with pytest.raises(CnnlabError, match="weight_decay"):
            check_config(config)
    else:
        check_config(config)


def test_a_huge_weight_decay_through_the_command_is_one_line_and_no_numpy_warning(
    capsys, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a NumPy overflow warning would raise here
        code, err, _ = run_cli(
            ["train", "--dataset", "digits", "--arch", "tiny", "--weight-decay", "1e300"], capsys
        )
    assert code == 2
    assert_one_line(err, "weight", "1e+300")
    assert list(tmp_path.iterdir()) == []
