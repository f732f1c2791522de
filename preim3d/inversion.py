"""One-pass inversion: aligned face crop -> W+ code of EG3D, as PREIM3D's inference does it.

    x  = preprocess(crop)                     PIL bilinear resize to 256 x 256, then x/255*2 - 1
    ws = E(x) + latent_avg                    [N, 14, 512], fed straight to G.synthesis

latent_avg is the mean W+ code of the generator under PREIM3D's fixed recipe:

    z_i ~ N(0, I), i < 10000, drawn by numpy RandomState(123)
    c   = the frontal camera (yaw = pitch = 3.14/2, focal 4.2647) on the generator's average orbit:
          rendering_kwargs avg_camera_radius and avg_camera_pivot (FFHQ: 2.7 and (0, 0, 0.2))
    latent_avg = (1/10000) sum_i G.mapping(z_i, c, truncation_psi=0.7, truncation_cutoff=14)   [1, 14, 512]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from .cameras import DEFAULT_PIVOT, DEFAULT_RADIUS, FRONTAL_ANGLE, conditioning, intrinsics, orbit_cam2world
from .errors import InputImageError

ENCODER_RESOLUTION = 256
LATENT_AVG_SEED = 123
LATENT_AVG_SAMPLES = 10000
LATENT_AVG_PSI = 0.7
LATENT_AVG_CUTOFF = 14


def preprocess_for_encoder(images) -> torch.Tensor:
    """Crops -> encoder input [N, 3, 256, 256] float32 in [-1, 1].

    `images`: one or a list of PIL images, HxWx3 uint8 arrays, or objects with a PIL `.image`
    (an aligned face). Each is converted to RGB, resized to 256 x 256 with PIL's BILINEAR filter
    (which widens its support when shrinking, i.e. antialiases), then mapped v -> (v/255 - 0.5)/0.5:
    the arithmetic of the official torchvision Resize + ToTensor + Normalize(0.5, 0.5) on PIL input,
    bit for bit.
    """
    if isinstance(images, (Image.Image, np.ndarray)) or hasattr(images, "image"):
        images = [images]
    if not isinstance(images, Sequence) or not images:
        raise InputImageError("preprocess_for_encoder needs a PIL image or a non-empty list of them.")
    batch = np.stack([_resized_rgb(image, i) for i, image in enumerate(images)])
    x = torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous().float().div(255)
    return x.sub(0.5).div(0.5)


def _resized_rgb(image, index: int) -> np.ndarray:
    """One image as a 256 x 256 x 3 uint8 array, resized by PIL."""
    image = getattr(image, "image", image)
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (3, 4):
            raise InputImageError(
                f"Image {index} is an array of shape {image.shape} and dtype {image.dtype}; "
                "give HxWx3 uint8 pixels or a PIL image."
            )
        image = Image.fromarray(image)
    if not isinstance(image, Image.Image):
        raise InputImageError(
            f"Image {index} is a {type(image).__name__}; give a PIL image (an aligned 512 crop)."
        )
    size = (ENCODER_RESOLUTION, ENCODER_RESOLUTION)
    return np.asarray(image.convert("RGB").resize(size, Image.BILINEAR))


@torch.no_grad()
def compute_latent_avg(G, device=None, batch_size: int = 2000) -> torch.Tensor:
    """PREIM3D's latent average of generator `G` (see the module docstring) -> [1, num_ws, w_dim] float32.

    `G` needs `.z_dim` and `.mapping(z, c, truncation_psi, truncation_cutoff)`; its `.rendering_kwargs`,
    if any, place the camera (see the module docstring). The 10,000 codes are
    mapped `batch_size` at a time on `device` (default: G's) and summed in float64, which keeps the
    result within float32 rounding of the official single-batch mean.
    """
    if device is None:
        device = next(iter(G.parameters())).device if hasattr(G, "parameters") else "cpu"
    z_all = np.random.RandomState(LATENT_AVG_SEED).randn(LATENT_AVG_SAMPLES, G.z_dim)
    rendering = getattr(G, "rendering_kwargs", None) or {}
    pose = orbit_cam2world(
        FRONTAL_ANGLE,
        FRONTAL_ANGLE,
        radius=rendering.get("avg_camera_radius", DEFAULT_RADIUS),
        pivot=tuple(rendering.get("avg_camera_pivot", DEFAULT_PIVOT)),
        device=device,
    )
    c = conditioning(pose, intrinsics(device=device))
    total = None
    for start in range(0, LATENT_AVG_SAMPLES, batch_size):
        z = torch.from_numpy(z_all[start : start + batch_size]).to(device=device, dtype=torch.float32)
        ws = G.mapping(
            z, c.repeat(len(z), 1), truncation_psi=LATENT_AVG_PSI, truncation_cutoff=LATENT_AVG_CUTOFF
        )
        part = ws.to("cpu", torch.float64).sum(dim=0, keepdim=True)
        total = part if total is None else total + part
    return (total / LATENT_AVG_SAMPLES).float().to(device)


@torch.no_grad()
def invert(encoder, latent_avg: torch.Tensor, images, batch_size: int = 32) -> torch.Tensor:
    """ws = encoder(x) + latent_avg for every crop -> [N, n_styles, w_dim] float32 on the encoder's device.

    `images` are crops as accepted by `preprocess_for_encoder`, or an already pre-processed tensor
    [N, 3, 256, 256] in [-1, 1]. They are pre-processed and encoded `batch_size` at a time, so a long
    list of photos never sits in memory as one tensor. The encoder runs in eval mode (its mode is
    restored afterwards); it may be a `WPlusEncoder`, its `.fast()` copy or a compiled module.
    """
    reference = next(iter(encoder.parameters()), None)
    if reference is None:
        reference = next(iter(encoder.buffers()))
    device = reference.device
    as_tensor = isinstance(images, torch.Tensor)
    if as_tensor and (images.ndim != 4 or images.shape[1] != 3):
        raise InputImageError(
            f"A tensor of images must be [N, 3, 256, 256] in [-1, 1], got {list(images.shape)}."
        )
    if not as_tensor and (isinstance(images, (Image.Image, np.ndarray)) or hasattr(images, "image")):
        images = [images]
    latent_avg = latent_avg.to(device=device, dtype=torch.float32)
    was_training = encoder.training
    encoder.eval()
    try:
        out = []
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            x = chunk if as_tensor else preprocess_for_encoder(chunk)
            offsets = encoder(x.to(device=device, dtype=reference.dtype)).float()
            if offsets.shape[1:] != latent_avg.shape[1:]:
                raise ValueError(
                    f"The encoder predicts {list(offsets.shape[1:])} per image but latent_avg has shape "
                    f"{list(latent_avg.shape)}: they come from different models."
                )
            out.append(offsets + latent_avg)
    finally:
        encoder.train(was_training)
    if not out:
        raise InputImageError("invert got no images.")
    return torch.cat(out)
