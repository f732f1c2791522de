"""Rendering: the tri-plane cache, batched views, grids, turntable videos, depth maps and meshes."""

from __future__ import annotations

import json
import math
import struct

import imageio_ffmpeg
import numpy as np
import pytest
import torch
import trimesh
from eg3d_reference import TINY, fill_random
from PIL import Image
from torch import nn

from preim3d.cameras import camera_vector, turntable_path
from preim3d.mesh import TRIM, export_mesh, extract_mesh, srgb_to_linear
from preim3d.networks.decoder import sample_triplanes
from preim3d.networks.triplane import TriPlaneGenerator
from preim3d.rendering import TriPlaneRenderer, depth_to_uint8, multiview_grid, to_uint8
from preim3d.turntable import _resize, render_turntable


def make_generator() -> TriPlaneGenerator:
    G = TriPlaneGenerator(**TINY[0]).eval().requires_grad_(False)
    fill_random(G, 3)
    G.neural_rendering_resolution = TINY[1]
    return G


@pytest.fixture(scope="module")
def G():
    return make_generator()


@pytest.fixture(scope="module")
def ws(G):
    # Two distinct latents (the tiny random mapping network puts all of its outputs close together).
    return torch.randn(2, G.num_ws, G.w_dim, generator=torch.Generator().manual_seed(0))


def count_backbone_runs(G, monkeypatch) -> list:
    calls = []
    original = G.synthesize_planes

    def counted(ws, noise_mode="const"):
        calls.append(ws)
        return original(ws, noise_mode=noise_mode)

    monkeypatch.setattr(G, "synthesize_planes", counted)
    return calls


def seeded(fn, *args, **kwargs):
    torch.manual_seed(1234)
    return fn(*args, **kwargs)


# --- conversions --------------------------------------------------------------------------------------


def test_to_uint8_uses_the_official_rounding_and_layout():
    x = torch.tensor([-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0]).view(1, 1, 1, 7).expand(1, 3, 1, 7).clone()
    x[:, 1] = 0.0
    u = to_uint8(x)
    assert u.shape == (1, 1, 7, 3) and u.dtype == np.uint8
    np.testing.assert_array_equal(u[0, 0, :, 0], [0, 0, 64, 128, 191, 255, 255])
    assert (u[0, 0, :, 1] == 128).all()


def test_depth_maps_are_bright_near_and_follow_the_chosen_range():
    depth = torch.tensor([[2.4, 2.6], [2.8, 3.0]]).view(1, 1, 2, 2)
    np.testing.assert_array_equal(depth_to_uint8(depth)[0], [[255, 170], [85, 0]])
    fixed = depth_to_uint8(depth, depth_range=(2.25, 3.3))[0]
    np.testing.assert_array_equal(fixed, np.round(255 * (3.3 - depth[0, 0].numpy()) / 1.05))


# --- the tri-plane cache ------------------------------------------------------------------------------


@pytest.mark.parametrize("deterministic", [False, True])
def test_one_view_equals_the_generator_bit_for_bit(G, ws, deterministic):
    c = camera_vector(0.2, -0.1)
    expected = seeded(G.synthesis, ws[:1], c, deterministic=deterministic)
    out = seeded(TriPlaneRenderer(G).render, ws[:1], c, deterministic=deterministic)
    for key in ("image", "image_raw", "image_depth"):
        assert torch.equal(out[key], expected[key]), key


@pytest.mark.parametrize("deterministic", [False, True])
def test_cached_and_uncached_rendering_are_identical(G, ws, monkeypatch, deterministic):
    c = turntable_path(5)
    runs = count_backbone_runs(G, monkeypatch)
    cached = TriPlaneRenderer(G, batch_size=2)
    first = seeded(cached.render, ws[:1], c, deterministic=deterministic)
    again = seeded(cached.render, ws[:1].clone(), c, deterministic=deterministic)  # equal content, new tensor
    assert len(runs) == 1
    uncached = seeded(
        TriPlaneRenderer(G, batch_size=2, cache_size=0).render, ws[:1], c, deterministic=deterministic
    )
    assert len(runs) == 2
    for key in ("image", "image_raw", "image_depth"):
        assert torch.equal(first[key], again[key]) and torch.equal(first[key], uncached[key]), key
    assert first["image"].shape == (5, 3, G.img_resolution, G.img_resolution)


