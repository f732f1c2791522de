"""The fast rendering's Triton kernels at the sizes of 40 views of ffhq512-128, against the passes
they replace, over their block sizes; and where the device time of rendering 40 views from cached
planes goes (torch.profiler):

    python benchmarks/bench_render_kernels.py                  # on a CUDA GPU
    TRITON_INTERPRET=1 python benchmarks/bench_render_kernels.py --device cpu --tiny   # a quick check

Sections (`--skip` any of them):
* compositing: the depth sort + concatenations + gather + compositing + scatter of the importance
  pass (before) against the merged kernel, random and sorted importance samples;
* importance: the inverse-CDF importance sampling in PyTorch (before) and fused;
* upfilter: the 2× up-convolution's filter + bias + activation pass of both super-resolution blocks;
* to_rgb: a block's last bias + activation + ToRGB (before: the activation pass, cuDNN's 1×1
  convolution, its bias pass and the float32 copy) against the fused pass;
* profile: the device time of G.render_planes for 40 views by kernel (random ffhq512-128 weights).
Kernel times are medians of triton.testing.do_bench (ms); bandwidths count each tensor read or
written once. Details go to $OUT/render_kernels.json when OUT is set.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from preim3d.cameras import turntable_path
from preim3d.networks import fast_kernels
from preim3d.networks.ops import SQRT2
from preim3d.testing import ffhq512_generator, random_inputs, tiny_generator


def bench(fn, device) -> float:
    """Median milliseconds of fn()."""
    if device.type != "cuda":  # the interpreter: one call, to check that it runs
        fn()
        return float("nan")
    import triton.testing

    return triton.testing.do_bench(fn, warmup=10, rep=50, return_mode="median")


def variants(module, names, values):
    """Runs the body with module constants set to each tuple of `values`, restoring them after."""
    saved = tuple(getattr(module, name) for name in names)
    try:
        for value in values:
            for name, v in zip(names, value):
                setattr(module, name, v)
            yield dict(zip(names, value))
    finally:
        for name, v in zip(names, saved):
            setattr(module, name, v)


def compositing(device, rays, coarse, fine) -> dict:
    gen = torch.Generator().manual_seed(0)
    step = 1.05 / coarse
    depths = (2.25 + (torch.arange(coarse) + torch.rand(rays, coarse, generator=gen)) * step).to(device)
    densities = (torch.randn(rays, coarse, generator=gen) * 8).to(device)
    densities_f = (torch.randn(rays, fine, generator=gen) * 8).to(device)
    random_f = (2.25 + torch.rand(rays, fine, generator=gen) * 1.05).to(device)
    results = {}
    for name, depths_f in (("random", random_f), ("sorted", random_f.sort(-1).values)):

        def before(depths_f=depths_f):
            all_depths, order = torch.sort(torch.cat([depths, depths_f], -1), dim=-1)
            v, opacity, depth = fast_kernels.composite_weights(
                torch.gather(torch.cat([densities, densities_f], -1), -1, order), all_depths
            )
            v = torch.zeros_like(all_depths).scatter(-1, order, v)
            return v[..., :coarse].contiguous(), v[..., coarse:].contiguous(), opacity, depth

        reference = before()
        results[f"{name} importance samples, before (sort + compositing + scatter) ms"] = round(
            bench(before, device), 3
        )
        for setting in variants(fast_kernels, ("MERGED_RAYS", "MERGED_WARPS"), [(8, 4), (4, 4), (16, 8)]):
            out = fast_kernels.merged_composite_weights(densities, depths, densities_f, depths_f)
            error = max((a - b).abs().nan_to_num().max().item() for a, b in zip(out, reference, strict=True))
            ms = bench(
                lambda depths_f=depths_f: fast_kernels.merged_composite_weights(
                    densities, depths, densities_f, depths_f
                ),
                device,
            )
            results[f"{name}, merged {setting} ms"] = round(ms, 3)
            results[f"{name}, merged {setting} max |error|"] = error
    return results


def importance(device, rays, coarse, fine) -> dict:
    from preim3d.networks.renderer import inverse_cdf, ray_weights

    gen = torch.Generator().manual_seed(0)
    step = 1.05 / coarse
    depths = (2.25 + (torch.arange(coarse) + torch.rand(rays, coarse, generator=gen)) * step).to(device)
    weights = ray_weights((torch.randn(rays, coarse, generator=gen) * 8).to(device), depths)
    results = {}
    for name, u in (
        ("random", torch.rand(rays, fine, device=device)),
        ("deterministic", torch.linspace(0, 1, fine, device=device).expand(rays, fine)),
    ):
        reference = inverse_cdf(depths, weights, u)
        results[f"{name} quantiles, before (PyTorch) ms"] = round(
            bench(lambda u=u: inverse_cdf(depths, weights, u), device), 3
        )
        for setting in variants(fast_kernels, ("INVERSE_CDF_RAYS",), [(8,), (16,)]):
            out = fast_kernels.inverse_cdf(depths, weights, u, 1e-5)
            ms = bench(lambda u=u: fast_kernels.inverse_cdf(depths, weights, u, 1e-5), device)
            results[f"{name}, fused {setting} ms"] = round(ms, 3)
            results[f"{name}, fused {setting} max |error|"] = (out - reference).abs().max().item()
    return results


def upfilter(device, shapes) -> dict:
    results = {}
    for n, c, res in shapes:
        t = torch.randn(n, c, 2 * res + 1, 2 * res + 1, device=device).half()
        t = t.to(memory_format=torch.channels_last)
        bias = torch.randn(c, device=device)
        gigabytes = (t.numel() + n * c * 4 * res * res) * 2 / 1e9
        reference = None
        for setting in variants(
            fast_kernels,
            ("UPFILTER_ROWS", "UPFILTER_PIXELS", "UPFILTER_WARPS"),
            [(2, 32, 4), (8, 32, 8), (8, 32, 4), (16, 32, 8)],
        ):
            out = fast_kernels.upfilter_bias_lrelu(t, None, bias, SQRT2, 256.0)
            if reference is None:  # (2, 32, 4): the pass before, two output rows per program
                reference = out
            ms = bench(
                lambda t=t, bias=bias: fast_kernels.upfilter_bias_lrelu(t, None, bias, SQRT2, 256.0), device
            )
            key = f"[{n},{c},{2 * res},{2 * res}] {setting}"
            results[f"{key} ms"] = round(ms, 3)
            results[f"{key} GB/s"] = round(gigabytes / ms * 1e3, 1)
            results[f"{key} max |error|"] = (out.float() - reference.float()).abs().max().item()
        del t, out, reference
    return results


def to_rgb(device, shapes) -> dict:
    results = {}
    for n, c, res, keep in shapes:
        x = torch.randn(n, c, res, res, device=device).half().to(memory_format=torch.channels_last)
        bias, rgb_bias = torch.randn(c, device=device), torch.randn(3, device=device)
        weight = torch.randn(1, 3, c, device=device) * 0.05

        def before(x=x, bias=bias, rgb_bias=rgb_bias, weight=weight):
            y = fast_kernels.bias_lrelu(x, bias, SQRT2, 256.0, torch.empty_like(x))
            rgb = F.conv2d(y, weight[0, :, :, None, None].half())
            return y, (rgb + rgb_bias.half().reshape(1, -1, 1, 1)).clamp_(-256, 256).float()

        key = f"[{n},{c},{res},{res}] keep={keep}"
        results[f"{key} before (activation pass + 1x1 convolution + bias + float) ms"] = round(
            bench(before, device), 3
        )
        _, reference = before()
        for setting in variants(
            fast_kernels, ("TO_RGB_PIXELS", "TO_RGB_WARPS"), [(64, 8), (64, 4), (128, 8)]
        ):

            def fused(x=x, bias=bias, rgb_bias=rgb_bias, weight=weight, keep=keep):
                return fast_kernels.bias_lrelu_to_rgb(
                    x, None, bias, SQRT2, 256.0, weight, rgb_bias, 256.0, keep
                )

            _, rgb = fused()
            results[f"{key} fused {setting} ms"] = round(bench(fused, device), 3)
            results[f"{key} fused {setting} max |error|"] = (rgb - reference).abs().max().item()
        del x
    return results


def profile(tiny, device, views) -> str:
    from torch.profiler import ProfilerActivity, profile

    G = (tiny_generator(11) if tiny else ffhq512_generator(11)).to(device).set_precision("fast")
    z, c = random_inputs(1, G.z_dim, 16)
    cams = turntable_path(views).to(device)
    on_gpu = device.type == "cuda"
    with torch.no_grad():
        ws = G.mapping(z.to(device), c.to(device), truncation_psi=0.7, truncation_cutoff=14)
        planes = G.synthesize_planes(ws)
        for _ in range(3):
            G.render_planes(planes, ws, cams, deterministic=True)
        with profile(activities=[ProfilerActivity.CUDA if on_gpu else ProfilerActivity.CPU]) as prof:
            G.render_planes(planes, ws, cams, deterministic=True)
            if on_gpu:
                torch.cuda.synchronize(device)
    events = prof.key_averages()
    key = "self_device_time_total" if on_gpu else "self_cpu_time_total"
    total = sum(getattr(e, key) for e in events) / 1e3
    table = events.table(sort_by=key, row_limit=30, max_name_column_width=70)
    return f"render_planes, {views} views, fast: {total:.2f} ms of {device.type} time\n{table}"


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="small problems (a quick check)")
    parser.add_argument("--views", type=int, default=40)
    parser.add_argument(
        "--skip", nargs="*", default=[], help="compositing importance upfilter to_rgb profile"
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    views = 2 if args.tiny else args.views
    rays = 16 if args.tiny else views * 128**2
    results = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}
    if "compositing" not in args.skip:
        results["compositing, 48 + 48 samples"] = compositing(device, rays, 48, 48)
        print(json.dumps(results["compositing, 48 + 48 samples"], indent=1), flush=True)
    if "importance" not in args.skip:
        results["importance sampling, 48 quantiles"] = importance(device, rays, 48, 48)
        print(json.dumps(results["importance sampling, 48 quantiles"], indent=1), flush=True)
    if "upfilter" not in args.skip:
        shapes = [(views, 8, 4)] if args.tiny else [(views, 256, 128), (views, 128, 256)]
        results["upfilter"] = upfilter(device, shapes)
        print(json.dumps(results["upfilter"], indent=1), flush=True)
    if "to_rgb" not in args.skip:
        shapes = [(views, 70, 9, True)] if args.tiny else [(views, 256, 256, True), (views, 128, 512, False)]
        results["to_rgb"] = to_rgb(device, shapes)
        print(json.dumps(results["to_rgb"], indent=1), flush=True)
    if "profile" not in args.skip:
        if device.type == "cuda":
            torch.cuda.empty_cache()
        text = profile(args.tiny, device, views)
        print(text, flush=True)
        if "OUT" in os.environ:
            (Path(os.environ["OUT"]) / "profile.txt").write_text(text)
    if "OUT" in os.environ:
        (Path(os.environ["OUT"]) / "render_kernels.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
