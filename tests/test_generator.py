"""The EG3D generator: architecture, loading and saving (official outputs: test_official_outputs.py)."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from eg3d_reference import FFHQ512, TINY, fill_random, psnr, random_inputs
from official_eg3d import run_generator
from official_format import write_network_pickle, write_torch_save

from preim3d import TriPlaneGenerator, WeightsError, load_generator, save_generator
from preim3d.networks.ops import fir_blur, fir_filter_2d, modulated_conv2d, up_conv_kernel, upsample_2x
from preim3d.networks.renderer import ImportanceRenderer, camera_rays


def make_generator(config=TINY, seed=3) -> TriPlaneGenerator:
    kwargs, resolution = config
    G = TriPlaneGenerator(**kwargs).eval().requires_grad_(False)
    fill_random(G, seed)
    G.neural_rendering_resolution = resolution
    return G


@pytest.fixture(scope="module")
def tiny():
    return make_generator()


def assert_same_state(a: torch.nn.Module, b: torch.nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_ffhq512_state_dict_has_the_official_layout():
    G = TriPlaneGenerator(**FFHQ512[0])
    state = G.state_dict()
    assert len(state) == 176
    assert sum(p.numel() for p in G.parameters()) == 30_662_136
    assert sum(t.numel() for t in state.values()) == 31_493_160
    assert G.num_ws == 14
    shapes = {
        "backbone.synthesis.b4.const": (512, 4, 4),
        "backbone.synthesis.b128.conv0.weight": (256, 512, 3, 3),
        "backbone.synthesis.b256.torgb.weight": (96, 128, 1, 1),
        "backbone.synthesis.b256.conv1.noise_const": (256, 256),
        "backbone.mapping.fc0.weight": (512, 1024),
        "backbone.mapping.embed.weight": (512, 25),
        "superresolution.block0.conv0.weight": (256, 32, 3, 3),
        "superresolution.block1.conv1.noise_const": (512, 512),
        "decoder.net.2.weight": (33, 64),
    }
    for key, shape in shapes.items():
        assert tuple(state[key].shape) == shape, key
    assert "superresolution.resample_filter" not in state  # absent in the 8XDC variant only


def test_bundle_round_trip_is_exact(tiny, tmp_path):
    save_generator(tiny, tmp_path / "bundle", provenance={"file": "test"})
    loaded = load_generator(tmp_path / "bundle")
    assert_same_state(tiny, loaded)
    assert loaded.neural_rendering_resolution == tiny.neural_rendering_resolution
    assert loaded.rendering_kwargs == tiny.rendering_kwargs
    a, b = run_generator(tiny, TINY, 7, 1), run_generator(loaded, TINY, 7, 1)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("writer", [write_network_pickle, write_torch_save], ids=["ngc-pickle", "torch-save"])
def test_official_file_formats_load_exactly(tiny, tmp_path, writer):
    path = tmp_path / "generator.pkl"
    writer(tiny, path)
    loaded = load_generator(path)
    assert_same_state(tiny, loaded)
    assert loaded.neural_rendering_resolution == TINY[1]
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    assert loaded.source_info["class_name"] == "TriPlaneGenerator"


def test_embedded_source_is_never_executed(tiny, tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "snapshot.pkl"
    write_network_pickle(tiny, path, module_src=f"open({str(marker)!r}, 'w').close()\n")
    load_generator(path)
    assert not marker.exists()


class _Evil:
    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return self.func, (self.arg,)


@pytest.mark.parametrize("how", ["os.system", "eval", "exec", "unknown-global", "in-torch-zip"])
def test_malicious_pickles_are_refused_and_nothing_runs(tmp_path, how):
    marker = tmp_path / "pwned"
    command = f"open({str(marker)!r}, 'w').close()"
    path = tmp_path / "evil.pkl"
    payload = {
        "os.system": _Evil(os.system, f"touch {marker}"),
        "eval": _Evil(eval, command),
        "exec": _Evil(exec, command),
        "unknown-global": _Evil(Path.touch, marker),
        "in-torch-zip": _Evil(os.system, f"touch {marker}"),
    }[how]
    if how == "in-torch-zip":
        torch.save({"G_ema": payload}, path)
    else:
        with open(path, "wb") as f:
            pickle.dump({"G_ema": payload}, f)
    with pytest.raises(WeightsError, match="refused to load the global"):
        load_generator(path)
    assert not marker.exists()


def test_damaged_and_wrong_files_give_clear_errors(tiny, tmp_path):
    good = tmp_path / "good.pkl"
    write_network_pickle(tiny, good)
    data = good.read_bytes()

    truncated = tmp_path / "truncated.pkl"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match=r"truncated\.pkl.*truncated, corrupt"):
        load_generator(truncated)

    garbage = tmp_path / "garbage.pkl"
    garbage.write_bytes(os.urandom(4096))
    with pytest.raises(WeightsError, match="garbage.pkl"):
        load_generator(garbage)

    mismatched = tmp_path / "mismatched.pkl"  # tiny weights, but the file claims the FFHQ-512 architecture
    write_network_pickle(tiny, mismatched, init_kwargs=FFHQ512[0])
    with pytest.raises(WeightsError, match=r"mismatched\.pkl.*(do not fit|has shape)"):
        load_generator(mismatched)

    no_generator = tmp_path / "checkpoint.pt"
    torch.save({"state_dict": {"encoder.linear.weight": torch.zeros(2, 2)}, "opts": {}}, no_generator)
    with pytest.raises(WeightsError, match="load_encoder"):
        load_generator(no_generator)

    with pytest.raises(WeightsError, match="does not exist"):
        load_generator(tmp_path / "missing.pkl")
    with pytest.raises(WeightsError, match="not a preim3d bundle"):
        load_generator(tmp_path)


def test_damaged_bundle_gives_clear_error(tiny, tmp_path):
    bundle = tmp_path / "bundle"
    save_generator(tiny, bundle)
    tensors = bundle / "generator.safetensors"
    tensors.write_bytes(tensors.read_bytes()[:1000])
    with pytest.raises(WeightsError, match="generator.safetensors"):
        load_generator(bundle)


def test_upsample_equals_zero_insertion_then_filter():
    x = torch.randn(2, 5, 7, 6)
    f = fir_filter_2d()
    # upfirdn2d(up=2, pad=(2,1,2,1), gain=4) written out literally.
    up = torch.zeros(2, 5, 14, 12)
    up[:, :, ::2, ::2] = x
    up = F.pad(up, [2, 1, 2, 1])
    kernel = (f * 4).flip([0, 1])[None, None].repeat(5, 1, 1, 1)
    expected = F.conv2d(up, kernel, groups=5)
    assert torch.allclose(upsample_2x(x), expected, atol=1e-6)


def test_cached_planes_render_the_same_images(tiny):
    ws = torch.randn(1, tiny.num_ws, 512)
    c = random_inputs(1, 32, 0)[1]
    torch.manual_seed(0)
    direct = tiny.synthesis(ws, c)
    planes = tiny.synthesize_planes(ws)
    torch.manual_seed(0)
    cached = tiny.render_planes(planes, ws, c)
    assert all(torch.equal(direct[k], cached[k]) for k in direct)


def test_sampling_is_random_unless_deterministic(tiny):
    ws = torch.randn(1, tiny.num_ws, 512)
    c = random_inputs(1, 32, 1)[1]
    first, second = tiny.synthesis(ws, c), tiny.synthesis(ws, c)
    assert not torch.equal(first["image_depth"], second["image_depth"])  # stratified + importance jitter
    fixed = [tiny.synthesis(ws, c, deterministic=True) for _ in range(2)]
    assert torch.equal(fixed[0]["image"], fixed[1]["image"])
    assert psnr(fixed[0]["image_depth"], first["image_depth"]) > 20  # same scene, other samples


def test_noise_modes_and_truncation(tiny):
    ws = torch.randn(1, tiny.num_ws, 512)
    const = [tiny.synthesize_planes(ws, "const") for _ in range(2)]
    assert torch.equal(const[0], const[1])
    assert not torch.equal(tiny.synthesize_planes(ws, "random"), const[0])
    assert not torch.equal(tiny.synthesize_planes(ws, "none"), const[0])
    with pytest.raises(ValueError, match="noise_mode"):
        tiny.synthesize_planes(ws, "sometimes")

    z, c = torch.randn(3, 32), random_inputs(3, 32, 2)[1]
    w_avg = tiny.backbone.mapping.w_avg
    truncated = tiny.mapping(z, c, truncation_psi=0.0, truncation_cutoff=4)
    free = tiny.mapping(z, c)
    assert torch.allclose(truncated[:, :4], w_avg.expand(3, 4, -1))
    assert torch.equal(truncated[:, 4:], free[:, 4:])


@pytest.mark.parametrize("up", [False, True])
@pytest.mark.parametrize("demodulate", [True, False])
def test_modulated_conv_batch_path_equals_single_sample_path(up, demodulate):
    x, weight, styles = torch.randn(3, 6, 8, 8), torch.randn(5, 6, 3, 3), torch.randn(3, 6)
    kwargs = {"demodulate": demodulate, "up": up, "resample_filter": fir_filter_2d()}
    batched = modulated_conv2d(x, weight, styles, **kwargs)
    singles = torch.cat(
        [modulated_conv2d(x[i : i + 1], weight, styles[i : i + 1], **kwargs) for i in range(3)]
    )
    assert batched.shape == (3, 5, 16 if up else 8, 16 if up else 8)
    assert torch.allclose(batched, singles, atol=1e-5, rtol=1e-5)


def test_combined_up_kernel_equals_transposed_conv_then_blur():
    x, w, f = (
        torch.randn(2, 6, 9, 7, dtype=torch.float64),
        torch.randn(5, 6, 3, 3, dtype=torch.float64),
        fir_filter_2d(),
    )
    two_step = fir_blur(F.conv_transpose2d(x, w.transpose(0, 1), stride=2), f.double(), pad=1, gain=4.0)
    combined = F.conv_transpose2d(x, up_conv_kernel(w, f.double()).transpose(0, 1), stride=2, padding=2)
    assert combined.shape == two_step.shape == (2, 5, 18, 14)
    assert torch.allclose(combined, two_step, atol=1e-12)


def test_views_of_one_latent_render_as_with_a_batch_of_copies(tiny):
    ws = torch.randn(1, tiny.num_ws, 512)
    c = random_inputs(3, 32, 4)[1]
    planes = tiny.synthesize_planes(ws)
    shared = tiny.render_planes(planes, ws, c, deterministic=True)
    copies = tiny.render_planes(planes.expand(3, -1, -1, -1, -1), ws.expand(3, -1, -1), c, deterministic=True)
    for key in shared:
        assert shared[key].shape[0] == 3
        assert torch.allclose(shared[key], copies[key], atol=1e-4), key


def test_the_coarse_samples_can_be_left_out_of_the_backward_pass(tiny):
    ws = torch.randn(1, tiny.num_ws, 512)
    c = random_inputs(1, 32, 2)[1]
    planes = tiny.synthesize_planes(ws).requires_grad_(True)
    origins, directions = camera_rays(c[:, :16].view(-1, 4, 4), c[:, 16:].view(-1, 3, 3), 16)

    def render(coarse_gradients: bool, importance_samples: int):
        renderer = ImportanceRenderer(coarse_gradients)
        options = {**tiny.rendering_kwargs, "depth_resolution_importance": importance_samples}
        features, _, _ = renderer(planes, tiny.decoder, origins, directions, options, deterministic=True)
        (gradient,) = torch.autograd.grad(features.square().sum(), planes)
        return features, gradient

    features, gradient = render(True, tiny.rendering_kwargs["depth_resolution_importance"])
    features_fine, gradient_fine = render(False, tiny.rendering_kwargs["depth_resolution_importance"])
    assert torch.equal(features_fine, features)  # the same render
    assert not torch.allclose(gradient_fine, gradient)  # a gradient without the coarse samples' part,
    assert F.cosine_similarity(gradient_fine.flatten(), gradient.flatten(), dim=0) > 0.5  # much alike
    # without importance samples the coarse ones carry the gradient whatever the setting
    assert torch.equal(render(False, 0)[1], render(True, 0)[1])
