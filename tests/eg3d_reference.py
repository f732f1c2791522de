"""Shared by the generator tests: configurations, deterministic random weights (preim3d.testing's
`fill_random`), inputs, PSNR.

The same weights can be put into the official EG3D classes and into ours (their state-dict names
are equal), so outputs can be compared — live against an official checkout, or against outputs
the official code produced once and stored in tests/data (see make_official_reference.py).
"""

from __future__ import annotations

import math

import torch

from preim3d.testing import TINY_GENERATOR_KWARGS, TINY_NEURAL_RESOLUTION, fill_random  # noqa: F401

FFHQ_RENDERING_KWARGS = {
    "image_resolution": 512,
    "disparity_space_sampling": False,
    "clamp_mode": "softplus",
    "superresolution_module": "training.superresolution.SuperresolutionHybrid8XDC",
    "c_gen_conditioning_zero": False,
    "gpc_reg_prob": 0.5,
    "c_scale": 1.0,
    "superresolution_noise_mode": "none",
    "density_reg": 0.25,
    "density_reg_p_dist": 0.004,
    "reg_type": "l1",
    "decoder_lr_mul": 1.0,
    "sr_antialias": True,
    "depth_resolution": 48,
    "depth_resolution_importance": 48,
    "ray_start": 2.25,
    "ray_end": 3.3,
    "box_warp": 1,
    "avg_camera_radius": 2.7,
    "avg_camera_pivot": [0, 0, 0.2],
}

# The ffhq512-128 generator: constructor kwargs and the neural rendering resolution.
FFHQ512 = (
    {
        "z_dim": 512, "c_dim": 25, "w_dim": 512, "img_resolution": 512, "img_channels": 3,
        "sr_num_fp16_res": 4, "mapping_kwargs": {"num_layers": 2},
        "rendering_kwargs": FFHQ_RENDERING_KWARGS,
        "sr_kwargs": {"channel_base": 32768, "channel_max": 512, "fused_modconv_default": "inference_only"},
        "channel_base": 32768, "channel_max": 512, "fused_modconv_default": "inference_only",
        "num_fp16_res": 0, "conv_clamp": None,
    },
    128,
)

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
