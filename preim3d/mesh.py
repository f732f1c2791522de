"""Meshes of a latent: marching cubes of the generator's density, and export to GLB, PLY or OBJ.

    mesh = extract_mesh(G, ws, planes=renderer.planes(ws))    # reuse a TriPlaneRenderer's cached planes
    export_mesh(mesh, "face.glb")

GLB files are written here (binary glTF 2.0 with linear-light vertex colours and an unlit material);
PLY and OBJ through trimesh.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import torch
import trimesh
from skimage.measure import marching_cubes

from .networks.decoder import sample_triplanes
from .rendering import Progress

# --- Extraction ----------------------------------------------------------------------------------------

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

    planes: the tri-planes of ws if already computed, e.g. a TriPlaneRenderer's cached `renderer.planes(ws)`.
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


# --- Export --------------------------------------------------------------------------------------------


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
