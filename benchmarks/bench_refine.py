"""Pivotal tuning of one photo (`Editor.refine`'s core) against a PTI loop, on the full-size generator.

    python benchmarks/bench_refine.py [--device cuda] [--json results.json]
    python benchmarks/bench_refine.py --tiny          # the same on the tiny generator, on a CPU, in minutes

Generator: the ffhq512-128 configuration with seeded random weights (`preim3d.testing.
full_size_generator`). Target: the astronaut photo (examples/astronaut.png, from skimage) aligned
with preim3d.align, from the camera estimated from it (a fixed square around the face, frontal,
where dlib's model is missing). Pivot: a mapped code (ψ = 0.7); with random weights an encoder's
code would be no closer to the photo.

Rows:
* ours: `preim3d.refine.refine_generator` with its defaults (LoRA rank 8, Adam 2e-3 with cosine
  decay; pixel + LPIPS when installed + side-view depth + edit keeping along 8 random directions,
  one edit in each step's batch + PTI's locality, in the batch too), in the fast
  mode (bfloat16 autocast) for 100 and 300 steps; then variants: full-rank deltas (Adam 3e-4),
  pixel (+ LPIPS) only (what the regularisers cost), float32, and learning rates 1e-3 / 5e-3.
* PTI as its authors' code and EG3D-projector run it on EG3D: Adam 3e-4 on every generator
  weight, 350 steps, L2 + LPIPS (λ = 1 each), float32, the official random depth samples;
  EG3D-projector switches the locality regulariser off (PTI's own code has it every step) and
  stops once LPIPS <= 0.06. Here it runs all its steps; reported: the step and the seconds at which
  its pixel loss (mean of 5 steps) first reaches the pixel loss of our 300-step run.

Columns: wall seconds (the whole call: copy, untuned targets, steps), seconds a step, PSNR of a
deterministic float32 render from the photo's camera against the target (before -> after), final
pixel loss (MSE in [-1, 1] units, mean of the last 5 steps), peak GPU memory, and the size of one
refined head's deltas (what each kept head costs); and what else moved: "edits" is the range over 4
random unit directions the tuning never saw (edited by ±3) of how much the edit moves the tuned
render against how much it moved the untuned one (1 = as much), "others" how much renders of 3
codes 30 away from the pivot changed, against how much the pivot's render changed (0 = not at all).
Which losses were used is printed (no LPIPS
without the `lpips` package). With $OUT set, the details (loss curves included) go to
$OUT/bench_refine.json.
"""

from __future__ import annotations

import argparse
import copy
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

from preim3d.cameras import camera_vector
from preim3d.refine import RefineSettings, crop_target, delta_state, perceptual_loss, refine_generator
from preim3d.testing import full_size_generator, tiny_generator

PHOTO = Path(__file__).resolve().parent.parent / "examples" / "astronaut.png"
FALLBACK_BOX = (144, 35, 304, 195)  # about the aligned crop's square in the astronaut photo
PTI_LR, PTI_STEPS, PTI_LPIPS_STOP = 3e-4, 350, 0.06


def target_face(resolution: int):
    """(target [1,3,R,R] in [-1, 1], pose, how it was made)."""
    try:
        from preim3d.align import align_face

        face = align_face(PHOTO)
        return crop_target(face, resolution), face.estimate_pose(), "aligned by preim3d.align"
    except Exception as exc:  # dlib or its landmark model missing on this machine
        crop = Image.open(PHOTO).convert("RGB").crop(FALLBACK_BOX)
        return crop_target(crop, resolution), (0.0, 0.0), f"fixed crop, frontal ({type(exc).__name__})"


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def psnr(G, ws, target, pose) -> float:
    """PSNR (peak-to-peak 2) of G's deterministic render of ws from `pose` against the target."""
    with torch.no_grad():
        image = G.synthesis(ws, camera_vector(*pose, device=ws.device), deterministic=True)["image"]
    mse = F.mse_loss(image.float().clamp(-1, 1), target).item()
    return 10 * math.log10(4 / mse)


