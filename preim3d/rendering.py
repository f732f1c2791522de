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

import hashlib
import math
from collections import OrderedDict
from collections.abc import Callable, Iterator

import numpy as np
import torch
from PIL import Image

from .cameras import camera_vector

Progress = Callable[[int, int], None] | None


# --- Image conversions ---------------------------------------------------------------------------------


def to_uint8(images) -> np.ndarray:
    """Images [N,3,H,W] (or [3,H,W]) in [-1, 1] → uint8 [N,H,W,3] (or [H,W,3]).

    u = trunc(clamp(127.5·x + 128, 0, 255)), the official grid and video conversion.
    """
    x = torch.as_tensor(images).detach().float().cpu()
    return (x * 127.5 + 128).clamp(0, 255).to(torch.uint8).movedim(-3, -1).numpy()


def depth_to_uint8(depth, depth_range=None) -> np.ndarray:
    """Depth maps [N,1,H,W], [N,H,W] or [H,W] → uint8 [N,H,W] (or [H,W]) with near = bright.

    u = round(255 · (far − d) / (far − near)), clamped. By default near and far are each image's own
    minimum and maximum depth (the official depth video's per-frame normalisation); pass
    depth_range=(near, far) for a fixed scale, e.g. (ray_start, ray_end) = (2.25, 3.3) for FFHQ.
    """
    d = torch.as_tensor(depth).detach().float().cpu()
    if d.ndim == 4:
        d = d[:, 0]
    if depth_range is None:
        near, far = d.amin(dim=(-2, -1), keepdim=True), d.amax(dim=(-2, -1), keepdim=True)
    else:
        near, far = (torch.tensor(float(v)) for v in depth_range)
    v = (far - d) / (far - near).clamp_min(1e-12)
    return (v * 255 + 0.5).clamp(0, 255).to(torch.uint8).numpy()


# --- Batched rendering with a tri-plane cache ---------------------------------------------------------


class TriPlaneRenderer:
    """Renders latents from many cameras, running the tri-plane backbone once per latent.

    `planes(ws)` caches the backbone's output under a content hash of ws (and the generator's
    precision mode), keeping the `cache_size` most recently used latents (0 disables caching).
    `render(ws, c)` renders V cameras in batches of `batch_size` views from the planes
    [1,3,32,256,256]; `G.render_planes` broadcasts the batch-1 planes and ws over the views without
    copying them (and modulates the super-resolution once). Everything runs under no_grad on the
    generator's device; results come back on the CPU.

    Sampling is random unless deterministic=True, exactly as `G.synthesis`: seed torch before a call
    to repeat it. The random draws are made per batch, so with deterministic=False the pixels depend
    on batch_size as well as on the seed; rendering one view equals `G.synthesis(ws, c)` bit for bit.
    Call `clear()` after changing the generator's weights: the cache cannot see that.
    """

    def __init__(self, G, batch_size: int = 8, cache_size: int = 4):
        if batch_size < 1 or cache_size < 0:
            raise ValueError(f"need batch_size >= 1 and cache_size >= 0, got {batch_size} and {cache_size}")
        self.G = G
        self.batch_size = batch_size
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple, torch.Tensor] = OrderedDict()

    @property
    def device(self) -> torch.device:
        return next(self.G.parameters()).device

    def _latent(self, ws) -> torch.Tensor:
        ws = torch.as_tensor(ws).detach()
        if ws.ndim == 2:
            ws = ws.unsqueeze(0)
        if ws.ndim != 3 or ws.shape[0] != 1:
            raise ValueError(f"expected one latent ws of shape [1, num_ws, w_dim], got {tuple(ws.shape)}")
        return ws.to(self.device, torch.float32)

    def planes(self, ws) -> torch.Tensor:
        """Tri-planes [1,3,32,256,256] of ws, from the cache when ws was seen recently.

        The returned tensor is the cached one: do not modify it in place.
        """
        ws = self._latent(ws)
        digest = hashlib.blake2b(ws.cpu().numpy().tobytes(), digest_size=16).hexdigest()
        key = (tuple(ws.shape), digest, getattr(self.G, "precision", None))
        planes = self._cache.get(key)
        if planes is not None:
            self._cache.move_to_end(key)
            return planes
        with torch.no_grad():
            planes = self.G.synthesize_planes(ws, noise_mode="const")
        if self.cache_size:
            self._cache[key] = planes
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return planes

    def render_batches(self, ws, c, deterministic: bool = False) -> Iterator[dict]:
        """Yields the output dict (on the CPU) of each batch of at most batch_size cameras in c [V,25]."""
        ws = self._latent(ws)
        c = torch.as_tensor(c, dtype=torch.float32).reshape(-1, 25).to(self.device)
        planes = self.planes(ws)
        for start in range(0, len(c), self.batch_size):
            with torch.no_grad():
                # Batch-1 planes and ws: the generator broadcasts them over the views without copying.
                out = self.G.render_planes(
                    planes, ws, c[start : start + self.batch_size], deterministic=deterministic
                )
            yield {key: out[key].cpu() for key in ("image", "image_raw", "image_depth")}

    def render(self, ws, c, deterministic: bool = False, progress: Progress = None) -> dict:
        """ws [1,num_ws,w_dim], c [V,25] →
        {'image' [V,3,R,R], 'image_raw' [V,3,r,r], 'image_depth' [V,1,r,r]}."""
        total = torch.as_tensor(c).reshape(-1, 25).shape[0]
        if total == 0:
            raise ValueError("render needs at least one camera")
        parts, done = [], 0
        for out in self.render_batches(ws, c, deterministic):
            parts.append(out)
            done += len(out["image"])
            if progress is not None:
                progress(done, total)
        return {key: torch.cat([part[key] for part in parts]) for key in parts[0]}

    def clear(self) -> None:
        """Forget every cached tri-plane."""
        self._cache.clear()


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
    images = to_uint8(renderer.render(ws, camera_vector(yaw, pitch), deterministic=deterministic)["image"])
    rows, cols = len(pitches), len(yaws)
    _, h, w, _ = images.shape
    grid = images.reshape(rows, cols, h, w, 3).transpose(0, 2, 1, 3, 4).reshape(rows * h, cols * w, 3)
    return Image.fromarray(grid)
