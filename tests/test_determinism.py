"""What repeatable renders rest on, checked without a GPU: cuDNN's deterministic algorithms around the
generator's passes (on a GPU, benchmarks/check_determinism.py runs the real thing).
"""

from __future__ import annotations

import threading

import pytest
import torch
import torch.nn.functional as F

from preim3d.cameras import camera_vector
from preim3d.networks import triplane
from preim3d.testing import tiny_generator


@pytest.fixture
def cudnn_free():
    """torch.backends.cudnn.deterministic as torch's default (False) for the test, restored after."""
    before = torch.backends.cudnn.deterministic
    torch.backends.cudnn.deterministic = False
    yield
    torch.backends.cudnn.deterministic = before


def test_the_generator_convolves_with_deterministic_algorithms_and_restores_the_flag(cudnn_free, monkeypatch):
    seen = []

    def recording(real):
        def conv(*args, **kwargs):
            seen.append((real.__name__, torch.backends.cudnn.deterministic))
            return real(*args, **kwargs)

        return conv

    for name in ("conv2d", "conv_transpose2d"):
        monkeypatch.setattr(F, name, recording(getattr(F, name)))
    G = tiny_generator(0)
    ws = torch.randn(2, G.num_ws, G.w_dim, generator=torch.Generator().manual_seed(1))
    c = camera_vector([0.0, 0.3], [0.0, 0.1])
    with torch.no_grad():
        G.synthesis(ws, c, deterministic=True)  # backbone (synthesize_planes), then render_planes
    assert {name for name, _ in seen} == {"conv2d", "conv_transpose2d"}
    assert all(flag for _, flag in seen)
    assert torch.backends.cudnn.deterministic is False  # the caller's setting is back


def test_the_flag_stays_set_until_the_last_thread_leaves(cudnn_free):
    inside, release = threading.Event(), threading.Event()

    def other_thread():
        with triplane.deterministic_convolutions():
            inside.set()
            release.wait(10)

    thread = threading.Thread(target=other_thread)
    thread.start()
    inside.wait(10)
    with triplane.deterministic_convolutions():
        assert torch.backends.cudnn.deterministic
    assert torch.backends.cudnn.deterministic  # the other thread is still inside
    release.set()
    thread.join(10)
    assert torch.backends.cudnn.deterministic is False

    torch.backends.cudnn.deterministic = True  # a caller that asked for it keeps it
    with triplane.deterministic_convolutions():
        pass
    assert torch.backends.cudnn.deterministic is True
