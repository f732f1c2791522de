"""Time and memory of a mesh, from density sampling to the GLB file, one fresh process per size.

    python benchmarks/bench_mesh_memory.py [--device cuda] [--resolutions 256 512] [--tiny]

Random ffhq512-128 weights (--tiny: the tests' tiny generator, for a quick check on a CPU). The
level is "auto": random weights stay below the official σ = 10, so it is the middle of their
density range (the level is printed). Each size runs in a process of its own, and the peak
resident memory (Linux's VmHWM, reset once the generator and its tri-planes exist) counts only the
mesh: sampling, marching cubes, colours, the trimesh object and the GLB export (the first, cold
run: extract_s, export_s). Then, warm, the time of each stage (`mesh_split`, medians of 3): density
sampling, level and box, marching cubes, normals (on a GPU; scikit-image's come with its marching
cubes), colours and the trimesh object, GLB export, and the working memory of marching cubes on the
GPU. Prints a table; with $OUT set, also writes $OUT/mesh_memory.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path


def _status_mb(key: str) -> float:
    """A memory line of /proc/self/status (VmRSS, VmHWM) in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(key)


def timed(fn, device, repeats: int):
    """(median seconds of fn() after one warm-up call, the device synchronised; its last result)."""
    import torch

    times = []
    for _ in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        result = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:]), result


def mesh_split(G, ws, planes, resolution: int, threshold, path, repeats: int = 3) -> dict:
    """Warm seconds of each stage of `extract_mesh` and `export_mesh` on G's device, from the same
    functions: density sampling, level and box, marching cubes, normals (the PyTorch marching cubes
    with normals less without; None where scikit-image's come with its marching cubes), colours and
    the trimesh object (the rest of extract_mesh), GLB export, and extraction + export; the mesh's
    vertices and file size; on a GPU the peak memory marching cubes adds (MB)."""
    import torch

    from preim3d.marching_cubes import marching_cubes
    from preim3d.mesh import (
        density_grid,
        export_mesh,
        extract_mesh,
        surface_box,
        surface_level,
        triangulate,
        uses_torch_marching_cubes,
    )

    device = planes.device
    step = float(G.rendering_kwargs["box_warp"]) / (resolution - 1)
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")  # the level warning of random weights, once per call
        density_s, (volume, pad) = timed(lambda: density_grid(G, planes, resolution), device, repeats)

        def level_and_box():
            level = surface_level(volume, threshold, trimmed=pad > 0)
            return level, surface_box(volume, level, pad)[0]

        box_s, (level, box) = timed(level_and_box, device, repeats)
        row = {"density s": density_s, "level + box s": box_s}
        if uses_torch_marching_cubes(device):
            row["marching cubes s"], _ = timed(
                lambda: marching_cubes(box, level, (step,) * 3, normals=False), device, repeats
            )
            on_gpu = device.type == "cuda"
            if on_gpu:
                torch.cuda.reset_peak_memory_stats(device)
                before = torch.cuda.memory_allocated(device)
            both_s, _ = timed(lambda: marching_cubes(box, level, (step,) * 3), device, repeats)
            marching_mb = (torch.cuda.max_memory_allocated(device) - before) / 2**20 if on_gpu else None
            row["normals s"] = both_s - row["marching cubes s"]
        else:
            both_s, _ = timed(lambda: triangulate(box, level, step), device, repeats)
            row["marching cubes s"], row["normals s"], marching_mb = both_s, None, None
        extract_s, mesh = timed(
            lambda: extract_mesh(G, ws, resolution, threshold, planes=planes), device, repeats
        )
    row["colours + trimesh s"] = extract_s - density_s - box_s - both_s
    row["GLB s"], _ = timed(lambda: export_mesh(mesh, path), device, repeats)
    row["extract + GLB s"] = extract_s + row["GLB s"]
    row = {key: None if value is None else round(value, 3) for key, value in row.items()}
    row["vertices"] = len(mesh.vertices)
    row["GLB MB"] = round(path.stat().st_size / 1e6, 1)
    row["marching cubes GPU MB"] = None if marching_mb is None else round(marching_mb, 1)
    return row


