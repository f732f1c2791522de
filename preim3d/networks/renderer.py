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


def merged_composite_weights(densities, depths, densities_f, depths_f):
    """`composite_weights` over the union of two sample sets of each ray (densities, depths [N,M,S1]
    and [N,M,S2], each in any order: the coarse and the importance samples), ordered by depth; the
    colour weights go back to the samples' own places. Returns v [N,M,S1], v_f [N,M,S2], opacity
    and depth [N,M]."""
    depths, order = torch.sort(torch.cat([depths, depths_f], -1), dim=-1)
    v, opacity, depth = composite_weights(
        torch.gather(torch.cat([densities, densities_f], -1), -1, order), depths
    )
    v = torch.zeros_like(depths).scatter(-1, order, v)
    first = densities.shape[-1]
    return v[..., :first], v[..., first:], opacity, depth


def _ray_examples(device):
    """Sorted depths over [2.25, 3.3] and densities that make both transparent and opaque rays."""
    gen = torch.Generator().manual_seed(0)
    depths = 2.25 + torch.rand(2, 33, 24, generator=gen).cumsum(-1) * (1.05 / 24)
    densities = torch.randn(2, 33, 24, generator=gen) * 8
    yield densities.to(device), depths.to(device)


def _without_grad(*args):
    return not (
        torch.is_grad_enabled() and any(isinstance(a, torch.Tensor) and a.requires_grad for a in args)
    )


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


def _two_sets_examples(device):
    """Sorted coarse depths and unsorted fine ones over the same range (no equal depths: their order,
    and so the weights' places, is the sort's choice; see tests/test_fast_kernels.py)."""
    gen = torch.Generator().manual_seed(0)
    for densities, depths in _ray_examples(device):
        fine = 2.25 + torch.rand(*depths.shape[:-1], 20, generator=gen) * 1.05
        yield densities, depths, (torch.randn(fine.shape, generator=gen) * 8).to(device), fine.to(device)


