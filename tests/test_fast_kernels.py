"""The fast mode's Triton kernels against the PyTorch code they replace.

On a CUDA machine the kernels run there. Elsewhere, when Triton is installed, the same tests run in
Triton's CPU interpreter: `test_kernels_in_the_triton_interpreter` reruns this file in a
subprocess with TRITON_INTERPRET=1 (it must be set before Triton is imported).
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F

from preim3d.networks import fast_kernels, fused, ops
from preim3d.networks.decoder import SAMPLE_AND_DECODE, OSGDecoder, sample_triplanes
from preim3d.networks.ops import BIAS_LRELU, BIAS_LRELU_TO_RGB, UPFILTER_BIAS_LRELU
from preim3d.networks.renderer import (
    COMPOSITE_WEIGHTS,
    INVERSE_CDF,
    MERGED_COMPOSITE_WEIGHTS,
    RAY_WEIGHTS,
    WEIGHTED_SUM,
    ImportanceRenderer,
    composite_weights,
    inverse_cdf,
    merged_composite_weights,
    ray_weights,
)

HAS_TRITON = importlib.util.find_spec("triton") is not None
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
kernels_here = pytest.mark.skipif(
    not HAS_TRITON or not (DEVICE == "cuda" or INTERPRETED),
    reason="needs Triton and CUDA; on a CPU test_kernels_in_the_triton_interpreter runs these",
)


@pytest.mark.skipif(not HAS_TRITON, reason="Triton is not installed")
@pytest.mark.skipif(DEVICE == "cuda" or INTERPRETED, reason="the kernels run directly here")
def test_kernels_in_the_triton_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "81 passed" in result.stdout, result.stdout[-2000:]  # every test below ran


def random_decoder(seed=0):
    decoder = OSGDecoder(32).to(DEVICE)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in decoder.parameters():
            param.copy_(torch.randn(param.shape, generator=gen))
    return decoder


def rays(n, m, s, seed=1):
    """Rays from near the origin in random directions: many samples leave the [-0.5, 0.5]³ box."""
    gen = torch.Generator().manual_seed(seed)
    origins = torch.randn(n, m, 3, generator=gen) * 0.1
    directions = F.normalize(torch.randn(n, m, 3, generator=gen), dim=-1)
    depths = torch.rand(n, m, s, 1, generator=gen) * 1.2
    return origins.to(DEVICE), directions.to(DEVICE), depths.to(DEVICE)


@kernels_here
@pytest.mark.parametrize("shared_planes", [True, False], ids=["one-latent-many-views", "batch"])
def test_sample_and_decode_matches_pytorch(shared_planes):
    n, m, s = 2, 50, 7
    decoder = random_decoder()
    planes = torch.randn(1 if shared_planes else n, 3, 32, 16, 16, device=DEVICE).half()
    origins, directions, depths = rays(n, m, s)
    points = (origins.unsqueeze(-2) + depths * directions.unsqueeze(-2)).reshape(n, m * s, 3)
    with torch.no_grad():
        ref_colors, ref_densities = decoder(
            sample_triplanes(planes.float().expand(n, -1, -1, -1, -1), points, 1.0)
        )
        colors, densities = fast_kernels.sample_and_decode(
            planes.expand(n, -1, -1, -1, -1), decoder, origins, directions, depths, 1.0
        )
    assert colors.shape == (n, 32, m, s) and densities.shape == (n, m, s)
    assert torch.allclose(colors.float(), ref_colors.transpose(1, 2).reshape(n, 32, m, s), atol=2e-3)
    assert torch.allclose(densities, ref_densities.reshape(n, m, s), atol=5e-3, rtol=1e-3)


@kernels_here
def test_weighted_sum_matches_pytorch():
    colors = torch.rand(2, 32, 45, 48, device=DEVICE).half()
    v = torch.rand(2, 45, 48, device=DEVICE)
    expected = (colors.float() * v.unsqueeze(1)).sum(-1)
    assert torch.allclose(fast_kernels.weighted_sum(colors, v), expected, atol=1e-4, rtol=1e-4)


@kernels_here
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_bias_lrelu_matches_pytorch(layout):
    for clamp in (None, 1.0):
        x = torch.randn(2, 6, 5, 7, device=DEVICE).half().to(memory_format=layout)
        bias = torch.randn(6, device=DEVICE)
        expected = F.leaky_relu(x.float() + bias.reshape(1, -1, 1, 1), 0.2) * 2**0.5
        if clamp is not None:
            expected = expected.clamp(-clamp, clamp)
        out = fast_kernels.bias_lrelu(x, bias, 2**0.5, clamp, x)
        assert out.data_ptr() == x.data_ptr()  # in place
        assert torch.allclose(out.float(), expected, atol=4e-3, rtol=1e-3)


@kernels_here
def test_float16_planes_render_like_float32_through_the_kernel():
    decoder = random_decoder()
    planes = torch.randn(1, 3, 32, 16, 16, device=DEVICE)
    origins, directions, _ = rays(2, 30, 1)
    origins = origins - 1.5 * directions  # rays that cross the box
    opts = {
        "ray_start": 1.0,
        "ray_end": 2.0,
        "depth_resolution": 12,
        "depth_resolution_importance": 12,
        "box_warp": 1.0,
    }
    assert SAMPLE_AND_DECODE.usable(torch.device(DEVICE))
    with torch.no_grad():
        reference = ImportanceRenderer()(
            planes.expand(2, -1, -1, -1, -1), decoder, origins, directions, opts, deterministic=True
        )
        fast = ImportanceRenderer()(
            planes.half().expand(2, -1, -1, -1, -1), decoder, origins, directions, opts, deterministic=True
        )
    for ours, ref in zip(fast, reference):
        assert torch.allclose(ours.float(), ref, atol=2e-2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_bias_activations_overwrite_their_input_only_when_asked(dtype):
    x = torch.randn(2, 6, 5, 7, device=DEVICE).to(dtype)
    bias = torch.randn(6, device=DEVICE)
    before = x.clone()
    with torch.no_grad():
        for op in (
            lambda **kw: ops.bias_lrelu(x, bias, clamp=1.0, **kw),
            lambda **kw: ops.bias_linear(x, bias, **kw),
        ):
            out = op()
            assert torch.equal(x, before) and out.data_ptr() != x.data_ptr()
            assert op(inplace=True).data_ptr() == x.data_ptr() and not torch.equal(x, before)
            x.copy_(before)


@kernels_here
@pytest.mark.parametrize("noise", [None, "const", "per-sample"])
def test_upfilter_bias_lrelu_matches_pytorch(noise):
    # Two blocks of channels and of pixels, and of rows (the last one partly outside).
    rows = fast_kernels.UPFILTER_ROWS + 3
    t = torch.randn(2, 70, rows + 1, 35, device=DEVICE)
    bias = torch.randn(70, device=DEVICE)
    noise = {
        None: None,
        "const": torch.randn(rows, 34, device=DEVICE),
        "per-sample": torch.randn(2, 1, rows, 34, device=DEVICE),
    }[noise]
    filtered = ops.fir_blur(t, ops.fir_filter_2d().to(DEVICE), pad=1, gain=4.0)
    expected = F.leaky_relu(filtered + (0 if noise is None else noise) + bias[:, None, None], 0.2) * 2**0.5
    out = fast_kernels.upfilter_bias_lrelu(
        t.half().to(memory_format=torch.channels_last), noise, bias, 2**0.5, 1.0
    )
    assert out.shape == (2, 70, rows, 34) and out.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(out.float(), expected.clamp(-1, 1), atol=4e-3, rtol=1e-3)


@kernels_here
@pytest.mark.parametrize("samples", [2, 7, 96])
def test_compositing_kernels_match_pytorch(samples):
    gen = torch.Generator().manual_seed(samples)
    depths = (2.25 + torch.rand(3, 5, samples, generator=gen).cumsum(-1) / samples).to(DEVICE)
    densities = (torch.randn(3, 5, samples, generator=gen) * 8).to(DEVICE)
    densities[0, 0] = -30  # a transparent ray: no opacity, depth NaN
    torch.testing.assert_close(
        fast_kernels.ray_weights(densities, depths), ray_weights(densities, depths), atol=1e-5, rtol=1e-4
    )
    for ours, ref in zip(
        fast_kernels.composite_weights(densities, depths), composite_weights(densities, depths)
    ):
        torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-4, equal_nan=True)


@kernels_here
@pytest.mark.parametrize("samples", [48, 12, 4])
def test_inverse_cdf_matches_pytorch(samples):
    gen = torch.Generator().manual_seed(samples)
    depths = 2.25 + (torch.arange(samples) + torch.rand(30, samples, generator=gen)) * (1.05 / samples)
    densities = torch.randn(30, samples, generator=gen) * 8
    densities[0] = -30  # no weight anywhere: a uniform pdf
    weights = ray_weights(densities, depths)
    depths, weights = depths.to(DEVICE), weights.to(DEVICE)
    for u in (
        torch.rand(30, 40, generator=gen).to(DEVICE),
        torch.linspace(0, 1, 40, device=DEVICE).expand(30, 40),  # the deterministic quantiles, 0 and 1 too
    ):
        torch.testing.assert_close(
            fast_kernels.inverse_cdf(depths, weights, u, 1e-5),
            inverse_cdf(depths, weights, u),
            atol=1e-5,
            rtol=1e-5,
        )


def two_sample_sets(rays, coarse, fine, seed=0):
    """Per ray: `coarse` sorted depths (stratified, as the renderer draws them) and `fine` unsorted
    ones over the same range, and densities that make transparent and opaque rays."""
    gen = torch.Generator().manual_seed(seed)
    step = 1.05 / coarse
    depths = 2.25 + (torch.arange(coarse) + torch.rand(rays, coarse, generator=gen)) * step
    depths_f = 2.25 + torch.rand(rays, fine, generator=gen) * 1.05
    densities = torch.randn(rays, coarse, generator=gen) * 8
    densities_f = torch.randn(rays, fine, generator=gen) * 8
    densities[0], densities_f[0] = -30, -30  # transparent: no opacity, depth NaN
    return [x.reshape(1, rays, -1).to(DEVICE) for x in (densities, depths, densities_f, depths_f)]


def stable_merged_composite(densities, depths, densities_f, depths_f):
    """merged_composite_weights with equal depths kept in the order of the concatenated sets."""
    all_depths, order = torch.sort(torch.cat([depths, depths_f], -1), dim=-1, stable=True)
    v, opacity, depth = composite_weights(
        torch.gather(torch.cat([densities, densities_f], -1), -1, order), all_depths
    )
    v = torch.zeros_like(all_depths).scatter(-1, order, v)
    return v[..., : depths.shape[-1]], v[..., depths.shape[-1] :], opacity, depth


@kernels_here
@pytest.mark.parametrize("coarse, fine", [(48, 48), (24, 20), (5, 3)])
def test_merged_compositing_matches_pytorch(coarse, fine):
    sets = two_sample_sets(9, coarse, fine)
    for ours, ref in zip(fast_kernels.merged_composite_weights(*sets), merged_composite_weights(*sets)):
        torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-4, equal_nan=True)
    # Unsorted first sets too: the kernel orders all samples, as torch.sort does.
    densities, depths, densities_f, depths_f = sets
    shuffle = torch.randperm(coarse, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    sets = densities[..., shuffle], depths[..., shuffle], densities_f, depths_f
    for ours, ref in zip(fast_kernels.merged_composite_weights(*sets), merged_composite_weights(*sets)):
        torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-4, equal_nan=True)


@kernels_here
def test_merged_compositing_keeps_equal_depths_in_set_order_and_composites_as_the_renderer():
    densities, depths, densities_f, depths_f = two_sample_sets(12, 24, 20, seed=2)
    depths_f[..., :3] = depths[..., 5:8]  # equal to coarse depths
    depths_f[..., 4] = depths_f[..., 9]  # equal to another fine depth
    depths[..., 11] = depths[..., 10]  # equal coarse depths
    sets = densities, depths, densities_f, depths_f
    ours = fast_kernels.merged_composite_weights(*sets)
    for a, b in zip(ours, stable_merged_composite(*sets)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, equal_nan=True)
    # In the renderer, equal depths of a ray are the same point: the same density and colour. Then
    # the order of equal depths moves weight between them only, and the composite is the same
    # whichever order a sort picks (torch.sort on a CPU is not stable).
    densities_f[..., :3] = densities[..., 5:8]
    densities_f[..., 4] = densities_f[..., 9]
    densities[..., 11] = densities[..., 10]
    colors, colors_f = torch.rand_like(densities), torch.rand_like(densities_f)
    colors_f[..., :3], colors_f[..., 4], colors[..., 11] = colors[..., 5:8], colors_f[..., 9], colors[..., 10]
    ours = fast_kernels.merged_composite_weights(*sets)
    for ref in (merged_composite_weights(*sets), stable_merged_composite(*sets)):
        torch.testing.assert_close(
            (ours[0] * colors).sum(-1) + (ours[1] * colors_f).sum(-1),
            (ref[0] * colors).sum(-1) + (ref[1] * colors_f).sum(-1),
            atol=1e-5,
            rtol=1e-4,
        )
        for a, b in zip(ours[2:], ref[2:]):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, equal_nan=True)


@kernels_here
@pytest.mark.parametrize("noise", [None, "const", "per-sample"])
@pytest.mark.parametrize("latents", [1, 2], ids=["one-weight", "per-sample-weights"])
def test_bias_lrelu_to_rgb_matches_pytorch(noise, latents):
    x = torch.randn(2, 70, 9, 11, device=DEVICE)  # two blocks of channels and of pixels
    bias, rgb_bias = torch.randn(70, device=DEVICE), torch.randn(3, device=DEVICE)
    weight = torch.randn(latents, 3, 70, device=DEVICE) * 0.1
    noise = {
        None: None,
        "const": torch.randn(9, 11, device=DEVICE),
        "per-sample": torch.randn(2, 1, 9, 11, device=DEVICE),
    }[noise]
    y = F.leaky_relu(x + (0 if noise is None else noise) + bias[:, None, None], 0.2) * 2**0.5
    y = y.clamp(-1, 1)
    rgb = torch.einsum("nchw,noc->nohw", y, weight.expand(2, -1, -1)) + rgb_bias[:, None, None]
    half = x.half().to(memory_format=torch.channels_last)
    for keep in (True, False):
        ours, ours_rgb = fast_kernels.bias_lrelu_to_rgb(
            half, noise, bias, 2**0.5, 1.0, weight, rgb_bias, 1.5, keep
        )
        assert ours_rgb.dtype == torch.float32 and ours_rgb.shape == (2, 3, 9, 11)
        assert torch.allclose(ours_rgb, rgb.clamp(-1.5, 1.5), atol=1e-2, rtol=1e-2)
        if keep:
            assert ours.is_contiguous(memory_format=torch.channels_last)
            assert torch.allclose(ours.float(), y, atol=4e-3, rtol=1e-3)
        else:
            assert ours is None


@pytest.mark.parametrize("noise_mode", ["const", "none"])
@pytest.mark.parametrize("features", [True, False])
def test_float16_block_matches_float32(noise_mode, features):
    """A synthesis block in float16 (its last layer's activation fused with the ToRGB layer: Triton
    where it runs, PyTorch elsewhere) against float32; without features it returns none."""
    from preim3d.networks.stylegan2 import SynthesisBlock

    torch.manual_seed(0)
    block = SynthesisBlock(16, 24, 32, resolution=8, img_channels=3, conv_clamp=256).to(DEVICE)
    with torch.no_grad():
        for layer in (block.conv0, block.conv1):
            layer.noise_strength.fill_(0.5)
            layer.bias.normal_()
        block.torgb.bias.normal_()
    x, img, ws = (
        torch.randn(2, 16, 4, 4, device=DEVICE),
        torch.randn(2, 3, 4, 4, device=DEVICE),
        torch.randn(2, 3, 32, device=DEVICE),
    )
    with torch.no_grad():
        expected_x, expected_img = block(x, img, ws, noise_mode)
        half_x, half_img = block(x, img, ws, noise_mode, fast=True, features=features)
    assert half_img.dtype == torch.float32 and half_img.shape == expected_img.shape == (2, 3, 8, 8)
    assert torch.allclose(half_img, expected_img, atol=2e-2, rtol=2e-2)
    if features:
        assert half_x.dtype == torch.float16 and torch.allclose(
            half_x.float(), expected_x, atol=2e-2, rtol=2e-2
        )
    else:
        assert half_x is None


@pytest.mark.parametrize("noise_mode", ["const", "none"])
def test_float16_up_convolution_layer_matches_float32(noise_mode):
    """The float16 up-convolution (stride-2 transposed convolution, then the filter fused with
    noise, bias and activation: Triton where it runs, PyTorch elsewhere) against float32."""
    from preim3d.networks.stylegan2 import SynthesisLayer

    torch.manual_seed(0)
    layer = SynthesisLayer(16, 24, 32, resolution=8, up=True, conv_clamp=256).to(DEVICE)
    with torch.no_grad():
        layer.noise_strength.fill_(0.5)
        layer.bias.normal_()
    x, w = torch.randn(2, 16, 4, 4, device=DEVICE), torch.randn(2, 32, device=DEVICE)
    with torch.no_grad():
        expected = layer(x, w, noise_mode)
        half = layer(x.half().to(memory_format=torch.channels_last), w, noise_mode)
    assert half.dtype == torch.float16 and half.shape == expected.shape == (2, 24, 8, 8)
    assert torch.allclose(half.float(), expected, atol=2e-2, rtol=2e-2)


# --- The gate: every fused kernel falls back to PyTorch, with one warning, whatever goes wrong ---------

FUSED = [
    BIAS_LRELU,
    UPFILTER_BIAS_LRELU,
    BIAS_LRELU_TO_RGB,
    WEIGHTED_SUM,
    SAMPLE_AND_DECODE,
    RAY_WEIGHTS,
    COMPOSITE_WEIGHTS,
    MERGED_COMPOSITE_WEIGHTS,
    INVERSE_CDF,
]
fused_kernels = pytest.mark.parametrize("kernel", FUSED, ids=[k.triton_name for k in FUSED])


@pytest.fixture
def fresh_gate(monkeypatch):
    """Every kernel unchecked, the default choice, and no PREIM3D_KERNELS."""
    monkeypatch.delenv(fused.ENV_VAR, raising=False)
    previous = fused.set_kernels("auto")
    for kernel in FUSED:
        kernel.reset()
    yield
    fused.set_kernels(previous)
    for kernel in FUSED:
        kernel.reset()


def example(kernel):
    return next(iter(kernel.examples(torch.device(DEVICE))))


def copied(args):
    return tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)


def call_and_compare(kernel, args):
    """Calls the kernel and asserts that the result is PyTorch's."""
    expected = kernel.torch_fn(*copied(args))
    with torch.no_grad():
        out = kernel(*args)
    outs, refs = (out, expected) if isinstance(out, tuple) else ((out,), (expected,))
    for a, b in zip(outs, refs, strict=True):
        assert torch.allclose(a.float(), b.float(), atol=1e-2, rtol=1e-2)


