"""The CUDA graph path's logic, run on the CPU against a stand-in for torch.cuda.

The stand-in hands out streams from a small pool in rotation, as `torch.cuda.Stream()` does,
keeps a current stream per thread and device, and its graph records nothing: its capture runs
the step and then puts every tensor the step wrote back (a capture trains nothing), and its
replay runs the captured step again. A group trained through it must end exactly where the
eager group ends.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time

import pytest
import torch

from cnnlab.config import RunConfig
from cnnlab.execution import threads
from cnnlab.training import device, group_net, loop

# A small net with dropout on both sides of the flatten: masks in the static buffers as well
# as the batch's indices.
LAYERS = (
    {"type": "conv", "filters": 4, "kernel": 3, "stride": 2, "activation": "relu"},
    {"type": "maxpool", "size": 2},
    {"type": "dropout", "rate": 0.5},
    {"type": "flatten"},
    {"type": "dense", "units": 12, "activation": "tanh"},
    {"type": "dropout", "rate": 0.25},
    {"type": "dense", "units": 10, "activation": "softmax", "l1": 1e-4},
)
BASE = RunConfig(arch="probe", layers=LAYERS, train_size=100, epochs=2, batch_size=16)
# 90 training images in batches of 16: five full batches (three warm-ups, a capture, replays)
# and a partial one of 10, every epoch.
MEMBERS = [
    dataclasses.replace(BASE, seed=0),
    dataclasses.replace(BASE, seed=1, l1=1e-2),
    dataclasses.replace(BASE, seed=2, l1=0.0),
]
CUDA_1 = torch.device("cuda", 1)


@dataclasses.dataclass(frozen=True)
class FakeStream:
    """A pooled stream: its identity is (device, handle), as a real one's."""

    device: torch.device
    cuda_stream: int

    def wait_stream(self, other: FakeStream) -> None:
        assert isinstance(other, FakeStream)


class FakeCuda:
    """torch.cuda's streams, devices and graphs, as far as the grouped path uses them."""

    def __init__(self, pool_size: int = 32, fail_captures: int = 0):
        self.pool_size, self.fail_captures = pool_size, fail_captures
        self.next_slot: dict[int, int] = {}
        self.local = threading.local()
        self.created: list[FakeStream] = []
        self.captures: list[dict] = []  # one row per capture: its stream, device, state
        self.step_streams: list[FakeStream] = []  # the current stream at each step

    def bind(self, stepper) -> None:
        """This thread's captures record `stepper`'s step; note the stream of each step."""
        self.local.stepper, step = stepper, stepper._step

        def counted() -> None:
            self.step_streams.append(self.current_stream(stepper.stream_device))
            step()

        stepper._step = counted

    # --- streams and devices ------------------------------------------------------------
    def Stream(self, device=None) -> FakeStream:
        device = torch.device(device) if device is not None else self.current_device()
        slot = self.next_slot.get(device.index, 0)
        self.next_slot[device.index] = (slot + 1) % self.pool_size
        stream = FakeStream(device, 1000 * (device.index + 1) + slot + 1)
        self.created.append(stream)
        return stream

    def current_device(self) -> torch.device:
        return torch.device("cuda", getattr(self.local, "device", 0))

    def current_stream(self, device=None) -> FakeStream:
        device = torch.device(device) if device is not None else self.current_device()
        streams = self.local.__dict__.setdefault("streams", {})
        return streams.get(device.index, FakeStream(device, 0))  # 0: the default stream

    def set_stream(self, stream: FakeStream) -> None:
        self.local.__dict__.setdefault("streams", {})[stream.device.index] = stream

    @contextlib.contextmanager
    def stream(self, stream: FakeStream):
        previous = self.current_stream(stream.device)
        self.set_stream(stream)
        try:
            yield
        finally:
            self.set_stream(previous)

    @contextlib.contextmanager
    def device(self, target):
        previous = getattr(self.local, "device", 0)
        self.local.device = torch.device(target).index or 0
        try:
            yield
        finally:
            self.local.device = previous

    # --- graphs --------------------------------------------------------------------------
    def CUDAGraph(self) -> FakeGraph:
        return FakeGraph(self)

    def graph(self, graph, stream=None, capture_error_mode="global") -> FakeCapture:
        assert stream is not None, "a capture must name its own stream"
        return FakeCapture(self, graph, stream, capture_error_mode)

    def install(self, monkeypatch: pytest.MonkeyPatch) -> FakeCuda:
        for name in ("Stream", "current_stream", "set_stream", "stream", "device"):
            monkeypatch.setattr(torch.cuda, name, getattr(self, name))
        monkeypatch.setattr(torch.cuda, "CUDAGraph", self.CUDAGraph)
        monkeypatch.setattr(torch.cuda, "graph", self.graph)
        # A fresh process: no capture has failed yet.
        monkeypatch.setattr(group_net, "CAPTURE_FAILED", threading.Event())
        return self


