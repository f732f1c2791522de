"""The W+ encoder, its weights files, pre-processing, latent average and inversion (tiny configs, CPU)."""

import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from preim3d.errors import InputImageError, WeightsError
from preim3d.inversion import compute_latent_avg, invert, preprocess_for_encoder
from preim3d.networks.encoder import WPlusEncoder
from preim3d.weights.bundle import write_bundle_component
from preim3d.weights.encoder import (
    convert_encoder,
    infer_architecture,
    load_encoder,
    load_latent_avg,
    save_encoder,
)

TINY = dict(
    n_styles=14,
    w_dim=32,
    stage_units=[2, 1, 2, 1],
    stage_channels=[8, 16, 24, 32],
    stem_channels=8,
    pool_size=3,
    se_reduction=4,
)


def randomize_(encoder, seed=0):
    """Non-trivial weights everywhere, BatchNorm running statistics included."""
    g = torch.Generator().manual_seed(seed)

    def rand(t, lo, hi):
        t.copy_(torch.rand(t.shape, generator=g) * (hi - lo) + lo)

    with torch.no_grad():
        for m in encoder.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                rand(m.weight, 0.5, 1.5)
                rand(m.bias, -0.2, 0.2)
                rand(m.running_mean, -0.2, 0.2)
                rand(m.running_var, 0.5, 2.0)
                m.num_batches_tracked.fill_(7)
            elif isinstance(m, torch.nn.PReLU):
                rand(m.weight, 0.0, 0.5)
        rand(encoder.linear.bias, -0.1, 0.1)
    return encoder


def tiny_encoder(seed=0):
    torch.manual_seed(seed)
    return randomize_(WPlusEncoder(**TINY), seed).eval()


class FakeGenerator(torch.nn.Module):
    """Anything with `.z_dim` and an official-style `.mapping` will do for the latent average."""

    def __init__(self, z_dim=16, w_dim=32, num_ws=14):
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.z_dim, self.num_ws = z_dim, num_ws
        self.A = torch.nn.Parameter(torch.randn(z_dim, w_dim, generator=g) / z_dim**0.5)
        self.B = torch.nn.Parameter(torch.randn(25, w_dim, generator=g))
        self.register_buffer("w_avg", torch.randn(w_dim, generator=g))
        self.calls = 0

    def mapping(self, z, c, truncation_psi=1, truncation_cutoff=None):
        self.calls += 1
        assert z.dtype == torch.float32 and c.shape == (len(z), 25)
        w = torch.tanh(z @ self.A + c @ self.B)[:, None].repeat(1, self.num_ws, 1)
        cut = self.num_ws if truncation_cutoff is None else truncation_cutoff
        w[:, :cut] = self.w_avg.lerp(w[:, :cut], truncation_psi)
        return w


def save_official_layout(encoder, path, latent_avg=None, **opts):
    """A checkpoint shaped like PREIM3D's training checkpoint:
    prefixed state dict, decoder, opts, latent_avg."""
    state = {f"encoder.{k}": v for k, v in encoder.state_dict().items()}
    state["decoder.backbone.mapping.w_avg"] = torch.randn(32)
    state["decoder.decoder.net.0.weight"] = torch.randn(64, 32)
    checkpoint = {"state_dict": state, "opts": {"encoder_type": "WPlusEncoder", "stylegan_size": 256, **opts}}
    if latent_avg is not None:
        checkpoint["latent_avg"] = latent_avg
    torch.save(checkpoint, path)
    return path


def test_default_is_the_official_ir_se50_layout():
    with torch.device("meta"):
        encoder = WPlusEncoder()
    state = encoder.state_dict()
    assert len(state) == 394
    assert sum(v.numel() for v in state.values()) == 47_499_253
    assert state["linear.weight"].shape == (7168, 512)
    assert state["output_layer_2.3.weight"].shape == (512, 25088)
    assert {k.split(".")[1] for k in state if "shortcut_layer" in k} == {"3", "7", "21"}
    assert state["body.21.shortcut_layer.0.weight"].shape == (512, 256, 1, 1)
    assert state["body.7.res_layer.5.fc1.weight"].shape == (16, 256, 1, 1)
    assert infer_architecture(state, "meta") == encoder.config


