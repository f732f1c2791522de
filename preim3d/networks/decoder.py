"""Reading the tri-planes: bilinear plane features at 3-D points, and the small MLP that decodes them
into colour features and density.

The volume renderer (`renderer.py`) and mesh extraction use these through `sample_and_decode`,
which the fast mode runs as one fused Triton kernel (`SAMPLE_AND_DECODE`, `fast_kernels.py`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .fused import FusedKernel
from .ops import FullyConnectedLayer


def sample_triplanes(planes: torch.Tensor, points: torch.Tensor, box_warp: float) -> torch.Tensor:
    """Bilinear features [N, 3, M, C] of the points [N, M, 3] on planes [N, 3, C, H, W].

    Points are scaled by 2/box_warp to the [-1, 1] grid. Plane 0 is indexed by (x, y), plane 1 by
    (x, z) and plane 2 by (z, x) — not (z, y): EG3D's axis matrices give that, and the released
    weights were trained with it. Outside the box the features are zero.
    """
    n, n_planes, c, h, w = planes.shape
    p = points * (2.0 / box_warp)
    x, y, z = p.unbind(-1)
    grid = torch.stack([torch.stack((x, y), -1), torch.stack((x, z), -1), torch.stack((z, x), -1)], dim=1)
    grid = grid.reshape(n * n_planes, 1, -1, 2).to(planes.dtype)
    out = F.grid_sample(
        planes.reshape(n * n_planes, c, h, w),
        grid,
        mode="bilinear",
        padding_mode="zeros",
        align_corners=False,
    )
    return out.reshape(n, n_planes, c, -1).transpose(2, 3)  # a view: the decoder reduces over planes first


class OSGDecoder(nn.Module):
    """Plane features [N,3,M,C] → mean over planes → FC(C→64) → softplus → FC(64→1+F).

    Returns rgb [N,M,F] = sigmoid(·)·1.002 − 0.001 on every feature channel and sigma [N,M,1]
    (raw; activated by the ray marcher). Computed channels-first: the mean over the planes is
    folded into the first layer (W·mean_p f_p = [W/3 W/3 W/3]·[f_1; f_2; f_3]), so the features
    that `sample_triplanes` returns are used in place, and both outputs are views of [N,·,M] tensors.

    Args: n_features (C, channels per plane); decoder_lr_mul (lr multiplier of both layers);
    decoder_output_dim (F, colour features); hidden_dim.
    """

    def __init__(self, n_features=32, decoder_lr_mul=1.0, decoder_output_dim=32, hidden_dim=64):
        super().__init__()
        self.net = nn.Sequential(
            FullyConnectedLayer(n_features, hidden_dim, lr_multiplier=decoder_lr_mul),
            nn.Softplus(),
            FullyConnectedLayer(hidden_dim, 1 + decoder_output_dim, lr_multiplier=decoder_lr_mul),
        )

    def forward(self, features: torch.Tensor):
        n, n_planes, m, c = features.shape
        x = features.transpose(2, 3).reshape(n, n_planes * c, m)
        first, last = self.net[0], self.net[2]
        w1 = (first.weight * (first.weight_gain / n_planes)).repeat(1, n_planes).to(x.dtype)
        b1 = (first.bias * first.bias_gain).to(x.dtype)[:, None]
        hidden = F.softplus(torch.baddbmm(b1, w1.expand(n, -1, -1), x))  # the bias added inside the product
        w2 = (last.weight * last.weight_gain).to(x.dtype)
        out = torch.baddbmm((last.bias * last.bias_gain).to(x.dtype)[:, None], w2.expand(n, -1, -1), hidden)
        rgb = out[:, 1:].sigmoid() * (1 + 2 * 0.001) - 0.001
        return rgb.transpose(1, 2), out[:, :1].transpose(1, 2)


def sample_and_decode(planes, decoder, origins, directions, depths, box_warp):
    """Colours [N,F,M,S] and raw densities [N,M,S] of the decoder at the points origins + depths ·
    directions (origins, directions [N,M,3]; depths [N,M,S,1]) on planes [N,3,C,H,W]."""
    n, m, s, _ = depths.shape
    points = (origins.unsqueeze(-2) + depths * directions.unsqueeze(-2)).reshape(n, m * s, 3)
    colors, densities = decoder(sample_triplanes(planes, points, box_warp))
    # The decoder's outputs are views of channels-first tensors: transposing back is free.
    return colors.transpose(1, 2).reshape(n, -1, m, s), densities.reshape(n, m, s)


def _sample_and_decode_examples(device):
    """A random decoder and planes, rays from near the origin: many samples leave the box."""
    gen = torch.Generator().manual_seed(0)
    decoder = OSGDecoder(32).requires_grad_(False)
    for param in decoder.parameters():
        param.copy_(torch.randn(param.shape, generator=gen))
    planes = torch.randn(1, 3, 32, 16, 16, generator=gen).to(device, torch.float16)
    origins = torch.randn(2, 40, 3, generator=gen) * 0.1
    directions = F.normalize(torch.randn(2, 40, 3, generator=gen), dim=-1)
    depths = torch.rand(2, 40, 5, 1, generator=gen) * 1.2
    yield (
        planes.expand(2, -1, -1, -1, -1),
        decoder.to(device),
        origins.to(device),
        directions.to(device),
        depths.to(device),
        1.0,
    )


def _fused_sampler_applies(planes, decoder, origins, directions, depths, box_warp):
    """The kernel handles OSGDecoders of power-of-two widths (at least 16) on float16 planes without
    gradients."""
    if not isinstance(decoder, OSGDecoder):
        return False
    widths = (planes.shape[2], decoder.net[0].out_features, decoder.net[2].out_features - 1)
    return (
        planes.dtype == torch.float16
        and not (torch.is_grad_enabled() and planes.requires_grad)
        and all(w >= 16 and w & (w - 1) == 0 for w in widths)
    )


SAMPLE_AND_DECODE = FusedKernel(
    "tri-plane sampler",
    "sample_and_decode",
    sample_and_decode,
    applies=_fused_sampler_applies,
    examples=_sample_and_decode_examples,
)
