"""Shared by the generator tests: configurations, deterministic random weights (preim3d.testing's
`fill_random`), inputs, PSNR.

The same weights can be put into the official EG3D classes and into ours (their state-dict names
are equal), so outputs can be compared — live against an official checkout, or against outputs
the official code produced once and stored in tests/data (see make_official_reference.py).
"""

from __future__ import annotations

import math

import torch

from preim3d.testing import (  # noqa: F401  (fill_random is used through this module)
    FFHQ512_GENERATOR_KWARGS,
    FFHQ512_NEURAL_RESOLUTION,
    TINY_GENERATOR_KWARGS,
    TINY_NEURAL_RESOLUTION,
    fill_random,
)

# The ffhq512-128 generator: constructor kwargs and the neural rendering resolution.
FFHQ512 = (FFHQ512_GENERATOR_KWARGS, FFHQ512_NEURAL_RESOLUTION)

# A small generator of the same classes (the one preim3d.testing builds its tiny bundles from).
TINY = (TINY_GENERATOR_KWARGS, TINY_NEURAL_RESOLUTION)


def inputs(batch: int, z_dim: int, seed: int):
    """Seeded z and cameras (yaw/pitch spread around the frontal view)."""
    from preim3d.cameras import camera_vector

    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(batch, z_dim, generator=gen)
    yaw = (torch.rand(batch, generator=gen) - 0.5) * 0.8
    pitch = (torch.rand(batch, generator=gen) - 0.5) * 0.4
    return z, camera_vector(yaw, pitch)


def psnr(x: torch.Tensor, ref: torch.Tensor) -> float:
    """PSNR of x against ref, in dB, over the reference's value range."""
    x, ref = x.double().cpu(), ref.double().cpu()
    mse = (x - ref).square().mean().item()
    span = (ref.max() - ref.min()).item()
    return math.inf if mse == 0 else 10 * math.log10(span * span / mse)
