"""Cameras: the frontal pose of the reference, the official turntable, sweeps and key-frame paths."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from preim3d.cameras import camera_vector, keyframe_path, turntable_path, yaw_sweep


def lookat_pose(h: float, v: float, radius=2.7, pivot=(0.0, 0.0, 0.2)) -> np.ndarray:
    """EG3D's LookAt pose, written out again in float64 from reference-spec §6.1."""
    phi = math.acos(1 - 2 * v / math.pi)
    origin = radius * np.array(
        [math.sin(phi) * math.cos(math.pi - h), math.cos(phi), math.sin(phi) * math.sin(math.pi - h)]
    )
    forward = np.asarray(pivot) - origin
    forward /= np.linalg.norm(forward)
    right = -np.cross([0.0, 1.0, 0.0], forward)
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    pose = np.eye(4)
    pose[:3, :3] = np.stack([right, down / np.linalg.norm(down), forward], axis=1)
    pose[:3, 3] = origin
    return pose


def test_frontal_camera_matches_the_reference_rows():
    c = camera_vector(0.0, 0.0)
    assert c.shape == (1, 25)
    expected = [
        [1, 0, 0.000860, -0.002150],
        [0, -1, -0.000548, 0.001369],
        [0.000860, 0.000548, -1, 2.699999],
        [0, 0, 0, 1],
    ]
    torch.testing.assert_close(
        c[0, :16].view(4, 4), torch.tensor(expected, dtype=torch.float32), atol=2e-6, rtol=0
    )
    torch.testing.assert_close(c[0, 16:], torch.tensor([4.2647, 0, 0.5, 0, 4.2647, 0.5, 0, 0, 1.0]))


def test_turntable_is_the_official_path():
    frames = 120
    c = turntable_path()
    assert c.shape == (frames, 25)
    for f in range(0, frames, 7):
        h = 3.14 / 2 + 0.35 * math.sin(2 * 3.14 * f / frames)
        v = 3.14 / 2 - 0.05 + 0.25 * math.cos(2 * 3.14 * f / frames)
        np.testing.assert_allclose(c[f, :16].view(4, 4).numpy(), lookat_pose(h, v), atol=2e-6)
    # Frame 0 looks up at the face from below; a quarter turn later the camera is on the +x side.
    assert c[0, 7] < -0.3 and abs(c[0, 3]) < 0.01
    assert c[30, 3] > 0.9


def test_yaw_sweep_spans_the_range_at_a_fixed_pitch():
    c = yaw_sweep(5, yaw_range=(-0.5, 0.3), pitch=0.1)
    torch.testing.assert_close(c[[0, -1]], camera_vector([-0.5, 0.3], [0.1, 0.1]))
    x, y = c[:, 3], c[:, 7]
    assert torch.all(x[1:] > x[:-1])
    torch.testing.assert_close(y, y[:1].expand(5))


@pytest.mark.parametrize("loop", [False, True])
def test_keyframe_path_passes_through_every_key(loop):
    keys = [(0.0, 0.0), (0.4, -0.1), (-0.3, 0.15)]
    c = keyframe_path(keys, frames=12 if loop else 9, loop=loop)
    at_keys = [0, 4, 8]  # open: t = 2·f/8; loop: t = 3·f/12
    torch.testing.assert_close(c[at_keys], camera_vector(*zip(*keys)), atol=1e-6, rtol=0)


def test_keyframe_path_is_smooth_at_the_keys():
    # 3 keys, 201 frames: key 1 is frame 100. A polyline would turn sharply there.
    c = keyframe_path([(-0.4, 0.0), (0.0, 0.2), (0.4, 0.0)], frames=201)
    position = c[:, [3, 7, 11]].double()
    before, after = position[100] - position[99], position[101] - position[100]
    assert torch.linalg.norm(after - before) < 0.02 * torch.linalg.norm(before)


def test_looping_keyframe_path_closes_smoothly():
    c = keyframe_path([(0.3, 0.0), (0.0, 0.2), (-0.3, 0.0), (0.0, -0.2)], frames=40, loop=True)
    position = c[:, [3, 7, 11]].double()
    # Circular second differences: at the seam (frame 0) no larger than anywhere else on the loop.
    bend = torch.linalg.norm(position.roll(1, 0) - 2 * position + position.roll(-1, 0), dim=1)
    assert bend[0] <= bend[1:].max()
    assert torch.linalg.norm(position[0] - position[-1]) < 1.1 * torch.linalg.norm(position[1] - position[0])


def test_single_key_holds_still_and_bad_counts_are_refused():
    c = keyframe_path([(0.2, -0.1)], frames=3)
    torch.testing.assert_close(c, camera_vector([0.2] * 3, [-0.1] * 3))
    with pytest.raises(ValueError):
        keyframe_path([], frames=3)
    with pytest.raises(ValueError):
        turntable_path(0)