class Counting:
    """A stand-in for a Triton launcher: counts calls and does what `behaviour` says."""

    def __init__(self, behaviour):
        self.behaviour, self.calls = behaviour, 0

    def __call__(self, *args):
        self.calls += 1
        return self.behaviour(*args)


def no_warnings():
    return warnings.catch_warnings(record=True)


def gate_warnings(caught) -> list:
    """The gate's own warnings among those caught (Triton's interpreter adds numpy's)."""
    return [w for w in caught if "fused" in str(w.message)]


@kernels_here
@fused_kernels
def test_a_kernel_that_disagrees_is_replaced_by_pytorch_with_one_warning(kernel, fresh_gate, monkeypatch):
    real = getattr(fast_kernels, kernel.triton_name)

    def wrong(*args):
        out = real(*args)
        return tuple(t + 1 for t in out) if isinstance(out, tuple) else out + 1

    fake = Counting(wrong)
    monkeypatch.setattr(fast_kernels, kernel.triton_name, fake)
    with pytest.warns(RuntimeWarning, match=f"fused {re.escape(kernel.name)} kernel disagrees with PyTorch"):
        call_and_compare(kernel, example(kernel))
    checks = fake.calls
    with no_warnings() as caught:
        warnings.simplefilter("always")
        call_and_compare(kernel, example(kernel))
    assert not gate_warnings(caught) and fake.calls == checks  # switched off: neither warned again nor called


