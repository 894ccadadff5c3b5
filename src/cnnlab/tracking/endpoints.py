"""The network endpoints a study reports to or trains on, probed before anything is written.

Each must answer within the connect timeout (`--connect-timeout`, else $CNNLAB_CONNECT_TIMEOUT,
else `DEFAULT_CONNECT_TIMEOUT` seconds): an MLflow tracking server its /health request (any
status), a Ray address the HTTP/2 greeting its gRPC server answers, a PostgreSQL server its
answer to the SSL request every client sends first, a MySQL server the handshake it sends on
connecting, an SQL Server a TCP connection. A closed port fails at once; a host that does not
answer, a server that accepts and says nothing, or a name that does not resolve, takes the
timeout and no longer. The MLflow
client's own requests are bounded too (`limit_mlflow_requests`): left to its defaults it retries
a failing server for minutes.
"""

from __future__ import annotations

import http.client
import math
import os
import socket
import ssl
import struct
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from cnnlab.errors import CnnlabError

DEFAULT_CONNECT_TIMEOUT = 5.0  # seconds for a TCP connection to an endpoint to open
TIMEOUT_VARIABLE = "CNNLAB_CONNECT_TIMEOUT"
# Default ports of the MLflow URI schemes that name a server.
DEFAULT_PORTS = {"http": 80, "https": 443, "postgresql": 5432, "mysql": 3306, "mssql": 1433}
RAY_CLIENT_PORT = 10001  # Ray Client's default port (ray://HOST)
# HTTP/2's client preface, then an empty SETTINGS frame: a gRPC server answers with its own.
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
# PostgreSQL's SSLRequest (length 8, code 80877103): a server answers one byte, 'S' or 'N'.
POSTGRESQL_SSL_REQUEST = struct.pack("!ii", 8, 80877103)
# An MLflow request may take this many connect timeouts (uploading a plot, a slow database).
REQUEST_TIMEOUTS = 6
MLFLOW_RETRIES = 2  # MLflow's default, 7 with doubling backoff, waits minutes on a dead server


def connect_timeout(seconds: float | str | None = None, option: str = "--connect-timeout") -> float:
    """The connect timeout in seconds: `seconds` if given, else $CNNLAB_CONNECT_TIMEOUT, else 5."""
    if seconds is None:
        seconds = os.environ.get(TIMEOUT_VARIABLE) or DEFAULT_CONNECT_TIMEOUT
        option = f"${TIMEOUT_VARIABLE}"
    try:
        value = float(seconds)
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and 0 < value <= 3600):
        raise CnnlabError(f"{option} {seconds!r}: expected seconds, more than 0 and at most 3600")
    return value


def host_port(address: str, default_port: int | None, what: str) -> tuple[str, int]:
    """(host, port) of 'HOST:PORT' or 'SCHEME://[USER@]HOST[:PORT][/PATH]'; else one line."""
    expected = f"{what} {address!r}: expected HOST:PORT with a port from 1 to 65535"
    if not address.strip():
        raise CnnlabError(f"{what}: the address is empty; expected HOST:PORT")
    parts = urlsplit(address if "://" in address else f"//{address}")
    try:
        port = parts.port if parts.port is not None else default_port
    except ValueError:  # not a number, or outside 0..65535
        raise CnnlabError(expected) from None
    if not parts.hostname or port is None or not 0 < port < 65536:
        raise CnnlabError(expected)
    return parts.hostname, port


def probe(host: str, port: int, timeout: float, what: str) -> None:
    """Open (and close) a TCP connection to host:port within `timeout` seconds, else one line."""
    _within(timeout, f"{what}: cannot connect to {host}:{port}", _connect, host, port, timeout)


def probe_http(url: str, timeout: float, option: str, what: str) -> None:
    """An HTTP(S) server answers a request for `url` within `timeout` (any status will do)."""
    host, port = host_port(url, DEFAULT_PORTS[urlsplit(url).scheme], option)
    _within(timeout, f"{what}: cannot connect to {host}:{port}", _ask, url, timeout)


