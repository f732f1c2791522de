"""Conformance with the official EG3D code, run live when PREIM3D_OFFICIAL_EG3D points at a checkout.

    PREIM3D_OFFICIAL_EG3D=/path/to/eg3d/eg3d python -m pytest tests/test_generator_official.py

The official generator gets seeded random weights, is saved in both official formats by the
official classes themselves, and our loader must reproduce its outputs from those files.
On a CUDA machine, PREIM3D_TEST_DEVICE=cuda runs the comparison there (fp32, and our fast mode).
"""

from __future__ import annotations

import os

import pytest
from eg3d_reference import FFHQ512, TINY, psnr
from official_eg3d import run_generator, save_official_formats

from preim3d import load_generator
from preim3d.testing import build_official_eg3d, official_eg3d_path

pytestmark = pytest.mark.skipif(official_eg3d_path() is None, reason="PREIM3D_OFFICIAL_EG3D is not set")
DEVICE = os.environ.get("PREIM3D_TEST_DEVICE", "cpu")


@pytest.mark.parametrize("config", [TINY, FFHQ512], ids=["tiny", "ffhq512-128"])
def test_outputs_match_the_official_generator(config, tmp_path):
    official = build_official_eg3d(*config, seed=11, device=DEVICE)
    reference = run_generator(official, config, seed=12, batch=2, device=DEVICE)
    files = save_official_formats(official, tmp_path)
    del official
    for path in files:
        ours = load_generator(path, device=DEVICE)
        out = run_generator(ours, config, seed=12, batch=2, device=DEVICE)
        assert (out["ws"] - reference["ws"]).abs().max().item() <= 1e-5, path.name
        for key in ("image", "image_raw", "image_depth"):
            assert psnr(out[key], reference[key]) >= 50, (path.name, key)
    if DEVICE == "cuda":
        fast = run_generator(ours.set_precision("fast"), config, seed=12, batch=2, device=DEVICE)
        for key in ("image", "image_raw", "image_depth"):
            assert psnr(fast[key], reference[key]) >= 40, ("fast", key)