@kernels_here
@fused_kernels
def test_a_kernel_that_cannot_run_is_replaced_by_pytorch_with_one_warning(kernel, fresh_gate, monkeypatch):
    def fail(*args):
        raise RuntimeError("no compiler for this GPU")

    monkeypatch.setattr(fast_kernels, kernel.triton_name, Counting(fail))
    message = f"fused {re.escape(kernel.name)} kernel does not run .*no compiler"
    with pytest.warns(RuntimeWarning, match=message):
        call_and_compare(kernel, example(kernel))
    with no_warnings() as caught:
        warnings.simplefilter("always")
        call_and_compare(kernel, example(kernel))
    assert not gate_warnings(caught)


@kernels_here
@fused_kernels
def test_a_kernel_that_raises_at_a_later_call_is_replaced_by_pytorch(kernel, fresh_gate, monkeypatch):
    real = getattr(fast_kernels, kernel.triton_name)
    used = Counting(real)
    monkeypatch.setattr(fast_kernels, kernel.triton_name, used)
    with no_warnings() as caught:
        warnings.simplefilter("always")
        call_and_compare(kernel, example(kernel))  # checked, then run: Triton both times
    assert not gate_warnings(caught) and used.calls >= 2

    def out_of_resources(*args):
        raise RuntimeError("out of resources: shared memory")

    failing = Counting(out_of_resources)
    monkeypatch.setattr(fast_kernels, kernel.triton_name, failing)
    message = f"fused {re.escape(kernel.name)} kernel failed .*out of resources"
    with pytest.warns(RuntimeWarning, match=message):
        call_and_compare(kernel, example(kernel))  # this very call still completes, with PyTorch
    with no_warnings() as caught:
        warnings.simplefilter("always")
        call_and_compare(kernel, example(kernel))
    assert not gate_warnings(caught) and failing.calls == 1


