"""Fixtures shared by the pipeline, download and command-line tests:
a tiny bundle, official-style files, a photo."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from official_format import write_torch_save
from PIL import Image
from skimage import data
from weights_server import FileServer

from preim3d.inversion import compute_latent_avg
from preim3d.testing import make_tiny_bundle, tiny_directions, tiny_encoder, tiny_generator


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory):
    """A complete random-weight bundle (read-only for the tests: copy it before changing it)."""
    return make_tiny_bundle(tmp_path_factory.mktemp("tiny") / "bundle", seed=0)


@pytest.fixture(scope="session")
def astronaut_png(tmp_path_factory):
    """skimage's astronaut (NASA portrait, public domain) as a PNG file."""
    path = tmp_path_factory.mktemp("photos") / "astronaut.png"
    Image.fromarray(data.astronaut()).save(path)
    return path


def write_encoder_checkpoint(path, encoder, latent_avg) -> None:
    """A checkpoint laid out like PREIM3D's preim3d_ffhq.pt: prefixed state dict, opts, latent_avg."""
    state = {f"encoder.{key}": value for key, value in encoder.state_dict().items()}
    opts = {"encoder_type": "WPlusEncoder", "stylegan_size": 256, "dataset_type": "ffhq_encode"}
    torch.save({"state_dict": state, "opts": opts, "latent_avg": latent_avg}, path)


@pytest.fixture(scope="session")
def tiny_official_files(tmp_path_factory):
    """A folder laid out like `preim3d download`'s: eg3d_G_ema.pkl, preim3d_ffhq.pt, directions/<Attr>.pt.

    They hold the same weights as the `tiny_bundle` fixture (seed 0), in the official formats.
    """
    folder = tmp_path_factory.mktemp("official")
    G = tiny_generator(0)
    write_torch_save(G, folder / "eg3d_G_ema.pkl")
    write_encoder_checkpoint(
        folder / "preim3d_ffhq.pt", tiny_encoder(1), compute_latent_avg(G, batch_size=5000)
    )
    bank = tiny_directions(2)
    (folder / "directions").mkdir()
    for name in bank.names:
        torch.save(bank.direction(name).reshape(1, -1), folder / "directions" / f"{name}.pt")
    return folder


@pytest.fixture(params=["scikit-image", "torch"])
def marching_cubes_path(request, monkeypatch) -> SimpleNamespace:
    """Meshes through either marching cubes on this CPU: scikit-image's, or the PyTorch one that a GPU
    takes. Returns .torch (which one) and .calls (the PyTorch one's)."""
    import preim3d.mesh

    calls = []
    if request.param == "torch":
        torch_marching_cubes = preim3d.mesh.torch_marching_cubes
        monkeypatch.setattr(preim3d.mesh, "uses_torch_marching_cubes", lambda device: True)
        monkeypatch.setattr(
            preim3d.mesh,
            "torch_marching_cubes",
            lambda *args, **kwargs: calls.append(args) or torch_marching_cubes(*args, **kwargs),
        )
    return SimpleNamespace(torch=request.param == "torch", calls=calls)


@pytest.fixture
def server():
    """A local HTTP server standing in for the official weight sources (see weights_server.py)."""
    s = FileServer()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()