def use_torch_marching_cubes_everywhere() -> None:
    """The PyTorch marching cubes on a CPU too (a GPU takes it anyway): to check a benchmark here."""
    import preim3d.mesh

    preim3d.mesh.uses_torch_marching_cubes = lambda device: True


def child(resolution: int, device: str, tiny: bool) -> dict:
    """Make one mesh and measure it (run in a fresh process)."""
    import torch

    from preim3d import TriPlaneGenerator
    from preim3d.mesh import export_mesh, extract_mesh
    from preim3d.testing import (
        FFHQ512_GENERATOR_KWARGS,
        FFHQ512_NEURAL_RESOLUTION,
        TINY_GENERATOR_KWARGS,
        TINY_NEURAL_RESOLUTION,
        fill_random,
        random_inputs,
    )

    if tiny:
        kwargs, neural = TINY_GENERATOR_KWARGS, TINY_NEURAL_RESOLUTION
    else:
        kwargs, neural = FFHQ512_GENERATOR_KWARGS, FFHQ512_NEURAL_RESOLUTION
    G = TriPlaneGenerator(**kwargs).eval().requires_grad_(False)
    fill_random(G, 11)
    G.neural_rendering_resolution = neural
    G = G.to(device)
    z, c = random_inputs(1, G.z_dim, 3)
    with torch.no_grad():
        ws = G.mapping(z.to(device), c.to(device), truncation_psi=0.7, truncation_cutoff=14)
        planes = G.synthesize_planes(ws)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    before = _status_mb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS: the peak from here on
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mesh = extract_mesh(G, ws, resolution, planes=planes)
    if device == "cuda":
        torch.cuda.synchronize()
    extracted = time.perf_counter() - start
    level = next((str(w.message).split("surface at σ = ")[1].split(",")[0] for w in caught), "10")
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        path = export_mesh(mesh, Path(tmp) / "mesh.glb")
        exported = time.perf_counter() - start
        row = {
            "resolution": resolution,
            "level": level,
            "extract_s": round(extracted, 2),
            "export_s": round(exported, 2),
            "peak_rss_mb": round(_status_mb("VmHWM") - before, 1),
            "cuda_peak_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if device == "cuda" else None,
            "vertices": len(mesh.vertices),
            "faces": len(mesh.faces),
            "glb_mb": round(path.stat().st_size / 1e6, 1),
        }
        del mesh
        split = mesh_split(G, ws, planes, resolution, "auto", Path(tmp) / "split.glb")
    return row | {f"warm: {key}": value for key, value in split.items()}


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    parser.add_argument("--resolutions", type=int, nargs="+", default=[256, 512])
    parser.add_argument(
        "--tiny", action="store_true", help="the tests' tiny generator instead of the full one"
    )
    parser.add_argument(
        "--torch-marching-cubes",
        action="store_true",
        help="the PyTorch marching cubes on a CPU too (a check of this script; a GPU takes it anyway)",
    )
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.torch_marching_cubes:
        use_torch_marching_cubes_everywhere()
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.child is not None:
        print(json.dumps(child(args.child, args.device, args.tiny)))
        return
    rows = []
    for resolution in args.resolutions:
        command = [sys.executable, __file__, "--child", str(resolution), "--device", args.device]
        command += ["--tiny"] * args.tiny + ["--torch-marching-cubes"] * args.torch_marching_cubes
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"{resolution}³ failed:\n{done.stderr}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    print(f"\nmesh memory, {'tiny' if args.tiny else 'ffhq512-128'} random weights, {args.device}")
    columns = list(rows[0])
    print(" | ".join(columns))
    for row in rows:
        print(" | ".join(str(row[c]) for c in columns))
    if os.environ.get("OUT"):
        Path(os.environ["OUT"]).mkdir(parents=True, exist_ok=True)
        Path(os.environ["OUT"], "mesh_memory.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
