"""Agreement with outputs the official code produced once (tests/data/official, made by
tests/data/make_official_reference.py): EG3D generators of every configuration EG3D's train.py
makes (narrow copies, see eg3d_reference.REFERENCES), PREIM3D's encoder and its latent average.

CPU float32 reproduces the official images, raw images and depths to well over 100 dB (about
107–143 dB), so a wrong sample, filter tap or clamp anywhere shows.
"""

from __future__ import annotations

import json

import pytest
import torch
from eg3d_reference import OFFICIAL_DATA, REFERENCES, generator_kwargs_json, make_ours, pixel_grid, psnr
from official_eg3d import run_generator
from official_format import write_network_pickle
from preim3d_reference import encoder_input, reference_encoder
from safetensors import safe_open
from test_encoder import save_official_layout
from test_generator import assert_same_state

from preim3d import load_generator
from preim3d.inversion import compute_latent_avg
from preim3d.weights.encoder import load_encoder

MIN_PSNR = 100  # dB, CPU float32


def stored(name):
    with safe_open(str(OFFICIAL_DATA / f"{name}.safetensors"), "pt") as f:
        return {key: f.get_tensor(key) for key in f.keys()}, f.metadata()


@pytest.mark.parametrize("name", list(REFERENCES))
def test_generator_matches_the_stored_official_outputs(name, tmp_path):
    reference = REFERENCES[name]
    expected, metadata = stored(name)
    assert json.loads(metadata["config"]) == json.loads(generator_kwargs_json(reference.config)), (
        "the configuration changed: regenerate tests/data/official (make_official_reference.py)"
    )
    # through our reader of NGC pickles, so that every configuration's kwargs are carried over too
    write_network_pickle(make_ours(reference), tmp_path / "network.pkl")
    G = load_generator(tmp_path / "network.pkl")
    out = run_generator(G, reference.config, reference.input_seed, reference.batch)
    assert (out["ws"] - expected["w"][:, None]).abs().max() <= 1e-5  # the stored rows are all equal
    for key in ("image", "image_raw", "image_depth"):
        ours = pixel_grid(out[key])
        assert ours.shape == expected[key].shape, key
        assert psnr(ours, expected[key]) >= MIN_PSNR, key


@pytest.mark.parametrize("name", [name for name, reference in REFERENCES.items() if reference.latent_avg])
def test_latent_avg_matches_the_official_recipe(name):
    with safe_open(str(OFFICIAL_DATA / "latent_avg.safetensors"), "pt") as f:
        expected = f.get_tensor(name)
    ours = compute_latent_avg(make_ours(REFERENCES[name]))
    assert ours.shape == (1, 14, 512) and expected.shape == (1, 512)
    assert (ours - expected[:, None]).abs().max() <= 1e-5


def test_encoder_matches_the_stored_official_output(tmp_path):
    expected, _ = stored("encoder")
    encoder, x = reference_encoder(), encoder_input()
    with torch.no_grad():
        outputs = {"ours": encoder(x), "fast fp32": encoder.fast(torch.float32)(x)}
    assert expected["codes"].shape == (2, 14, 512) and expected["codes"].std() > 0.1
    for kind, codes in outputs.items():
        assert (codes - expected["codes"]).abs().max() <= 1e-5, kind
    # the same weights as PREIM3D's training checkpoint lays them out, read by our loader
    assert_same_state(load_encoder(save_official_layout(encoder, tmp_path / "preim3d.pt")), encoder)