def test_identity_shortcut_subsamples_and_output_shape():
    encoder = tiny_encoder()
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    assert encoder(x).shape == (2, 14, 32)
    unit = encoder.body[0]  # 8 -> 8 channels, stride 2: the shortcut is the official MaxPool2d(1, 2)
    y = torch.randn(1, 8, 9, 9)
    with torch.no_grad():
        shortcut = unit(y) - unit.res_layer(y)
    assert shortcut.shape == (1, 8, 5, 5)
    assert torch.allclose(shortcut, torch.nn.functional.max_pool2d(y, 1, 2), atol=1e-6)


def test_neighbouring_stages_must_differ_in_width():
    with pytest.raises(ValueError, match="Neighbouring stages"):
        WPlusEncoder(stage_units=[1, 1], stage_channels=[16, 16], stem_channels=16)


def test_fast_path_matches_fp32():
    encoder = tiny_encoder()
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        reference = encoder(x)
        fast = encoder.fast(torch.float32)
        assert (fast(x) - reference).abs().max() < 1e-5
        assert fast(x).dtype == torch.float32
        half = encoder.fast(torch.float16)(x)
    assert half.dtype == torch.float32
    assert (half - reference).abs().max() < 1e-2
    assert encoder.linear.weight.dtype == torch.float32  # the original is untouched


def test_official_layout_with_extra_keys_loads(tmp_path):
    encoder, stored = tiny_encoder(), torch.randn(1, 14, 32)
    path = save_official_layout(encoder, tmp_path / "ckpt.pt", latent_avg=stored)
    loaded = load_encoder(path)
    assert torch.equal(load_latent_avg(path), stored)
    assert loaded.config == encoder.config
    assert not loaded.training
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        assert torch.equal(loaded(x), encoder(x))
    torch.save(encoder.state_dict(), tmp_path / "bare.pt")  # an un-prefixed encoder state dict is fine too
    assert torch.equal(load_encoder(tmp_path / "bare.pt").linear.weight, encoder.linear.weight)
    with pytest.raises(WeightsError, match="bare.pt holds no latent average.*compute_latent_avg"):
        load_latent_avg(tmp_path / "bare.pt")


def test_bundle_round_trip(tmp_path):
    encoder = tiny_encoder()
    latent_avg = torch.randn(1, 14, 32)
    save_encoder(
        encoder, tmp_path / "bundle", latent_avg=latent_avg, provenance={"source": "test"}, licence="MIT"
    )
    loaded = load_encoder(tmp_path / "bundle")
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        assert torch.equal(loaded(x), encoder(x))
    assert torch.equal(load_latent_avg(tmp_path / "bundle"), latent_avg)
    config = json.loads((tmp_path / "bundle" / "config.json").read_text())
    assert config["encoder"]["config"] == TINY
    assert config["encoder"]["licence"] == "MIT"
    assert config["latent_avg"]["recipe"]["seed"] == 123


def test_save_encoder_refuses_a_latent_avg_of_another_shape(tmp_path):
    with pytest.raises(WeightsError, match="do not belong together"):
        save_encoder(tiny_encoder(), tmp_path / "b", latent_avg=torch.randn(1, 14, 512))


def _official_tensors(tmp_path, edit):
    state = {f"encoder.{k}": v.clone() for k, v in tiny_encoder().state_dict().items()}
    edit(state)
    path = tmp_path / "edited.pt"
    torch.save({"state_dict": state, "opts": {}}, path)
    return path


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda s: s.pop("encoder.body.1.res_layer.4.running_var"),
            "missing: body.1.res_layer.4.running_var",
        ),
        (
            lambda s: s.update({"encoder.linear.bias": torch.zeros(7)}),
            r"wrong shape: linear.bias \[7\] \(expected \[448\]\)",
        ),
        (
            lambda s: s.update({"encoder.body.0.res_layer.9.weight": torch.zeros(1)}),
            "unexpected: body.0.res_layer.9",
        ),
        (lambda s: s.pop("encoder.linear.weight"), "'linear.weight' is missing"),
    ],
)
def test_damaged_weights_are_named(tmp_path, edit, message):
    path = _official_tensors(tmp_path, edit)
    with pytest.raises(WeightsError, match=message) as info:
        load_encoder(path)
    assert str(path) in str(info.value)