def probe_mlflow(uri: str, timeout: float, option: str = "--mlflow") -> None:
    """Reach the server an MLflow tracking URI names (nothing to reach for files or SQLite)."""
    scheme = urlsplit(uri).scheme.split("+", 1)[0]
    if scheme in ("http", "https"):
        # Through the same proxies as MLflow's client; its /health answers without a login.
        probe_http(f"{uri.rstrip('/')}/health", timeout, option, f"{option} {uri}")
        limit_mlflow_requests(timeout)
    elif scheme in DEFAULT_PORTS:
        host, port = host_port(uri, DEFAULT_PORTS[scheme], option)
        hear = _DATABASE_ANSWERS.get(scheme, _connect)
        _within(
            timeout, f"{option} {uri}: cannot connect to {host}:{port}", hear, host, port, timeout
        )


def _within(timeout: float, where: str, attempt: Callable[..., None], *args: Any) -> None:
    """Run `attempt(*args)` in a thread (name resolution has no timeout); one line if it fails."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            attempt(*args)
            outcome.append(None)
        except BaseException as error:
            outcome.append(error)

    thread = threading.Thread(target=run, name=f"cnnlab probe: {where}", daemon=True)
    thread.start()
    thread.join(timeout)  # left running past it, the thread ends with the process
    error = outcome[0] if outcome else TimeoutError()
    if isinstance(error, urllib.error.URLError):
        error = error.reason if isinstance(error.reason, BaseException) else error
    if isinstance(error, TimeoutError):
        raise CnnlabError(f"{where}: no answer within {timeout:g} s (--connect-timeout)")
    if error is not None:
        text = error.strerror if isinstance(error, OSError) and error.strerror else error
        raise CnnlabError(f"{where}: {text or type(error).__name__}")


def _connect(host: str, port: int, timeout: float) -> None:
    socket.create_connection((host, port), timeout=timeout).close()


def _greet(host: str, port: int, timeout: float) -> None:
    """Raises unless an HTTP/2 server at host:port answers the client's preface in time."""
    with socket.create_connection((host, port), timeout=timeout) as connection:
        connection.sendall(HTTP2_PREFACE)
        if not connection.recv(9):
            raise ConnectionError("the connection was closed without an answer")


def _hear_postgresql(host: str, port: int, timeout: float) -> None:
    """Raises unless a PostgreSQL server at host:port answers a client's first message."""
    with socket.create_connection((host, port), timeout=timeout) as connection:
        connection.sendall(POSTGRESQL_SSL_REQUEST)
        if not connection.recv(1):
            raise ConnectionError("the connection was closed without an answer")


def _hear_mysql(host: str, port: int, timeout: float) -> None:
    """Raises unless a MySQL server at host:port sends its handshake (servers speak first)."""
    with socket.create_connection((host, port), timeout=timeout) as connection:
        if not connection.recv(4):
            raise ConnectionError("the connection was closed without a greeting")


# The database schemes whose servers are heard, not only connected to (SQL Server: connected).
_DATABASE_ANSWERS = {"postgresql": _hear_postgresql, "mysql": _hear_mysql}


def _ask(url: str, timeout: float) -> None:
    """Raises only where no HTTP answer came: a refused connection, a timeout, no such host."""
    try:
        urllib.request.urlopen(url, timeout=timeout).close()
    except urllib.error.HTTPError:
        return  # an answer, if not a welcome one: MLflow's client says what it means
    except urllib.error.URLError as error:
        if isinstance(error.reason, OSError) and not isinstance(error.reason, ssl.SSLError):
            raise
    except (http.client.HTTPException, ssl.SSLError):
        return  # something answered


def limit_mlflow_requests(timeout: float) -> None:
    """Bound the MLflow client's HTTP requests in this process (a user's own settings win)."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(MLFLOW_RETRIES))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", f"{REQUEST_TIMEOUTS * timeout:g}")


def probe_ray(address: str | None, timeout: float, option: str = "--address") -> None:
    """Reach a Ray cluster's address (HOST:PORT or ray://HOST:PORT); None starts a local Ray."""
    if address is None or address in ("auto", "local"):  # Ray looks on this machine itself
        return
    default_port = RAY_CLIENT_PORT if address.startswith("ray://") else None
    host, port = host_port(address, default_port, option)
    # Ray's GCS and its client server speak gRPC: an HTTP/2 server answers our greeting.
    _within(timeout, f"Ray at {address}: cannot reach {host}:{port}", _greet, host, port, timeout)
