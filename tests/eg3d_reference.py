"""Shared by the generator tests: configurations, preim3d.testing's deterministic random weights
(`fill_random`), seeded inputs and PSNR, and the outputs the official code stored in tests/data/official.

The same weights can be put into the official EG3D classes and into ours (their state-dict names
are equal), so outputs can be compared — live against an official checkout, or against outputs
the official code produced once and stored in tests/data/official (see make_official_reference.py).
"""

from __future__ import annotations

import copy
import fnmatch
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from preim3d.testing import (  # noqa: F401  (fill_random, psnr and random_inputs are used through this module)
    FFHQ512_GENERATOR_KWARGS,
    FFHQ512_NEURAL_RESOLUTION,
    TINY_GENERATOR_KWARGS,
    TINY_NEURAL_RESOLUTION,
    fill_random,
    psnr,
    random_inputs,
)

OFFICIAL_DATA = Path(__file__).parent / "data" / "official"

# The ffhq512-128 generator: constructor kwargs and the neural rendering resolution.
FFHQ512 = (FFHQ512_GENERATOR_KWARGS, FFHQ512_NEURAL_RESOLUTION)

# A small generator of the same classes (the one preim3d.testing builds its tiny bundles from).
TINY = (TINY_GENERATOR_KWARGS, TINY_NEURAL_RESOLUTION)

# EG3D's train.py: rendering options of each --cfg, and the super-resolution module of each dataset
# resolution (--sr-module overrides it).
TRAIN_CFG_RENDERING = {
    "ffhq": {
        "depth_resolution": 48,
        "depth_resolution_importance": 48,
        "ray_start": 2.25,
        "ray_end": 3.3,
        "box_warp": 1,
        "avg_camera_radius": 2.7,
        "avg_camera_pivot": [0, 0, 0.2],
    },
    "afhq": {
        "depth_resolution": 48,
        "depth_resolution_importance": 48,
        "ray_start": 2.25,
        "ray_end": 3.3,
        "box_warp": 1,
        "avg_camera_radius": 2.7,
        "avg_camera_pivot": [0, 0, -0.06],
    },
    "shapenet": {
        "depth_resolution": 64,
        "depth_resolution_importance": 64,
        "ray_start": 0.1,
        "ray_end": 2.6,
        "box_warp": 1.6,
        "white_back": True,
        "avg_camera_radius": 1.7,
        "avg_camera_pivot": [0, 0, 0],
    },
}
TRAIN_SR_MODULE = {
    128: "SuperresolutionHybrid2X",
    256: "SuperresolutionHybrid4X",
    512: "SuperresolutionHybrid8XDC",
}


def train_config(
    cfg,
    resolution,
    neural_resolution,
    *,
    gen_pose_cond=True,
    c_scale=1.0,
    sr_noise_mode="none",
    sr_num_fp16_res=4,
    g_num_fp16_res=0,
    density_reg=0.25,
    reg_type="l1",
    decoder_lr_mul=1.0,
    map_depth=2,
    sr_module=None,
    cbase=1024,
    cmax=16,
    depth_samples=None,
):
    """(generator kwargs, neural rendering resolution) as EG3D's train.py builds them for
    `--cfg`, the dataset resolution and the options of the same names (its defaults, except that
    `gen_pose_cond` is on, as in the released models).

    Narrow by default: `cbase`/`cmax` 1024/16 instead of 32768/512 (the super-resolution's widths are
    fixed by its class), and `depth_samples` (coarse, importance) may lower the per-ray sample counts.
    """
    rendering = {
        "image_resolution": resolution,
        "disparity_space_sampling": False,
        "clamp_mode": "softplus",
        "superresolution_module": "training.superresolution." + (sr_module or TRAIN_SR_MODULE[resolution]),
        "c_gen_conditioning_zero": not gen_pose_cond,
        "gpc_reg_prob": 0.5 if gen_pose_cond else None,
        "c_scale": c_scale,
        "superresolution_noise_mode": sr_noise_mode,
        "density_reg": density_reg,
        "density_reg_p_dist": 0.004,
        "reg_type": reg_type,
        "decoder_lr_mul": decoder_lr_mul,
        "sr_antialias": True,
        **copy.deepcopy(TRAIN_CFG_RENDERING[cfg]),
    }
    if depth_samples:
        rendering["depth_resolution"], rendering["depth_resolution_importance"] = depth_samples
    kwargs = {
        "z_dim": 512,
        "w_dim": 512,
        "c_dim": 25,
        "img_resolution": resolution,
        "img_channels": 3,
        "mapping_kwargs": {"num_layers": map_depth},
        "channel_base": cbase,
        "channel_max": cmax,
        "fused_modconv_default": "inference_only",
        "rendering_kwargs": rendering,
        "num_fp16_res": g_num_fp16_res,
        "conv_clamp": 256 if g_num_fp16_res > 0 else None,
        "sr_num_fp16_res": sr_num_fp16_res,
        "sr_kwargs": {"channel_base": cbase, "channel_max": cmax, "fused_modconv_default": "inference_only"},
    }
    return kwargs, neural_resolution


