"""Conformance with the official EG3D code, run live when PREIM3D_OFFICIAL_EG3D points at a checkout.

    PREIM3D_OFFICIAL_EG3D=/path/to/eg3d/eg3d python -m pytest tests/test_generator_official.py

The official generator gets seeded random weights, is saved in both official formats by the
official classes themselves, and our loader must reproduce its outputs from those files: every
narrow configuration of eg3d_reference.REFERENCES, and the full-size ffhq512-128 one.
On a CUDA machine, PREIM3D_TEST_DEVICE=cuda runs the comparison there (fp32, and our fast mode).
"""

from __future__ import annotations

import os

import pytest
from eg3d_reference import FFHQ512, REFERENCES, Reference, psnr
from official_eg3d import build_official, run_generator, save_official_formats

from preim3d import load_generator
from preim3d.testing import official_eg3d_path

pytestmark = pytest.mark.skipif(official_eg3d_path() is None, reason="PREIM3D_OFFICIAL_EG3D is not set")
DEVICE = os.environ.get("PREIM3D_TEST_DEVICE", "cpu")
CONFIGS = {**REFERENCES, "ffhq512-128-full-size": Reference(FFHQ512, batch=2)}
# CPU float32 agrees to 107-143 dB; CUDA convolutions differ from run to run in their last bits
# (and may use TF32), and the fast mode computes in float16.
MIN_PSNR = {"cpu": 100, "cuda": 50, "fast": 40}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_outputs_match_the_official_generator(name, tmp_path):
    reference = CONFIGS[name]
    config, batch = reference.config, reference.batch
    official = build_official(config, seed=11, device=DEVICE, weight_scales=reference.weight_scales)
    reference_out = run_generator(official, config, seed=12, batch=batch, device=DEVICE)
    files = save_official_formats(official, tmp_path)
    del official
    for path in files:
        ours = load_generator(path, device=DEVICE)
        out = run_generator(ours, config, seed=12, batch=batch, device=DEVICE)
        assert (out["ws"] - reference_out["ws"]).abs().max().item() <= 1e-5, path.name
        for key in ("image", "image_raw", "image_depth"):
            assert psnr(out[key], reference_out[key]) >= MIN_PSNR[DEVICE], (path.name, key)
    if DEVICE == "cuda":
        fast = run_generator(ours.set_precision("fast"), config, seed=12, batch=batch, device=DEVICE)
        for key in ("image", "image_raw", "image_depth"):
            assert psnr(fast[key], reference_out[key]) >= MIN_PSNR["fast"], ("fast", key)
