"""The mesh level: the official σ = 10 where σ gets there, else one from the density, and a warning."""

from __future__ import annotations

import copy
import re
import shutil
import warnings

import numpy as np
import pytest
import torch

import preim3d
from preim3d import cli
from preim3d.errors import InvalidValueError, MeshLevelWarning
from preim3d.mesh import _decode, extract_mesh, surface_level
from preim3d.networks.triplane import TriPlaneGenerator
from preim3d.testing import TINY_GENERATOR_KWARGS, TINY_NEURAL_RESOLUTION, fill_random, tiny_generator


@pytest.fixture(scope="module")
def faint_generator():
    """The tiny generator with official-format random weights, without the density calibration:
    its raw density stays far below the official mesh level."""
    G = TriPlaneGenerator(**copy.deepcopy(TINY_GENERATOR_KWARGS))
    G.neural_rendering_resolution = TINY_NEURAL_RESOLUTION
    fill_random(G, 0)
    return G.eval().requires_grad_(False)


def code(G, seed=1):
    z = torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return G.mapping(z, preim3d.camera_vector(), truncation_psi=0.7)


def sigma_at(G, ws, points) -> np.ndarray:
    with torch.no_grad():
        planes = G.synthesize_planes(ws)
    return _decode(G, planes, torch.as_tensor(points, dtype=torch.float32))[1][:, 0].numpy()


def test_auto_is_the_official_level_where_the_density_reaches_it():
    G = tiny_generator(0)
    ws = code(G)
    with warnings.catch_warnings():
        warnings.simplefilter("error", MeshLevelWarning)
        auto = extract_mesh(G, ws, resolution=32)
    official = extract_mesh(G, ws, resolution=32, threshold=10)
    assert len(auto.faces) > 0
    np.testing.assert_array_equal(auto.vertices, official.vertices)
    np.testing.assert_array_equal(auto.faces, official.faces)


def test_density_below_10_gives_a_mesh_at_the_middle_of_its_range_with_a_warning(
    faint_generator, marching_cubes_path
):
    G, ws = faint_generator, code(faint_generator)
    with pytest.raises(
        InvalidValueError, match=r"There is no surface at threshold 10: inside the box the density"
    ):
        extract_mesh(G, ws, resolution=32, threshold=10.0)
    with pytest.warns(MeshLevelWarning, match="never reaches the official mesh level σ = 10") as caught:
        mesh = extract_mesh(G, ws, resolution=32)
    found = re.search(
        r"ranges over \[(\S+), (\S+)\]\), so the mesh is the surface at σ = (\S+),", str(caught[0].message)
    )
    low, high, level = (float(v) for v in found.groups())
    assert high < 10 and level == pytest.approx((low + high) / 2, abs=2e-3 * (high - low) + 1e-3)
    assert len(mesh.faces) > 100 and mesh.vertex_normals.shape == mesh.vertices.shape
    assert len(marching_cubes_path.calls) == marching_cubes_path.torch
    # the vertices lie on that level of the density (marching cubes interpolates linearly between samples)
    on_surface = sigma_at(G, ws, mesh.vertices)
    assert np.abs(np.median(on_surface) - level) < 0.05 * (high - low)


def test_editor_mesh_of_a_faint_generator_is_written_with_the_warning(faint_generator, tiny_bundle, tmp_path):
    reference = preim3d.Editor.from_pretrained(tiny_bundle, device="cpu")
    editor = preim3d.Editor(faint_generator, reference.encoder, reference.latent_avg, device="cpu")
    with pytest.warns(MeshLevelWarning):
        mesh = editor.mesh(code(faint_generator), tmp_path / "head.glb", resolution=64)
    assert (tmp_path / "head.glb").read_bytes()[:4] == b"glTF" and len(mesh.faces) > 0


def test_surface_level_refuses_what_has_no_surface():
    ramp = np.linspace(0, 1, 27, dtype=np.float32).reshape(3, 3, 3)
    assert surface_level(ramp, 0.5) == 0.5
    with pytest.warns(
        MeshLevelWarning, match=r"ranges over \[0, 1\]\), so the mesh is the surface at σ = 0.5,"
    ):
        assert surface_level(ramp, "auto", trimmed=False) == pytest.approx(0.5)
    assert surface_level(ramp, -1.0, trimmed=True) == -1.0  # the trimmed border, below it, closes the surface
    with pytest.raises(InvalidValueError, match="no surface at threshold -1"):
        surface_level(ramp, -1.0, trimmed=False)
    with pytest.raises(InvalidValueError, match="the same everywhere"):
        surface_level(np.full((3, 3, 3), 4.0, np.float32))
    with pytest.raises(InvalidValueError, match="must be 'auto' or a density σ"):
        surface_level(ramp, "high")


def test_cli_mesh_threshold_and_the_warning(faint_generator, tiny_bundle, astronaut_png, tmp_path, capsys):
    bundle = shutil.copytree(tiny_bundle, tmp_path / "faint")
    preim3d.save_generator(faint_generator, bundle, provenance={"source": "faint test generator"})
    common = ["edit", str(astronaut_png), "--mesh", "head.glb", "--mesh-resolution", "64"]
    common += ["--weights", str(bundle), "--device", "cpu"]
    assert cli.main([*common, "--out", str(tmp_path / "auto")]) == 0
    err = capsys.readouterr().err
    assert "preim3d edit: warning: The density never reaches the official mesh level σ = 10" in err
    assert (tmp_path / "auto" / "head.glb").is_file()

    assert cli.main([*common, "--mesh-threshold", "10", "--out", str(tmp_path / "ten")]) == 1
    # The mesh is an optional output: it fails alone, and the photo's other files still land.
    assert "astronaut.png: partly done: head.glb failed: There is no surface at threshold 10" in (
        capsys.readouterr().err
    )
    assert (tmp_path / "ten" / "edited.png").is_file() and not (tmp_path / "ten" / "head.glb").exists()
    with pytest.raises(SystemExit) as exit:
        cli.main([*common, "--mesh-threshold", "high", "--out", str(tmp_path / "bad")])
    assert exit.value.code == 2
    assert (
        "argument --mesh-threshold: The mesh threshold must be 'auto' or a density σ"
        in capsys.readouterr().err
    )
