"""Generator speed and GPU conformance, ours beside the official EG3D code, in one run.

    PREIM3D_OFFICIAL_EG3D=/path/to/eg3d/eg3d python benchmarks/bench_generator.py [--device cuda]

Both generators get the same seeded random ffhq512-128 weights. Reported: agreement (PSNR of
image / image_raw / image_depth against the official output, same seed), per-frame latency at
batch 1 and throughput at a large batch, for the official generator, ours in fp32 and ours in the
fast mode, plus where our time goes. Without the official checkout only ours is measured. The
official code runs with its reference (non-CUDA-plugin) ops unless --official-plugins is given.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from preim3d.testing import (
    FFHQ512_GENERATOR_KWARGS,
    FFHQ512_NEURAL_RESOLUTION,
    build_official_eg3d,
    ffhq512_generator,
    official_eg3d_path,
    psnr,
    random_inputs,
)


def ours(device):
    return ffhq512_generator(seed=11).to(device)


def official_generator(device, plugins):
    return build_official_eg3d(FFHQ512_GENERATOR_KWARGS, FFHQ512_NEURAL_RESOLUTION, 11, device, plugins)


def timed(fn, device, repeats):
    """Median seconds of fn() after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def synth(G, ws, c):
    with torch.no_grad():
        return G.synthesis(ws, c, noise_mode="const")


def turntable(generators, batches, device, json_path, frames=120):
    """Seconds for the official 120-frame turntable of one latent: the backbone once, then the views
    rendered in batches from the cached planes, frames kept in memory; PSNR against our fp32 frames.
    The official generator, when given, renders frame by frame (its per-frame loop), for comparison.
    Depth samples are deterministic here, so that compiled runs (whose random numbers differ) compare."""
    steps = torch.arange(frames, dtype=torch.float32) / frames
    yaw = 0.35 * torch.sin(2 * 3.14 * steps)
    pitch = -0.05 + 0.25 * torch.cos(2 * 3.14 * steps)
    from preim3d.cameras import camera_vector

    cams = camera_vector(yaw, pitch).to(device)

    def rate(seconds):
        return {f"seconds for {frames} frames": round(seconds, 4), "frames/s": round(frames / seconds, 1)}

    z, c = random_inputs(1, 512, 16)
    results, frames_by_run = {}, {}
    for name, G in generators.items():
        with torch.no_grad():
            ws = G.mapping(z.to(device), c.to(device), truncation_psi=0.7, truncation_cutoff=14)
        if name == "official":  # its demo's loop: the whole generator for every frame

            def loop(G=G, ws=ws):
                with torch.no_grad():
                    return torch.cat([synth(G, ws, cv[None])["image"] for cv in cams])

            results["official per-frame loop"] = rate(timed(loop, device, 2))
            print(name, results["official per-frame loop"], flush=True)
            continue
        for batch in batches:

            def run(G=G, ws=ws, batch=batch):
                torch.manual_seed(0)
                with torch.no_grad():
                    planes = G.synthesize_planes(ws)
                    return torch.cat(
                        [
                            G.render_planes(planes, ws, cv, deterministic=True)["image"]
                            for cv in cams.split(batch)
                        ]
                    )

            try:
                seconds = timed(run, device, 3)
            except torch.OutOfMemoryError:
                results[f"{name}, batch {batch}"] = "out of memory"
                continue
            frames_by_run[name] = run()
            results[f"{name}, batch {batch}"] = rate(seconds)
            print(name, batch, results[f"{name}, batch {batch}"], flush=True)
            if device == "cuda":
                torch.cuda.empty_cache()
    if "ours fp32" in frames_by_run and "ours fast" in frames_by_run:
        results["psnr fast vs fp32 (dB)"] = round(
            psnr(frames_by_run["ours fast"], frames_by_run["ours fp32"]), 1
        )
    text = json.dumps(results, indent=2)
    print(text)
    if json_path:
        json_path.write_text(text)


