"""Marching cubes in PyTorch against scikit-image's (Lewiner) on the same grids.

PREIM3D_TEST_DEVICE=cuda runs them on a GPU.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import trimesh
from scipy.spatial import cKDTree
from skimage.measure import marching_cubes as skimage_marching_cubes

from preim3d.marching_cubes import marching_cubes

DEVICE = os.environ.get("PREIM3D_TEST_DEVICE", "cpu")


def grid(n: int) -> list[np.ndarray]:
    x = np.linspace(-1, 1, n)
    return np.meshgrid(x, x, x, indexing="ij")


def sphere(n=36):
    x, y, z = grid(n)
    return 0.6 - np.sqrt((x - 0.05) ** 2 + (y + 0.1) ** 2 + z**2), 0.0


def torus(n=40):
    x, y, z = grid(n)
    return 0.2 - np.sqrt((np.sqrt(x**2 + z**2) - 0.55) ** 2 + y**2), 0.0


def waves(n=40, seed=0, count=12, wavelength=10):
    """Random plane waves (wavelengths of 10 to 17 voxels) minus a bowl that closes the surface inside the
    grid: many pieces of surface, the odd ambiguous cube; and the exact gradient, in grid units."""
    rng = np.random.default_rng(seed)
    k = rng.standard_normal((count, 3))
    k *= 2 * np.pi / wavelength * rng.uniform(0.6, 1, (count, 1)) / np.linalg.norm(k, axis=1, keepdims=True)
    phase = rng.uniform(0, 2 * np.pi, count)
    centre = (n - 1) / 2

    def gradient(p):
        q = p - centre
        bowl = -36 * ((q**2).sum(-1, keepdims=True) / centre**2) ** 2 * q / centre**2
        return -(np.sin(q @ k.T + phase)[..., None] * k).sum(-2) / np.sqrt(count / 2) + bowl

    q = np.stack(np.meshgrid(*[np.arange(n)] * 3, indexing="ij"), -1) - centre
    field = np.cos(q @ k.T + phase).sum(-1) / np.sqrt(count / 2) - 6 * ((q**2).sum(-1) / centre**2) ** 3
    return field, 0.3, gradient


def white_noise(n=24, seed=1):
    """Independent values at every point, closed: every ambiguous case, many times."""
    field = np.random.default_rng(seed).uniform(-1, 1, (n, n, n))
    field[[0, -1]] = field[:, [0, -1]] = field[:, :, [0, -1]] = -1
    return field, 0.0


def both(field, level, spacing=(1.0, 1.0, 1.0)):
    """(vertices, faces, normals) of skimage and of ours, as numpy arrays."""
    volume = np.asarray(field, np.float32)
    reference = skimage_marching_cubes(volume, level, spacing=spacing, gradient_direction="ascent")[:3]
    ours = marching_cubes(torch.from_numpy(volume).to(DEVICE), level, spacing)
    return reference, tuple(a.cpu().numpy() for a in ours)


def matched(reference_vertices, vertices, spacing=(1.0, 1.0, 1.0)):
    """Indices into skimage's vertices of ours, checking they are the same points: every skimage vertex
    on a grid edge exactly once (the others are Lewiner's centre vertices); returns (indices, centres)."""
    index = reference_vertices / np.array(spacing)
    on_edge = (np.abs(index - np.round(index)) < 1e-6).sum(1) >= 2
    distance, found = cKDTree(reference_vertices).query(vertices)
    assert distance.max() < 2e-5 * max(spacing)
    assert on_edge[found].all() and len(np.unique(found)) == len(vertices) == on_edge.sum()
    return found, (~on_edge).sum()


@pytest.mark.parametrize("make", [sphere, torus, waves])
def test_the_surface_of_skimage_on_smooth_fields(make):
    field, level, *exact = make()
    (ref_v, ref_f, ref_n), (v, f, n) = both(field, level)
    assert v.dtype == np.float32 and f.dtype == np.int32 and n.dtype == np.float32
    found, centres = matched(ref_v, v)
    assert centres <= 0.001 * len(ref_v)  # ambiguous cubes are rare on smooth fields
    reference, ours = trimesh.Trimesh(ref_v, ref_f, process=False), trimesh.Trimesh(v, f, process=False)
    assert reference.is_watertight and ours.is_watertight
    assert ours.area == pytest.approx(reference.area, rel=2e-3)
    # wound the same way: the same enclosed volume, positive, and faces facing along the vertex normals
    assert ours.volume == pytest.approx(reference.volume, rel=2e-3) and ours.volume > 0
    assert ((ours.face_normals * n[f].sum(1)).sum(1) > 0).mean() > 0.999
    np.testing.assert_allclose(np.linalg.norm(n, axis=1), 1, atol=1e-5)
    cosine = (n * ref_n[found]).sum(1)
    if not exact:
        assert cosine.min() > 0.99
        return
    # Near the saddles of the waves the two estimates of the gradient part a little; ours is the closer
    # to the exact one.
    assert np.median(cosine) > 0.999 and np.percentile(cosine, 1) > 0.95
    truth = -exact[0](v.astype(np.float64))
    truth /= np.linalg.norm(truth, axis=1, keepdims=True)
    ours_to_truth, reference_to_truth = (n * truth).sum(1), (ref_n[found] * truth).sum(1)
    assert np.median(ours_to_truth) > 0.999 and np.percentile(ours_to_truth, 1) > 0.95
    assert np.arccos(ours_to_truth.clip(-1, 1)).mean() < np.arccos(reference_to_truth.clip(-1, 1)).mean()


def test_exact_analytic_sphere_and_outward_normals():
    field, _ = sphere(48)
    _, (v, f, n) = both(field, 0.0)
    centre = (np.array([0.05, -0.1, 0.0]) + 1) * 47 / 2  # in grid units
    radial = (v - centre) / np.linalg.norm(v - centre, axis=1, keepdims=True)
    assert np.abs(np.linalg.norm(v - centre, axis=1) - 0.6 * 47 / 2).max() < 0.05
    assert (n * radial).sum(1).min() > 0.999  # normals point out, down the values


def test_spacing_scales_the_vertices_and_keeps_the_normals_physical():
    field, level, _ = waves(32, seed=3)
    spacing = (0.5, 1.0, 2.0)
    (ref_v, _, _), (v, f, n) = both(field, level, spacing)
    matched(ref_v, v, spacing)
    _, (unit_v, unit_f, unit_n) = both(field, level)
    np.testing.assert_allclose(v, unit_v * np.array(spacing, np.float32), rtol=1e-6)
    np.testing.assert_array_equal(f, unit_f)
    # the gradient in world units: ∂/∂x_a = ∂/∂i_a / spacing_a (skimage's normals stay in index units)
    scaled = unit_n / np.array(spacing)
    np.testing.assert_allclose(n, scaled / np.linalg.norm(scaled, axis=1, keepdims=True), atol=1e-5)


def test_white_noise_every_ambiguous_case_stays_closed():
    field, level = white_noise()
    (ref_v, ref_f, _), (v, f, n) = both(field, level)
    matched(ref_v, v)
    reference, ours = trimesh.Trimesh(ref_v, ref_f, process=False), trimesh.Trimesh(v, f, process=False)
    assert reference.is_watertight and ours.is_watertight and ours.is_winding_consistent
    # Lewiner's interior tests give some cubes other triangles (tunnels, centre vertices): close, not equal
    assert ours.area == pytest.approx(reference.area, rel=0.02)
    assert ours.volume == pytest.approx(reference.volume, rel=0.02)
    assert np.isfinite(n).all()


def test_every_cube_configuration_is_closed_and_faces_out():
    """Each of the 256 inside/outside patterns of a cube, alone in a grid that is outside around it, with
    random magnitudes so that the asymptotic decider goes both ways on ambiguous faces."""
    rng = np.random.default_rng(0)
    corners = (np.arange(256)[:, None] >> np.arange(8)) & 1  # corner c at offset (c&1, c>>1&1, c>>2&1)
    for _ in range(4):
        values = np.where(corners, 1, -1) * rng.uniform(0.05, 1, corners.shape)
        field = np.full((16 * 3 + 1, 16 * 3 + 1, 4), -1.0)
        for case in range(256):
            i, j = divmod(case, 16)
            cube = values[case].reshape(2, 2, 2).transpose(2, 1, 0)  # [axis 0, axis 1, axis 2] offsets
            field[3 * i + 1 : 3 * i + 3, 3 * j + 1 : 3 * j + 3, 1:3] = cube
        (ref_v, ref_f, _), (v, f, n) = both(field, 0.0)
        matched(ref_v, v)
        ours = trimesh.Trimesh(v, f, process=False)
        assert ours.is_watertight and ours.is_winding_consistent
        pieces = ours.split(only_watertight=True)
        assert len(pieces) >= 256 and all(piece.volume > 0 for piece in pieces)  # every one faces out


def test_values_at_the_level_count_as_outside_and_nothing_is_nan():
    """Integer values with the level among them: vertices on grid points (several at one point, as
    skimage's), zero gradients, no NaN."""
    field = np.random.default_rng(2).integers(0, 3, (12, 12, 12)).astype(np.float32)
    field[[0, -1]] = field[:, [0, -1]] = field[:, :, [0, -1]] = 0
    field[5:8, 5:8, 5:8] = 1  # a flat patch: zero gradient at its centre
    (ref_v, _, _), (v, f, n) = both(field, 1.0)
    assert len(v) == len(ref_v) and np.isfinite(v).all() and np.isfinite(n).all()
    np.testing.assert_allclose(v[np.lexsort(v.T)], ref_v[np.lexsort(ref_v.T)], atol=1e-6)
    assert len(np.unique(v, axis=0)) < len(v)  # vertices that coincide, on crossed edges of their own
    # (ties in the asymptotic decider, A·C = B·D, are common here: Lewiner's table then picks per case)
    assert trimesh.Trimesh(v, f, process=False).is_watertight


@pytest.mark.parametrize("level", [5.0, -5.0, 0.5])
def test_no_surface_gives_an_empty_mesh(level):
    field = (
        np.zeros((6, 7, 8), np.float32)
        if level == 0.5
        else np.random.default_rng(0).uniform(-1, 1, (6, 7, 8))
    )
    v, f, n = marching_cubes(torch.from_numpy(np.asarray(field, np.float32)).to(DEVICE), level)
    assert v.shape == (0, 3) and f.shape == (0, 3) and n.shape == (0, 3) and f.dtype == torch.int32


def test_slabs_give_the_same_mesh_as_one_pass():
    field, level, _ = waves(30, seed=4)
    volume = torch.from_numpy(field.astype(np.float32)).to(DEVICE)
    whole = marching_cubes(volume, level)
    for slab_points in (1, 30 * 30 * 7):  # one plane of cubes at a time; uneven slabs
        for a, b in zip(whole, marching_cubes(volume, level, slab_points=slab_points)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    vertices, faces, normals = marching_cubes(volume, level, normals=False)
    assert normals is None
    torch.testing.assert_close(vertices, whole[0], rtol=0, atol=0)
    torch.testing.assert_close(faces, whole[1], rtol=0, atol=0)


def test_refuses_what_is_not_a_volume():
    with pytest.raises(ValueError, match="3-D volume of at least 2 points per axis"):
        marching_cubes(torch.zeros(4, 4), 0.0)
    with pytest.raises(ValueError, match="at least 2 points"):
        marching_cubes(torch.zeros(4, 1, 4), 0.0)
