"""What repeatable renders rest on, checked without a GPU: cuDNN's deterministic algorithms around the
generator's passes, Triton launched on the tensors' device, CUDA graphs captured and replayed on
the inputs' device, and kernel self-checks that leave torch's random generators alone.

The CUDA parts run against stand-ins for torch.cuda's streams, graphs and current device (on a GPU,
benchmarks/check_determinism.py runs the real thing).
"""

from __future__ import annotations

import contextlib
import threading
import types

import pytest
import torch
import torch.nn.functional as F

from preim3d.cameras import camera_vector
from preim3d.networks import decoder, fused, ops, renderer, triplane
from preim3d.networks.graphs import CUDAGraphed
from preim3d.testing import tiny_generator

FUSED = [k for m in (decoder, ops, renderer) for k in vars(m).values() if isinstance(k, fused.FusedKernel)]


@pytest.fixture
def cudnn_free():
    """torch.backends.cudnn.deterministic as torch's default (False) for the test, restored after."""
    before = torch.backends.cudnn.deterministic
    torch.backends.cudnn.deterministic = False
    yield
    torch.backends.cudnn.deterministic = before


def test_the_generator_convolves_with_deterministic_algorithms_and_restores_the_flag(cudnn_free, monkeypatch):
    seen = []

    def recording(real):
        def conv(*args, **kwargs):
            seen.append((real.__name__, torch.backends.cudnn.deterministic))
            return real(*args, **kwargs)

        return conv

    for name in ("conv2d", "conv_transpose2d"):
        monkeypatch.setattr(F, name, recording(getattr(F, name)))
    G = tiny_generator(0)
    ws = torch.randn(2, G.num_ws, G.w_dim, generator=torch.Generator().manual_seed(1))
    c = camera_vector([0.0, 0.3], [0.0, 0.1])
    with torch.no_grad():
        G.synthesis(ws, c, deterministic=True)  # backbone (synthesize_planes), then render_planes
    assert {name for name, _ in seen} == {"conv2d", "conv_transpose2d"}
    assert all(flag for _, flag in seen)
    assert torch.backends.cudnn.deterministic is False  # the caller's setting is back


def test_the_flag_stays_set_until_the_last_thread_leaves(cudnn_free):
    inside, release = threading.Event(), threading.Event()

    def other_thread():
        with triplane.deterministic_convolutions():
            inside.set()
            release.wait(10)

    thread = threading.Thread(target=other_thread)
    thread.start()
    inside.wait(10)
    with triplane.deterministic_convolutions():
        assert torch.backends.cudnn.deterministic
    assert torch.backends.cudnn.deterministic  # the other thread is still inside
    release.set()
    thread.join(10)
    assert torch.backends.cudnn.deterministic is False

    torch.backends.cudnn.deterministic = True  # a caller that asked for it keeps it
    with triplane.deterministic_convolutions():
        pass
    assert torch.backends.cudnn.deterministic is True


# ------------------------------------------------------------------ stand-ins for CUDA


class OnCuda1(torch.Tensor):
    """A CPU tensor that says it lives on cuda:1 (what the code under test looks at)."""

    @property
    def device(self):
        return torch.device("cuda", 1)

    @property
    def is_cuda(self):
        return True


def _index(device) -> int:
    return device if isinstance(device, int) else torch.device(device).index