# Ordering both sets inside one kernel replaces a sort, two concatenations, a gather and a scatter.
MERGED_COMPOSITE_WEIGHTS = FusedKernel(
    "merged compositing weights",
    "merged_composite_weights",
    merged_composite_weights,
    applies=_without_grad,
    examples=_two_sets_examples,
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


def importance_depths(
    depths: torch.Tensor, weights: torch.Tensor, count: int, deterministic=False, eps=1e-5, fast=False
):
    """Depths [N, M, count, 1] drawn from the coarse weights [N,M,S−1] of the coarse depths
    [N,M,S,1] (inverse-CDF sampling, `inverse_cdf`) at u ~ U(0, 1) [N·M, count], or at `count` even
    quantiles 0 … 1 when deterministic; `fast`: in one fused pass where it runs (INVERSE_CDF)."""
    n, m, s, _ = depths.shape
    if deterministic:
        u = torch.linspace(0, 1, count, device=depths.device).expand(n * m, count)
    else:
        u = torch.rand(n * m, count, device=depths.device)
    inverse = INVERSE_CDF if fast else inverse_cdf
    return inverse(depths.reshape(n * m, s), weights.reshape(n * m, s - 1), u, eps).reshape(n, m, count, 1)


def inverse_cdf(depths: torch.Tensor, weights: torch.Tensor, u: torch.Tensor, eps: float = 1e-5):
    """The depths [R, U] at quantiles u [R, U] of the distribution that the coarse interval weights
    [R, S−1] put on the bins between the coarse depths' midpoints (depths [R, S], sorted).

    The weights are smoothed (max-pool 2 then average-pool 2, + 0.01); the pdf uses the interior
    weights w[1:-1] + eps over those bins. As in the official code, only the first S−2 of the S−1
    midpoints can be reached; kept so samples match.
    """
    w = weights.unsqueeze(1).float()
    w = F.avg_pool1d(F.max_pool1d(w, 2, 1, padding=1), 2, 1).squeeze(1) + 0.01
    bins = 0.5 * (depths[:, :-1] + depths[:, 1:])
    pdf = w[:, 1:-1] + eps
    pdf = pdf / pdf.sum(-1, keepdim=True)
    cdf = torch.cat([torch.zeros_like(pdf[:, :1]), running_sum(pdf)], -1)
    u = u.contiguous()
    rows, count = u.shape
    idx = torch.searchsorted(cdf, u, right=True)
    below = torch.clamp_min(idx - 1, 0)
    above = torch.clamp_max(idx, pdf.shape[1])
    both = torch.stack([below, above], -1).view(rows, 2 * count)
    cdf_g = torch.gather(cdf, 1, both).view(rows, count, 2)
    bins_g = torch.gather(bins, 1, both).view(rows, count, 2)
    denom = cdf_g[..., 1] - cdf_g[..., 0]
    denom = torch.where(denom < eps, torch.ones_like(denom), denom)
    return bins_g[..., 0] + (u - cdf_g[..., 0]) / denom * (bins_g[..., 1] - bins_g[..., 0])


def _inverse_cdf_examples(device):
    """Coarse depths and their weights (opaque and transparent rays), with quantiles at random and at
    0 … 1 (one row expanded over the rays)."""
    gen = torch.Generator().manual_seed(0)
    for densities, depths in _ray_examples(device):
        weights = ray_weights(densities, depths).flatten(0, 1)
        depths = depths.flatten(0, 1)
        yield depths, weights, torch.rand(len(depths), 20, generator=gen).to(device), 1e-5
        yield depths, weights, torch.linspace(0, 1, 20, device=device).expand(len(depths), 20), 1e-5


# The importance samples of every ray in one pass instead of about twenty over [N·M, S] tensors.
INVERSE_CDF = FusedKernel(
    "importance sampling", "inverse_cdf", inverse_cdf, applies=_without_grad, examples=_inverse_cdf_examples
)


class ImportanceRenderer(nn.Module):
    """Planes + rays → per-ray features: coarse pass, importance pass, composite of both.

    `rendering_kwargs` keys used: ray_start, ray_end, depth_resolution, depth_resolution_importance,
    box_warp, white_back (default False), density_noise (default 0; training only). Returns
    features [N,F,M] (channels-first, ready to reshape into an image; 2 Σ v c − 1, with 1 − Σw
    added before on a white background), depth [N,M] (Σ w d_mid / Σ w, NaN → +inf, clamped to the
    range of all sample depths) and the accumulated opacity Σw [N,M].

    `coarse_gradients=False` leaves the coarse samples out of the backward pass (their colours and
    densities still count in the composite; the importance samples, which crowd where the weight
    is, carry the gradients): half the backward's plane sampling and decoding, for pivotal tuning.
    """

    def __init__(self, coarse_gradients: bool = True):
        super().__init__()
        self.coarse_gradients = coarse_gradients

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
        fine_count = opts["depth_resolution_importance"]
        with torch.set_grad_enabled(torch.is_grad_enabled() and (self.coarse_gradients or not fine_count)):
            colors, densities = self.run_model(planes, decoder, origins, directions, coarse, opts)
        depths = coarse.squeeze(-1)
        if fine_count > 0:
            with torch.no_grad():
                fine = importance_depths(
                    coarse, weights_of(densities, depths), fine_count, deterministic, fast=fast
                )
            colors_f, densities_f = self.run_model(planes, decoder, origins, directions, fine, opts)
            fine = fine.squeeze(-1)
            # The colour weights come back in the samples' own order, so the colours need no sorting.
            v, v_f, opacity, depth = (MERGED_COMPOSITE_WEIGHTS if fast else merged_composite_weights)(
                densities, depths, densities_f, fine
            )
            rgb = weighted_colors(colors, v) + weighted_colors(colors_f, v_f)
            nearest, farthest = (
                torch.minimum(depths.min(), fine.min()),
                torch.maximum(depths.max(), fine.max()),
            )
        else:
            v, opacity, depth = (COMPOSITE_WEIGHTS if fast else composite_weights)(densities, depths)
            rgb = weighted_colors(colors, v)
            nearest, farthest = depths.min(), depths.max()
        if opts.get("white_back", False):
            rgb = rgb + (1 - opacity).unsqueeze(1)
        depth = torch.clamp(torch.nan_to_num(depth, float("inf")), nearest, farthest)
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