@dataclass(frozen=True)
class Reference:
    """One generator whose official outputs are stored: its configuration, seeds and batch, and
    factors applied to the seeded weights whose state-dict names match a pattern (to drive
    activations into the ±256 clamps that half-precision configurations ask for)."""

    config: tuple
    batch: int = 1
    weight_seed: int = 3
    input_seed: int = 5
    weight_scales: dict = field(default_factory=dict)
    latent_avg: bool = False  # also store PREIM3D's latent average (taken at the config's average camera)


# Narrow copies of the configurations EG3D's train.py makes, each exercising its own code paths (most
# with fewer samples per ray than the real ones: the renderer's code is the same for any count):
#   tiny              preim3d.testing's tiny configuration (2X, neural 32 → resized up to 64), 2 views
#   ffhq512-128       the released FFHQ configuration: 8XDC, neural 128 (not resized)
#   afhq512-64-8X     AFHQ cameras, --sr-module 8X, neural 64 (resized up to 128; the 8XDC resize is the same)
#   ffhq256-64        4X resized up from 64; no pose conditioning (c zeroed)
#   afhq256-128       4X fed at its input size: image_raw is rgb + block 0's ToRGB (the official in-place add)
#   shapenet128-64    white background, box 1.6, rays 0.1–2.6, 64 + 64 samples; 2X at its input size
#   ffhq128-128-fp16  2X resized down from 128; half-precision clamps (backbone and super-resolution)
#                     driven into action, super-resolution noise, decoder lr 0.5, 3 mapping layers, c_scale 2
REFERENCES = {
    "tiny": Reference(TINY, batch=2, latent_avg=True),
    "ffhq512-128": Reference(train_config("ffhq", 512, 128, depth_samples=(8, 8))),
    "afhq512-64-8X": Reference(
        train_config("afhq", 512, 64, sr_module="SuperresolutionHybrid8X", depth_samples=(12, 12))
    ),
    "ffhq256-64": Reference(train_config("ffhq", 256, 64, gen_pose_cond=False, depth_samples=(12, 12))),
    "afhq256-128": Reference(train_config("afhq", 256, 128, depth_samples=(8, 8))),
    "shapenet128-64": Reference(train_config("shapenet", 128, 64), latent_avg=True),
    "ffhq128-128-fp16": Reference(
        train_config(
            "ffhq",
            128,
            128,
            g_num_fp16_res=4,
            sr_noise_mode="random",
            decoder_lr_mul=0.5,
            map_depth=3,
            c_scale=2.0,
            density_reg=0.0,
            reg_type="l1-alt",
            depth_samples=(8, 8),
        ),
        weight_scales={
            "backbone.synthesis.b256.conv0.noise_strength": 3000,  # ±300 noise: the conv and ToRGB clamp
            "decoder.net.0.weight": 0.01,  # keeps the decoder's input in range despite those planes
            "superresolution.block*.conv*.noise_strength": 3000,
        },
    ),
}


def seeded_weights(G: torch.nn.Module, seed: int, scales: dict | None = None) -> torch.nn.Module:
    """fill_random(G, seed), then every tensor whose state-dict name matches a pattern of `scales` is
    multiplied by its factor. The same call gives the official generator and ours the same weights."""
    fill_random(G, seed)
    with torch.no_grad():
        for name, tensor in G.state_dict().items():
            for pattern, factor in (scales or {}).items():
                if fnmatch.fnmatchcase(name, pattern):
                    tensor.mul_(factor)
    return G


def make_ours(reference: Reference) -> torch.nn.Module:
    """Our TriPlaneGenerator with the reference's configuration and weights, in eval mode."""
    from preim3d import TriPlaneGenerator

    kwargs, resolution = reference.config
    G = TriPlaneGenerator.from_config(kwargs).eval().requires_grad_(False)
    G.neural_rendering_resolution = resolution
    return seeded_weights(G, reference.weight_seed, reference.weight_scales)


def pixel_grid(x: torch.Tensor, size: int = 48) -> torch.Tensor:
    """x [..., H, W] at `size` rows × `size` columns spread evenly over it, first and last included
    (all of x when it is no larger): what the stored references keep of each output."""
    rows = torch.linspace(0, x.shape[-2] - 1, min(size, x.shape[-2])).round().long()
    cols = torch.linspace(0, x.shape[-1] - 1, min(size, x.shape[-1])).round().long()
    return x[..., rows, :][..., cols]


def one_row(ws: torch.Tensor) -> torch.Tensor:
    """[N, 512] of ws [N, num_ws, 512] whose rows are all equal (mapping outputs truncated at every
    row, and their means): what the stored references keep of them."""
    assert torch.equal(ws, ws[:, :1].expand_as(ws)), "the rows differ"
    return ws[:, 0]


def generator_kwargs_json(config) -> str:
    """The configuration as stored beside the outputs (so that a changed table is noticed)."""
    kwargs, resolution = config
    return json.dumps({"kwargs": kwargs, "neural_rendering_resolution": resolution}, sort_keys=True)