class FakeCuda:
    """torch.cuda's current device and streams, streams, graphs: enough for CUDAGraphed and the kernels.

    A stream context also makes its stream's device current, as torch's does. `FakeGraph` replays
    the one computation the function under test registered while it was captured.
    """

    def __init__(self, current: int = 0):
        self.current = current
        self.streams: dict[int, FakeCuda.Stream] = {}  # device index -> current stream
        self.capturing = None
        self.default_capture_stream = None
        self.log: list[tuple] = []
        self.capture_modes: list[str] = []
        fake = self

        class Stream:
            def __init__(self, device=None, priority=0):
                self.device = torch.device("cuda", fake.current) if device is None else torch.device(device)

            def wait_stream(self, other):
                pass

        class CUDAGraph:
            def __init__(self):
                self.program = None

            def replay(self):
                fake.log.append(("replay", fake.current))
                self.program()

            def pool(self):
                return ("pool", fake.current)

        self.Stream, self.CUDAGraph = Stream, CUDAGraph

    def current_stream(self, device=None):
        index = self.current if device is None else _index(device)
        return self.streams.setdefault(index, self.Stream(torch.device("cuda", index)))

    def set_stream(self, stream):
        self.streams[stream.device.index] = stream
        self.current = stream.device.index

    @contextlib.contextmanager
    def device(self, device):
        before, self.current = self.current, _index(device)
        try:
            yield
        finally:
            self.current = before

    def stream(self, stream):
        fake = self

        class StreamContext:  # a class, as torch's: nothing is restored unless __exit__ runs
            def __enter__(self):
                self.before = fake.current, fake.current_stream(stream.device)
                fake.set_stream(stream)

            def __exit__(self, *exc):
                fake.set_stream(self.before[1])
                fake.current = self.before[0]

        return StreamContext()

    def graph(self, cuda_graph, pool=None, stream=None, capture_error_mode="global", fail=False):
        fake = self
        self.capture_modes.append(capture_error_mode)
        if stream is None:  # torch's default: one stream, made on the device current at the first capture
            if self.default_capture_stream is None:
                self.default_capture_stream = self.Stream()
            stream = self.default_capture_stream

        class Capture:
            def __enter__(self):
                fake.log.append(("capture", stream.device.index, fake.current, pool))
                self.context = fake.stream(stream)
                self.context.__enter__()
                fake.capturing = cuda_graph

            def __exit__(self, *exc):
                fake.capturing = None
                if fail:  # as torch's: capture_end raises, and the stream context is never left
                    raise RuntimeError("operation failed due to a previous error during capture")
                self.context.__exit__(*exc)

        return Capture()

    def install(self, monkeypatch, failing_capture=False):
        for name in ("device", "stream", "current_stream", "set_stream"):
            monkeypatch.setattr(torch.cuda, name, getattr(self, name))
        monkeypatch.setattr(torch.cuda, "Stream", self.Stream)
        monkeypatch.setattr(torch.cuda, "CUDAGraph", self.CUDAGraph)
        monkeypatch.setattr(
            torch.cuda,
            "graph",
            lambda g, pool=None, stream=None, capture_error_mode="global": self.graph(
                g, pool, stream, capture_error_mode, failing_capture
            ),
        )
        monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: self.capturing is not None)


def doubling(fake: FakeCuda, graphed_holder: list):
    """fn(x) = 2x that notes the current device of each call; under capture it registers its replay."""

    def fn(x):
        fake.log.append(("call", fake.current))
        out = x * 2
        if fake.capturing is not None:

            def program():
                fake.log.append(("locked at replay", graphed_holder[0]._lock.locked()))
                out.copy_(x * 2)

            fake.capturing.program = program
        return out

    return fn


def test_graphs_are_captured_and_replayed_on_the_inputs_device(monkeypatch):
    fake = FakeCuda(current=0)  # the caller's device is cuda:0; the inputs are on cuda:1
    fake.install(monkeypatch)
    holder: list = []
    graphed = CUDAGraphed(doubling(fake, holder), warmup=2)
    holder.append(graphed)
    caller_stream = fake.current_stream(0)

    x = torch.arange(4.0).as_subclass(OnCuda1)
    first = graphed(x)
    second = graphed(torch.ones(4).as_subclass(OnCuda1))
    assert torch.equal(first.as_subclass(torch.Tensor), torch.arange(4.0) * 2)
    assert torch.equal(second.as_subclass(torch.Tensor), torch.full((4,), 2.0))
    calls = [entry[1] for entry in fake.log if entry[0] == "call"]
    assert calls == [1, 1, 1]  # two warm-ups and the capture, all with cuda:1 current
    capture = next(entry for entry in fake.log if entry[0] == "capture")
    assert capture[1:] == (1, 1, None)  # a capture stream on cuda:1, cuda:1 current, a new pool
    assert fake.capture_modes == ["thread_local"]  # other threads may go on waiting on the GPU
    assert [e[1] for e in fake.log if e[0] == "replay"] == [1, 1]
    assert all(e[1] for e in fake.log if e[0] == "locked at replay")
    assert fake.current == 0 and fake.current_stream(0) is caller_stream  # the caller's state is back
    assert graphed._pools == {torch.device("cuda", 1): ("pool", 1)}

    graphed(torch.ones(2).as_subclass(OnCuda1))  # another shape shares cuda:1's pool
    assert [e for e in fake.log if e[0] == "capture"][-1][3] == ("pool", 1)