def test_cache_keeps_the_most_recently_used_latents(G, ws, monkeypatch):
    runs = count_backbone_runs(G, monkeypatch)
    renderer = TriPlaneRenderer(G, cache_size=1)
    a, b = ws[:1], ws[1:]
    renderer.planes(a)
    renderer.planes(a)
    assert len(runs) == 1
    renderer.planes(b)  # evicts a
    renderer.planes(a)
    assert len(runs) == 3
    assert not torch.equal(renderer.planes(a), renderer.planes(b))
    renderer.clear()
    renderer.planes(a)
    assert len(runs) == 5


def test_batches_and_progress(G, ws):
    c = camera_vector([-0.3, -0.1, 0.0, 0.1, 0.3], [0.0] * 5)
    calls = []
    batched = TriPlaneRenderer(G, batch_size=2).render(
        ws[:1], c, deterministic=True, progress=lambda *a: calls.append(a)
    )
    assert calls == [(2, 5), (4, 5), (5, 5)]
    single = TriPlaneRenderer(G, batch_size=1).render(ws[:1], c, deterministic=True)
    torch.testing.assert_close(batched["image"], single["image"], atol=1e-4, rtol=0)
    assert (batched["image"][0] - batched["image"][-1]).abs().mean() > 1e-3  # the views differ
    with pytest.raises(ValueError, match="one latent"):
        TriPlaneRenderer(G).render(ws, c)
    # outputs it does not make are refused before any work, for one code or several
    renderer = TriPlaneRenderer(G)
    for asked in [("image", "normals"), ()]:
        with pytest.raises(ValueError, match="outputs must be some of"):
            next(renderer.render_batches(ws[:1], c, outputs=asked))
        with pytest.raises(ValueError, match="outputs must be some of"):
            next(renderer.render_codes(ws[:2], c[:2], outputs=asked))


def test_multiview_grid_has_the_official_layout(G, ws):
    renderer = TriPlaneRenderer(G, batch_size=1)
    grid = np.asarray(multiview_grid(renderer, ws[:1], deterministic=True))
    r = G.img_resolution
    assert grid.shape == (2 * r, 2 * r, 3)
    yaw, pitch = math.pi / 9, math.pi / 36
    views = {
        (-yaw, -pitch): grid[:r, :r],
        (yaw, -pitch): grid[:r, r:],
        (-yaw, pitch): grid[r:, :r],
        (yaw, pitch): grid[r:, r:],
    }
    for (y, p), quadrant in views.items():
        expected = to_uint8(renderer.render(ws[:1], camera_vector(y, p), deterministic=True)["image"])[0]
        np.testing.assert_array_equal(quadrant, expected)
    assert not np.array_equal(grid[:r, :r], grid[:r, r:])


# --- videos -------------------------------------------------------------------------------------------


def read_video(path):
    frames = imageio_ffmpeg.read_frames(str(path))
    meta = next(frames)
    width, height = meta["size"]
    return meta, np.stack([np.frombuffer(f, np.uint8).reshape(height, width, 3) for f in frames])


def test_turntable_video_is_h264_with_the_requested_frames_and_layout(G, ws, tmp_path):
    photo = Image.new("RGB", (90, 90), (200, 30, 60))
    calls = []
    path = render_turntable(
        TriPlaneRenderer(G, batch_size=4),
        ws[1:],
        tmp_path / "turntable.mp4",
        frames=6,
        fps=24,
        size=63,
        depth=True,
        side_by_side=[photo, ws[:1]],
        deterministic=True,
        progress=lambda *a: calls.append(a),
    )
    meta, video = read_video(path)
    assert meta["codec"] == "h264" and meta["pix_fmt"].startswith("yuv420p") and meta["fps"] == 24
    assert meta["size"] == (4 * 64, 64)  # input | reconstruction | edit | depth; 63 rounded up to even
    assert video.shape == (6, 64, 256, 3)
    assert calls == [(4, 6), (6, 6)]

    renderer = TriPlaneRenderer(G, batch_size=4)
    first_batch = renderer.render(ws[1:], turntable_path(6)[:4], deterministic=True)
    reconstruction = to_uint8(
        _resize(renderer.render(ws[:1], turntable_path(6)[:1], deterministic=True)["image"], 64)
    )[0]
    edit = to_uint8(_resize(first_batch["image"][:1], 64))[0]
    depth_range = first_batch["image_depth"].min().item(), first_batch["image_depth"].max().item()
    depth = depth_to_uint8(_resize(first_batch["image_depth"][:1], 64), depth_range)[0]

    def error(panel, expected):
        return np.abs(video[0][:, 64 * panel : 64 * (panel + 1)].astype(float) - expected).mean()

    assert error(0, np.array([200, 30, 60])) < 4
    assert error(1, reconstruction) < 4 and error(2, edit) < 4 and error(3, depth[..., None]) < 4
    assert error(1, edit) > 4 * error(2, edit)  # the panels are not interchangeable