def test_generator_given_as_encoder(tmp_path):
    # a generator state dict
    torch.save(
        {"backbone.mapping.w_avg": torch.zeros(4), "decoder.net.0.weight": torch.zeros(2, 2)},
        tmp_path / "g.pt",
    )
    with pytest.raises(WeightsError, match="generator weights.*load_generator"):
        load_encoder(tmp_path / "g.pt")
    # a generator saved as a Python object (like PREIM3D's eg3d_G_ema.pkl): refused, never unpickled
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pt")
    with pytest.raises(
        WeightsError, match=r"module.pt needs the Python object torch.nn.modules.linear.Linear"
    ):
        load_encoder(tmp_path / "module.pt")
    # a plain pickle that names EG3D's modules (like NVIDIA's network pickles)
    payload = pickle.dumps({"G_ema": "torch_utils.persistence._reconstruct_persistent_obj"})
    (tmp_path / "ngc.pkl").write_bytes(payload)
    with pytest.raises(WeightsError, match="ngc.pkl is a plain Python pickle.*load_generator"):
        load_encoder(tmp_path / "ngc.pkl")
    # a bundle that holds only a generator
    write_bundle_component(tmp_path / "gbundle", "generator", {"w": torch.zeros(1)}, {})
    with pytest.raises(WeightsError, match="no 'encoder' component.*generator"):
        load_encoder(tmp_path / "gbundle")


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "junk.bin").write_bytes(b"\x00\x01" * 50)
    (tmp_path / "zip.pt").write_bytes(b"PK\x05\x06" + b"\x00" * 18)  # an empty zip archive
    for name in ("notes.txt", "junk.bin", "zip.pt"):
        with pytest.raises(WeightsError, match=name):
            load_encoder(tmp_path / name)
    with pytest.raises(WeightsError, match="does not exist"):
        load_encoder(tmp_path / "absent.pt")
    with pytest.raises(WeightsError, match="not a preim3d bundle"):
        load_encoder(tmp_path)
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(WeightsError, match="holds a list"):
        load_encoder(tmp_path / "list.pt")
    torch.save(
        {"state_dict": {"encoder.x": torch.zeros(1)}, "opts": {"encoder_type": "Encoder4Editing"}},
        tmp_path / "e4e.pt",
    )
    with pytest.raises(WeightsError, match="'Encoder4Editing'"):
        load_encoder(tmp_path / "e4e.pt")


