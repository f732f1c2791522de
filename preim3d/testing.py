"""Tiny random-weight models for tests, demos and notebooks: the whole chain in a second, no download.

`make_tiny_bundle(folder)` writes a complete preim3d bundle — generator, encoder, latent average
and directions — built from the same classes as the real models, only narrow and small:

* generator: EG3D's TriPlaneGenerator with a 16-channel backbone, 32-px neural rendering,
  12 + 12 depth samples and the 2x super-resolution to 128 px (the real one: 512 channels,
  128 px, 48 + 48 samples, 8x to 512 px). w_dim 512 and num_ws 14 are kept, so codes,
  directions and latents have the real shapes [N, 14, 512].
* encoder: the IR-SE W+ encoder with four one-unit stages of 8 to 32 channels.
* latent average: computed from the tiny generator with the official recipe.
* directions: a few random unit directions under official attribute names.

The weights are random but seeded (same seed, same bytes), scaled so images vary with the code
and the camera, and the density is calibrated to have a surface at the official mesh threshold.
Nothing here is meaningful as a face model.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

# The released ffhq512-128 generator's configuration (TriPlaneGenerator arguments and neural
# rendering resolution): benchmarks build full-size generators with random weights from it.
FFHQ512_RENDERING_KWARGS = {
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
FFHQ512_GENERATOR_KWARGS = {
    "z_dim": 512,
    "c_dim": 25,
    "w_dim": 512,
    "img_resolution": 512,
    "img_channels": 3,
    "sr_num_fp16_res": 4,
    "mapping_kwargs": {"num_layers": 2},
    "rendering_kwargs": FFHQ512_RENDERING_KWARGS,
    "sr_kwargs": {"channel_base": 32768, "channel_max": 512, "fused_modconv_default": "inference_only"},
    "channel_base": 32768,
    "channel_max": 512,
    "fused_modconv_default": "inference_only",
    "num_fp16_res": 0,
    "conv_clamp": None,
}
FFHQ512_NEURAL_RESOLUTION = 128

# The tiny generator: FFHQ-512's configuration but for widths, resolutions and depth samples.
TINY_RENDERING_KWARGS = {
    **FFHQ512_RENDERING_KWARGS,
    "image_resolution": 128,
    "superresolution_module": "training.superresolution.SuperresolutionHybrid2X",
    "depth_resolution": 12,
    "depth_resolution_importance": 12,
}
TINY_GENERATOR_KWARGS = {
    **FFHQ512_GENERATOR_KWARGS,
    "z_dim": 32,
    "img_resolution": 128,
    "rendering_kwargs": TINY_RENDERING_KWARGS,
    "sr_kwargs": {"channel_base": 1024, "channel_max": 16, "fused_modconv_default": "inference_only"},
    "channel_base": 1024,
    "channel_max": 16,
}
TINY_NEURAL_RESOLUTION = 32

TINY_ENCODER_KWARGS = dict(
    n_styles=14,
    w_dim=512,
    stage_units=[1, 1, 1, 1],
    stage_channels=[8, 16, 24, 32],
    stem_channels=8,
    pool_size=2,
    se_reduction=4,
)

TINY_DIRECTION_NAMES = ("Eyeglasses", "Male", "No_Beard", "Smiling", "Wearing_Lipstick", "Young")
TINY_LICENCE = "Random weights made by preim3d.testing for tests; no licence restrictions (MIT)."

# The encoder's output offsets have about this standard deviation, like a real encoder's.
_OFFSET_STD = 0.5


def tiny_generator(seed: int = 0):
    """A TriPlaneGenerator of the tiny configuration with seeded random weights, in eval mode."""
    from .networks.triplane import TriPlaneGenerator

    G = TriPlaneGenerator(**copy.deepcopy(TINY_GENERATOR_KWARGS))
    G.neural_rendering_resolution = TINY_NEURAL_RESOLUTION
    fill_random(G, seed)
    _calibrate_density(G.eval().requires_grad_(False), seed)
    return G


def _calibrate_density(G, seed: int) -> None:
    """Rescale the decoder's density output so that it crosses the official mesh threshold (10) in the box.

    Random weights give a raw density sigma of about 0.3 +- 0.2 everywhere: no surface to extract
    and nearly transparent renders. sigma' = 10 + 4 (sigma - median) / std, measured on a 16^3
    grid for a typical code, gives solid blobs in renders and a surface for marching cubes.
    """
    from .cameras import camera_vector
    from .networks.decoder import sample_triplanes

    z = torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        planes = G.synthesize_planes(G.mapping(z, camera_vector(), truncation_psi=0.7))
        axis = torch.linspace(-0.4, 0.4, 16)
        points = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(1, -1, 3)
        _, sigma = G.decoder(sample_triplanes(planes, points, G.rendering_kwargs["box_warp"]))
        scale = 4 / sigma.std()
        last = G.decoder.net[2]  # FC(64 -> 1 + 32); output 0 is the density
        last.weight[0] *= scale
        last.bias[0] = (10 + scale * (last.bias[0] * last.bias_gain - sigma.median())) / last.bias_gain


def tiny_encoder(seed: int = 0):
    """A tiny WPlusEncoder with seeded random weights (BatchNorm statistics included), in eval mode."""
    from .networks.encoder import WPlusEncoder

    encoder = WPlusEncoder(**TINY_ENCODER_KWARGS)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in sorted(encoder.state_dict().items()):
            if name.endswith("num_batches_tracked"):
                continue
            if name.endswith("running_var"):
                value = 0.5 + torch.rand(tensor.shape, generator=gen)
            elif name.endswith("running_mean") or name.endswith("bias"):
                value = 0.2 * torch.randn(tensor.shape, generator=gen)
            elif tensor.ndim == 1:  # BatchNorm scales and PReLU slopes
                value = 0.5 + 0.5 * torch.rand(tensor.shape, generator=gen)
            else:  # weights: variance-preserving, so the offsets do not blow up through the stack
                fan_in = tensor[0].numel()
                value = torch.randn(tensor.shape, generator=gen) / fan_in**0.5
            tensor.copy_(value)
        # EqualLinear divides by sqrt(w_dim) itself; scale its weight so offsets have a face-like spread.
        encoder.linear.weight.mul_(_OFFSET_STD * encoder.w_dim**0.5)
    return encoder.eval().requires_grad_(False)


def fill_random(module: torch.nn.Module, seed: int) -> None:
    """Overwrite every parameter and buffer with seeded, non-trivial values, keyed by name order.

    Weights ~ N(0,1) (as the networks initialise them), biases ~ 0.2 N(0,1), affine biases
    ~ 1 + 0.2 N(0,1), noise strengths ~ 0.1 N(0,1), w_avg ~ 0.5 N(0,1), constants ~ N(0,1).
    Resampling filters are kept.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in sorted(module.state_dict().items()):
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "resample_filter":
                continue
            noise = torch.randn(tensor.shape, generator=gen)
            if leaf == "bias":
                value = 1 + 0.2 * noise if ".affine." in name else 0.2 * noise
            elif leaf == "noise_strength":
                value = 0.1 * noise
            elif leaf == "w_avg":
                value = 0.5 * noise
            else:
                value = noise
            tensor.copy_(value)


