"""Geometric 3D consistency without a face model: warp one rendered view into another with its depth.

EG3D renders each pixel as the expected colour and the expected termination depth t along a unit
ray, so a view A defines a surface point for every pixel; if the head is 3D-consistent, another
view B sees the same colour where that point projects.

Cameras (EG3D's convention, `preim3d.cameras`): c = [cam2world (4x4, OpenCV: x right, y down,
z forward), K (3x3, normalised by the image size)]. For pixel (i, j) of an S x S image, with
u = (j + 0.5) / S and v = (i + 0.5) / S (`camera_rays`' pixel centres),

    unproject (view A):  d = normalize(R_A K_A^-1 (u, v, 1)),   P = o_A + t_A(u, v) d
    project   (view B):  X = R_B^T (P - o_B),   (u', v') = (K_B X)_{1,2} / (K_B X)_3,
                         r = |P - o_B|  (P's distance along B's unit ray, comparable to t_B)

B's colour and depth are read at (u', v') by bilinear interpolation (grid_sample with
align_corners=False, whose grid coordinate 2u' - 1 puts u = (j + 0.5) / S on pixel j's centre).
Pixel (i, j) of A is co-visible when

    0 <= u', v' <= 1,   X_3 > 0   and   r <= t_B(u', v') + tolerance

(the point lies in B's frame, in front of B, and is not hidden behind B's surface; points the
renders disagree on in the other direction, in front of B's surface, count as visible, so an
inconsistent geometry raises the error instead of hiding it). The photometric error is

    error = mean over co-visible pixels of |I_A(u, v) - I_B(u', v')|    (RGB, 8-bit levels 0..255)

Resolution: the depth is rendered at the neural rendering resolution r (128 for EG3D FFHQ). The
check runs on the pixel grid of the images it is given: on the raw neural-resolution images
('image_raw', r x r, the colours the volume renderer itself composited) the depth is used as it
is; on the super-resolved images ('image', 4r x 4r) A's depth is read bilinearly at the finer
pixel centres, i.e. upsampled bilinearly. `preim3d.evaluation.run` reports both: the raw check
measures the radiance field, the final one adds whatever the 2-D super-resolution changes per view.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

DEFAULT_TOLERANCE = 0.03  # world units: ~1 % of the camera distance 2.7, ~6 raw pixels' footprint at 128 px


@dataclass(frozen=True)
class Reprojection:
    """View B's colours warped onto view A's pixels, the co-visibility mask and the errors.

    `warped` [N, 3, S, S] in [-1, 1] (zero where not co-visible), `mask` [N, S, S] bool,
    `error` [N] mean absolute RGB difference on co-visible pixels in 8-bit levels (NaN with no
    co-visible pixel), `covisible` [N] fraction of A's pixels that are co-visible.
    """

    warped: torch.Tensor
    mask: torch.Tensor
    error: torch.Tensor
    covisible: torch.Tensor


def _split(c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    c = torch.as_tensor(c, dtype=torch.float64).reshape(-1, 25)
    return c[:, :16].reshape(-1, 4, 4), c[:, 16:].reshape(-1, 3, 3)


def pixel_grid(size: int, n: int = 1) -> torch.Tensor:
    """Normalised pixel centres (u, v) = ((j + 0.5) / S, (i + 0.5) / S), [n, S, S, 2] float64."""
    steps = (torch.arange(size, dtype=torch.float64) + 0.5) / size
    v, u = torch.meshgrid(steps, steps, indexing="ij")
    return torch.stack((u, v), -1).expand(n, size, size, 2)


def sample(image: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """Bilinear values of image [N, C, h, w] at normalised points uv [N, H, W, 2] -> [N, C, H, W]."""
    return F.grid_sample(
        image.double(), 2 * uv - 1, mode="bilinear", padding_mode="border", align_corners=False
    )


def unproject(depth: torch.Tensor, c: torch.Tensor, size: int | None = None) -> torch.Tensor:
    """World points [N, S, S, 3] (float64) of the pixels of an S x S image
    with ray depths `depth` [N, 1, r, r].

    P = o + t d with d the unit ray through the pixel centre (module docstring); S defaults to r,
    otherwise t is read bilinearly at the S x S pixel centres.
    """
    cam2world, K = _split(c)
    n = cam2world.shape[0]
    size = size or depth.shape[-1]
    uv = pixel_grid(size, n)
    t = depth.double() if depth.shape[-1] == size else sample(depth, uv)
    pixels = torch.cat([uv, torch.ones_like(uv[..., :1])], -1)  # (u, v, 1)
    camera = pixels @ torch.linalg.inv(K).transpose(1, 2)[:, None]  # K^-1 (u, v, 1)
    direction = F.normalize(camera @ cam2world[:, None, :3, :3].transpose(-1, -2), dim=-1)
    return cam2world[:, None, None, :3, 3] + t[:, 0, ..., None] * direction


def project(points: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """World points [N, H, W, 3] -> normalised image points uv [N, H, W, 2],
    camera z and distance r, [N, H, W]."""
    cam2world, K = _split(c)
    origin = cam2world[:, None, None, :3, 3]
    camera = (points - origin) @ cam2world[:, None, :3, :3]  # R^T (P - o), row-vector form
    image = camera @ K.transpose(1, 2)[:, None]
    z = camera[..., 2]
    uv = image[..., :2] / z.clamp_min(1e-12)[..., None]
    return uv, z, (points - origin).norm(dim=-1)


def reproject(
    image_a: torch.Tensor,
    depth_a: torch.Tensor,
    c_a: torch.Tensor,
    image_b: torch.Tensor,
    depth_b: torch.Tensor,
    c_b: torch.Tensor,
    tolerance: float = DEFAULT_TOLERANCE,
) -> Reprojection:
    """Warp view B onto view A's pixels through A's depth and compare colours on co-visible pixels.

    image_* [N, 3, S, S] in [-1, 1], depth_* [N, 1, r, r] ray depths as `render` returns them
    (S may be larger than r: module docstring), c_* [N, 25] or [25] camera vectors (broadcast over
    N). `tolerance`: how far (world units) a point may lie behind B's surface and still count as
    seen by B. Everything runs in float64 so that a view warped onto itself matches to ~1e-6.
    """
    n, _, size, _ = image_a.shape
    c_a = torch.as_tensor(c_a, dtype=torch.float64).reshape(-1, 25).expand(n, 25)
    c_b = torch.as_tensor(c_b, dtype=torch.float64).reshape(-1, 25).expand(n, 25)
    points = unproject(depth_a, c_a, size)
    uv, z, distance = project(points, c_b)
    depth_seen = sample(depth_b, uv)[:, 0]
    inside = ((uv >= 0) & (uv <= 1)).all(-1) & (z > 0)
    mask = inside & (distance <= depth_seen + tolerance)
    warped = sample(image_b, uv) * mask[:, None]
    diff = (image_a.double() - warped).abs().mean(1) * 127.5  # [-1, 1] -> 8-bit levels
    count = mask.sum((1, 2))
    error = torch.where(count > 0, (diff * mask).sum((1, 2)) / count.clamp_min(1), torch.nan)
    return Reprojection(
        warped=warped.float(), mask=mask, error=error.float(), covisible=(count / (size * size)).float()
    )
