"""EG3D's super-resolution modules: the low-resolution feature image → the final RGB image.

Two StyleGAN2 synthesis blocks in "skip" form, conditioned on the LAST w only (ws[:, -1] for every
layer). The rgb image (the first 3 feature channels) starts the skip branch. Variants differ in
widths, output size and whether the first block upsamples:

| official class name          | output | input | block0 (up?)     | block1           |
|------------------------------|--------|-------|------------------|------------------|
| SuperresolutionHybrid2X      | 128    | 64    | 128 ch, no up    | 64 ch, 2× up     |
| SuperresolutionHybrid4X      | 256    | 128   | 128 ch, no up    | 64 ch, 2× up     |
| SuperresolutionHybrid8X      | 512    | 128   | 128 ch, 2× up    | 64 ch, 2× up     |
| SuperresolutionHybrid8XDC    | 512    | 128   | 256 ch, 2× up    | 128 ch, 2× up    |
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from .ops import fir_filter_2d
from .stylegan2 import SynthesisBlock

# name → (output resolution, input resolution, block0 channels, block0 upsamples, block1 channels,
#         resize only when the input is smaller (instead of whenever it differs),
#         has a module-level filter buffer)
SR_VARIANTS = {
    "SuperresolutionHybrid2X": (128, 64, 128, False, 64, False, True),
    "SuperresolutionHybrid4X": (256, 128, 128, False, 64, True, True),
    "SuperresolutionHybrid8X": (512, 128, 128, True, 64, False, True),
    "SuperresolutionHybrid8XDC": (512, 128, 256, True, 128, False, False),
}


class SuperResolution(nn.Module):
    """rgb [N,3,r,r], features [N,C,r,r], ws [N,num_ws,512] → image [N,3,R,R] (see the table above).

    Inputs not at `input_resolution` are first resized (bilinear, antialiased when `sr_antialias`).
    Every convolution is clamped to ±256 when the configuration asks for half precision
    (sr_num_fp16_res > 0), as the official code does, whatever precision it actually runs in.

    Args: variant (an official class name of the table); channels (of the feature image);
    img_resolution (R, which must be the variant's); sr_num_fp16_res; sr_antialias. Other keywords
    of the official modules are accepted and ignored.

    With `return_raw`, also returns the generator's `image_raw` as the official code leaves it: the
    official block 0 adds its ToRGB output in place to the rgb it was given, and the generator's
    `image_raw` is that tensor when it reached block 0 unchanged (neither resized nor upsampled: the
    2X module at 64 px, the 4X module at 128 px). EG3D's dual discriminator was trained on that sum, so
    it is kept there (computed out of place); everywhere else `image_raw` is the rgb input.
    """

    def __init__(self, variant, channels, img_resolution, sr_num_fp16_res, sr_antialias, **_ignored):
        super().__init__()
        if variant not in SR_VARIANTS:
            raise ValueError(f"unknown super-resolution module {variant!r}; known: {', '.join(SR_VARIANTS)}")
        out_res, self.input_resolution, ch0, up0, ch1, self.resize_if_smaller, has_filter = SR_VARIANTS[
            variant
        ]
        if img_resolution != out_res:
            raise ValueError(f"{variant} produces {out_res}x{out_res} images, not {img_resolution}")
        self.variant, self.sr_antialias = variant, sr_antialias
        clamp = 256 if sr_num_fp16_res > 0 else None
        res0 = self.input_resolution * (2 if up0 else 1)
        self.block0 = SynthesisBlock(channels, ch0, 512, res0, 3, conv_clamp=clamp, up=up0)
        self.block1 = SynthesisBlock(ch0, ch1, 512, res0 * 2, 3, conv_clamp=clamp)
        if has_filter:
            self.register_buffer("resample_filter", fir_filter_2d())

    def forward(self, rgb, features, ws, noise_mode="none", fast=False, return_raw=False):
        ws = ws[:, -1:, :].repeat(1, 3, 1)
        size = features.shape[-1]
        resized = size < self.input_resolution or (
            size != self.input_resolution and not self.resize_if_smaller
        )
        skip = rgb
        if resized:
            target = (self.input_resolution, self.input_resolution)
            resize = {
                "size": target,
                "mode": "bilinear",
                "align_corners": False,
                "antialias": self.sr_antialias,
            }
            features, skip = F.interpolate(features, **resize), F.interpolate(rgb, **resize)
        x, img = self.block0(features, skip, ws, noise_mode, fast)
        raw = rgb if resized or self.block0.up else img
        _, img = self.block1(x, img, ws, noise_mode, fast, features=False)
        return (img, raw) if return_raw else img

    def extra_repr(self):
        return (
            f"variant={self.variant}, input_resolution={self.input_resolution}, "
            f"sr_antialias={self.sr_antialias}"
        )