@kernels_here
@fused_kernels
@pytest.mark.parametrize("how", ["environment", "set_kernels"])
def test_the_torch_choice_never_runs_triton(kernel, how, fresh_gate, monkeypatch):
    if how == "environment":
        monkeypatch.setenv(fused.ENV_VAR, "torch")
        fused.set_kernels("triton")  # the environment variable wins
    else:
        fused.set_kernels("torch")
    never = Counting(lambda *args: pytest.fail("Triton ran"))
    monkeypatch.setattr(fast_kernels, kernel.triton_name, never)
    with no_warnings() as caught:
        warnings.simplefilter("always")
        call_and_compare(kernel, example(kernel))
    assert not gate_warnings(caught) and never.calls == 0


@kernels_here
def test_the_triton_choice_runs_the_kernel_unchecked(fresh_gate, monkeypatch):
    fused.set_kernels("triton")
    marker = Counting(lambda *args: "triton")
    monkeypatch.setattr(fast_kernels, "weighted_sum", marker)
    assert WEIGHTED_SUM(*example(WEIGHTED_SUM)) == "triton" and marker.calls == 1


def test_fused_steps_run_under_torch_compile():
    """G.compile() traces code that calls the fused steps: they run outside the traced graphs."""
    x = torch.randn(2, 6, 5, 7, device=DEVICE).half().to(memory_format=torch.channels_last)
    bias = torch.randn(6, device=DEVICE)
    compiled = torch.compile(lambda x: ops.bias_lrelu(x * 2, bias, clamp=1.0) + 1, backend="eager")
    expected = ops.bias_lrelu(x * 2, bias, clamp=1.0) + 1
    torch.testing.assert_close(compiled(x), expected)


def test_unknown_kernel_choices_are_refused(monkeypatch):
    with pytest.raises(ValueError, match="auto"):
        fused.set_kernels("cuda")
    monkeypatch.setenv(fused.ENV_VAR, "fastest")
    with pytest.raises(ValueError, match="PREIM3D_KERNELS"):
        fused.kernel_choice()
