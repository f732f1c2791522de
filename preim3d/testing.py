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

For benchmarks and conformance checks: `ffhq512_generator` (the released architecture with seeded
random weights), `random_inputs`, `psnr`, and `build_official_eg3d`, which puts the same weights
into the official EG3D generator of a checkout named by $PREIM3D_OFFICIAL_EG3D.
"""

from __future__ import annotations

import copy
import math
import os
import sys
import types
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

# An IR-SE ArcFace backbone small enough for CPU tests of the identity losses.
TINY_ARCFACE_KWARGS = dict(
    input_size=32,
    stage_units=(1, 1, 1, 1),
    stage_channels=(8, 16, 24, 32),
    stem_channels=8,
    embedding_dim=32,
    se_reduction=4,
)

TINY_DIRECTION_NAMES = ("Eyeglasses", "Male", "No_Beard", "Smiling", "Wearing_Lipstick", "Young")
TINY_LICENCE = "Random weights made by preim3d.testing for tests; no licence restrictions (MIT)."

# The encoder's output offsets have about this standard deviation, like a real encoder's.
_OFFSET_STD = 0.5


def tiny_generator(seed: int = 0):
    """A TriPlaneGenerator of the tiny configuration with seeded random weights, in eval mode."""
    return _random_generator(TINY_GENERATOR_KWARGS, TINY_NEURAL_RESOLUTION, seed)


def ffhq512_generator(seed: int = 11, calibrate_density: bool = False):
    """A TriPlaneGenerator of the released ffhq512-128 configuration with `fill_random` weights, in eval
    mode: full-size work for benchmarks, as slow as the real one. Its density has no face's surface
    unless calibrate_density=True calibrates it as the tiny one's."""
    return _random_generator(FFHQ512_GENERATOR_KWARGS, FFHQ512_NEURAL_RESOLUTION, seed, calibrate_density)


def _random_generator(kwargs: dict, neural_resolution: int, seed: int, calibrate_density: bool = True):
    from .networks.triplane import TriPlaneGenerator

    G = TriPlaneGenerator(**copy.deepcopy(kwargs))
    G.neural_rendering_resolution = neural_resolution
    fill_random(G, seed)
    G.eval().requires_grad_(False)
    if calibrate_density:
        _calibrate_density(G, seed)
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

    return fill_random_encoder(WPlusEncoder(**TINY_ENCODER_KWARGS), seed).eval().requires_grad_(False)


def fill_random_encoder(encoder, seed: int):
    """Overwrite a WPlusEncoder's parameters and BatchNorm statistics with seeded values, keyed by name
    order: variance-preserving convolutions, offsets with a face-like spread. Returns the encoder."""
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
    return encoder


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
    from .weights.encoder import save_encoder, save_latent_avg
    from .weights.generator import save_generator

    folder = Path(folder)
    provenance = {"source": "preim3d.testing.make_tiny_bundle", "seed": seed, "random_weights": True}
    G = tiny_generator(seed)
    save_generator(G, folder, provenance=provenance, licence=TINY_LICENCE)
    save_encoder(tiny_encoder(seed + 1), folder, provenance=provenance, licence=TINY_LICENCE)
    save_latent_avg(compute_latent_avg(G, batch_size=5000), folder, provenance=provenance)
    tiny_directions(seed + 2).save(folder)
    return folder


def random_inputs(
    batch: int, z_dim: int, seed: int, rendering_kwargs: dict | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded z [batch, z_dim] and cameras c [batch, 25]: yaw and pitch spread around the frontal view,
    on the configuration's average camera orbit (radius and pivot of `rendering_kwargs`; FFHQ's when
    not given)."""
    from .cameras import FRONTAL_ANGLE, conditioning, intrinsics, orbit_cam2world

    rendering_kwargs = rendering_kwargs or {}
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(batch, z_dim, generator=gen)
    yaw = (torch.rand(batch, generator=gen) - 0.5) * 0.8
    pitch = (torch.rand(batch, generator=gen) - 0.5) * 0.4
    pose = orbit_cam2world(
        FRONTAL_ANGLE + yaw,
        FRONTAL_ANGLE + pitch,
        radius=rendering_kwargs.get("avg_camera_radius", 2.7),
        pivot=tuple(rendering_kwargs.get("avg_camera_pivot", (0, 0, 0.2))),
    )
    return z, conditioning(pose, intrinsics())


def psnr(x: torch.Tensor, ref: torch.Tensor) -> float:
    """PSNR of x against ref, in dB, over the reference's value range."""
    x, ref = x.double().cpu(), ref.double().cpu()
    mse = (x - ref).square().mean().item()
    span = (ref.max() - ref.min()).item()
    return math.inf if mse == 0 else 10 * math.log10(span * span / mse)


