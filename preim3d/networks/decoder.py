"""Reading the tri-planes: bilinear plane features at 3-D points, and the small MLP that decodes them
into colour features and density.

The volume renderer (`renderer.py`), the fused Triton kernel that replaces both in fast mode
(`fast_kernels.py`, which checks itself against them) and mesh extraction all use these.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

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