def tiny_directions(seed: int = 0):
    """A DirectionBank of random unit directions named after a few official attributes."""
    from .editing import CODE_DIM, DirectionBank

    gen = torch.Generator().manual_seed(seed)
    directions = {name: torch.randn(1, CODE_DIM, generator=gen) for name in TINY_DIRECTION_NAMES}
    return DirectionBank(directions, provenance={"source": "preim3d.testing random directions", "seed": seed})


def make_tiny_bundle(folder, seed: int = 0) -> Path:
    """Write a complete tiny random-weight bundle (generator, encoder, latent_avg, directions) to `folder`.

    Deterministic: the same seed writes the same tensors. Returns the folder.
    """
    from .inversion import compute_latent_avg
    from .weights.bundle import read_bundle_config, write_bundle_component
    from .weights.encoder import save_encoder, save_latent_avg
    from .weights.generator import save_generator

    folder = Path(folder)
    provenance = {"source": "preim3d.testing.make_tiny_bundle", "seed": seed, "random_weights": True}
    G = tiny_generator(seed)
    save_generator(G, folder, provenance=provenance)
    # save_generator states EG3D's licence, which these random weights do not carry
    config = dict(read_bundle_config(folder)["generator"], licence=TINY_LICENCE)
    write_bundle_component(folder, "generator", G.state_dict(), config)
    save_encoder(tiny_encoder(seed + 1), folder, provenance=provenance, licence=TINY_LICENCE)
    save_latent_avg(compute_latent_avg(G, batch_size=5000), folder, provenance=provenance)
    tiny_directions(seed + 2).save(folder)
    return folder
