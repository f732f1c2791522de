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
    captures it; later calls copy the inputs into the captured buffers, replay, and return copies of
    the outputs. At most `max_graphs` shapes are kept; all share one memory pool, and a lock makes
    calls from several threads take turns. `fn` must not synchronise with the host (no `.item()`,
    no data-dependent Python branches) and must draw random numbers only from torch's default CUDA
    generator. Should a capture fail, that shape runs `fn` directly from then on (with a warning).
    Inputs on other devices simply call `fn`. Gradients are not supported (inference only).
    """

    def __init__(self, fn, max_graphs: int = 4, warmup: int = 3):
        self.fn, self.max_graphs, self.warmup = fn, max_graphs, warmup
        self._graphs: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        self._pool = None

    @torch.no_grad()
    def __call__(self, *args: torch.Tensor):
        if not all(a.is_cuda for a in args):
            return self.fn(*args)
        key = tuple((tuple(a.shape), a.dtype, a.device) for a in args)
        with self._lock:
            # The buffers live in inference mode whatever the caller's mode, so that they can be
            # written in place after a capture made under torch.inference_mode (or before one).
            with torch.inference_mode():
                if key not in self._graphs:
                    self._graphs[key] = self._capture(args)
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
            return tree_map(torch.clone, static_out)  # in the caller's mode

    def _capture(self, args):
        static_in = [a.clone() for a in args]
        device = args[0].device
        stream = torch.cuda.Stream(device=device)
        stream.wait_stream(torch.cuda.current_stream(device))
        try:
            with torch.cuda.stream(stream):
                for _ in range(self.warmup):
                    self.fn(*static_in)
            torch.cuda.current_stream(device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool):
                static_out = self.fn(*static_in)
        except Exception as exc:  # e.g. an operation that cannot be captured on this build
            torch.cuda.current_stream(device).wait_stream(stream)
            warnings.warn(
                f"CUDA-graph capture failed ({type(exc).__name__}: {exc}); running without graphs",
                RuntimeWarning,
                stacklevel=3,
            )
            return None
        self._pool = graph.pool()
        return graph, static_in, static_out