class FakeGraph:
    def __init__(self, cuda: FakeCuda):
        self.cuda, self.captured = cuda, False

    def replay(self) -> None:
        assert self.captured, "replay of a graph that was never captured"
        self.stepper._step()


class FakeCapture:
    """torch.cuda.graph's context: the capture stream current, the step recorded, not run."""

    def __init__(self, cuda: FakeCuda, graph: FakeGraph, stream: FakeStream, mode: str):
        self.cuda, self.graph, self.stream, self.mode = cuda, graph, stream, mode

    def __enter__(self) -> None:
        stepper = self.graph.stepper = self.cuda.local.stepper
        self.previous = self.cuda.current_stream(self.stream.device)
        self.row = {
            "stream": self.stream,
            "device": self.stream.device,
            "current_device": self.cuda.current_device(),
            "mode": self.mode,
            "alone": device.GATE.capturing(),
            "live": device.STREAMS.live(),
            "thread": threading.get_ident(),
            "started": time.perf_counter(),
        }
        self.cuda.captures.append(self.row)
        self.cuda.set_stream(self.stream)
        # What the step writes: weights, optimizer state, the epoch's totals.
        tensors = [*stepper.net.parameters(), stepper.loss_sum, stepper.correct]
        tensors.append(stepper.data_loss_sum)
        tensors += [t for s in stepper.optimizer.state.values() for t in s.values()]
        self.saved = [(tensor, tensor.detach().clone()) for tensor in tensors]

    def __exit__(self, *error) -> None:
        with torch.no_grad():
            for tensor, saved in self.saved:
                tensor.copy_(saved)
        self.row["ended"] = time.perf_counter()
        if self.cuda.fail_captures:
            # As torch.cuda.graph: capture_end raises before the stream is restored.
            self.cuda.fail_captures -= 1
            raise RuntimeError("operation not permitted when stream is capturing")
        self.graph.captured = True
        self.cuda.set_stream(self.previous)


def train(configs, data, *, cuda_graph: bool, fake: FakeCuda | None = None, progress=None):
    """What `fit_group` does on CUDA, on the CPU, with the graphs' streams on cuda:1."""
    on_device = loop.to_device(configs[0], data, torch.device("cpu"))
    members = group_net.GroupMembers(
        configs, on_device, masks="epoch", cuda_graph=cuda_graph, stream_device=CUDA_1
    )
    if fake is not None:
        fake.bind(members.full)
    jobs = [loop.Job(config) for config in configs]
    return loop.fit_members(jobs, data, on_device, members, progress, measurements=False)


def assert_identical(results, expected) -> None:
    for result, reference in zip(results, expected, strict=True):
        assert result.state_dict.keys() == reference.state_dict.keys()
        for name, weight in reference.state_dict.items():
            assert torch.equal(result.state_dict[name], weight), name
        for row, reference_row in zip(result.history, reference.history, strict=True):
            assert {**row, "seconds": 0} == {**reference_row, "seconds": 0}


def test_replayed_graphs_end_exactly_where_the_eager_group_ends(tiny_cifar, monkeypatch):
    eager = train(MEMBERS, tiny_cifar, cuda_graph=False)
    fake = FakeCuda().install(monkeypatch)
    replayed = train(MEMBERS, tiny_cifar, cuda_graph=True, fake=fake)
    assert_identical(replayed, eager)
    # One capture, after three warm-up steps on a side stream, never on the thread's stream.
    assert len(fake.captures) == 1
    capture = fake.captures[0]
    thread_stream = FakeStream(CUDA_1, 0)
    warmups, captured = fake.step_streams[:3], fake.step_streams[3]
    assert len(set(warmups)) == 1 and warmups[0] not in (thread_stream, capture["stream"])
    assert captured == capture["stream"] != thread_stream
    assert capture["mode"] == "thread_local"
    assert capture["alone"], "a capture must hold the device gate alone"
    # Every later full step replays on the thread's own stream again.
    assert set(fake.step_streams[4:]) == {thread_stream}


