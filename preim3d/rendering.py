"""Rendering one latent from many cameras: a tri-plane cache, batched views, grids, videos, meshes.

EG3D splits into an expensive part that depends only on the latent (the StyleGAN2 backbone that
makes the tri-planes) and a cheaper part per camera (volume rendering + super-resolution).
`TriPlaneRenderer` runs the backbone once per latent, keeps the planes in a small LRU cache, and
renders any number of cameras from them in batches:

    renderer = TriPlaneRenderer(G)
    out = renderer.render(ws, turntable_path(120))      # 'image' [120,3,512,512], … on the CPU
    multiview_grid(renderer, ws).save("grid.png")       # the official 2×2 yaw/pitch grid
    render_turntable(renderer, ws_edit, "edit.mp4", side_by_side=[photo, ws_rec])
    export_mesh(renderer.mesh(ws), "face.glb")          # marching cubes of the density

Image conversions follow the official grid/video convention: uint8 = clamp(x·127.5 + 128), truncated
(which rounds 127.5·x + 127.5 to the nearest integer).
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import torch
import torch.nn.functional as F
import trimesh
from PIL import Image, ImageOps
from skimage.measure import marching_cubes

from .cameras import camera_vector, turntable_path
from .images import load_image
from .networks.renderer import sample_triplanes

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

    def render_codes(self, ws, c, deterministic: bool = False) -> Iterator[dict]:
        """Several codes, one camera each: ws [N,num_ws,w_dim] and c [N,25] -> yields the output dict
        (on the CPU) of each batch of at most batch_size of them. Their planes are not cached."""
        ws = torch.as_tensor(ws).detach().to(self.device, torch.float32)
        c = torch.as_tensor(c, dtype=torch.float32).reshape(-1, 25).to(self.device)
        if ws.ndim != 3 or len(ws) != len(c):
            raise ValueError(
                f"need ws [N, num_ws, w_dim] and c [N, 25], got {list(ws.shape)} and {list(c.shape)}"
            )
        for start in range(0, len(c), self.batch_size):
            chunk = slice(start, start + self.batch_size)
            with torch.no_grad():
                out = self.G.synthesis(ws[chunk], c[chunk], noise_mode="const", deterministic=deterministic)
            yield {key: out[key].cpu() for key in ("image", "image_raw", "image_depth")}

    def mesh(self, ws, **kwargs) -> trimesh.Trimesh:
        """`extract_mesh` on the cached planes of ws (same keyword arguments)."""
        return extract_mesh(self.G, ws, planes=self.planes(ws), **kwargs)

    def clear(self) -> None:
        """Forget every cached tri-plane."""
        self._cache.clear()


# --- Grids and videos -----------------------------------------------------------------------------------


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


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """[N,C,H,W] → [N,C,size,size], antialiased bilinear (identity when already that size)."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return F.interpolate(
        images.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True
    )


def render_turntable(
    renderer: TriPlaneRenderer,
    ws,
    path,
    frames: int = 120,
    fps: float = 60,
    size=None,
    depth: bool = False,
    side_by_side=None,
    progress: Progress = None,
    cameras=None,
    deterministic: bool = False,
    bitrate: str = "10M",
) -> Path:
    """Write an H.264 mp4 (yuv420p, plays in browsers) of ws seen along a camera path; returns its path.

    cameras: c [F,25] of any trajectory (see preim3d.cameras); default `turntable_path(frames)`, the
    official PREIM3D turntable (frames counts only then). Each frame is a row of square panels of
    side `size` (default the generator's image resolution; rounded up to an even number, as yuv420p
    needs):
        side_by_side[0] | side_by_side[1] | … | render of ws | depth of ws (if depth=True)
    A side_by_side entry that is a tensor is a latent rendered from the same camera (e.g. the
    reconstruction); anything else is an image (PIL, array or path; letterboxed into the panel), so
    side_by_side=[photo, ws_reconstruction] gives input | reconstruction | edit.
    The depth panel maps the depth range of the first batch of frames to white … black and keeps it
    for the whole video (a per-frame range would flicker). Frames are encoded as they are rendered,
    so memory does not grow with the frame count. progress(done_frames, total) after each batch.
    """
    path = Path(path)
    if path.suffix.lower() != ".mp4":
        raise ValueError(f"render_turntable writes H.264 .mp4 files; got {path.name!r}")
    cameras = turntable_path(frames) if cameras is None else torch.as_tensor(cameras).reshape(-1, 25)
    total = len(cameras)
    panel = int(size or renderer.G.img_resolution)
    panel += panel % 2
    entries = [*(side_by_side or []), torch.as_tensor(ws)]
    streams = [
        renderer.render_batches(e, cameras, deterministic) for e in entries if isinstance(e, torch.Tensor)
    ]
    stills = {
        i: np.asarray(ImageOps.pad(load_image(e), (panel, panel), Image.LANCZOS))
        for i, e in enumerate(entries)
        if not isinstance(e, torch.Tensor)
    }

    path.parent.mkdir(parents=True, exist_ok=True)
    writer = imageio_ffmpeg.write_frames(
        str(path),
        (panel * (len(entries) + int(depth)), panel),
        fps=fps,
        codec="libx264",
        pix_fmt_out="yuv420p",
        bitrate=bitrate,
        macro_block_size=2,
        ffmpeg_log_level="error",
        output_params=["-movflags", "+faststart"],
    )  # index first, so browsers start playing at once
    writer.send(None)
    try:
        done, depth_range = 0, None
        for outs in zip(*streams):
            n = len(outs[0]["image"])
            rendered = iter(outs)
            panels = [
                np.broadcast_to(stills[i], (n, panel, panel, 3))
                if i in stills
                else to_uint8(_resize(next(rendered)["image"], panel))
                for i in range(len(entries))
            ]
            if depth:
                d = outs[-1]["image_depth"]
                depth_range = depth_range or (d.min().item(), d.max().item())
                gray = depth_to_uint8(_resize(d, panel), depth_range)
                panels.append(np.repeat(gray[..., None], 3, axis=-1))
            for frame in np.concatenate(panels, axis=2):
                writer.send(np.ascontiguousarray(frame))
            done += n
            if progress is not None:
                progress(done, total)
        writer.close()
    except BaseException:
        writer.close()
        path.unlink(missing_ok=True)  # never leave a truncated video behind
        raise
    return path