def test_outputs_are_copied_before_another_call_can_replay(monkeypatch):
    fake = FakeCuda(current=1)
    fake.install(monkeypatch)
    holder: list = []
    graphed = CUDAGraphed(doubling(fake, holder), warmup=1)
    holder.append(graphed)
    locked_at_copy = []
    real_clone = torch.clone

    def clone(t, *args, **kwargs):
        locked_at_copy.append(graphed._lock.locked())
        return real_clone(t, *args, **kwargs)

    x = torch.arange(3.0).as_subclass(OnCuda1)
    graphed(x)  # captured
    monkeypatch.setattr(torch, "clone", clone)
    graphed(x)
    assert locked_at_copy == [True]


def test_a_failed_capture_gives_the_caller_its_stream_back_and_runs_directly(monkeypatch):
    fake = FakeCuda(current=0)
    fake.install(monkeypatch, failing_capture=True)
    holder: list = []
    graphed = CUDAGraphed(doubling(fake, holder), warmup=1)
    holder.append(graphed)
    caller_streams = {0: fake.current_stream(0), 1: fake.current_stream(1)}
    x = torch.arange(3.0).as_subclass(OnCuda1)
    with pytest.warns(RuntimeWarning, match="CUDA-graph capture failed"):
        out = graphed(x)
    assert torch.equal(out.as_subclass(torch.Tensor), torch.arange(3.0) * 2)
    assert fake.current == 0
    assert fake.current_stream(0) is caller_streams[0] and fake.current_stream(1) is caller_streams[1]
    assert graphed(x) is not None and [e[0] for e in fake.log].count("capture") == 1  # not tried again


def test_triton_runs_with_the_tensors_device_current(monkeypatch):
    monkeypatch.delenv(fused.ENV_VAR, raising=False)
    fake = FakeCuda(current=0)
    fake.install(monkeypatch)
    monkeypatch.setattr(torch.random, "fork_rng", lambda **kwargs: contextlib.nullcontext())
    launched_on = []

    def launcher(x):
        launched_on.append(fake.current)
        return x * 3

    monkeypatch.setattr(fused, "_triton_module", lambda: types.SimpleNamespace(triple=launcher))
    monkeypatch.setattr(fused, "_runs_here", lambda device: True)
    kernel = fused.FusedKernel(
        "test",
        "triple",
        lambda x: x * 3,
        applies=lambda x: True,
        examples=lambda device: [(torch.ones(2).as_subclass(OnCuda1),)],
    )
    for choice in ("auto", "triton"):
        previous = fused.set_kernels(choice)
        try:
            out = kernel(torch.arange(2.0).as_subclass(OnCuda1))
        finally:
            fused.set_kernels(previous)
        assert torch.equal(out.as_subclass(torch.Tensor), torch.tensor([0.0, 3.0]))
    assert kernel._ok == {"cuda:1": True}
    assert launched_on == [1, 1, 1]  # the self-check, then each call
    assert fake.current == 0


def test_kernel_self_checks_use_fixed_examples_and_leave_the_generators_alone(monkeypatch):
    # Triton stand-ins that compute what PyTorch does: every check passes; what is checked is
    # what the examples draw.
    stand_ins = types.SimpleNamespace(**{k.triton_name: k.torch_fn for k in FUSED})
    monkeypatch.setattr(fused, "_triton_module", lambda: stand_ins)
    cpu = torch.device("cpu")
    assert len(FUSED) >= 6
    for kernel in FUSED:
        first, again = list(kernel.examples(cpu)), list(kernel.examples(cpu))
        for a, b in zip(first, again, strict=True):
            for x, y in zip(a, b, strict=True):
                if isinstance(x, torch.Tensor):
                    assert torch.equal(x, y), kernel.name
        torch.manual_seed(5)
        before = torch.get_rng_state()
        assert kernel._check(cpu) is None
        assert torch.equal(torch.get_rng_state(), before), kernel.name
