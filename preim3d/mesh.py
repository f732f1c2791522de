"""Meshes of a latent: marching cubes of the generator's density, and export to GLB, PLY or OBJ.

    mesh = extract_mesh(G, ws, planes=renderer.planes(ws))    # reuse a TriPlaneRenderer's cached planes
    export_mesh(mesh, "face.glb")

GLB files are written here (binary glTF 2.0 with linear-light vertex colours and an unlit material);
PLY and OBJ through trimesh.
"""

from __future__ import annotations

import json
import struct
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import trimesh
from skimage.measure import marching_cubes as skimage_marching_cubes

from .errors import InvalidValueError, MeshLevelWarning
from .marching_cubes import marching_cubes as torch_marching_cubes
from .networks.decoder import SAMPLE_AND_DECODE
from .rendering import Progress
from .validation import check_mesh_threshold

# --- Extraction ----------------------------------------------------------------------------------------

TRIM = 30 / 256  # border of the box dropped before marching cubes, as the official shape extraction
OFFICIAL_LEVEL = 10.0  # σ of the official shape extraction's surface


def extract_mesh(
    G,
    ws,
    resolution: int = 256,
    threshold: float | str = "auto",
    batch_points: int | None = None,
    trim: float = TRIM,
    planes=None,
    progress: Progress = None,
) -> trimesh.Trimesh:
    """Surface of the density of ws, with vertex colours and normals, in world coordinates.

    Grid: resolution³ points x_i = −b/2 + i·b/(resolution − 1), i = 0 … resolution − 1, per axis, over
    the cube of side b = box_warp centred at the origin, the extent of the tri-planes (the official
    gen_samples.py uses the same cube, box_warp · 1). A border of trim·resolution voxels counts as
    below the threshold (the official drops 30/256 of each side, where the FFHQ model keeps
    background density), which also closes the surface there; the raw decoder output σ (before the
    renderer's softplus(σ − 1)) is sampled at the points inside it, `batch_points` at a time
    (default 2²² on a GPU, 2¹⁸ elsewhere; the fused kernel in the fast mode). Marching cubes at
    σ = threshold, on the smallest box around the points above it, gives the triangles, wound so normals
    point out, and the vertex normals (the density's gradient); see `triangulate` (PyTorch on a GPU,
    scikit-image elsewhere, the same surface). "auto" takes the official level 10, or one from the
    density where it never gets there (`surface_level`). Vertex colours are
    the decoder's first three colour features at each vertex, the colours of the raw
    (pre-super-resolution) image, as sRGB uint8.

    Orientation: EG3D's world frame has y up and the face looking toward +z (the frontal camera sits
    at z = 2.7). That is already glTF's frame (+y up, the asset's front facing +z), which
    gr.Model3D's viewer and three.js use, so the vertices need no rotation.

    planes: the tri-planes of ws if already computed, e.g. a TriPlaneRenderer's cached `renderer.planes(ws)`.
    progress(done_points, total_points) during the density sampling.
    """
    device = next(G.parameters()).device
    if planes is None:
        with torch.no_grad():
            planes = G.synthesize_planes(
                torch.as_tensor(ws).to(device, torch.float32).reshape(1, G.num_ws, -1)
            )
    volume, pad = density_grid(G, planes, resolution, trim, batch_points, progress)
    threshold = surface_level(volume, threshold, trimmed=pad > 0)
    box, first = surface_box(volume, threshold, pad)
    size, step = _grid(G, resolution)
    vertices, faces, normals = triangulate(box, threshold, step)
    vertices += torch.as_tensor(first * step - size / 2, dtype=vertices.dtype, device=vertices.device)
    rgb, _ = _decode(G, planes, vertices.to(device, torch.float32))
    colors = (rgb[:, :3].float().clamp(0, 1) * 255 + 0.5).to(torch.uint8)
    colors = torch.cat([colors, torch.full_like(colors[:, :1], 255)], 1)
    return trimesh.Trimesh(
        vertices.cpu().numpy(),
        faces.cpu().numpy(),
        vertex_normals=normals.cpu().numpy(),
        vertex_colors=colors.cpu().numpy(),
        process=False,
    )


