"""Replaying inference through captured CUDA graphs, which removes per-kernel launch overhead.

Small batches of a deep network are bound by kernel launches rather than arithmetic; a captured
graph replays all of them at once. Graphs are captured per input shape and dtype on first use.
"""

from __future__ import annotations

import threading
import warnings
from collections import OrderedDict

import torch
from torch.utils._pytree import tree_map


class CUDAGraphed:
    """Call `fn(*tensors)` (CUDA tensors in; a tensor, or a tuple, list or dict of tensors out)
    through CUDA graphs.

    The first call for given input shapes and dtypes runs `fn` a few times on a side stream
    (warm-up, which also lets cuDNN pick its algorithms and the fused kernels check themselves) and
    captures it on that stream; later calls copy the inputs into the captured buffers, replay, and
    return copies of the outputs. At most `max_graphs` shapes are kept; those of one device share
    one memory pool, and a lock makes calls from several threads take turns (each copies its
    outputs before the next replays). Everything runs with the inputs' device as the current one,
    whichever device the caller's is. `fn` must not synchronise with the host (no `.item()`, no
    data-dependent Python branches) and must draw random numbers only from torch's default CUDA
    generator. Should a capture fail, that shape runs `fn` directly from then on (with a warning).
    Inputs on other devices simply call `fn`. Gradients are not supported (inference only).
    """

    def __init__(self, fn, max_graphs: int = 4, warmup: int = 3):
        self.fn, self.max_graphs, self.warmup = fn, max_graphs, warmup
        self._graphs: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        self._pools: dict[torch.device, tuple] = {}  # device -> the memory pool its graphs share

    @torch.no_grad()
    def __call__(self, *args: torch.Tensor):
        if not all(a.is_cuda for a in args):
            return self.fn(*args)
        device = args[0].device
        key = tuple((tuple(a.shape), a.dtype, a.device) for a in args)
        with self._lock, torch.cuda.device(device):
            # The buffers live in inference mode whatever the caller's mode, so that they can be
            # written in place after a capture made under torch.inference_mode (or before one).
            with torch.inference_mode():
                if key not in self._graphs:
                    self._graphs[key] = self._capture(args, device)
                    while len(self._graphs) > self.max_graphs:
                        self._graphs.popitem(last=False)
                self._graphs.move_to_end(key)
                entry = self._graphs[key]
                if entry is None:  # this shape could not be captured
                    return self.fn(*args)
                graph, static_in, static_out = entry
                for buffer, a in zip(static_in, args):
                    buffer.copy_(a)
                graph.replay()
            # In the caller's mode; inside the lock, before another call replays into static_out.
            return tree_map(torch.clone, static_out)

    def _capture(self, args, device: torch.device):
        static_in = [a.clone() for a in args]
        caller_stream = torch.cuda.current_stream(device)
        # Warm-up and capture on a stream of the inputs' device: torch.cuda.graph's default capture
        # stream is made once per process, on whichever device was current at the first capture.
        stream = torch.cuda.Stream(device=device)
        stream.wait_stream(caller_stream)
        try:
            with torch.cuda.stream(stream):
                for _ in range(self.warmup):
                    self.fn(*static_in)
            caller_stream.wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            # thread_local: a capture forbids waiting on the GPU only to this thread, so that
            # another thread (the page's other lane) may go on rendering and copying results
            with torch.cuda.graph(graph, self._pools.get(device), stream, capture_error_mode="thread_local"):
                static_out = self.fn(*static_in)
        except Exception as exc:  # e.g. an operation that cannot be captured on this build
            # A capture that fails may leave its stream current: the caller's comes back.
            torch.cuda.set_stream(caller_stream)
            caller_stream.wait_stream(stream)
            warnings.warn(
                f"CUDA-graph capture failed ({type(exc).__name__}: {exc}); running without graphs",
                RuntimeWarning,
                stacklevel=3,
            )
            return None
        caller_stream.wait_stream(stream)
        self._pools[device] = graph.pool()
        return graph, static_in, static_out