def test_failed_video_leaves_no_file_and_wrong_suffix_is_refused(G, ws, tmp_path):
    def stop(done, total):
        raise KeyboardInterrupt

    path = tmp_path / "stopped.mp4"
    with pytest.raises(KeyboardInterrupt):
        render_turntable(TriPlaneRenderer(G, batch_size=2), ws[:1], path, frames=4, progress=stop)
    assert not path.exists()
    with pytest.raises(ValueError, match="mp4"):
        render_turntable(TriPlaneRenderer(G), ws[:1], tmp_path / "video.webm", frames=2)


# --- meshes -------------------------------------------------------------------------------------------

CENTRE, RADIUS = np.array([0.08, -0.05, 0.1]), 0.2


class SphereDecoder(nn.Module):
    """Reads designed planes: σ = 10 + 200 (R² − Σ plane channel 0),
    colours (0.5 + Σ channel 1, 0.25, 0.75)."""

    def forward(self, features):
        total = features.sum(1)
        sigma = 10 + 200 * (RADIUS**2 - total[..., :1])
        rgb = torch.cat(
            [0.5 + total[..., 1:2], torch.full_like(sigma, 0.25), torch.full_like(sigma, 0.75)], -1
        )
        return rgb, sigma


def sphere_planes(size=64) -> torch.Tensor:
    """Planes holding |p − centre|² split over the (x, y) and (x, z) planes, and x for the colour."""
    u = (torch.arange(size, dtype=torch.float64) + 0.5) / size - 0.5  # pixel centres, box_warp 1
    rows, cols = torch.meshgrid(u, u, indexing="ij")  # plane (a, b): column = a, row = b
    cx, cy, cz = CENTRE
    planes = torch.zeros(1, 3, 2, size, size, dtype=torch.float64)
    planes[0, 0, 0] = (cols - cx) ** 2 + (rows - cy) ** 2
    planes[0, 1, 0] = (rows - cz) ** 2
    planes[0, 0, 1] = cols
    return planes.float()


def test_mesh_is_in_world_coordinates_with_outward_faces_and_colours(ws, marching_cubes_path):
    G = make_generator()
    G.decoder = SphereDecoder()
    calls = []
    mesh = extract_mesh(
        G,
        ws[:1],
        resolution=48,
        batch_points=5000,
        planes=sphere_planes(),
        progress=lambda *a: calls.append(a),
    )
    inside = (48 - 2 * int(TRIM * 48)) ** 3  # the trimmed border is not sampled
    assert calls[-1] == (inside, inside) and len(calls) == math.ceil(inside / 5000)
    assert len(marching_cubes_path.calls) == marching_cubes_path.torch
    distance = np.linalg.norm(mesh.vertices - CENTRE, axis=1)
    assert np.abs(distance - RADIUS).max() < 0.01
    np.testing.assert_allclose(mesh.vertices.mean(0), CENTRE, atol=2e-3)
    assert mesh.is_watertight and mesh.volume > 0  # faces wound outward
    assert mesh.volume == pytest.approx(4 / 3 * math.pi * RADIUS**3, rel=0.03)
    colors = mesh.visual.vertex_colors
    np.testing.assert_allclose(colors[:, 0], (0.5 + mesh.vertices[:, 0]) * 255, atol=1.5)
    assert (colors[:, 1] == 64).all() and (colors[:, 2] == 191).all() and (colors[:, 3] == 255).all()