def density_grid(
    G, planes, resolution: int = 256, trim: float = TRIM, batch_points: int | None = None, progress=None
) -> tuple[torch.Tensor, int]:
    """The raw σ at the grid points inside the trimmed border (see `extract_mesh`), on G's device, and
    that border's width pad in voxels: sigma[i, j, k] is the point (x_{pad+i}, y_{pad+j}, z_{pad+k})."""
    device = next(G.parameters()).device
    box, step = _grid(G, resolution)
    n = int(resolution)
    pad = int(trim * n)
    inner = n - 2 * pad  # grid points per axis inside the trimmed border
    if inner < 2:
        raise ValueError(f"trim={trim} leaves no grid inside the box at resolution {n}")
    batch_points = batch_points or (2**22 if device.type == "cuda" else 2**18)
    total = inner**3
    sigma = torch.empty(total, dtype=torch.float32, device=device)
    for start in range(0, total, batch_points):
        index = torch.arange(start, min(start + batch_points, total), device=device)
        ijk = torch.stack((index // (inner * inner), index // inner % inner, index % inner), dim=-1) + pad
        sigma[start : start + len(index)] = _decode(G, planes, ijk * step - box / 2)[1][:, 0]
        if progress is not None:
            progress(start + len(index), total)
    return sigma.view(inner, inner, inner), pad


def _grid(G, resolution: int) -> tuple[float, float]:
    """The side of the sampled cube (box_warp) and the step between grid points at this resolution."""
    box = float(G.rendering_kwargs["box_warp"])
    return box, box / (int(resolution) - 1)


def surface_box(volume: torch.Tensor, level: float, pad: int) -> tuple[torch.Tensor, np.ndarray]:
    """The part of the sampled σ that marching cubes needs: the box around the points above the level,
    one voxel wider, with one more layer below the level where the trimmed border was (pad > 0); and the
    grid index of its first point."""
    above = volume > level
    lo, hi = [], []
    for axis in range(3):
        hit = above.any(dim=[d for d in range(3) if d != axis]).nonzero()
        lo.append(max(int(hit[0]) - 1, 0))
        hi.append(min(int(hit[-1]) + 2, volume.shape[axis]))
    box = volume[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    if pad:
        box = F.pad(box[None, None], (1,) * 6, value=level - 1)[0, 0]
    return box, np.array(lo, dtype=np.float64) + pad - (1 if pad else 0)


def uses_torch_marching_cubes(device) -> bool:
    """Whether marching cubes runs in PyTorch on the grid's device (`preim3d.marching_cubes`) rather than
    in scikit-image on the host: on CUDA devices. On a CPU scikit-image's is the faster (on two cores
    at 128³ and 256³, 1.3–3× on noise with a million vertices, 3–10× on a sphere)."""
    return torch.device(device).type == "cuda"


def triangulate(volume: torch.Tensor, level: float, step: float):
    """Vertices (grid index · step), faces wound so that their normals point from σ above the level toward
    σ below it (out of the head), and unit vertex normals down σ's gradient (out as well), as tensors:
    on the volume's device through `preim3d.marching_cubes`, or from scikit-image on the CPU."""
    if uses_torch_marching_cubes(volume.device):
        return torch_marching_cubes(volume, level, (step,) * 3)
    vertices, faces, normals, _ = skimage_marching_cubes(
        volume.cpu().numpy(), level=level, spacing=(step,) * 3, gradient_direction="ascent"
    )
    return tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in (vertices, faces, normals))


def surface_level(sigma, threshold: float | str = "auto", trimmed: bool = True) -> float:
    """The density level at which to cut the surface of the raw densities σ inside the trimmed box.

    sigma: σ at the grid points inside the trimmed border (numpy array or tensor). threshold: a
    number is used as it is; "auto" takes the official level 10 where σ exceeds it somewhere, else
    the middle of σ's range, (min + max) / 2, with a MeshLevelWarning: random or partly trained
    generators often stay below 10 (official-format random weights give σ in about [-3, 9]), and
    the middle of the range always has a surface. trimmed: the border around `sigma` counts as
    below the level, so a surface needs only σ > level somewhere (without it, also σ < level).
    Raises InvalidValueError when there is no surface at the level.
    """
    threshold = check_mesh_threshold(threshold)
    low, high = float(sigma.min()), float(sigma.max())
    if low == high:
        raise InvalidValueError(
            f"The density is the same everywhere inside the box (σ = {low:.3g}): there is no shape to mesh."
        )
    if threshold != "auto":
        level = threshold
    elif high > OFFICIAL_LEVEL:
        level = OFFICIAL_LEVEL
    else:
        level = (low + high) / 2
        warnings.warn(
            f"The density never reaches the official mesh level σ = {OFFICIAL_LEVEL:g} (inside the "
            f"box it ranges over [{low:.3g}, {high:.3g}]), so the mesh is the surface at "
            f"σ = {level:.3g}, the middle of that range. Give a threshold (--mesh-threshold on the "
            "command line) for another.",
            MeshLevelWarning,
            stacklevel=3,
        )
    if not (high > level and (trimmed or low < level)):
        raise InvalidValueError(
            f"There is no surface at threshold {level:.3g}: inside the box the density σ ranges over "
            f"[{low:.3g}, {high:.3g}]. Choose a threshold inside that range, or 'auto'."
        )
    return level


def _decode(G, planes, points: torch.Tensor):
    """Decoder outputs at world points [M,3]: colour features [M,F] and raw σ [M,1], through the
    sampler the renderer uses (the fused kernel in the fast mode)."""
    zeros = torch.zeros(1, len(points), 1, 1, device=points.device)
    with torch.no_grad():
        colors, sigma = SAMPLE_AND_DECODE(
            planes,
            G.decoder,
            points.float()[None],
            torch.zeros_like(points)[None],
            zeros,
            G.rendering_kwargs["box_warp"],
        )
    return colors[0, :, :, 0].t(), sigma[0]


# --- Export --------------------------------------------------------------------------------------------


def srgb_to_linear(u: np.ndarray) -> np.ndarray:
    """sRGB-encoded values in [0, 1] → linear light: u/12.92 below 0.04045, else ((u + 0.055)/1.055)^2.4."""
    u = np.asarray(u, dtype=np.float64)
    return np.where(u <= 0.04045, u / 12.92, ((u + 0.055) / 1.055) ** 2.4)


def export_mesh(mesh: trimesh.Trimesh, path) -> Path:
    """Write mesh to path by suffix: .glb (binary glTF 2.0), .ply (binary) or .obj; returns the path.

    PLY and OBJ store the sRGB vertex colours as they are. glTF defines vertex colours (COLOR_0) as
    linear light, so the GLB stores them converted from sRGB as float32 RGB, with an unlit material
    (KHR_materials_unlit; viewers without it fall back to a non-metallic, rough base colour): the
    colours already contain the generator's shading and show as rendered.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if len(mesh.faces) == 0:
        raise ValueError("the mesh has no faces; nothing to export")
    if suffix == ".glb":
        _write_glb(mesh, path)
    elif suffix in (".ply", ".obj"):
        mesh.export(path)
    else:
        raise ValueError(f"unsupported mesh format {path.suffix!r}: use .glb, .ply or .obj")
    return path


_GLB_ROWS = 2**16  # rows converted and written at a time

# Linear light of each 8-bit sRGB value.
_SRGB_TO_LINEAR = srgb_to_linear(np.arange(256) / 255).astype(np.float32)


def _write_glb(mesh: trimesh.Trimesh, path: Path) -> None:
    """A binary glTF 2.0 file of one triangle mesh: positions, normals, COLOR_0 (if any), uint32
    indices. Each array is converted to its stored type a block of rows at a time into one reused
    buffer and written (no converted copy of the whole mesh in memory, which also saves time)."""
    # (name, source rows, conversion of a block of them into a float32 / uint32 buffer, type)
    arrays = [
        ("POSITION", np.asarray(mesh.vertices), np.copyto, "VEC3"),
        ("NORMAL", np.asarray(mesh.vertex_normals), np.copyto, "VEC3"),
    ]
    if mesh.visual.kind == "vertex":
        colors = np.asarray(mesh.visual.vertex_colors)[:, :3]
        arrays.append(("COLOR_0", colors, lambda out, rows: np.take(_SRGB_TO_LINEAR, rows, out=out), "VEC3"))
    arrays.append(
        (
            "indices",
            np.asarray(mesh.faces),
            lambda out, rows: np.copyto(out, rows, casting="unsafe"),
            "SCALAR",
        )
    )

    views, accessors, attributes, offset = [], [], {}, 0
    for name, data, _, kind in arrays:
        target = 34963 if name == "indices" else 34962  # element / vertex array
        length = data.size * 4  # float32 or uint32 each: every array stays 4-byte aligned
        views.append({"buffer": 0, "byteOffset": offset, "byteLength": length, "target": target})
        accessor = {
            "bufferView": len(views) - 1,
            "count": data.size if name == "indices" else len(data),
            "type": kind,
            "componentType": 5125 if name == "indices" else 5126,  # uint32 / float32
        }
        if name == "POSITION":  # of the float32 values; rounding keeps the order, so min and max commute
            # with it (column by column: numpy reduces an [N, 3] array over N ten times slower)
            accessor.update(
                min=[float(np.float32(c.min())) for c in data.T],
                max=[float(np.float32(c.max())) for c in data.T],
            )
        if name != "indices":
            attributes[name] = len(accessors)
        accessors.append(accessor)
        offset += length
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
        "buffers": [{"byteLength": offset}],
        "bufferViews": views,
        "accessors": accessors,
    }
    text = json.dumps(gltf, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 4)
    with open(path, "wb") as f:
        f.write(struct.pack("<III", 0x46546C67, 2, 12 + 8 + len(text) + 8 + offset))
        f.write(struct.pack("<II", len(text), 0x4E4F534A) + text)
        f.write(struct.pack("<II", offset, 0x004E4942))
        buffer = np.empty((_GLB_ROWS, 3), np.float32)
        for name, data, convert, _ in arrays:
            out = buffer.view(np.uint32) if name == "indices" else buffer
            for start in range(0, len(data), _GLB_ROWS):
                rows = data[start : start + _GLB_ROWS]
                convert(out[: len(rows)], rows)
                f.write(memoryview(out[: len(rows)]).cast("B"))
