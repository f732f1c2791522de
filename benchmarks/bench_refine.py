"""Pivotal tuning of one photo (`Editor.refine`'s core) against PTI's loop, on the full-size generator.

    python benchmarks/bench_refine.py [--dlib-models DIR] [--variants] [--json results.json]
    python benchmarks/bench_refine.py --aligned crop.png --pose YAW PITCH   # a crop aligned elsewhere
    python benchmarks/bench_refine.py --tiny          # the same on the tiny generator, on a CPU

Generator: the ffhq512-128 configuration with seeded random weights, its density calibrated
(`preim3d.testing.ffhq512_generator`). Target: the repository's example photo
(examples/astronaut.png) aligned with dlib by preim3d.align, seen from the camera estimated from it.
dlib's landmark model comes from --dlib-models DIR or $PREIM3D_DLIB_MODELS (a folder holding
shape_predictor_68_face_landmarks.dat and mmod_human_face_detector.dat), else from the
face-recognition-models package; without it the target is a fixed square around the face, frontal,
and the first line says so. On a machine without dlib, --aligned gives the crop that
`preim3d.align.align_face` made elsewhere (AlignedFace.image saved as PNG) and --pose its
`estimate_pose()`. Pivot: a mapped code (ψ = 0.7); with random weights an encoder's code would be
no closer to the photo.

Rows:
* ours: `preim3d.refine.refine_generator` with its defaults (LoRA rank 8, Adam 2e-3 with cosine
  decay; pixel + LPIPS when installed at every step; every 4th step the regularisers: side-view
  depth, edit keeping along 8 random directions with one edit in the step's batch, and PTI's
  locality with one code in the batch too), in the fast mode (bfloat16 autocast, CUDA graphs,
  no gradient through the coarse depth samples) for 100 and 300 steps (the goal: 300 steps in at
  most 5 s on one GPU); and the 300 steps once more with a progress callback after each step, as
  `Editor.refine` runs them for the web page and the command line (each report waits for its
  step to finish on the GPU).
* PTI as its authors run it (their defaults), on our generator: Adam 3e-4 on every generator weight,
  350 steps, L2 + LPIPS (λ = 1 each), float32, the official random depth samples, and its locality
  regulariser every step (a new z each step, w_z = mapping(z, ψ = 0.5), the code pivot + 30 (w_z −
  pivot)/‖w_z − pivot‖ rendered by the tuned and the original generator, λ = 0.1 for its L2 and its
  LPIPS). Reported besides: the step and the seconds at which its pixel loss (mean of 5 steps) first
  reaches the pixel loss of our 300-step run.
* with --variants also, 300 steps each: ours with one thing changed — without the CUDA graphs,
  with the coarse samples' gradients, with the regularisers at every step or every 8th, with the
  edit term's weight at 1, with the pixel (+ LPIPS) term alone (what the regularisers cost); the
  earlier defaults (all of those changes undone at once); and PTI as EG3D-projector runs it (the
  same loop without the regulariser; it would stop once LPIPS <= 0.06: that step is reported).

Columns: wall seconds (the whole call: copy, untuned targets, steps), seconds a step, PSNR of a
deterministic float32 render from the photo's camera against the target (before -> after), final
pixel loss (MSE in [-1, 1] units, mean of the last 5 steps), peak GPU memory of the run, and what
one refined head costs: "head MB", its deltas (in memory and on disk), and "views MiB", the GPU
memory its renderer then holds in the fast mode after rendering (the CUDA graphs of its backbone and
of batches of 1 and 8 views, one cached tri-plane); and what else moved: "edits" is the range over 4
random unit directions the tuning never saw (edited by ±3) of how much the edit moves the tuned
render against how much it moved the untuned one (1 = as much), "others" how much renders of 3
codes 30 away from the pivot changed, against how much the pivot's render changed (0 = not at all).
Below the table: how long a refined head's first view takes (its graphs are captured then) and the
next one, beside the base generator's. Which losses were used is printed (no LPIPS without the
`lpips` package). With $OUT set, the details (loss curves included) go to $OUT/bench_refine.json.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from preim3d.cameras import camera_vector, turntable_path
from preim3d.refine import (
    LOCALITY_ALPHA,
    LOCALITY_PSI,
    RefineSettings,
    crop_target,
    delta_state,
    perceptual_loss,
    refine_generator,
    weights_digest,
)
from preim3d.rendering import TriPlaneRenderer, uint8_images
from preim3d.testing import ffhq512_generator, tiny_generator

PHOTO = Path(__file__).resolve().parent.parent / "examples" / "astronaut.png"
FALLBACK_BOX = (144, 35, 304, 195)  # about the aligned crop's square in the astronaut photo
# PTI's defaults (its configs/hyperparameters.py): steps, learning rate, LPIPS level at which
# EG3D-projector stops, weights of the locality regulariser's L2 and LPIPS.
PTI_STEPS, PTI_LR, PTI_LPIPS_STOP, PTI_LOCALITY_WEIGHT = 350, 3e-4, 0.06, 0.1
GOAL_SECONDS = 5.0  # for 300 steps on one GPU


def target_face(resolution: int, aligned: Path | None = None, pose=None):
    """(target [1,3,R,R] in [-1, 1], pose, how it was made)."""
    if aligned is not None:
        made = f"{aligned.name}, aligned beforehand, pose as given"
        return crop_target(Image.open(aligned), resolution), tuple(pose), made
    try:
        from preim3d.align import align_face

        face = align_face(PHOTO)
        return crop_target(face, resolution), face.estimate_pose(), "aligned with dlib (preim3d.align)"
    except Exception as exc:  # dlib or its landmark model missing on this machine
        crop = Image.open(PHOTO).convert("RGB").crop(FALLBACK_BOX)
        print(
            f"dlib could not align the photo ({type(exc).__name__}: {exc}); give dlib's model folder "
            "with --dlib-models DIR or PREIM3D_DLIB_MODELS. Falling back to a fixed square, frontal.",
            flush=True,
        )
        made = "NOT aligned with dlib: a fixed square around the face, frontal"
        return crop_target(crop, resolution), (0.0, 0.0), made


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def render(G, ws, pose, deterministic=True):
    """G's float32 render of ws [N, num_ws, w_dim] from `pose` (whatever G's precision mode)."""
    precision = G.precision
    try:
        with torch.no_grad():
            c = camera_vector(*pose, device=ws.device).expand(len(ws), -1)
            return G.set_precision("fp32").synthesis(ws, c, deterministic=deterministic)["image"].float()
    finally:
        G.set_precision(precision)


def psnr(G, ws, target, pose) -> float:
    """PSNR (peak-to-peak 2) of G's deterministic render of ws from `pose` against the target."""
    mse = F.mse_loss(render(G, ws, pose).clamp(-1, 1), target).item()
    return 10 * math.log10(4 / mse)


