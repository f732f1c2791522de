"""The fast mode's Triton kernels against the PyTorch code they replace.

On a CUDA machine the kernels run there. Elsewhere, when Triton is installed, the same tests run in
Triton's CPU interpreter: `test_kernels_in_the_triton_interpreter` reruns this file in a
subprocess with TRITON_INTERPRET=1 (it must be set before Triton is imported).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from preim3d.networks.decoder import OSGDecoder, sample_triplanes
from preim3d.networks.renderer import ImportanceRenderer

HAS_TRITON = importlib.util.find_spec("triton") is not None
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
kernels_here = pytest.mark.skipif(
    not HAS_TRITON or not (DEVICE == "cuda" or INTERPRETED),
    reason="needs Triton and CUDA; on a CPU test_kernels_in_the_triton_interpreter runs these",
)


@pytest.mark.skipif(not HAS_TRITON, reason="Triton is not installed")
@pytest.mark.skipif(DEVICE == "cuda" or INTERPRETED, reason="the kernels run directly here")
def test_kernels_in_the_triton_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "8 passed" in result.stdout, result.stdout[-2000:]  # every test below ran


def random_decoder(seed=0):
    decoder = OSGDecoder(32).to(DEVICE)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in decoder.parameters():
            param.copy_(torch.randn(param.shape, generator=gen))
    return decoder


def rays(n, m, s, seed=1):
    """Rays from near the origin in random directions: many samples leave the [-0.5, 0.5]³ box."""
    gen = torch.Generator().manual_seed(seed)
    origins = torch.randn(n, m, 3, generator=gen) * 0.1
    directions = F.normalize(torch.randn(n, m, 3, generator=gen), dim=-1)
    depths = torch.rand(n, m, s, 1, generator=gen) * 1.2
    return origins.to(DEVICE), directions.to(DEVICE), depths.to(DEVICE)


@kernels_here
@pytest.mark.parametrize("shared_planes", [True, False], ids=["one-latent-many-views", "batch"])
def test_sample_and_decode_matches_pytorch(shared_planes):
    from preim3d.networks import fast_kernels

    n, m, s = 2, 50, 7
    decoder = random_decoder()
    planes = torch.randn(1 if shared_planes else n, 3, 32, 16, 16, device=DEVICE).half()
    origins, directions, depths = rays(n, m, s)
    points = (origins.unsqueeze(-2) + depths * directions.unsqueeze(-2)).reshape(n, m * s, 3)
    with torch.no_grad():
        ref_colors, ref_densities = decoder(
            sample_triplanes(planes.float().expand(n, -1, -1, -1, -1), points, 1.0)
        )
        colors, densities = fast_kernels.sample_and_decode(
            planes.expand(n, -1, -1, -1, -1), decoder, origins, directions, depths, 1.0
        )
    assert colors.shape == (n, 32, m, s) and densities.shape == (n, m, s)
    assert torch.allclose(colors.float(), ref_colors.transpose(1, 2).reshape(n, 32, m, s), atol=2e-3)
    assert torch.allclose(densities, ref_densities.reshape(n, m, s), atol=5e-3, rtol=1e-3)


@kernels_here
def test_weighted_sum_matches_pytorch():
    from preim3d.networks import fast_kernels

    colors = torch.rand(2, 32, 45, 48, device=DEVICE).half()
    v = torch.rand(2, 45, 48, device=DEVICE)
    expected = (colors.float() * v.unsqueeze(1)).sum(-1)
    assert torch.allclose(fast_kernels.weighted_sum(colors, v), expected, atol=1e-4, rtol=1e-4)


@kernels_here
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_bias_lrelu_matches_pytorch(layout):
    from preim3d.networks import fast_kernels

    for clamp in (None, 1.0):
        x = torch.randn(2, 6, 5, 7, device=DEVICE).half().to(memory_format=layout)
        bias = torch.randn(6, device=DEVICE)
        expected = F.leaky_relu(x.float() + bias.reshape(1, -1, 1, 1), 0.2) * 2**0.5
        if clamp is not None:
            expected = expected.clamp(-clamp, clamp)
        out = fast_kernels.bias_lrelu_(x, bias, 2**0.5, clamp)
        assert out.data_ptr() == x.data_ptr()  # in place
        assert torch.allclose(out.float(), expected, atol=4e-3, rtol=1e-3)


@kernels_here
def test_float16_planes_render_like_float32_through_the_kernel():
    from preim3d.networks import fast_kernels

    decoder = random_decoder()
    planes = torch.randn(1, 3, 32, 16, 16, device=DEVICE)
    origins, directions, _ = rays(2, 30, 1)
    origins = origins - 1.5 * directions  # rays that cross the box
    opts = {
        "ray_start": 1.0,
        "ray_end": 2.0,
        "depth_resolution": 12,
        "depth_resolution_importance": 12,
        "box_warp": 1.0,
    }
    assert fast_kernels.available(planes.half())
    with torch.no_grad():
        reference = ImportanceRenderer()(
            planes.expand(2, -1, -1, -1, -1), decoder, origins, directions, opts, deterministic=True
        )
        fast = ImportanceRenderer()(
            planes.half().expand(2, -1, -1, -1, -1), decoder, origins, directions, opts, deterministic=True
        )
    for ours, ref in zip(fast, reference):
        assert torch.allclose(ours.float(), ref, atol=2e-2)


@kernels_here
def test_a_kernel_that_disagrees_with_pytorch_is_not_used(monkeypatch):
    from preim3d.networks import fast_kernels

    monkeypatch.setattr(fast_kernels, "_checked", {})
    real = fast_kernels.sample_and_decode
    monkeypatch.setattr(fast_kernels, "sample_and_decode", lambda *a: tuple(t + 1 for t in real(*a)))
    with pytest.warns(UserWarning, match="disagrees"):
        assert not fast_kernels.available(torch.zeros(1, 3, 32, 8, 8, device=DEVICE).half())


@kernels_here
def test_a_kernel_that_cannot_run_is_not_used(monkeypatch):
    from preim3d.networks import fast_kernels

    def fail(*args):
        raise RuntimeError("no compiler for this GPU")

    monkeypatch.setattr(fast_kernels, "_checked", {})
    monkeypatch.setattr(fast_kernels, "sample_and_decode", fail)
    with pytest.warns(UserWarning, match="does not run"):
        assert not fast_kernels.available(torch.zeros(1, 3, 32, 8, 8, device=DEVICE).half())