def profile(generators, batch, device):
    """Top operators by device time, per stage, for each of our precisions."""
    activities = [torch.profiler.ProfilerActivity.CPU] + (
        [torch.profiler.ProfilerActivity.CUDA] if device == "cuda" else []
    )
    sort = "cuda_time_total" if device == "cuda" else "cpu_time_total"
    z, c = random_inputs(batch, 512, 15)
    z, c = z.to(device), c.to(device)
    for name, G in generators.items():
        with torch.no_grad():
            ws = G.mapping(z, c, truncation_psi=0.7, truncation_cutoff=14)
            planes = G.synthesize_planes(ws)
            stages = {
                "backbone": lambda G=G, ws=ws: G.synthesize_planes(ws),
                "render+SR": lambda G=G, p=planes, ws=ws: G.render_planes(p, ws, c),
            }
            for stage, fn in stages.items():
                fn()
                with torch.profiler.profile(activities=activities) as prof:
                    fn()
                    if device == "cuda":
                        torch.cuda.synchronize()
                print(f"== {name}, {stage}, batch {batch}")
                print(prof.key_averages().table(sort_by=sort, row_limit=14, max_name_column_width=60))


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=32, help="batch size of the throughput measurement")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument(
        "--official-plugins", action="store_true", help="let the official code build its CUDA ops"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--profile", type=int, metavar="BATCH", help="only print the top kernels of our generator"
    )
    parser.add_argument(
        "--compile", action="store_true", help="with --turntable: also time a compiled fast generator"
    )
    parser.add_argument(
        "--turntable",
        type=int,
        nargs="*",
        metavar="BATCH",
        help="only time a 120-frame turntable of one latent from cached planes, in these batches",
    )
    args = parser.parse_args()
    device = args.device
    results = {
        "device": torch.cuda.get_device_name()
        if device == "cuda"
        else f"cpu ({torch.get_num_threads()} threads)",
        "torch": torch.__version__,
    }

    generators = {"ours fp32": ours(device), "ours fast": ours(device).set_precision("fast")}
    if args.profile:
        return profile(generators, args.profile, device)
    if args.turntable is not None:
        if args.compile:
            generators["ours fast compiled"] = ours(device).set_precision("fast").compile(dynamic=False)
        if official_eg3d_path() is not None:
            generators = {
                "official": official_generator(device, args.official_plugins),
                **generators,
            }
        return turntable(generators, args.turntable or [8, 20, 40, 60], device, args.json)
    if official_eg3d_path() is not None:
        official = official_generator(device, args.official_plugins)
        generators = {"official": official, **generators}

    # Agreement with the official output (same weights, inputs and sampling seed).
    z, c = random_inputs(2, 512, 12)
    z, c = z.to(device), c.to(device)
    outputs = {}
    for name, G in generators.items():
        with torch.no_grad():
            ws = G.mapping(z, c, truncation_psi=0.7, truncation_cutoff=14)
        torch.manual_seed(12)
        outputs[name] = synth(G, ws, c)
    reference = outputs.get("official", outputs["ours fp32"])
    results["psnr_db"] = {
        name: {k: round(psnr(out[k], reference[k]), 1) for k in ("image", "image_raw", "image_depth")}
        for name, out in outputs.items()
        if out is not reference
    }

    # Speed: latency at batch 1, throughput at args.batch.
    results["speed"] = {}
    for name, G in generators.items():
        row = {}
        for batch in (1, args.batch):
            z, c = random_inputs(batch, 512, 13)
            z, c = z.to(device), c.to(device)
            with torch.no_grad():
                ws = G.mapping(z, c, truncation_psi=0.7, truncation_cutoff=14)
            try:
                seconds = timed(
                    lambda G=G, ws=ws, c=c: synth(G, ws, c), device, args.repeats if batch == 1 else 3
                )
            except torch.OutOfMemoryError:
                row[f"batch {batch}"] = "out of memory"
                continue
            finally:
                if device == "cuda":
                    torch.cuda.empty_cache()
            row["ms per frame (batch 1)" if batch == 1 else f"frames/s (batch {batch})"] = (
                round(seconds * 1000, 2) if batch == 1 else round(batch / seconds, 1)
            )
        results["speed"][name] = row
        print(name, row, flush=True)

    # Where our time goes (batch 1 and args.batch), per stage.
    results["stages"] = {}
    for name in ("ours fp32", "ours fast"):
        G = generators[name]
        for batch in (1, args.batch):
            z, c = random_inputs(batch, 512, 14)
            z, c = z.to(device), c.to(device)
            with torch.no_grad():
                ws = G.mapping(z, c, truncation_psi=0.7, truncation_cutoff=14)
                planes = G.synthesize_planes(ws)
                stage = {
                    "backbone ms": timed(lambda G=G, ws=ws: G.synthesize_planes(ws), device, 5) * 1000,
                    "render+SR ms": timed(
                        lambda G=G, p=planes, ws=ws, c=c: G.render_planes(p, ws, c), device, 5
                    )
                    * 1000,
                }
            results["stages"][f"{name}, batch {batch}"] = {k: round(v, 2) for k, v in stage.items()}
            if device == "cuda":
                torch.cuda.empty_cache()

    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)


if __name__ == "__main__":
    main()
