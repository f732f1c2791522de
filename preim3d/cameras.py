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

from .validation import check_angles, check_frames

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


def orbit_cam2world(
    horizontal, vertical, radius=DEFAULT_RADIUS, pivot=DEFAULT_PIVOT, device="cpu"
) -> torch.Tensor:
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
        [
            radius * torch.sin(phi) * torch.cos(math.pi - h),
            radius * torch.cos(phi),
            radius * torch.sin(phi) * torch.sin(math.pi - h),
        ],
        dim=1,
    )
    target = (
        torch.zeros(3, device=device)
        if pivot is None
        else torch.tensor(pivot, dtype=torch.float32, device=device)
    )
    return look_at_cam2world(target - origin, origin)


def intrinsics(focal: float = DEFAULT_FOCAL, device="cpu") -> torch.Tensor:
    """[3,3] intrinsics normalised by image size: focal on the diagonal, principal point at 0.5."""
    return torch.tensor([[focal, 0.0, 0.5], [0.0, focal, 0.5], [0.0, 0.0, 1.0]], device=device)


def conditioning(cam2world: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """The 25-d camera vector c: cam2world [N,4,4] and intrinsics [3,3] or [N,3,3], flattened row-major."""
    n = cam2world.shape[0]
    K = K.to(cam2world).reshape(-1, 9).expand(n, 9)
    return torch.cat([cam2world.reshape(n, 16), K], dim=1)


def camera_vector(
    yaw=0.0, pitch=0.0, radius=DEFAULT_RADIUS, focal=DEFAULT_FOCAL, device="cpu"
) -> torch.Tensor:
    """c [N,25] for yaw/pitch offsets (radians, floats or 1-D sequences) from PREIM3D's frontal view.

    Positive yaw moves the camera toward +x (the subject's left), positive pitch moves it down.
    |yaw| <= π and |pitch| <= π/2 (see `preim3d.validation`); other values raise InvalidValueError.
    """
    check_angles(yaw, pitch)
    yaw = torch.as_tensor(yaw, dtype=torch.float32)
    pitch = torch.as_tensor(pitch, dtype=torch.float32)
    pose = orbit_cam2world(FRONTAL_ANGLE + yaw, FRONTAL_ANGLE + pitch, radius=radius, device=device)
    return conditioning(pose, intrinsics(focal, device=device))


# --- Trajectories: c [F,25] for videos. -------------------------------------------------------------

TURNTABLE_YAW = 0.35
TURNTABLE_PITCH = 0.25
TURNTABLE_PITCH_OFFSET = -0.05


def turntable_path(
    frames: int = 120, radius=DEFAULT_RADIUS, focal=DEFAULT_FOCAL, device="cpu"
) -> torch.Tensor:
    """The official EG3D / PREIM3D turntable: c [frames,25] on a closed loop around the frontal view.

    Frame f of F: yaw = 0.35 sin(2·3.14·f/F), pitch = −0.05 + 0.25 cos(2·3.14·f/F) (offsets from
    3.14/2, so h = 3.14/2 + yaw, v = 3.14/2 + pitch as the official video). The official code
    writes 3.14 for pi here too; kept, so frame f matches its frame f (and the loop closes 0.05 %
    short of a full period, as there).
    """
    frames = check_frames(frames)
    t = 2 * 3.14 * torch.arange(frames, dtype=torch.float64) / frames
    yaw = TURNTABLE_YAW * torch.sin(t)
    pitch = TURNTABLE_PITCH_OFFSET + TURNTABLE_PITCH * torch.cos(t)
    return camera_vector(yaw, pitch, radius=radius, focal=focal, device=device)


def yaw_sweep(
    frames: int, yaw_range=(-0.6, 0.6), pitch=0.0, radius=DEFAULT_RADIUS, focal=DEFAULT_FOCAL, device="cpu"
) -> torch.Tensor:
    """c [frames,25] for yaws evenly spaced from yaw_range[0] to yaw_range[1] (both included), fixed pitch."""
    frames = check_frames(frames)
    yaw = torch.linspace(yaw_range[0], yaw_range[1], frames, dtype=torch.float64)
    return camera_vector(yaw, torch.full_like(yaw, pitch), radius=radius, focal=focal, device=device)


def keyframe_path(
    keyframes, frames: int, loop: bool = False, radius=DEFAULT_RADIUS, focal=DEFAULT_FOCAL, device="cpu"
) -> torch.Tensor:
    """c [frames,25] along a smooth curve through key (yaw, pitch) offsets, in radians.

    The keys are joined by a uniform Catmull-Rom spline, which passes through every key with a
    continuous tangent: between keys P1 and P2 with neighbours P0 and P3, at s in [0, 1],
        P(s) = ½ (2 P1 + (P2 − P0) s + (2 P0 − 5 P1 + 4 P2 − P3) s² + (3 P1 − P0 − 3 P2 + P3) s³).
    Open paths (loop=False) repeat the end keys as their missing neighbours and sample the spline
    parameter t = (K − 1)·f/(F − 1), so the first and last frames are the first and last keys. Loops
    wrap the neighbours around and use t = K·f/F, so the video repeats without a seam. Key k is
    frame f exactly when t(f) = k.
    """
    frames = check_frames(frames)
    keys = torch.as_tensor(keyframes, dtype=torch.float64).reshape(-1, 2)
    if len(keys) == 0:
        raise ValueError("keyframe_path needs at least one (yaw, pitch) key")
    k = len(keys)
    if loop:
        t = k * torch.arange(frames, dtype=torch.float64) / frames
    else:
        t = (k - 1) * torch.arange(frames, dtype=torch.float64) / max(frames - 1, 1)
    last_segment = k - 1 if loop else max(k - 2, 0)  # open paths end at s = 1 of the last segment
    segment = torch.clamp(t.floor().long(), max=last_segment)
    s = (t - segment).unsqueeze(1)
    neighbours = segment.unsqueeze(1) + torch.arange(-1, 3)
    neighbours = neighbours % k if loop else neighbours.clamp(0, k - 1)
    p0, p1, p2, p3 = keys[neighbours].unbind(1)
    points = 0.5 * (
        2 * p1 + (p2 - p0) * s + (2 * p0 - 5 * p1 + 4 * p2 - p3) * s**2 + (3 * p1 - p0 - 3 * p2 + p3) * s**3
    )
    return camera_vector(points[:, 0], points[:, 1], radius=radius, focal=focal, device=device)