# --- The official EG3D generator, from a checkout the user points to (nothing official is vendored) ---

OFFICIAL_EG3D_ENV = "PREIM3D_OFFICIAL_EG3D"  # the eg3d/ folder holding `training/` and `torch_utils/`


def official_eg3d_path() -> Path | None:
    """The checkout named by $PREIM3D_OFFICIAL_EG3D, or None when it is unset or not an EG3D checkout."""
    value = os.environ.get(OFFICIAL_EG3D_ENV)
    return Path(value) if value and (Path(value) / "training" / "triplane.py").is_file() else None


def official_eg3d_class():
    """The official TriPlaneGenerator class, imported from the checkout named by $PREIM3D_OFFICIAL_EG3D."""
    path = official_eg3d_path()
    if path is None:
        raise RuntimeError(f"set {OFFICIAL_EG3D_ENV} to the eg3d/ folder of an official EG3D checkout")
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
    try:
        import requests  # noqa: F401  (dnnlib imports it, for downloads only)
    except ImportError:
        sys.modules["requests"] = types.ModuleType("requests")
    from training.triplane import TriPlaneGenerator

    return TriPlaneGenerator


def build_official_eg3d(kwargs: dict, resolution: int, seed: int, device="cpu", plugins: bool = False):
    """The official TriPlaneGenerator of the checkout, built with `kwargs`, holding our `fill_random`
    weights (the state-dict names are equal) and rendering at `resolution`, in eval mode on `device`.

    Unless `plugins`, the official code runs its reference PyTorch ops instead of building its CUDA
    extensions (which need a compiler set-up and fail on many machines).
    """
    G = official_eg3d_class()(**copy.deepcopy(kwargs)).eval().requires_grad_(False)
    if not plugins:
        from torch_utils.ops import bias_act, upfirdn2d

        bias_act._init = upfirdn2d._init = lambda: False
    fill_random(G, seed)
    G.neural_rendering_resolution = resolution
    return G.to(device)


def make_face_video(
    path,
    photo,
    size: tuple[int, int] = (320, 240),
    frames: int = 24,
    fps: float = 24.0,
    face_width: float = 0.4,
    motion: float = 1.0,
    audio: bool = True,
    faceless=(),
    bitrate: str = "10M",
):
    """Write an mp4 of `photo` moving over a grey background; returns the photo-to-frame maps [frames, 3, 3].

    The photo (anything `load_image` reads) is drawn `face_width` of the frame wide, moving along
    smooth loops: shifted by up to 15 % of the frame, scaled by 0.8-1.2, rotated by up to 12
    degrees and squeezed sideways by up to 25 % (a stand-in for turning), all times `motion`.
    audio=True adds a 440 Hz tone as long as the video. Frames in `faceless` are plain background.
    """
    import tempfile
    import wave

    import numpy as np
    from PIL import Image

    from .images import load_image
    from .mp4 import Mp4Writer

    picture = load_image(photo)
    width, height = size
    base = face_width * width / picture.width
    maps = []
    with tempfile.TemporaryDirectory() as tmp:
        tone = None
        if audio:
            tone = Path(tmp) / "tone.wav"
            rate = 16000
            t = np.arange(int(rate * frames / fps)) / rate
            with wave.open(str(tone), "wb") as w:
                w.setnchannels(1)
                w.setsampwidth(2)
                w.setframerate(rate)
                w.writeframes((np.sin(2 * np.pi * 440 * t) * 12000).astype("<i2").tobytes())
        with Mp4Writer(path, size, fps=fps, bitrate=bitrate, audio_from=tone) as video:
            for f in range(frames):
                phase = 2 * np.pi * f / max(frames, 2)
                scale = base * (1 + 0.2 * motion * np.sin(phase))
                squeeze = 1 - 0.25 * motion * (1 - np.cos(phase)) / 2
                angle = np.radians(12 * motion * np.sin(2 * phase))
                centre = np.array([width / 2, height / 2]) + motion * 0.15 * np.array(
                    [width * np.sin(phase), height * np.sin(3 * phase)]
                )
                rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
                linear = rot @ np.diag([scale * squeeze, scale])
                m = np.eye(3)
                m[:2, :2] = linear
                m[:2, 2] = centre - linear @ (np.array(picture.size) / 2)
                maps.append(m)
                if f in faceless:
                    frame = Image.new("RGB", size, (120, 128, 136))
                else:
                    inverse = np.linalg.inv(m)
                    frame = picture.transform(
                        size,
                        Image.Transform.AFFINE,
                        tuple(inverse[:2].ravel()),
                        resample=Image.Resampling.BICUBIC,
                        fillcolor=(120, 128, 136),
                    )
                video.write(np.asarray(frame))
    return np.stack(maps)
