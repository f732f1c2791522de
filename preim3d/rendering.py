"""Rendering one latent from many cameras: a tri-plane cache, batched views, grids, uint8 conversions.

EG3D splits into an expensive part that depends only on the latent (the StyleGAN2 backbone that
makes the tri-planes) and a cheaper part per camera (volume rendering + super-resolution).
`TriPlaneRenderer` runs the backbone once per latent, keeps the planes in a small LRU cache, and
renders any number of cameras from them in batches:

    renderer = TriPlaneRenderer(G)
    out = renderer.render(ws, turntable_path(120))      # 'image' [120,3,512,512], … on the CPU
    multiview_grid(renderer, ws).save("grid.png")       # the official 2×2 yaw/pitch grid

Videos are made by `preim3d.turntable` and meshes by `preim3d.mesh`, both from the same cached
planes; this module needs only torch, numpy and PIL.

Image conversions follow the official grid/video convention: uint8 = clamp(x·127.5 + 128), truncated
(which rounds 127.5·x + 127.5 to the nearest integer).
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections import OrderedDict
from collections.abc import Callable, Iterator

import numpy as np
import torch
from PIL import Image

from .cameras import camera_vector
from .networks.fused import kernel_choice
from .networks.graphs import CUDAGraphed

Progress = Callable[[int, int], None] | None


# --- Image conversions ---------------------------------------------------------------------------------

OUTPUTS = ("image", "image_raw", "image_depth")  # what the generator renders


def images_to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Images [...,3,H,W] in [-1, 1] → uint8 [...,H,W,3] on their own device (a GPU converts in
    microseconds and then a quarter of the bytes travel to the host).

    u = trunc(clamp(127.5·x + 128, 0, 255)), the official grid and video conversion.
    """
    u = (images.detach().float() * 127.5 + 128).clamp_(0, 255).to(torch.uint8)
    return u.movedim(-3, -1).contiguous()


def depths_to_uint8(depth: torch.Tensor, depth_range=None) -> torch.Tensor:
    """Depth maps [N,1,H,W], [N,H,W] or [H,W] → uint8 [N,H,W] (or [H,W]) on their own device, near = bright.

    u = round(255 · (far − d) / (far − near)), clamped. By default near and far are each image's own
    minimum and maximum depth (the official depth video's per-frame normalisation); pass
    depth_range=(near, far) (numbers or 0-d tensors) for a fixed scale, e.g. (ray_start, ray_end) =
    (2.25, 3.3) for FFHQ.
    """
    d = depth.detach().float()
    if d.ndim == 4:
        d = d[:, 0]
    if depth_range is None:
        near, far = d.amin(dim=(-2, -1), keepdim=True), d.amax(dim=(-2, -1), keepdim=True)
    else:
        near, far = (torch.as_tensor(v, dtype=torch.float32, device=d.device) for v in depth_range)
    v = (far - d) / (far - near).clamp_min(1e-12)
    return (v * 255 + 0.5).clamp_(0, 255).to(torch.uint8)


def uint8_images(outputs: dict) -> dict:
    """An `on_device` conversion for `TriPlaneRenderer.render`: 'image' and 'image_raw' (whichever
    are there) as uint8 [N,H,W,3] (`images_to_uint8`), anything else as it is."""
    return {
        key: images_to_uint8(value) if key in ("image", "image_raw") else value
        for key, value in outputs.items()
    }


def to_uint8(images) -> np.ndarray:
    """`images_to_uint8` of images anywhere, as a numpy array on the CPU."""
    return images_to_uint8(torch.as_tensor(images)).cpu().numpy()


def depth_to_uint8(depth, depth_range=None) -> np.ndarray:
    """`depths_to_uint8` of depth maps anywhere, as a numpy array on the CPU."""
    return depths_to_uint8(torch.as_tensor(depth), depth_range).cpu().numpy()


# --- Batched rendering with a tri-plane cache ---------------------------------------------------------


