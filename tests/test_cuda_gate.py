"""The device gate: a capture waits for every other thread's CUDA work to pause, and holds off
new work until it ends; threads that capture at once take turns instead of deadlocking."""

from __future__ import annotations

import threading
import time

from cnnlab.training.device import DeviceGate

WAIT = 5.0  # seconds any step may take before the test calls it a hang


def test_a_capture_waits_for_the_others_to_pause_and_holds_off_new_work():
    gate = DeviceGate()
    log: list[str] = []
    worker_in, capture_asked, worker_may_pause = (threading.Event() for _ in range(3))

    def worker() -> None:
        with gate.shared():
            worker_in.set()
            worker_may_pause.wait(WAIT)
            log.append("worker pauses")
            gate.pause()  # the capture runs here
            log.append("worker resumes")

    def capturer() -> None:
        with gate.shared():
            worker_in.wait(WAIT)
            capture_asked.set()
            with gate.exclusive():
                log.append("capture")
                assert gate.capturing()
                time.sleep(0.1)
                log.append("capture ends")
            assert gate.holds_shared()  # its own shared hold is back

    def latecomer() -> None:
        capture_asked.wait(WAIT)
        time.sleep(0.05)  # the capture is waiting now: new work waits behind it
        with gate.shared():
            log.append("latecomer")

    threads = [threading.Thread(target=f, daemon=True) for f in (worker, capturer, latecomer)]
    for thread in threads:
        thread.start()
    capture_asked.wait(WAIT)
    time.sleep(0.2)
    assert "capture" not in log and "latecomer" not in log  # the worker has not paused yet
    worker_may_pause.set()
    for thread in threads:
        thread.join(WAIT)
    assert not any(thread.is_alive() for thread in threads)
    assert log.index("worker pauses") < log.index("capture") < log.index("capture ends")
    assert log.index("capture ends") < log.index("worker resumes")
    assert log.index("capture ends") < log.index("latecomer")
    assert not gate.capturing()


def test_threads_that_capture_at_once_take_turns():
    gate = DeviceGate()
    inside = []
    overlaps = []
    start = threading.Barrier(4)

    def group() -> None:
        with gate.shared():
            start.wait(WAIT)
            for _ in range(3):
                with gate.exclusive():
                    inside.append(1)
                    overlaps.append(len(inside))
                    time.sleep(0.01)
                    inside.pop()
                gate.pause()

    threads = [threading.Thread(target=group, daemon=True) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    assert not any(thread.is_alive() for thread in threads)
    assert overlaps == [1] * 12
