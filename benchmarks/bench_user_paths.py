"""What users wait for, through the Editor, on the full-size generator (random ffhq512-128 weights):

    python benchmarks/bench_user_paths.py [--device cuda] [--json results.json]
    PREIM3D_OFFICIAL_EG3D=<eg3d>/eg3d python benchmarks/bench_user_paths.py   # + the official loop
    python benchmarks/bench_user_paths.py --device cpu --tiny                 # a quick CPU check

Reported, in the fast mode on a GPU (the given --precision elsewhere):
* Editor.turntable to an mp4 (120 frames 512²): seconds, file size, PSNR of the decoded frames
  against the rendered ones;
* rendering throughput from cached planes (frames kept on the GPU, as the generator benchmark
  measures it, and as uint8 frames on the host through TriPlaneRenderer), PSNR against fp32;
* Editor.mesh at 256³ with GLB export: seconds, vertices, GLB size, and the time of each stage:
  density sampling, level and box, marching cubes, normals, colours + trimesh, GLB export;
* Editor.render latency at batch 1: a camera-only change (cached planes) and an attribute change
  (Editor.edit, new planes, render);
* with PREIM3D_OFFICIAL_EG3D, the official per-frame loop for the same 120 frames.
`--encoder-sweep` also times x264 settings on the rendered frames (how mp4.py's were chosen).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from preim3d import TriPlaneGenerator
from preim3d.cameras import turntable_path
from preim3d.rendering import uint8_images
from preim3d.testing import (
    FFHQ512_GENERATOR_KWARGS,
    FFHQ512_NEURAL_RESOLUTION,
    TINY_GENERATOR_KWARGS,
    TINY_NEURAL_RESOLUTION,
    build_official_eg3d,
    fill_random,
    official_eg3d_path,
    psnr,
    random_inputs,
    tiny_directions,
    tiny_encoder,
)

FFHQ512 = (FFHQ512_GENERATOR_KWARGS, FFHQ512_NEURAL_RESOLUTION)
TINY = (TINY_GENERATOR_KWARGS, TINY_NEURAL_RESOLUTION)

TODAY = {  # the user paths measured before (benchmarks/RESULTS.md, 2026-11-25/30)
    "turntable mp4 s": "0.71–1.09 (H200), 1.28 (H100)",
    "mesh 256^3 + GLB s": "0.89–1.11 (H200, marching cubes on the host 0.66–0.7); 2.9–3.5 earlier",
    "render camera-only ms": "14 (H200)",
    "render attribute change ms": "30 (H200)",
}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds(fn, device, repeats=1, warmup=1):
    """Median wall seconds of fn() (device synchronised) after `warmup` calls; returns (s, last result)."""
    for _ in range(warmup):
        result = fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        result = fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def psnr_uint8(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def generator(config, device, precision):
    G = TriPlaneGenerator(**config[0]).eval().requires_grad_(False)
    fill_random(G, 11)
    G.neural_rendering_resolution = config[1]
    return G.to(device).set_precision(precision)


def make_editor(config, device, precision, batch_size):
    """An Editor around the random generator (a tiny encoder: the measured paths do not invert)."""
    from preim3d import Editor  # imports dlib, which the throughput section alone does not need

    G = generator(config, device, precision)
    latent_avg = G.backbone.mapping.w_avg.detach().cpu().repeat(G.num_ws, 1)
    return Editor(
        G,
        tiny_encoder(),
        latent_avg,
        tiny_directions(),
        device=device,
        precision=precision,
        batch_size=batch_size,
    )


def latent(editor, seed=3):
    z, c = random_inputs(1, editor.generator.z_dim, seed)
    with torch.no_grad():
        ws = editor.generator.mapping(z.to(editor.device), c.to(editor.device), truncation_psi=0.7)
    return ws.cpu()


def read_video(path) -> np.ndarray:
    import imageio_ffmpeg

    frames = imageio_ffmpeg.read_frames(str(path))
    meta = next(frames)
    width, height = meta["size"]
    return np.stack([np.frombuffer(f, np.uint8).reshape(height, width, 3) for f in frames])


def turntable(editor, ws, frames, tmp, device) -> dict:
    """Editor.turntable as users call it (random depth samples), then once more with fixed samples
    to compare the decoded video with the frames rendered directly."""
    path = tmp / "turntable.mp4"
    video_s, _ = seconds(lambda: editor.turntable(ws, path, frames=frames), device, repeats=3)
    editor.deterministic = True
    editor.turntable(ws, path, frames=frames)
    rendered = editor.renderer.render(
        ws, turntable_path(frames), deterministic=True, outputs=("image",), on_device=uint8_images
    )["image"].numpy()
    editor.deterministic = False
    return {
        "seconds": round(video_s, 3),
        "MB": round(path.stat().st_size / 1e6, 2),
        "PSNR decoded vs rendered dB": round(psnr_uint8(read_video(path), rendered), 2),
        "rendered frames": rendered,
    }


def throughput(config, device, frames, batches) -> dict:
    """Frames/s of a turntable from cached planes, frames kept on the device (G.render_planes) and
    as uint8 on the host (TriPlaneRenderer), with PSNR against fp32 (deterministic samples)."""
    from preim3d.rendering import TriPlaneRenderer

    cams = turntable_path(frames).to(device)
    results, reference = {}, None
    for precision in ("fp32", "fast") if device.type == "cuda" else ("fp32",):
        G = generator(config, device, precision)
        z, c = random_inputs(1, G.z_dim, 16)
        with torch.no_grad():
            ws = G.mapping(z.to(device), c.to(device), truncation_psi=0.7, truncation_cutoff=14)
            planes = G.synthesize_planes(ws)
        for batch in batches if precision == "fast" else batches[:1]:

            def on_device(G=G, batch=batch, ws=ws, planes=planes):
                with torch.no_grad():
                    return torch.cat(
                        [
                            G.render_planes(planes, ws, cv, deterministic=True)["image"]
                            for cv in cams.split(batch)
                        ]
                    )

            try:
                s, images = seconds(on_device, device, repeats=3)
            except torch.OutOfMemoryError:
                results[f"{precision}, batch {batch}"] = "out of memory"
                continue
            row = {"frames/s on device": round(frames / s, 1)}
            if precision == "fp32":
                reference = images
            elif reference is not None:
                row["PSNR vs fp32 dB"] = round(psnr(images, reference), 1)
            renderer = TriPlaneRenderer(G, batch_size=batch)
            s, _ = seconds(
                lambda renderer=renderer, ws=ws: renderer.render(
                    ws, cams, deterministic=True, outputs=("image",), on_device=uint8_images
                ),
                device,
                repeats=3,
            )
            row["frames/s uint8 on host"] = round(frames / s, 1)
            results[f"{precision}, batch {batch}"] = row
            del images
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return results


def latency(editor, ws, device, repeats) -> dict:
    """Editor.render at batch 1: camera-only changes and attribute changes (new planes each time)."""
    yaws = iter(np.linspace(-0.5, 0.5, 10 * repeats))
    camera_s, _ = seconds(
        lambda: editor.render(ws, float(next(yaws)), 0.1), device, repeats=repeats, warmup=3
    )
    name = editor.directions.names[0]
    strengths = iter(np.linspace(-3, 3, 10 * repeats))
    attribute_s, _ = seconds(
        lambda: editor.render(editor.edit(ws, {name: float(next(strengths))}), 0.2, 0.1),
        device,
        repeats=repeats,
        warmup=3,
    )
    return {"camera-only ms": round(camera_s * 1000, 2), "attribute change ms": round(attribute_s * 1000, 2)}


def mesh(editor, ws, resolution, threshold, tmp, device) -> dict:
    """Editor.mesh to a .glb as users call it, then the warm time of each stage (bench_mesh_memory)."""
    from bench_mesh_memory import mesh_split

    path = tmp / "head.glb"
    total_s, result = seconds(
        lambda: editor.mesh(ws, path, resolution=resolution, threshold=threshold), device
    )
    split = mesh_split(editor.generator, ws, editor.renderer.planes(ws), resolution, threshold, path)
    return {
        "seconds (Editor.mesh to .glb)": round(total_s, 3),
        "vertices": len(result.vertices),
        "GLB MB": round(path.stat().st_size / 1e6, 1),
        "stages (warm medians)": split,
    }


def official_loop(device, frames) -> dict:
    G = build_official_eg3d(*FFHQ512, 11, device)
    z, c = random_inputs(1, 512, 16)
    cams = turntable_path(frames).to(device)
    with torch.no_grad():
        ws = G.mapping(z.to(device), c.to(device), truncation_psi=0.7, truncation_cutoff=14)

    def loop():
        with torch.no_grad():
            return [G.synthesis(ws, cv[None], noise_mode="const")["image"] for cv in cams]

    s, _ = seconds(loop, device)
    return {"seconds (frames on the device)": round(s, 3), "frames/s": round(frames / s, 1)}


def natural_frames(frames=120, size=512) -> np.ndarray:
    """A natural test sequence: skimage's astronaut (public domain) turning and sliding a little."""
    from PIL import Image
    from skimage import data

    photo = Image.fromarray(data.astronaut()).resize((size + size // 4,) * 2)
    margin = size // 8
    t = 2 * np.pi * np.arange(frames) / frames
    return np.stack(
        [
            np.asarray(
                photo.rotate(12 * np.sin(a), Image.BICUBIC, translate=(30 * np.sin(a), 10 * np.cos(a))).crop(
                    (margin, margin, margin + size, margin + size)
                )
            )
            for a in t
        ]
    )


def encoder_sweep(rendered: np.ndarray, tmp: Path) -> dict:
    """x264 settings on some frames: seconds, MB, PSNR of the decoded frames."""
    from preim3d.mp4 import Mp4Writer

    settings = {
        "bitrate 10M, preset medium (before)": dict(bitrate="10M", preset="medium"),
        **{
            f"crf {crf}, preset {preset}": dict(crf=crf, preset=preset)
            for preset, crfs in (("superfast", (6, 8)), ("veryfast", (4, 6, 8)), ("faster", (6,)))
            for crf in crfs
        },
    }
    n, h, w, _ = rendered.shape
    results = {}
    for name, options in settings.items():
        path = tmp / "sweep.mp4"
        start = time.perf_counter()
        with Mp4Writer(path, (w, h), fps=60, **options) as video:
            video.write(rendered)
        s = time.perf_counter() - start
        results[name] = {
            "seconds": round(s, 3),
            "MB": round(path.stat().st_size / 1e6, 2),
            "PSNR dB": round(psnr_uint8(read_video(path), rendered), 2),
        }
        print(name, results[name], flush=True)
    return results


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default=None, help="default: fast on a GPU, fp32 elsewhere")
    parser.add_argument("--tiny", action="store_true", help="the tiny test configuration (a quick check)")
    parser.add_argument("--frames", type=int, default=120)
    parser.add_argument("--batch", type=int, default=8, help="the Editor's batch size (its default: 8)")
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 20, 40, 120], help="throughput batches")
    parser.add_argument("--mesh-resolution", type=int, default=256)
    parser.add_argument("--threshold", type=float, default=-1.5, help="random weights have no surface at 10")
    parser.add_argument("--latency-repeats", type=int, default=30)
    parser.add_argument(
        "--skip", nargs="*", default=[], help="sections to skip: turntable throughput mesh latency"
    )
    parser.add_argument(
        "--torch-marching-cubes",
        action="store_true",
        help="the PyTorch marching cubes on a CPU too (a check of this script; a GPU takes it anyway)",
    )
    parser.add_argument("--encoder-sweep", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.torch_marching_cubes:
        from bench_mesh_memory import use_torch_marching_cubes_everywhere

        use_torch_marching_cubes_everywhere()
    device = torch.device(args.device)
    precision = args.precision or ("fast" if device.type == "cuda" else "fp32")
    config = TINY if args.tiny else FFHQ512
    results = {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu ({torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "precision": precision,
        "before (RESULTS.md)": TODAY,
    }
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if {"turntable", "latency", "mesh"} - set(args.skip):
            editor = make_editor(config, device, precision, args.batch)
            ws = latent(editor)
        if "turntable" not in args.skip:
            results["Editor.turntable mp4"] = turntable(editor, ws, args.frames, tmp, device)
            rendered = results["Editor.turntable mp4"].pop("rendered frames")
            print("turntable", results["Editor.turntable mp4"], flush=True)
            if args.encoder_sweep:
                results["x264 settings, rendered frames"] = encoder_sweep(rendered, tmp)
                results["x264 settings, natural frames"] = encoder_sweep(natural_frames(args.frames), tmp)
        if "latency" not in args.skip:
            results["Editor.render latency, batch 1"] = latency(editor, ws, device, args.latency_repeats)
            print("latency", results["Editor.render latency, batch 1"], flush=True)
        if "mesh" not in args.skip:
            results[f"Editor.mesh {args.mesh_resolution}^3 + GLB"] = mesh(
                editor, ws, args.mesh_resolution, args.threshold, tmp, device
            )
            print("mesh", results[f"Editor.mesh {args.mesh_resolution}^3 + GLB"], flush=True)
    editor = None  # frees the GPU memory of its generator
    if "throughput" not in args.skip:
        results["throughput from cached planes"] = throughput(config, device, args.frames, args.batches)
        print("throughput", results["throughput from cached planes"], flush=True)
    if official_eg3d_path() is not None and not args.tiny:
        results["official per-frame loop"] = official_loop(device, args.frames)
        print("official", results["official per-frame loop"], flush=True)

    text = json.dumps(results, indent=2)
    print(text)
    for target in filter(
        None, [args.json, Path(os.environ["OUT"]) / "user_paths.json" if "OUT" in os.environ else None]
    ):
        target.write_text(text)


if __name__ == "__main__":
    main()