class TriPlaneRenderer:
    """Renders latents from many cameras, running the tri-plane backbone once per latent.

    `planes(ws)` caches the backbone's output under a content hash of ws, the generator's precision
    mode and its `weights_key` (set by generators tuned for one photo, see `preim3d.refine`), keeping
    the `cache_size` most recently used latents (0 disables caching). `for_generator(G2)` renders
    another generator through the same cache.
    `render(ws, c)` renders V cameras in batches of `batch_size` views from the planes
    [1,3,32,256,256]; `G.render_planes` broadcasts the batch-1 planes and ws over the views without
    copying them (and modulates the super-resolution once). Everything runs under no_grad on the
    generator's device; results come back on the CPU: only the `outputs` asked for, after an
    optional `on_device` conversion (e.g. `images_to_uint8`), copied while the next batch renders.

    In the fast mode on a GPU the backbone and each batch size of the rendering replay CUDA graphs
    (captured on first use; a batch of one view takes a few milliseconds instead of tens), and
    their float16 outputs are checked as `G.synthesis` checks them: a pass that overflowed is
    computed again without graphs, in float32.

    Sampling is random unless deterministic=True, exactly as `G.synthesis`: seed torch before a call
    to repeat it. The random draws are made per batch, so with deterministic=False the pixels depend
    on batch_size as well as on the seed; in fp32, rendering one view equals `G.synthesis(ws, c)`
    bit for bit. Call `clear()` after changing the generator's weights: the cache and the captured
    graphs cannot see that.
    """

    def __init__(self, G, batch_size: int = 8, cache_size: int = 4):
        if batch_size < 1 or cache_size < 0:
            raise ValueError(f"need batch_size >= 1 and cache_size >= 0, got {batch_size} and {cache_size}")
        self.G = G
        self.batch_size = batch_size
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self._graphs: dict[tuple, CUDAGraphed] = {}
        self._copy_stream = None

    @property
    def device(self) -> torch.device:
        return next(self.G.parameters()).device

    def _latent(self, ws) -> torch.Tensor:
        ws = torch.as_tensor(ws).detach()
        if ws.ndim == 2:
            ws = ws.unsqueeze(0)
        if ws.ndim != 3 or ws.shape[0] != 1:
            raise ValueError(f"expected one latent ws of shape [1, num_ws, w_dim], got {tuple(ws.shape)}")
        return ws.float()

    def planes(self, ws) -> torch.Tensor:
        """Tri-planes [1,3,32,256,256] of ws, from the cache when ws was seen recently.

        The returned tensor is the cached one: do not modify it in place.
        """
        ws = self._latent(ws)
        digest = hashlib.blake2b(ws.cpu().numpy().tobytes(), digest_size=16).hexdigest()
        key = (
            tuple(ws.shape),
            digest,
            getattr(self.G, "precision", None),
            getattr(self.G, "weights_key", None),
        )
        ws = ws.to(self.device)
        planes = self._cache.get(key)
        if planes is not None:
            self._cache.move_to_end(key)
            return planes
        with torch.no_grad():
            planes = None
            if self._graphed():
                planes, finite = self._graph(self._planes_and_check)(ws)
                planes = planes if finite.item() else None
            if planes is None:  # no graphs here, or float16 overflowed in one
                planes = self.G.synthesize_planes(ws, noise_mode="const")
        if self.cache_size:
            self._cache[key] = planes
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return planes

    def render_batches(
        self,
        ws,
        c,
        deterministic: bool = False,
        outputs=OUTPUTS,
        on_device: Callable[[dict], dict] | None = None,
    ) -> Iterator[dict]:
        """Yields, for each batch of at most batch_size cameras in c [V,25], a dict on the CPU of the
        requested `outputs` (from OUTPUTS) or, with `on_device`, of what that function makes of them
        on the generator's device (tensors; e.g. `lambda out: {"image": images_to_uint8(out["image"])}`).
        While one batch is copied to the host, the next one renders."""
        _check_outputs(outputs)
        planes = self.planes(ws)
        ws = self._latent(ws).to(self.device)
        c = torch.as_tensor(c, dtype=torch.float32).reshape(-1, 25).to(self.device)
        yield from _one_batch_ahead(
            self._start_batch(
                planes, ws, c[start : start + self.batch_size], deterministic, outputs, on_device
            )
            for start in range(0, len(c), self.batch_size)
        )

    def render(
        self,
        ws,
        c,
        deterministic: bool = False,
        progress: Progress = None,
        outputs=OUTPUTS,
        on_device: Callable[[dict], dict] | None = None,
    ) -> dict:
        """ws [1,num_ws,w_dim], c [V,25] → {'image' [V,3,R,R], 'image_raw' [V,3,r,r], 'image_depth'
        [V,1,r,r]} on the CPU, or the chosen `outputs` / `on_device` results (see `render_batches`),
        concatenated over the views. progress(done_views, total) after each batch."""
        total = torch.as_tensor(c).reshape(-1, 25).shape[0]
        if total == 0:
            raise ValueError("render needs at least one camera")
        parts, done = [], 0
        for out in self.render_batches(ws, c, deterministic, outputs, on_device):
            parts.append(out)
            done += len(next(iter(out.values())))
            if progress is not None:
                progress(done, total)
        return {key: torch.cat([part[key] for part in parts]) for key in parts[0]}

    def for_generator(self, G) -> TriPlaneRenderer:
        """A renderer of G with this one's batch size that shares this one's cache (and its bound)."""
        other = TriPlaneRenderer(G, self.batch_size, self.cache_size)
        other._cache = self._cache
        return other

    def render_codes(
        self,
        ws,
        c,
        deterministic: bool = False,
        outputs=OUTPUTS,
        on_device: Callable[[dict], dict] | None = None,
    ) -> Iterator[dict]:
        """Several codes, one camera each: ws [N,num_ws,w_dim] and c [N,25] -> yields, for each batch
        of at most batch_size of them, what `render_batches` yields (the requested `outputs`, after
        `on_device`, on the CPU; copied while the next batch renders). Their planes are not cached."""
        _check_outputs(outputs)
        ws = torch.as_tensor(ws).detach().to(self.device, torch.float32)
        c = torch.as_tensor(c, dtype=torch.float32).reshape(-1, 25).to(self.device)
        if ws.ndim != 3 or len(ws) != len(c):
            raise ValueError(
                f"need ws [N, num_ws, w_dim] and c [N, 25], got {list(ws.shape)} and {list(c.shape)}"
            )

        def start(chunk: slice) -> _HostCopy:
            with torch.no_grad():
                out = self.G.synthesis(ws[chunk], c[chunk], noise_mode="const", deterministic=deterministic)
                return self._to_host(_wanted(out, outputs, on_device))

        yield from _one_batch_ahead(
            start(slice(first, first + self.batch_size)) for first in range(0, len(c), self.batch_size)
        )

    def clear(self) -> None:
        """Forget every cached tri-plane and captured graph."""
        self._cache.clear()
        self._graphs.clear()

    # The fast mode's CUDA graphs, and the copies to the host.

    def _graphed(self) -> bool:
        return getattr(self.G, "precision", None) == "fast" and self.device.type == "cuda"

    def _graph(self, fn, *options) -> CUDAGraphed:
        """`fn` through CUDA graphs, one CUDAGraphed per function, options, kernel choice and weights
        (a graph replays the kernels it captured, reading the weights it was captured with: a tuned
        copy's deltas are part of its `weights_key`)."""
        key = (fn.__name__, *options, kernel_choice(), getattr(self.G, "weights_key", None))
        if key not in self._graphs:
            self._graphs[key] = CUDAGraphed(functools.partial(fn, *options), max_graphs=4, warmup=1)
        return self._graphs[key]

    def _planes_and_check(self, ws):
        planes = self.G.synthesize_planes(ws, noise_mode="const")
        return planes, torch.isfinite(planes).all()

    def _render_and_check(self, deterministic, planes, ws, cameras):
        out = self.G.render_planes(planes, ws, cameras, deterministic=deterministic)
        return out, torch.isfinite(out["image"]).all()

    def _start_batch(self, planes, ws, cameras, deterministic, outputs, on_device) -> _HostCopy:
        """Renders one batch on the device and starts copying what was asked for to the host."""

        def eager() -> dict:
            with torch.no_grad():
                out = self.G.render_planes(planes, ws, cameras, deterministic=deterministic)
                return _wanted(out, outputs, on_device)

        if not self._graphed():
            return self._to_host(eager())
        with torch.no_grad():
            out, finite = self._graph(self._render_and_check, deterministic)(planes, ws, cameras)
            # Should float16 have overflowed in the graph, the batch runs again without it.
            return self._to_host(
                _wanted(out, outputs, on_device), finite, redo=lambda: self._to_host(eager()).result()
            )

    def _to_host(self, tensors: dict, finite=None, redo=None) -> _HostCopy:
        """Starts copying tensors (and the finite flag) to pinned host memory on a side stream."""
        if self.device.type != "cuda":
            return _HostCopy({key: value.cpu() for key, value in tensors.items()})
        if self._copy_stream is None:
            self._copy_stream = torch.cuda.Stream(self.device)
        stream = self._copy_stream
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            host = {key: _pinned_copy(value) for key, value in tensors.items()}
            finite_host = None if finite is None else _pinned_copy(finite)
            done = torch.cuda.Event()
            done.record(stream)
        return _HostCopy(host, done, (tensors, finite), finite_host, redo)