def test_a_failed_capture_restores_the_stream_and_trains_eagerly(tiny_cifar, monkeypatch):
    eager = train(MEMBERS, tiny_cifar, cuda_graph=False)
    fake = FakeCuda(fail_captures=1).install(monkeypatch)
    with pytest.warns(UserWarning, match="capture failed, training eagerly"):
        fallen_back = train(MEMBERS, tiny_cifar, cuda_graph=True, fake=fake)
    assert_identical(fallen_back, eager)
    # Not one step after the failure ran on the capture stream.
    assert set(fake.step_streams[4:]) == {FakeStream(CUDA_1, 0)}
    assert fake.current_stream(CUDA_1) == FakeStream(CUDA_1, 0)
    assert group_net.CAPTURE_FAILED.is_set()
    # The process has given up on graphs: the next group does not try, and trains eagerly.
    again = train(MEMBERS[:2], tiny_cifar, cuda_graph=True, fake=fake)
    assert len(fake.captures) == 1
    assert_identical(again, train(MEMBERS[:2], tiny_cifar, cuda_graph=False))


def test_every_stream_is_made_on_the_groups_device(tiny_cifar, monkeypatch):
    fake = FakeCuda().install(monkeypatch)
    train(MEMBERS[:2], tiny_cifar, cuda_graph=True, fake=fake)
    assert fake.created and {stream.device for stream in fake.created} == {CUDA_1}
    assert fake.captures[0]["device"] == CUDA_1


def test_no_capture_stream_is_a_stream_another_holder_has(tiny_cifar, monkeypatch):
    # A pool of 4 in rotation: three streams held (three threads' own) leave one free, which
    # torch.cuda.Stream() alone would hand out twice (warm-up, capture) and then reuse a held one.
    fake = FakeCuda(pool_size=4).install(monkeypatch)
    with contextlib.ExitStack() as held:
        others = [held.enter_context(device.STREAMS.dedicated(CUDA_1)) for _ in range(3)]
        assert len(set(others)) == 3
        train(MEMBERS[:2], tiny_cifar, cuda_graph=True, fake=fake)
    capture = fake.captures[0]["stream"]
    warmup = fake.step_streams[0]
    assert capture not in others and warmup not in others
    assert (str(capture.device), capture.cuda_stream) in fake.captures[0]["live"]


def test_an_exhausted_pool_is_a_failed_capture_not_a_shared_stream(tiny_cifar, monkeypatch):
    fake = FakeCuda(pool_size=2).install(monkeypatch)
    eager = train(MEMBERS[:2], tiny_cifar, cuda_graph=False)
    with contextlib.ExitStack() as held:
        for _ in range(2):
            held.enter_context(device.STREAMS.dedicated(CUDA_1))
        with pytest.warns(UserWarning, match="no free CUDA stream"):
            results = train(MEMBERS[:2], tiny_cifar, cuda_graph=True, fake=fake)
    assert not fake.captures
    assert_identical(results, eager)


# --- side by side in threads ------------------------------------------------------------------

GROUPS = [[0, 1], [2, 3]]
# Six epochs: each group still has work to do while the other captures.
SIDE_BY_SIDE = [
    dataclasses.replace(config, epochs=6)
    for config in (
        *MEMBERS[:2],
        dataclasses.replace(BASE, seed=3, train_size=120),
        dataclasses.replace(BASE, seed=4, train_size=120, l1=0.0),
    )
]


def test_no_other_thread_works_while_a_group_captures(tiny_cifar, monkeypatch):
    fake = FakeCuda().install(monkeypatch)
    calls: list[tuple[int, float]] = []  # (thread, time) of every convolution
    real_conv2d = torch.nn.functional.conv2d

    def recorded_conv2d(*args, **kwargs):
        calls.append((threading.get_ident(), time.perf_counter()))
        return real_conv2d(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "conv2d", recorded_conv2d)
    real_enter = FakeCapture.__enter__

    def slow_enter(self) -> None:
        real_enter(self)
        if len(fake.captures) == 1:
            # The first capture lasts long enough for an ungated thread to be seen working
            # (the second is quick, or the two captures' waits would hide each other).
            time.sleep(0.3)

    monkeypatch.setattr(FakeCapture, "__enter__", slow_enter)

    def train_group(jobs, data, *, device, progress):
        configs = [job.config for job in jobs]
        return train(configs, data, cuda_graph=True, fake=fake, progress=progress)

    events = threads.train_concurrently(
        SIDE_BY_SIDE, GROUPS, tiny_cifar, device="cpu", streams=2, train_group=train_group
    )
    kinds = [event.kind for event in events]
    assert kinds.count("result") == 4, kinds
    assert len(fake.captures) == 2 and len({c["thread"] for c in fake.captures}) == 2
    for capture in fake.captures:
        during = [
            when
            for thread, when in calls
            if thread != capture["thread"] and capture["started"] < when < capture["ended"]
        ]
        assert not during, f"{len(during)} convolutions of another thread during a capture"
    # The other thread really was training around the captures (the test can see it).
    assert len({thread for thread, _ in calls}) == 2