# --- Meshes -------------------------------------------------------------------------------------------

TRIM = 30 / 256  # border of the box dropped before marching cubes, as the official shape extraction


def extract_mesh(
    G,
    ws,
    resolution: int = 256,
    threshold: float = 10.0,
    batch_points: int = 2**18,
    trim: float = TRIM,
    planes=None,
    progress: Progress = None,
) -> trimesh.Trimesh:
    """Surface of the density of ws, with vertex colours, in world coordinates.

    Grid: resolution³ points x_i = −b/2 + i·b/(resolution − 1), i = 0 … resolution − 1, per axis, over
    the cube of side b = box_warp centred at the origin, the extent of the tri-planes (the official
    gen_samples.py uses the same cube, box_warp · 1). The raw decoder output σ (before the
    renderer's softplus(σ − 1)) is sampled in chunks of `batch_points` points; a border of
    trim·resolution voxels is set below the threshold (the official drops 30/256 of each side, where
    the FFHQ model keeps background density), which also closes the surface there. Marching cubes
    (skimage) at σ = threshold (official level 10) gives the triangles, wound so normals point out.
    Vertex colours are the decoder's first three colour features at each vertex, the colours of the
    raw (pre-super-resolution) image, as sRGB uint8.

    Orientation: EG3D's world frame has y up and the face looking toward +z (the frontal camera sits
    at z = 2.7). That is already glTF's frame (+y up, the asset's front facing +z), which
    gr.Model3D's viewer and three.js use, so the vertices need no rotation.

    planes: the tri-planes of ws if already computed (TriPlaneRenderer.mesh passes its cached ones).
    progress(done_points, total_points) during the density sampling.
    """
    device = next(G.parameters()).device
    box = float(G.rendering_kwargs["box_warp"])
    if planes is None:
        with torch.no_grad():
            planes = G.synthesize_planes(
                torch.as_tensor(ws).to(device, torch.float32).reshape(1, G.num_ws, -1)
            )
    n = int(resolution)
    step = box / (n - 1)
    total = n**3
    sigma = np.empty(total, dtype=np.float32)
    for start in range(0, total, batch_points):
        index = torch.arange(start, min(start + batch_points, total), device=device)
        ijk = torch.stack((index // (n * n), index // n % n, index % n), dim=-1)
        _, chunk = _decode(G, planes, ijk * step - box / 2)
        sigma[start : start + len(index)] = chunk[:, 0].cpu().numpy()
        if progress is not None:
            progress(start + len(index), total)
    volume = sigma.reshape(n, n, n)  # volume[i, j, k] is the point (x_i, y_j, z_k)
    pad = int(trim * n)
    if pad:
        for axis in range(3):
            sl = [slice(None)] * 3
            sl[axis] = np.r_[0:pad, n - pad : n]
            volume[tuple(sl)] = threshold - 1
    if not volume.min() < threshold < volume.max():
        raise ValueError(
            f"no surface at threshold {threshold}: the density σ inside the box ranges over "
            f"[{volume.min():.3g}, {volume.max():.3g}]; pick a threshold inside that range"
        )
    vertices, faces, _, _ = marching_cubes(
        volume, level=threshold, spacing=(step, step, step), gradient_direction="ascent"
    )
    vertices = vertices - box / 2
    # "ascent": density is high inside, so this winds the faces with their normals pointing out.
    rgb, _ = _decode(G, planes, torch.as_tensor(vertices, dtype=torch.float32, device=device), batch_points)
    colors = (rgb[:, :3].clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy()
    alpha = np.full((len(colors), 1), 255, dtype=np.uint8)
    return trimesh.Trimesh(vertices, faces, vertex_colors=np.concatenate([colors, alpha], 1), process=False)


def _decode(G, planes, points: torch.Tensor, batch_points: int | None = None):
    """Decoder outputs (colour features [M,F], raw σ [M,1]) at world points [M,3], in chunks."""
    chunks = [points] if batch_points is None else points.split(batch_points)
    rgb, sigma = [], []
    with torch.no_grad():
        for chunk in chunks:
            features = sample_triplanes(planes, chunk.unsqueeze(0).float(), G.rendering_kwargs["box_warp"])
            r, s = G.decoder(features)
            rgb.append(r[0])
            sigma.append(s[0])
    return torch.cat(rgb), torch.cat(sigma)


def srgb_to_linear(u: np.ndarray) -> np.ndarray:
    """sRGB-encoded values in [0, 1] → linear light: u/12.92 below 0.04045, else ((u + 0.055)/1.055)^2.4."""
    u = np.asarray(u, dtype=np.float64)
    return np.where(u <= 0.04045, u / 12.92, ((u + 0.055) / 1.055) ** 2.4)


def export_mesh(mesh: trimesh.Trimesh, path) -> Path:
    """Write mesh to path by suffix: .glb (binary glTF 2.0), .ply (binary) or .obj; returns the path.

    PLY and OBJ store the sRGB vertex colours as they are. glTF defines vertex colours (COLOR_0) as
    linear light, so the GLB stores them converted from sRGB as float32, with an unlit material
    (KHR_materials_unlit; viewers without it fall back to a non-metallic, rough base colour): the
    colours already contain the generator's shading and show as rendered.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if len(mesh.faces) == 0:
        raise ValueError("the mesh has no faces; nothing to export")
    if suffix == ".glb":
        path.write_bytes(_glb_bytes(mesh))
    elif suffix in (".ply", ".obj"):
        mesh.export(path)
    else:
        raise ValueError(f"unsupported mesh format {path.suffix!r}: use .glb, .ply or .obj")
    return path


def _glb_bytes(mesh: trimesh.Trimesh) -> bytes:
    """A binary glTF 2.0 file of one triangle mesh: positions, normals, COLOR_0 (if any), uint32 indices."""
    arrays = [
        ("POSITION", np.asarray(mesh.vertices, dtype=np.float32), "VEC3"),
        ("NORMAL", np.asarray(mesh.vertex_normals, dtype=np.float32), "VEC3"),
    ]
    if mesh.visual.kind == "vertex":
        colors = np.asarray(mesh.visual.vertex_colors, dtype=np.float64) / 255
        colors[:, :3] = srgb_to_linear(colors[:, :3])
        arrays.append(("COLOR_0", colors.astype(np.float32), "VEC4"))
    indices = np.asarray(mesh.faces, dtype=np.uint32).reshape(-1)

    blob, views, accessors, attributes = bytearray(), [], [], {}
    for name, data, kind in [*arrays, ("indices", indices, "SCALAR")]:
        views.append(
            {
                "buffer": 0,
                "byteOffset": len(blob),
                "byteLength": data.nbytes,
                "target": 34963 if name == "indices" else 34962,
            }
        )  # element / vertex array
        accessor = {
            "bufferView": len(views) - 1,
            "count": len(data),
            "type": kind,
            "componentType": 5125 if name == "indices" else 5126,
        }  # uint32 / float32
        if name == "POSITION":
            accessor.update(min=data.min(0).tolist(), max=data.max(0).tolist())
        if name != "indices":
            attributes[name] = len(accessors)
        accessors.append(accessor)
        blob += data.tobytes()  # every array is a multiple of 4 bytes long, so all stay aligned
    gltf = {
        "asset": {"version": "2.0", "generator": "preim3d"},
        "scene": 0,
        "scenes": [{"nodes": [0]}],
        "nodes": [{"mesh": 0, "name": "face"}],
        "meshes": [
            {
                "primitives": [
                    {"attributes": attributes, "indices": len(accessors) - 1, "material": 0, "mode": 4}
                ]
            }
        ],
        "materials": [
            {
                "pbrMetallicRoughness": {
                    "baseColorFactor": [1, 1, 1, 1],
                    "metallicFactor": 0.0,
                    "roughnessFactor": 1.0,
                },
                "extensions": {"KHR_materials_unlit": {}},
            }
        ],
        "extensionsUsed": ["KHR_materials_unlit"],
        "buffers": [{"byteLength": len(blob)}],
        "bufferViews": views,
        "accessors": accessors,
    }
    text = json.dumps(gltf, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 4)
    chunks = (
        struct.pack("<II", len(text), 0x4E4F534A) + text + struct.pack("<II", len(blob), 0x004E4942) + blob
    )
    return struct.pack("<III", 0x46546C67, 2, 12 + len(chunks)) + chunks