def test_mesh_of_the_generator_exports_to_glb_ply_obj(G, ws, tmp_path):
    renderer = TriPlaneRenderer(G)
    planes = renderer.planes(ws[:1])
    probe = torch.rand(1, 4096, 3, generator=torch.Generator().manual_seed(0)) * 0.6 - 0.3
    _, sigma = G.decoder(sample_triplanes(planes, probe, 1.0))
    threshold = sigma.quantile(0.7).item()
    mesh = extract_mesh(G, ws[:1], resolution=32, threshold=threshold, planes=planes)
    assert len(mesh.vertices) > 100 and np.abs(mesh.vertices).max() <= 0.5
    srgb = mesh.visual.vertex_colors

    glb = export_mesh(mesh, tmp_path / "face.glb")
    loaded = trimesh.load(glb, force="mesh", process=False, skip_materials=True)  # COLOR_0 as vertex colours
    np.testing.assert_allclose(loaded.vertices, mesh.vertices, atol=1e-6)
    assert np.array_equal(loaded.faces, mesh.faces)
    linear = np.round(srgb_to_linear(srgb[:, :3] / 255) * 255)
    assert np.abs(loaded.visual.vertex_colors[:, :3].astype(int) - linear).max() <= 1
    data = glb.read_bytes()
    header = json.loads(data[20 : 20 + struct.unpack("<I", data[12:16])[0]])
    material = header["materials"][0]
    assert "KHR_materials_unlit" in material["extensions"]
    assert material["pbrMetallicRoughness"]["metallicFactor"] == 0

    for suffix in (".ply", ".obj"):
        again = trimesh.load(export_mesh(mesh, tmp_path / f"face{suffix}"), force="mesh", process=False)
        np.testing.assert_allclose(again.vertices, mesh.vertices, atol=1e-5)
        assert np.abs(again.visual.vertex_colors.astype(int) - srgb).max() <= 1
    with pytest.raises(ValueError, match="unsupported"):
        export_mesh(mesh, tmp_path / "face.stl")


def test_the_gpu_marching_cubes_gives_the_same_mesh(ws, monkeypatch):
    """On CUDA devices the mesh goes through preim3d.marching_cubes: here forced on the CPU, against
    scikit-image's on the same sphere (smooth, so the triangles agree too)."""
    import preim3d.mesh

    assert preim3d.mesh.uses_torch_marching_cubes("cuda") and preim3d.mesh.uses_torch_marching_cubes("cuda:1")
    assert not preim3d.mesh.uses_torch_marching_cubes("cpu")
    G = make_generator()
    G.decoder = SphereDecoder()
    reference = extract_mesh(G, ws[:1], resolution=48, planes=sphere_planes())
    monkeypatch.setattr(preim3d.mesh, "uses_torch_marching_cubes", lambda device: True)
    mesh = extract_mesh(G, ws[:1], resolution=48, planes=sphere_planes())
    assert len(mesh.vertices) == len(reference.vertices) and len(mesh.faces) == len(reference.faces)
    order, reference_order = np.lexsort(mesh.vertices.T), np.lexsort(reference.vertices.T)
    np.testing.assert_allclose(mesh.vertices[order], reference.vertices[reference_order], atol=1e-6)
    colors, reference_colors = (
        mesh.visual.vertex_colors[order],
        reference.visual.vertex_colors[reference_order],
    )
    assert np.abs(colors.astype(int) - reference_colors).max() <= 1
    assert (mesh.vertex_normals[order] * reference.vertex_normals[reference_order]).sum(1).min() > 0.99
    assert mesh.is_watertight and mesh.volume == pytest.approx(reference.volume, rel=1e-3)
    assert mesh.area == pytest.approx(reference.area, rel=1e-3)


def test_mesh_threshold_outside_the_density_is_explained(G, ws, marching_cubes_path):
    with pytest.raises(ValueError, match="no surface at threshold"):
        extract_mesh(G, ws[:1], resolution=16, threshold=1e9)
    assert not marching_cubes_path.calls  # refused before either marching cubes
