"""Tri-plane volume rendering: rays from cameras, importance sampling and alpha compositing (EG3D's
ImportanceRenderer with MipRayMarcher2) around the plane features and decoder of `decoder.py`.

Sampling is random even at inference, as in the official renderer: stratified jitter of the coarse
depths, then inverse-CDF importance samples. Exactly two draws are made per render, in this order,
on the render device: `rand` [N,M,coarse,1], then `rand` [N·M,fine]; seeding torch identically
reproduces the official samples. `deterministic=True` replaces both by fixed midpoints / quantiles.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .decoder import SAMPLE_AND_DECODE, sample_and_decode
from .fused import FusedKernel


def camera_rays(cam2world: torch.Tensor, intrinsics: torch.Tensor, resolution: int):
    """Ray origins and unit directions [N, R², 3] for an R×R image, rows outer, columns inner.

    Pixel (i, j) has normalised coordinates u = (j + 0.5)/R, v = (i + 0.5)/R; with focal lengths
    fx, fy, principal point cx, cy and skew s it lifts to the camera-space point
    ((u − cx + cy·s/fy − s·v/fy)/fx, (v − cy)/fy, 1), which cam2world maps to the world.
    """
    n, m = cam2world.shape[0], resolution * resolution
    device = cam2world.device
    fx, fy = intrinsics[:, 0, 0, None], intrinsics[:, 1, 1, None]
    cx, cy, sk = intrinsics[:, 0, 2, None], intrinsics[:, 1, 2, None], intrinsics[:, 0, 1, None]
    steps = torch.arange(resolution, dtype=torch.float32, device=device) * (1.0 / resolution) + (
        0.5 / resolution
    )
    v, u = torch.meshgrid(steps, steps, indexing="ij")
    u, v = u.reshape(1, m), v.reshape(1, m)
    x_cam = (u - cx + cy * sk / fy - sk * v / fy) / fx
    y_cam = (v - cy) / fy
    ones = torch.ones((n, m), device=device)
    points = torch.stack((x_cam.expand(n, m), y_cam.expand(n, m), ones, ones), dim=-1)
    world = torch.bmm(cam2world, points.permute(0, 2, 1)).permute(0, 2, 1)[:, :, :3]
    origins = cam2world[:, :3, 3]
    directions = F.normalize(world - origins[:, None, :], dim=2)
    return origins.unsqueeze(1).repeat(1, m, 1), directions


def ray_weights(densities, depths):
    """Interval weights [N,M,S−1] of samples sorted by depth (MipRayMarcher2); densities, depths [N,M,S].

    Interval k uses the midpoint density: σ = softplus(σ_mid − 1), α = 1 − exp(−σ Δ), and
    w_k = α_k Π_{j<k}(1 − α_j + 1e-10).
    """
    densities = densities.float()
    deltas = depths[..., 1:] - depths[..., :-1]
    alpha = 1 - torch.exp(-F.softplus((densities[..., :-1] + densities[..., 1:]) / 2 - 1) * deltas)
    # The running product as exp of a running sum of logs.
    return alpha * torch.exp(running_sum(torch.log(1 - alpha + 1e-10), exclusive=True))


def running_sum(x, exclusive=False):
    """Cumulative sum over the last dimension (Σ_{j≤k}, or Σ_{j<k} when exclusive) as a product with
    a triangular matrix: GPUs run one matrix product far faster than a sequential scan per ray."""
    k = x.shape[-1]
    return x @ torch.ones(k, k, device=x.device, dtype=x.dtype).triu_(
        1 if exclusive else 0
    )  # [j, k] = 1: j ≤ k


def composite_weights(densities, depths):
    """Of samples sorted by depth (densities, depths [N,M,S]): the per-sample colour weights v
    [N,M,S] (`sample_weights`), the opacity Σw [N,M] and the depth Σ w·d_mid / Σ w [N,M] (NaN where
    Σ w = 0), w the interval weights (`ray_weights`)."""
    weights = ray_weights(densities, depths)
    opacity = weights.sum(-1)
    depth = (weights * (depths[..., :-1] + depths[..., 1:]) / 2).sum(-1) / opacity
    return sample_weights(weights), opacity, depth


def _ray_examples(device):
    """Sorted depths over [2.25, 3.3] and densities that make both transparent and opaque rays."""
    gen = torch.Generator().manual_seed(0)
    depths = 2.25 + torch.rand(2, 33, 24, generator=gen).cumsum(-1) * (1.05 / 24)
    densities = torch.randn(2, 33, 24, generator=gen) * 8
    yield densities.to(device), depths.to(device)


def _without_grad(densities, depths):
    return not (torch.is_grad_enabled() and (densities.requires_grad or depths.requires_grad))


# The fast mode's compositing: one pass each instead of a dozen over [N,M,S] tensors.
RAY_WEIGHTS = FusedKernel(
    "ray weights", "ray_weights", ray_weights, applies=_without_grad, examples=_ray_examples
)
COMPOSITE_WEIGHTS = FusedKernel(
    "compositing weights",
    "composite_weights",
    composite_weights,
    applies=_without_grad,
    examples=_ray_examples,
)


def sample_weights(weights):
    """Per-sample colour weights [N,M,S] from interval weights [N,M,S−1]: interval k's midpoint colour
    (c_k + c_{k+1})/2 gives Σ_k w_k (c_k + c_{k+1})/2 = Σ_j v_j c_j with v_j = (w_j + w_{j−1})/2."""
    return (F.pad(weights, (0, 1)) + F.pad(weights, (1, 0))) / 2


def weighted_colors(colors, v):
    """Σ_s v[n,m,s] colors[n,:,m,s] → [N,F,M] float32 (colors [N,F,M,S], v [N,M,S])."""
    return WEIGHTED_SUM(colors, v)


def _weighted_sum_examples(device):
    gen = torch.Generator().manual_seed(0)
    yield (
        torch.rand(2, 32, 45, 10, generator=gen).to(device, torch.float16),
        torch.rand(2, 45, 10, generator=gen).to(device),
    )


WEIGHTED_SUM = FusedKernel(
    "colour sum",
    "weighted_sum",
    lambda colors, v: (colors * v.to(colors.dtype).unsqueeze(1)).sum(-1).float(),
    applies=lambda colors, v: colors.dtype == torch.float16,
    examples=_weighted_sum_examples,
)


def stratified_depths(n, m, ray_start, ray_end, count, device, deterministic=False):
    """[N, M, count, 1] depths: `count` even steps over [start, end], each jittered by U(0, step)."""
    depths = (
        torch.linspace(ray_start, ray_end, count, device=device).reshape(1, 1, count, 1).repeat(n, m, 1, 1)
    )
    step = (ray_end - ray_start) / (count - 1)
    if deterministic:
        return depths + 0.5 * step
    return depths + torch.rand_like(depths) * step


def importance_depths(depths: torch.Tensor, weights: torch.Tensor, count: int, deterministic=False, eps=1e-5):
    """Depths [N, M, count, 1] drawn from the coarse weights (inverse-CDF sampling).

    The weights [N,M,S−1] are smoothed (max-pool 2 then average-pool 2, + 0.01); the pdf uses the
    interior weights w[1:-1] + eps over the bins between the coarse midpoints. As in the official
    code, only the first S−2 of the S−1 midpoints can be reached; kept so samples match.
    """
    n, m, s, _ = depths.shape
    z = depths.reshape(n * m, s)
    w = weights.reshape(n * m, -1).unsqueeze(1).float()
    w = F.avg_pool1d(F.max_pool1d(w, 2, 1, padding=1), 2, 1).squeeze(1) + 0.01
    bins = 0.5 * (z[:, :-1] + z[:, 1:])
    pdf = w[:, 1:-1] + eps
    pdf = pdf / pdf.sum(-1, keepdim=True)
    cdf = torch.cat([torch.zeros_like(pdf[:, :1]), running_sum(pdf)], -1)
    if deterministic:
        u = torch.linspace(0, 1, count, device=depths.device).expand(n * m, count).contiguous()
    else:
        u = torch.rand(n * m, count, device=depths.device)
    idx = torch.searchsorted(cdf, u, right=True)
    below = torch.clamp_min(idx - 1, 0)
    above = torch.clamp_max(idx, pdf.shape[1])
    both = torch.stack([below, above], -1).view(n * m, 2 * count)
    cdf_g = torch.gather(cdf, 1, both).view(n * m, count, 2)
    bins_g = torch.gather(bins, 1, both).view(n * m, count, 2)
    denom = cdf_g[..., 1] - cdf_g[..., 0]
    denom = torch.where(denom < eps, torch.ones_like(denom), denom)
    samples = bins_g[..., 0] + (u - cdf_g[..., 0]) / denom * (bins_g[..., 1] - bins_g[..., 0])
    return samples.reshape(n, m, count, 1)


class ImportanceRenderer(nn.Module):
    """Planes + rays → per-ray features: coarse pass, importance pass, composite of both.

    `rendering_kwargs` keys used: ray_start, ray_end, depth_resolution, depth_resolution_importance,
    box_warp, white_back (default False), density_noise (default 0; training only). Returns
    features [N,F,M] (channels-first, ready to reshape into an image; 2 Σ v c − 1, with 1 − Σw
    added before on a white background), depth [N,M] (Σ w d_mid / Σ w, NaN → +inf, clamped to the
    range of all sample depths) and the accumulated opacity Σw [N,M].
    """

    def forward(self, planes, decoder, origins, directions, rendering_kwargs, deterministic=False):
        opts = rendering_kwargs
        if opts["ray_start"] == "auto" or opts["ray_end"] == "auto":
            raise NotImplementedError("ray_start/ray_end 'auto' (ShapeNet-style box limits) is not supported")
        n, m, _ = origins.shape
        coarse = stratified_depths(
            n, m, opts["ray_start"], opts["ray_end"], opts["depth_resolution"], origins.device, deterministic
        )
        # The fast mode (float16 planes) composites with fused kernels where they run.
        fast = planes.dtype == torch.float16
        weights_of = RAY_WEIGHTS if fast else ray_weights
        composite = COMPOSITE_WEIGHTS if fast else composite_weights
        colors, densities = self.run_model(planes, decoder, origins, directions, coarse, opts)
        depths = coarse.squeeze(-1)
        fine_count = opts["depth_resolution_importance"]
        if fine_count > 0:
            with torch.no_grad():
                fine = importance_depths(coarse, weights_of(densities, depths), fine_count, deterministic)
            colors_f, densities_f = self.run_model(planes, decoder, origins, directions, fine, opts)
            depths, order = torch.sort(torch.cat([depths, fine.squeeze(-1)], -1), dim=-1)
            v, opacity, depth = composite(
                torch.gather(torch.cat([densities, densities_f], -1), -1, order), depths
            )
            # The colour weights go back to the samples' unsorted places, so the colours need no sorting.
            v = torch.zeros_like(depths).scatter(-1, order, v)
            rgb = weighted_colors(colors, v[..., : coarse.shape[2]]) + weighted_colors(
                colors_f, v[..., coarse.shape[2] :]
            )
        else:
            v, opacity, depth = composite(densities, depths)
            rgb = weighted_colors(colors, v)
        if opts.get("white_back", False):
            rgb = rgb + (1 - opacity).unsqueeze(1)
        depth = torch.clamp(torch.nan_to_num(depth, float("inf")), torch.min(depths), torch.max(depths))
        return rgb * 2 - 1, depth, opacity

    @staticmethod
    def run_model(planes, decoder, origins, directions, depths, opts):
        """Colours [N,F,M,S] and densities [N,M,S] at origin + depth·direction (depths [N,M,S,1])."""
        if opts.get("density_noise", 0) > 0:
            colors, densities = sample_and_decode(
                planes, decoder, origins, directions, depths, opts["box_warp"]
            )
            return colors, densities + torch.randn_like(densities) * opts["density_noise"]
        return SAMPLE_AND_DECODE(planes, decoder, origins, directions, depths, opts["box_warp"])
