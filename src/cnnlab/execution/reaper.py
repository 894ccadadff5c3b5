"""Ends a local Ray instance's processes when the driver that started it dies, even by SIGKILL.

`python -m cnnlab.execution.reaper DRIVER_PID` runs beside a driver that starts its own Ray
(`ray_tasks._connect`): it says `ready`, then reads its stdin, a pipe from the driver. Ray ties
its head processes to the driver (the kernel kills them with it), but not the processes those
start: the workers and agents outlive a killed driver by tens of seconds or more. Meanwhile the
reaper notes the driver's new descendants once a second; the driver tells it Ray's session
folder (`session DIR`), and `end` before it shuts Ray down itself. At end of input without
`end` (the driver died), it kills every process it noted and every process writing into the
session's logs.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from pathlib import Path

POLL_SECONDS = 1.0  # how often the driver's descendants are noted


def _stat(pid: int) -> tuple[int, str] | None:
    """(parent pid, start time) of a living process, None once it is gone or a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] == "Z" else (int(fields[1]), fields[19])


def descendants(root: int) -> dict[int, str]:
    """Every living descendant of `root`: pid -> start time (so a reused pid is not killed)."""
    parents: dict[int, list[tuple[int, str]]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None:
            parents.setdefault(stat[0], []).append((int(entry.name), stat[1]))
    found: dict[int, str] = {}
    todo = [root]
    while todo:
        for pid, started in parents.get(todo.pop(), []):
            if pid not in found:
                found[pid] = started
                todo.append(pid)
    return found


def writing_into(folder: str) -> dict[int, str]:
    """Processes whose stdout or stderr is a file under `folder` (Ray's workers log there)."""
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            targets = [os.readlink(entry / "fd" / name) for name in ("1", "2")]
            stat = _stat(int(entry.name))
            if stat and any(target.startswith(f"{folder}/") for target in targets):
                found[int(entry.name)] = stat[1]
    return found


def kill(processes: dict[int, str]) -> None:
    """SIGKILL each process that still runs with the same start time."""
    for pid, started in processes.items():
        stat = _stat(pid)
        if pid != os.getpid() and stat is not None and stat[1] == started:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def main(driver: int) -> None:
    noted: dict[int, str] = {}
    session: list[str] = []
    ended = threading.Event()

    before = descendants(driver)  # the driver's own children, older than its Ray: spared

    def note() -> None:
        while not ended.wait(POLL_SECONDS):
            found = descendants(driver)
            noted.update({pid: found[pid] for pid in found.keys() - before.keys()})

    noting = threading.Thread(target=note, daemon=True)
    noting.start()
    print("ready", flush=True)  # the driver starts its Ray only now: none of it is spared
    for line in sys.stdin:
        command, _, argument = line.strip().partition(" ")
        if command == "session":
            session.append(argument)
        elif command == "end":
            return
    ended.set()
    noting.join()
    for _ in range(2):  # again after a moment: a process may have started as the first ended
        kill(noted)
        for folder in session:
            kill(writing_into(folder))
        time.sleep(0.5)


if __name__ == "__main__":
    main(int(sys.argv[1]))