def _pil_bilinear_half(channel):
    """PIL's BILINEAR 2x reduction written out: triangle filter of support 2 input pixels -> taps
    (1, 3, 3, 1)/8, renormalised at the borders; horizontal pass first, each pass rounded to uint8."""

    def one_axis(a):
        a = a.astype(np.float64)
        n = a.shape[1]
        out = np.empty((a.shape[0], n // 2))
        for i in range(n // 2):
            taps = [
                (j, 1 - abs(j + 0.5 - (2 * i + 1)) / 2) for j in range(2 * i - 1, 2 * i + 3) if 0 <= j < n
            ]
            total = sum(w for _, w in taps)
            out[:, i] = sum(a[:, j] * w for j, w in taps) / total
        return np.floor(out + 0.5).clip(0, 255)

    return one_axis(one_axis(channel).T).T


def test_preprocess_matches_hand_computed_pil_bilinear():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(512, 512, 3), dtype=np.uint8)
    expected = np.stack([_pil_bilinear_half(pixels[..., k]) for k in range(3)])
    expected = torch.from_numpy(expected).float().div(255).sub(0.5).div(0.5)
    x = preprocess_for_encoder(Image.fromarray(pixels))
    assert x.shape == (1, 3, 256, 256) and x.dtype == torch.float32 and x.is_contiguous()
    assert torch.equal(x[0], expected)
    # arrays, RGBA and objects with an `.image` (aligned faces) give the same pixels
    face = type("Face", (), {"image": Image.fromarray(pixels)})()
    rgba = Image.fromarray(pixels).convert("RGBA")
    assert torch.equal(preprocess_for_encoder([pixels, face, rgba]), x.repeat(3, 1, 1, 1))


def test_preprocess_rejects_bad_input():
    with pytest.raises(InputImageError, match="Image 1"):
        preprocess_for_encoder([Image.new("RGB", (8, 8)), "photo.jpg"])
    with pytest.raises(InputImageError, match="uint8"):
        preprocess_for_encoder(np.zeros((8, 8, 3), dtype=np.float32))
    with pytest.raises(InputImageError):
        preprocess_for_encoder([])


def test_latent_avg_follows_the_recipe_in_any_batch_size():
    G = FakeGenerator()
    from preim3d.cameras import camera_vector

    # the official computation: one batch of 10,000 float64 z from RandomState(123), frontal c
    z = torch.from_numpy(np.random.RandomState(123).randn(10000, G.z_dim))
    with torch.no_grad():
        official = G.mapping(z.float(), camera_vector().repeat(10000, 1), 0.7, 14).mean(0, keepdim=True)
    ours = compute_latent_avg(G, batch_size=3000)
    assert ours.shape == (1, 14, 32) and ours.dtype == torch.float32
    assert (ours - official).abs().max() < 1e-5
    assert G.calls == 1 + 4  # 3000 + 3000 + 3000 + 1000
    assert not torch.allclose(ours[0, 0], G.w_avg, atol=1e-2)  # truncation toward w_avg, not onto it


def test_convert_computes_latent_avg_once_and_checks_the_checkpoint(tmp_path):
    encoder, G = tiny_encoder(), FakeGenerator()
    expected = compute_latent_avg(G)
    calls = G.calls
    ckpt = save_official_layout(encoder, tmp_path / "ckpt.pt", latent_avg=expected + 1e-6)
    convert_encoder(ckpt, tmp_path / "bundle", G)
    assert G.calls == 2 * calls  # computed exactly once, here
    config = json.loads((tmp_path / "bundle" / "config.json").read_text())
    assert config["latent_avg"]["provenance"]["checkpoint_latent_avg_max_abs_diff"] < 1e-5
    assert len(config["encoder"]["provenance"]["sha256"]) == 64
    for _ in range(2):  # loading reads the stored value, it never maps again
        assert torch.equal(load_latent_avg(tmp_path / "bundle"), expected)
        load_encoder(tmp_path / "bundle")
    assert G.calls == 2 * calls

    save_official_layout(encoder, tmp_path / "other.pt", latent_avg=expected + 0.1)
    with pytest.raises(WeightsError, match="differs from the one stored in .*other.pt"):
        convert_encoder(tmp_path / "other.pt", tmp_path / "bundle2", G)


def test_invert_adds_latent_avg_and_batches():
    encoder = tiny_encoder()
    latent_avg = torch.randn(1, 14, 32)
    rng = np.random.default_rng(1)
    photos = [Image.fromarray(rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)) for _ in range(3)]
    encoder.train()
    ws = invert(encoder, latent_avg, photos, batch_size=2)
    assert encoder.training  # mode restored
    encoder.eval()
    with torch.no_grad():
        expected = encoder(preprocess_for_encoder(photos)) + latent_avg
    assert ws.shape == (3, 14, 32)
    assert (ws - expected).abs().max() < 1e-5
    assert (invert(encoder, latent_avg, photos[0]) - ws[:1]).abs().max() < 1e-5
    x = preprocess_for_encoder(photos)
    assert (invert(encoder.fast(torch.float32), latent_avg, x) - ws).abs().max() < 1e-5
    with pytest.raises(ValueError, match="different models"):
        invert(encoder, torch.zeros(1, 14, 512), x[:1])
