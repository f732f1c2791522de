"""End-to-end output timings on the full-size generator: a turntable mp4 and a 256³ mesh.

    python benchmarks/bench_outputs.py [--device cuda] [--frames 120] [--mesh-resolution 256]

Random ffhq512-128 weights; for each precision: seconds to write the 120-frame 512² turntable
(rendering and H.264 encoding, frames streamed to the encoder) and seconds to extract and export
the mesh, with its vertex count.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from preim3d.mesh import export_mesh, extract_mesh
from preim3d.rendering import TriPlaneRenderer
from preim3d.testing import ffhq512_generator, random_inputs
from preim3d.turntable import render_turntable


def seconds(fn, device):
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, result


def measure(precision, args, device) -> dict:
    G = ffhq512_generator(seed=11).to(device).set_precision(precision)
    renderer = TriPlaneRenderer(G, batch_size=args.batch)
    z, c = random_inputs(1, 512, 3)
    with torch.no_grad():
        ws = G.mapping(z.to(device), c.to(device), truncation_psi=0.7, truncation_cutoff=14)
    with tempfile.TemporaryDirectory() as tmp:
        render_turntable(renderer, ws, Path(tmp) / "warm.mp4", frames=args.batch, deterministic=True)
        renderer.clear()
        video_s, _ = seconds(
            lambda: render_turntable(
                renderer, ws, Path(tmp) / "t.mp4", frames=args.frames, deterministic=True
            ),
            device,
        )
        mesh_s, mesh = seconds(
            lambda: extract_mesh(G, ws, args.mesh_resolution, args.threshold, planes=renderer.planes(ws)),
            device,
        )
        export_s, _ = seconds(lambda: export_mesh(mesh, Path(tmp) / "m.glb"), "cpu")
        size_mb = (Path(tmp) / "m.glb").stat().st_size / 1e6
    return {
        f"turntable mp4, {args.frames} frames (s)": round(video_s, 2),
        f"mesh {args.mesh_resolution}^3 extraction (s)": round(mesh_s, 2),
        "GLB export (s)": round(export_s, 2),
        "vertices": len(mesh.vertices),
        "GLB MB": round(size_mb, 1),
    }


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--frames", type=int, default=120)
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--mesh-resolution", type=int, default=256)
    parser.add_argument(
        "--threshold",
        type=float,
        default=-1.5,
        help="density level of the surface (random weights have none at the official 10)",
    )
    args = parser.parse_args()
    device = args.device
    results = {}
    for precision in ("fp32", "fast"):
        results[precision] = measure(precision, args, device)
        print(precision, results[precision], flush=True)
    print(
        json.dumps(
            {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", **results}, indent=2
        )
    )


if __name__ == "__main__":
    main()