def peak_gib(device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None


def reset_peak(device):
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def tail(values, n=5) -> float:
    return statistics.fmean(values[-n:])


def render(G, ws, pose):
    with torch.no_grad():
        c = camera_vector(*pose, device=ws.device).expand(len(ws), -1)
        return G.synthesis(ws, c, deterministic=True)["image"].float()


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


def run_ours(G, ws, target, pose, settings, device, lpips) -> dict:
    reset_peak(device)
    sync(device)
    start = time.perf_counter()
    result = refine_generator(G, ws, target, pose, settings, lpips=lpips)
    sync(device)
    wall = time.perf_counter() - start
    result.generator.set_precision("fp32")
    deltas = delta_state(result.generator)
    return {
        "seconds": round(wall, 3),
        "seconds per step": round(result.seconds / max(settings.steps, 1), 4),
        "psnr after": round(psnr(result.generator, ws, target, pose), 2),
        "pixel loss": round(tail(result.history["pixel"]), 5),
        "peak GiB": peak_gib(device),
        "head MB": round(sum(t.numel() * 4 for t in deltas.values()) / 1e6, 2),
        "losses": list(result.losses),
        **side_effects(G, result.generator, ws, pose),
        "pixel curve": [round(v, 5) for v in result.history["pixel"]],
    }


def run_pti(G, ws, target, pose, steps, device, lpips, reach) -> dict:
    """PTI's pivotal tuning loop on a full copy of our generator (see the module docstring)."""
    reset_peak(device)
    sync(device)
    start = time.perf_counter()
    tuned = copy.deepcopy(G).set_precision("fp32").requires_grad_(True)
    optimizer = torch.optim.Adam(tuned.parameters(), lr=PTI_LR)
    c = camera_vector(*pose, device=device)
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
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        curve.append(l2.item())  # synchronises, as the authors' loop does for its LPIPS check
        times.append(time.perf_counter() - start)
    wall = time.perf_counter() - start
    reached = next(
        (i for i in range(len(curve)) if statistics.fmean(curve[max(0, i - 4) : i + 1]) <= reach), None
    )
    return {
        "seconds": round(wall, 3),
        "seconds per step": round(wall / steps, 4),
        "psnr after": round(psnr(tuned.requires_grad_(False), ws, target, pose), 2),
        "pixel loss": round(tail(curve), 5),
        "peak GiB": peak_gib(device),
        "head MB": round(sum(p.numel() * 4 for p in tuned.parameters()) / 1e6, 2),
        "losses": ["pixel"] + (["lpips"] if lpips is not None else []),
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
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    device = torch.device(args.device)
    short, long = args.steps or ((3, 8) if args.tiny else (100, 300))
    pti_steps = args.pti_steps or (8 if args.tiny else PTI_STEPS)

    G = (tiny_generator(0) if args.tiny else full_size_generator(11)).to(device)
    target, pose, made = target_face(G.img_resolution)
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
        "target": f"astronaut, {made}, pose (yaw, pitch) = ({pose[0]:.3f}, {pose[1]:.3f}) rad",
        "lpips": "on" if lpips is not None else "off (the lpips package is not installed)",
        "psnr before (dB)": round(psnr(G, ws, target, pose), 2),
    }
    print(json.dumps(info, indent=1), flush=True)

    for fast in (True, False):  # warm-up: cuDNN's algorithm choice, LPIPS, lazy initialisation
        refine_generator(G, ws, target, pose, RefineSettings(steps=2, fast=fast), lpips=lpips is not None)

    rows = {}
    variants = [
        (f"ours fast, LoRA r8, {short} steps", RefineSettings(steps=short)),
        (f"ours fast, LoRA r8, {long} steps", RefineSettings(steps=long)),
        (
            f"ours fast, full-rank deltas, {long} steps",
            RefineSettings(steps=long, rank=0, learning_rate=3e-4),
        ),
        (
            f"ours fast, LoRA r8, pixel (+ LPIPS) only, {long} steps",
            RefineSettings(steps=long, view_weight=0, edit_weight=0, locality_weight=0),
        ),
        (f"ours fp32, LoRA r8, {short} steps", RefineSettings(steps=short, fast=False)),
        (f"ours fast, LoRA r8, lr 1e-3, {short} steps", RefineSettings(steps=short, learning_rate=1e-3)),
        (f"ours fast, LoRA r8, lr 5e-3, {short} steps", RefineSettings(steps=short, learning_rate=5e-3)),
    ]
    for name, settings in variants:
        rows[name] = run_ours(G, ws, target, pose, settings, device, lpips is not None)
        print(name, {k: v for k, v in rows[name].items() if k != "pixel curve"}, flush=True)
    reach = rows[f"ours fast, LoRA r8, {long} steps"]["pixel loss"]
    name = f"PTI (Adam 3e-4, all weights, fp32), {pti_steps} steps"
    rows[name] = run_pti(G, ws, target, pose, pti_steps, device, lpips, reach)
    print(name, {k: v for k, v in rows[name].items() if k != "pixel curve"}, flush=True)

    results = {**info, "rows": rows}
    text = json.dumps(results, indent=1)
    out = os.environ.get("OUT")
    for path in [args.json, Path(out) / "bench_refine.json" if out else None]:
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)

    print(
        f"\nlosses: ours {', '.join(rows[f'ours fast, LoRA r8, {long} steps']['losses'])}; "
        f"PTI {', '.join(rows[name]['losses'])}. PSNR before: {info['psnr before (dB)']} dB"
    )
    print("| run | seconds | s/step | PSNR after (dB) | pixel loss | peak GiB | head MB | edits | others |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row_name, row in rows.items():
        print(
            f"| {row_name} | {row['seconds']} | {row['seconds per step']} | {row['psnr after']} | "
            f"{row['pixel loss']} | {row['peak GiB']} | {row['head MB']} | {row['edits']} | {row['others']} |"
        )
    pti = rows[name]
    print(
        f"PTI reaches our {long}-step pixel loss ({reach}) after "
        + (
            f"{pti['steps to reach ours']} steps, {pti['seconds to reach ours']} s"
            if pti["steps to reach ours"] is not None
            else f"more than {pti_steps} steps"
        )
        + f"; ours took {rows[f'ours fast, LoRA r8, {long} steps']['seconds']} s."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
