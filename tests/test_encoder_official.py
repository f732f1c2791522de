"""Conformance of the encoder, its loader and the latent average with the official implementation.

Skipped unless PREIM3D_OFFICIAL_PREIM3D points at an official PREIM3D checkout (GitHub
mybabyyh/Preim3D); the latent-average tests also need PREIM3D_OFFICIAL_EG3D, the `eg3d/` python
folder of an official EG3D checkout (GitHub NVlabs/eg3d). See official_preim3d.py for how their code
is run; test_official_outputs.py compares with outputs it stored, without checkouts.
"""

import copy
import types

import numpy as np
import pytest
import torch
from eg3d_reference import FFHQ512
from official_preim3d import EG3D, PREIM3D, official_code, official_encoder, official_latent_avg
from test_encoder import randomize_

from preim3d.cameras import camera_vector
from preim3d.inversion import compute_latent_avg, preprocess_for_encoder
from preim3d.weights.encoder import load_encoder, save_encoder

needs_preim3d = pytest.mark.skipif(
    not PREIM3D, reason="set PREIM3D_OFFICIAL_PREIM3D to an official PREIM3D checkout"
)
needs_both = pytest.mark.skipif(
    not (PREIM3D and EG3D),
    reason="set PREIM3D_OFFICIAL_PREIM3D and PREIM3D_OFFICIAL_EG3D (official eg3d/ folder)",
)
G_KWARGS = FFHQ512[0]


def seeded_official_encoder(seed=0):
    """The official IR-SE50 W+ encoder: default initialisation from `seed`, then randomize_."""
    torch.manual_seed(seed)
    encoder, get_keys = official_encoder()
    return randomize_(encoder, seed).eval(), get_keys


def official_generator(seed=0):
    with official_code(EG3D):  # EG3D's persistence checks pickling at construction: build inside
        from training.triplane import TriPlaneGenerator

        torch.manual_seed(seed)
        G = TriPlaneGenerator(**copy.deepcopy(G_KWARGS)).eval()
    with torch.no_grad():
        G.backbone.mapping.w_avg.normal_(0, 0.5)  # non-trivial truncation centre
    return G


def encoder_inputs():
    from PIL import Image
    from skimage.data import astronaut

    noise = np.random.default_rng(0).integers(0, 256, (512, 512, 3), dtype=np.uint8)
    return preprocess_for_encoder([Image.fromarray(astronaut()), Image.fromarray(noise)])


@needs_preim3d
def test_official_checkpoint_layout_gives_the_official_output(tmp_path):
    official, get_keys = seeded_official_encoder()
    state = {f"encoder.{k}": v for k, v in official.state_dict().items()}
    state["decoder.backbone.mapping.w_avg"] = torch.randn(512)  # the real file also holds the generator
    opts = dict(
        encoder_type="WPlusEncoder",
        stylegan_size=256,
        start_from_latent_avg=True,
        train_decoder=False,
        dataset_type="ffhq_encode",
        device="cuda:0",
        checkpoint_path=None,
        n_styles=14,
    )
    torch.save(
        {"state_dict": state, "opts": opts, "latent_avg": torch.randn(1, 14, 512)}, tmp_path / "preim3d.pt"
    )

    ours = load_encoder(tmp_path / "preim3d.pt")
    x = encoder_inputs()
    with torch.no_grad():
        expected = official(x)
        got = ours(x)
        fast = ours.fast(torch.float32)(x)
    diff, fast_diff = (got - expected).abs().max().item(), (fast - expected).abs().max().item()
    print(
        f"\nW+ max |official| {expected.abs().max():.3f}; max abs diff ours {diff:.3g}, fast fp32 "
        f"{fast_diff:.3g}"
    )
    assert got.shape == (2, 14, 512)
    assert expected.abs().max() > 0.5 and expected.std() > 0.05  # a non-degenerate output to compare
    assert diff <= 1e-4
    assert fast_diff <= 1e-4

    # the other way round: what we store loads strictly into the official class, as official inference does
    save_encoder(ours, tmp_path / "bundle")
    reloaded = load_encoder(tmp_path / "bundle")
    official.load_state_dict(
        get_keys({"state_dict": {f"encoder.{k}": v for k, v in reloaded.state_dict().items()}}, "encoder"),
        strict=True,
    )


@needs_preim3d
def test_preprocessing_equals_the_official_transform():
    pytest.importorskip("torchvision")
    from PIL import Image

    with official_code(PREIM3D):
        from configs.transforms_config import EncodeTransforms
    transform = EncodeTransforms(types.SimpleNamespace()).get_transforms()["transform_test"]
    image = Image.fromarray(np.random.default_rng(2).integers(0, 256, (512, 512, 3), dtype=np.uint8))
    assert torch.equal(preprocess_for_encoder(image)[0], transform(image))


@needs_both
def test_latent_avg_matches_the_official_recipe():
    G = official_generator()
    expected = official_latent_avg(G)
    ours = compute_latent_avg(G)
    diff = (ours - expected).abs().max().item()
    print(f"\nlatent_avg (official G): max |value| {expected.abs().max():.3f}, max abs diff {diff:.3g}")
    assert ours.shape == expected.shape == (1, 14, 512)
    assert diff <= 1e-5

    with official_code(EG3D):
        from camera_utils import LookAtPoseSampler

        pose = LookAtPoseSampler.sample(3.14 / 2, 3.14 / 2, torch.tensor([0, 0, 0.2]), radius=2.7)
    assert (camera_vector()[0, :16] - pose.reshape(16)).abs().max() < 1e-6


@needs_both
def test_latent_avg_of_our_generator_matches_the_official_recipe():
    try:
        from preim3d.networks.triplane import TriPlaneGenerator
    except ImportError as exc:
        pytest.skip(f"our TriPlaneGenerator is not available ({exc})")
    official = official_generator()
    ours = TriPlaneGenerator(**copy.deepcopy(G_KWARGS)).eval()
    ours.load_state_dict(official.state_dict(), strict=True)
    expected = official_latent_avg(official)
    diff = (compute_latent_avg(ours) - expected).abs().max().item()
    print(f"\nlatent_avg (our G): max abs diff {diff:.3g}")
    assert diff <= 1e-5
