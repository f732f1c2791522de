"""The encoder reference: a narrow copy of PREIM3D's official W+ encoder (its widths, one or two units
per stage), seeded weights and a seeded input. The official class produced its output once
(tests/data/official/encoder.safetensors, see make_official_reference.py); CI compares ours with it.
"""

from __future__ import annotations

import torch

from preim3d.networks.encoder import WPlusEncoder
from preim3d.testing import fill_random_encoder

# Units per stage: the first stage's second unit has the stride-1 max-pool shortcut, the first
# unit of every stage the stride-2 one (same width) or the convolution + BatchNorm one (wider).
ENCODER_STAGE_UNITS = (2, 1, 1, 1)
ENCODER_WEIGHT_SEED, ENCODER_INPUT_SEED, ENCODER_BATCH = 7, 8, 2


def reference_encoder() -> WPlusEncoder:
    """Our encoder in the reference's shape with its seeded weights, in eval mode."""
    encoder = WPlusEncoder(stage_units=ENCODER_STAGE_UNITS)
    return fill_random_encoder(encoder, ENCODER_WEIGHT_SEED).eval().requires_grad_(False)


def encoder_input() -> torch.Tensor:
    """[2, 3, 256, 256] in [-1, 1]: smooth random images (a coarse grid of colours, bilinearly
    enlarged) with fine noise, so that every stage sees structure at its own scale."""
    gen = torch.Generator().manual_seed(ENCODER_INPUT_SEED)
    coarse = torch.rand(ENCODER_BATCH, 3, 8, 8, generator=gen) * 2 - 1
    smooth = torch.nn.functional.interpolate(coarse, size=(256, 256), mode="bilinear", align_corners=False)
    noise = torch.randn(ENCODER_BATCH, 3, 256, 256, generator=gen) * 0.1
    return (smooth + noise).clamp(-1, 1)