def _check_outputs(outputs) -> None:
    unknown = set(outputs) - set(OUTPUTS)
    if unknown or not outputs:
        raise ValueError(f"outputs must be some of {OUTPUTS}, got {tuple(outputs)}")


def _wanted(out: dict, outputs, on_device: Callable[[dict], dict] | None) -> dict:
    """The requested outputs of a render, after the `on_device` conversion when there is one."""
    selected = {key: out[key] for key in outputs}
    return on_device(selected) if on_device else selected


def _one_batch_ahead(copies: Iterator[_HostCopy]) -> Iterator[dict]:
    """The copies' results in order, each taken once the next batch has been started, so that a
    batch's copy to the host overlaps the rendering of the next."""
    pending = None
    for copy in copies:
        if pending is not None:
            yield pending.result()
        pending = copy
    if pending is not None:
        yield pending.result()


def _pinned_copy(tensor: torch.Tensor) -> torch.Tensor:
    return torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True).copy_(tensor, non_blocking=True)


class _HostCopy:
    """Host tensors that an asynchronous copy fills; `result()` waits for it. The device tensors are
    kept until then, so that their memory is not reused while the copy reads it. With a host flag
    `finite` that came out False, `result()` returns `redo()` instead."""

    def __init__(self, host: dict, done=None, keep=None, finite=None, redo=None):
        self.host, self.done, self.keep, self.finite, self.redo = host, done, keep, finite, redo

    def result(self) -> dict:
        if self.done is not None:
            self.done.synchronize()
        self.keep = None
        if self.finite is not None and not bool(self.finite):
            return self.redo()
        return self.host


# --- Grids ---------------------------------------------------------------------------------------------


def multiview_grid(
    renderer: TriPlaneRenderer,
    ws,
    yaws=(-math.pi / 9, math.pi / 9),
    pitches=(-math.pi / 36, math.pi / 36),
    deterministic: bool = False,
) -> Image.Image:
    """One image of ws seen from every (yaw, pitch) offset: one row per pitch, one column per yaw.

    The defaults give PREIM3D's 2×2 grid (±20° yaw, ±5° pitch): top row pitch −π/36 (camera above),
    left column yaw −π/9, in the official order.
    """
    yaw = [y for _ in pitches for y in yaws]
    pitch = [p for p in pitches for _ in yaws]
    images = renderer.render(
        ws, camera_vector(yaw, pitch), deterministic=deterministic, outputs=("image",), on_device=uint8_images
    )["image"].numpy()
    rows, cols = len(pitches), len(yaws)
    _, h, w, _ = images.shape
    grid = images.reshape(rows, cols, h, w, 3).transpose(0, 2, 1, 3, 4).reshape(rows * h, cols * w, 3)
    return Image.fromarray(grid)