def peak_gib(device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None


def reset_peak(device):
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def tail(values, n=5) -> float:
    return statistics.fmean(values[-n:])


def side_effects(G, tuned, ws, pose) -> dict:
    """How the tuning moved edits and other codes (see the module docstring)."""
    gen = torch.Generator().manual_seed(1234)
    directions = torch.randn(4, *ws.shape[1:], generator=gen).to(ws.device)
    directions = directions / directions.flatten(1).norm(dim=1).reshape(-1, 1, 1)
    base, head = render(G, ws, pose), render(tuned, ws, pose)
    ratios = []
    for d in directions:
        for sign in (3, -3):
            moved = (render(tuned, ws + sign * d, pose) - head).abs().mean()
            ratios.append((moved / (render(G, ws + sign * d, pose) - base).abs().mean()).item())
    away = torch.randn(3, *ws.shape[1:], generator=gen).to(ws.device)
    others = ws + 30 * away / away.flatten(1).norm(dim=1).reshape(-1, 1, 1)
    pivot = (head - base).abs().mean()
    changes = [
        ((render(tuned, w[None], pose) - render(G, w[None], pose)).abs().mean() / pivot).item()
        for w in others
    ]
    return {"edits": f"{min(ratios):.2f}-{max(ratios):.2f}", "others": f"{max(changes):.2f}"}


def views(G, ws, pose) -> dict:
    """What a renderer of G holds on the GPU in the fast mode once it has rendered one view (twice)
    and 8 views of ws, and how long the first view (which captures the graphs) and the next take."""
    device = ws.device
    if device.type != "cuda":
        return {}
    precision = G.precision
    G.set_precision("fast")
    gc.collect()
    torch.cuda.empty_cache()
    before = torch.cuda.memory_reserved(device)
    renderer = TriPlaneRenderer(G)
    seconds = []
    with torch.inference_mode():
        for cameras in (camera_vector(*pose), camera_vector(*pose), turntable_path(8)):
            sync(device)
            start = time.perf_counter()
            renderer.render(ws, cameras, deterministic=True, outputs=("image",), on_device=uint8_images)
            seconds.append(time.perf_counter() - start)
    gc.collect()
    torch.cuda.empty_cache()
    held = torch.cuda.memory_reserved(device) - before
    renderer.clear()
    G.set_precision(precision)
    return {
        "views MiB": round(held / 2**20),
        "first view ms": round(1000 * seconds[0], 1),
        "next view ms": round(1000 * seconds[1], 1),
    }


def run_ours(G, ws, target, pose, settings, device, lpips, progress=None) -> dict:
    reset_peak(device)
    sync(device)
    start = time.perf_counter()
    result = refine_generator(G, ws, target, pose, settings, lpips=lpips, progress=progress)
    sync(device)
    wall = time.perf_counter() - start
    peak = peak_gib(device)
    tuned = result.generator
    tuned.weights_key = weights_digest(tuned)  # as RefinedHead keys its planes and graphs
    deltas = delta_state(tuned)
    return {
        "seconds": round(wall, 3),
        "seconds per step": round(result.seconds / max(settings.steps, 1), 4),
        "psnr after": round(psnr(tuned, ws, target, pose), 2),
        "pixel loss": round(tail(result.history["pixel"]), 5),
        "peak GiB": peak,
        "head MB": round(sum(t.numel() * t.element_size() for t in deltas.values()) / 1e6, 2),
        **views(tuned, ws, pose),
        "losses": list(result.losses),
        **side_effects(G, tuned, ws, pose),
        "pixel curve": [round(v, 5) for v in result.history["pixel"]],
    }


def run_pti(G, ws, target, pose, steps, device, lpips, reach, locality: bool) -> dict:
    """PTI's pivotal tuning loop on a full copy of our generator (see the module docstring)."""
    reset_peak(device)
    sync(device)
    start = time.perf_counter()
    tuned = copy.deepcopy(G).set_precision("fp32").requires_grad_(True)
    optimizer = torch.optim.Adam(tuned.parameters(), lr=PTI_LR)
    c = camera_vector(*pose, device=device)
    noise = torch.Generator().manual_seed(5)
    curve, times, lpips_stop = [], [], None
    for step in range(steps):
        image = tuned.synthesis(ws, c, noise_mode="const")["image"]
        l2 = F.mse_loss(image, target)
        loss = l2
        if lpips is not None:
            distance = lpips(image, target)
            loss = loss + distance
            if lpips_stop is None and distance.item() <= PTI_LPIPS_STOP:
                lpips_stop = step
        if locality:  # PTI's space regulariser: one new code around the pivot each step
            z = torch.randn(1, G.z_dim, generator=noise).to(device)
            with torch.no_grad():
                w_z = G.mapping(z, c, truncation_psi=LOCALITY_PSI)
                w = ws + LOCALITY_ALPHA * (w_z - ws) / (w_z - ws).norm()
                before = G.synthesis(w, c, noise_mode="const")["image"]
            after = tuned.synthesis(w, c, noise_mode="const")["image"]
            regulariser = F.mse_loss(after, before)
            if lpips is not None:
                regulariser = regulariser + lpips(after, before)
            loss = loss + PTI_LOCALITY_WEIGHT * regulariser
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        curve.append(l2.item())  # synchronises, as the authors' loop does for its LPIPS check
        times.append(time.perf_counter() - start)
    wall = time.perf_counter() - start
    peak = peak_gib(device)
    reached = next(
        (i for i in range(len(curve)) if statistics.fmean(curve[max(0, i - 4) : i + 1]) <= reach), None
    )
    tuned.requires_grad_(False)
    return {
        "seconds": round(wall, 3),
        "seconds per step": round(wall / steps, 4),
        "psnr after": round(psnr(tuned, ws, target, pose), 2),
        "pixel loss": round(tail(curve), 5),
        "peak GiB": peak,
        "head MB": round(sum(p.numel() * p.element_size() for p in tuned.parameters()) / 1e6, 2),
        "losses": ["pixel"] + (["lpips"] if lpips is not None else []) + (["locality"] if locality else []),
        **side_effects(G, tuned, ws, pose),
        "steps to reach ours": None if reached is None else reached + 1,
        "seconds to reach ours": None if reached is None else round(times[reached], 3),
        "step where LPIPS <= 0.06 (EG3D-projector stops)": lpips_stop,
        "pixel curve": [round(v, 5) for v in curve],
    }


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny generator and few steps (a CPU check)")
    parser.add_argument("--steps", type=int, nargs=2, metavar=("SHORT", "LONG"), help="default 100 300")
    parser.add_argument("--pti-steps", type=int, help=f"default {PTI_STEPS}")
    parser.add_argument("--variants", action="store_true", help="also the variant rows (module docstring)")
    parser.add_argument(
        "--dlib-models",
        type=Path,
        metavar="DIR",
        help="folder of dlib's model files (sets PREIM3D_DLIB_MODELS)",
    )
    parser.add_argument("--aligned", type=Path, metavar="PNG", help="an aligned crop of the photo (no dlib)")
    parser.add_argument("--pose", type=float, nargs=2, metavar=("YAW", "PITCH"), help="of --aligned, radians")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if (args.aligned is None) != (args.pose is None):
        parser.error("--aligned and --pose go together")
    if args.dlib_models:
        os.environ["PREIM3D_DLIB_MODELS"] = str(args.dlib_models)
    device = torch.device(args.device)
    short, long = args.steps or ((2, 5) if args.tiny else (100, 300))
    pti_steps = args.pti_steps or (5 if args.tiny else PTI_STEPS)

    G = (tiny_generator(0) if args.tiny else ffhq512_generator(11, calibrate_density=True)).to(device)
    target, pose, made = target_face(G.img_resolution, args.aligned, args.pose)
    print(f"target: {PHOTO.name}, {made}; pose (yaw, pitch) = ({pose[0]:.3f}, {pose[1]:.3f}) rad", flush=True)
    target = target.to(device)
    z = torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(3)).to(device)
    with torch.no_grad():
        ws = G.mapping(z, camera_vector(device=device), truncation_psi=0.7)
    lpips = perceptual_loss(str(device))
    info = {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu ({torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "generator": "tiny (random)" if args.tiny else "ffhq512-128 (random weights)",
        "target": f"{PHOTO.name}, {made}",
        "pose": [round(float(v), 4) for v in pose],
        "lpips": "on" if lpips is not None else "off (the lpips package is not installed)",
        "psnr before (dB)": round(psnr(G, ws, target, pose), 2),
        "base generator's views": views(G, ws, pose),
    }
    print(json.dumps(info, indent=1), flush=True)

    # warm-up: cuDNN's algorithm choice, LPIPS, lazy initialisation, both kinds of step captured
    for fast in (True, False) if device.type == "cuda" else (True,):
        warm = RefineSettings(steps=8, regularise_every=2, fast=fast)
        refine_generator(G, ws, target, pose, warm, lpips=lpips is not None)

    ours = f"ours fast, LoRA r8, {long} steps"
    variants = [
        (f"ours fast, LoRA r8, {short} steps", RefineSettings(steps=short)),
        (ours, RefineSettings(steps=long)),
    ]
    if args.variants:
        changes = {
            "without CUDA graphs": {"graphs": False},
            "with the coarse samples' gradients": {"coarse_gradients": True},
            "regularisers at every step": {"regularise_every": 1},
            "regularisers every 8th step": {"regularise_every": 8},
            "edit term's weight 1": {"edit_weight": 1.0},
            "pixel (+ LPIPS) only": {"view_weight": 0, "edit_weight": 0, "locality_weight": 0},
            "with the earlier defaults": {
                "graphs": False,
                "coarse_gradients": True,
                "regularise_every": 1,
                "edit_weight": 1.0,
            },
        }
        variants += [
            (f"ours, {change}, {long} steps", RefineSettings(steps=long, **overrides))
            for change, overrides in changes.items()
        ]
    with_progress = f"ours fast, LoRA r8, {long} steps, progress after each step"
    variants.insert(2, (with_progress, RefineSettings(steps=long)))
    reported = []  # as the page's progress bar and the command line ask after every step
    rows = {}
    for name, settings in variants:
        progress = (lambda done, total: reported.append(done)) if name == with_progress else None
        rows[name] = run_ours(G, ws, target, pose, settings, device, lpips is not None, progress)
        print(name, {k: v for k, v in rows[name].items() if k != "pixel curve"}, flush=True)
    assert reported == list(range(1, long + 1))
    reach = rows[ours]["pixel loss"]
    pti_rows = [(f"PTI (Adam 3e-4, all weights, fp32, locality), {pti_steps} steps", True)]
    if args.variants:
        pti_rows.append((f"EG3D-projector's PTI (no locality), {pti_steps} steps", False))
    for name, locality in pti_rows:
        rows[name] = run_pti(G, ws, target, pose, pti_steps, device, lpips, reach, locality)
        print(name, {k: v for k, v in rows[name].items() if k != "pixel curve"}, flush=True)

    results = {**info, "rows": rows}
    text = json.dumps(results, indent=1)
    out = os.environ.get("OUT")
    for path in [args.json, Path(out) / "bench_refine.json" if out else None]:
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)

    pti_name = pti_rows[0][0]
    print(
        f"\n{info['device']}; target {made}; losses: ours {', '.join(rows[ours]['losses'])}; "
        f"PTI {', '.join(rows[pti_name]['losses'])}. PSNR before: {info['psnr before (dB)']} dB"
    )
    columns = ["seconds", "seconds per step", "psnr after", "pixel loss", "peak GiB", "head MB", "views MiB"]
    header = "run, seconds, s/step, PSNR after (dB), pixel loss, peak GiB, head MB, views MiB, edits, others"
    print("| " + header.replace(", ", " | ") + " |")
    print("|---" * (header.count(",") + 1) + "|")
    for row_name, row in rows.items():
        cells = [row.get(key, "-") for key in columns] + [row["edits"], row["others"]]
        print(f"| {row_name} | " + " | ".join(str(cell) for cell in cells) + " |")
    for name, _ in pti_rows:
        pti = rows[name]
        print(
            f"{name} reaches our {long}-step pixel loss ({reach}) "
            + (
                f"after {pti['steps to reach ours']} steps, {pti['seconds to reach ours']} s"
                if pti["steps to reach ours"] is not None
                else f"in none of its {pti_steps} steps"
            )
            + f"; ours took {rows[ours]['seconds']} s."
        )
    if long == 300 and device.type == "cuda":
        verdict = "met" if rows[ours]["seconds"] <= GOAL_SECONDS else "NOT met"
        print(f"Goal of 300 steps in at most {GOAL_SECONDS:g} s: {verdict} ({rows[ours]['seconds']} s).")
    if "first view ms" in rows[ours]:
        base = info["base generator's views"]
        print(
            f"A refined head's first view {rows[ours]['first view ms']} ms (graphs captured), next "
            f"{rows[ours]['next view ms']} ms; the base generator's {base['first view ms']} / "
            f"{base['next view ms']} ms."
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
