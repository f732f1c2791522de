"""Cameras in EG3D's convention: OpenCV cam2world poses on a sphere, normalised intrinsics, the 25-d c.

World frame: y up, the face looks toward +z, the head sits near the origin. A camera is placed on a
sphere of radius `radius` about the world origin and looks at `pivot`. Angles follow EG3D's
LookAt sampler: the horizontal angle h (yaw) and the polar angle v (pitch) are both pi/2 for the
frontal view, and the polar angle enters through phi = arccos(1 - 2 v / pi).

Public functions take yaw and pitch as offsets in radians from the frontal view, which is PREIM3D's
literal 3.14 / 2 (not pi / 2): the released latent average and demos use that value.
"""

from __future__ import annotations

import math

import torch

FRONTAL_ANGLE = 3.14 / 2
DEFAULT_RADIUS = 2.7
DEFAULT_PIVOT = (0.0, 0.0, 0.2)
DEFAULT_FOCAL = 4.2647  # 2985.29 / 700: FFHQ's focal length normalised by image size


def _normalize(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm(dim=-1, keepdim=True)


def look_at_cam2world(forward: torch.Tensor, origin: torch.Tensor) -> torch.Tensor:
    """[N,4,4] OpenCV cam2world: columns right, down, forward, position (no roll; world y is up)."""
    forward = _normalize(forward)
    up = torch.tensor([0.0, 1.0, 0.0], dtype=forward.dtype, device=forward.device).expand_as(forward)
    right = -_normalize(torch.cross(up, forward, dim=-1))
    down = _normalize(torch.cross(forward, right, dim=-1))
    pose = torch.eye(4, dtype=forward.dtype, device=forward.device).repeat(forward.shape[0], 1, 1)
    pose[:, :3, :3] = torch.stack((right, down, forward), dim=-1)
    pose[:, :3, 3] = origin
    return pose


def orbit_cam2world(horizontal, vertical, radius=DEFAULT_RADIUS, pivot=DEFAULT_PIVOT, device="cpu") -> torch.Tensor:
    """Cam2world for absolute LookAt angles (h, v), each a float or a 1-D sequence of the same length.

    origin = r (sin(phi) cos(pi - h), cos(phi), sin(phi) sin(pi - h)) with phi = arccos(1 - 2 v / pi),
    looking at `pivot` (the origin itself when pivot is None).
    """
    h = torch.as_tensor(horizontal, dtype=torch.float32, device=device).reshape(-1, 1)
    v = torch.as_tensor(vertical, dtype=torch.float32, device=device).reshape(-1, 1)
    h, v = torch.broadcast_tensors(h, v)
    v = v.clamp(1e-5, math.pi - 1e-5)
    phi = torch.arccos(1 - 2 * (v / math.pi))
    origin = torch.cat(
        [radius * torch.sin(phi) * torch.cos(math.pi - h), radius * torch.cos(phi), radius * torch.sin(phi) * torch.sin(math.pi - h)],
        dim=1,
    )
    target = torch.zeros(3, device=device) if pivot is None else torch.tensor(pivot, dtype=torch.float32, device=device)
    return look_at_cam2world(target - origin, origin)


def intrinsics(focal: float = DEFAULT_FOCAL, device="cpu") -> torch.Tensor:
    """[3,3] intrinsics normalised by image size: focal on the diagonal, principal point at 0.5."""
    return torch.tensor([[focal, 0.0, 0.5], [0.0, focal, 0.5], [0.0, 0.0, 1.0]], device=device)


def conditioning(cam2world: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """The 25-d camera vector c: cam2world [N,4,4] and intrinsics [3,3] or [N,3,3], flattened row-major."""
    n = cam2world.shape[0]
    K = K.to(cam2world).reshape(-1, 9).expand(n, 9)
    return torch.cat([cam2world.reshape(n, 16), K], dim=1)


def camera_vector(yaw=0.0, pitch=0.0, radius=DEFAULT_RADIUS, focal=DEFAULT_FOCAL, device="cpu") -> torch.Tensor:
    """c [N,25] for yaw/pitch offsets (radians, floats or 1-D sequences) from PREIM3D's frontal view.

    Positive yaw moves the camera toward +x (the subject's left), positive pitch moves it down.
    """
    yaw = torch.as_tensor(yaw, dtype=torch.float32)
    pitch = torch.as_tensor(pitch, dtype=torch.float32)
    pose = orbit_cam2world(FRONTAL_ANGLE + yaw, FRONTAL_ANGLE + pitch, radius=radius, device=device)
    return conditioning(pose, intrinsics(focal, device=device))
