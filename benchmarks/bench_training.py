"""Training speed and GPU memory of `preim3d train` with the full-size networks (random weights).

    python benchmarks/bench_training.py [--steps 10] [--json results.json]

Networks: the ffhq512-128 EG3D generator (frozen), the IR-SE50 W+ encoder and the IR-SE50 ArcFace
network, all of full size with random weights; the training data are random images with the frontal
camera. The recipe is PREIM3D's (Ranger, L2 + identity + latent discriminator, 1:1 alternation of
generated and real batches, latent reconstruction on generated ones) with the multi-view identity
loss on (3 novel views per image, as after step 100,000: the heaviest phase) unless a row says
otherwise. LPIPS is left out (the optional `lpips` package fetches AlexNet weights from the
internet; add --lpips where it can).

For float32 and for bfloat16 autocast: steps/s and peak memory at the official batch 2, without
and with the multi-view loss, then the largest batch that fits (doubling, then bisection, each
candidate trying a generated and a real step), timed. Prints a Markdown table for
benchmarks/RESULTS.md. Takes about 4-5 minutes on one H100.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import Dataset

from preim3d.cameras import camera_vector
from preim3d.networks.encoder import WPlusEncoder
from preim3d.testing import ffhq512_generator
from preim3d.training import make_config
from preim3d.training.identity import ArcFaceBackbone
from preim3d.training.trainer import Trainer


class RandomFaces(Dataset):
    """Seeded random 256 x 256 images in [-1, 1] with the frontal camera (the data's content does not
    change the amount of work)."""

    def __init__(self, n=4096):
        self.n, self.c = n, camera_vector()[0]

    def __len__(self):
        return self.n

    def __getitem__(self, index):
        g = torch.Generator().manual_seed(index)
        return torch.rand(3, 256, 256, generator=g) * 2 - 1, self.c


def networks(device):
    G = ffhq512_generator(seed=11)
    torch.manual_seed(0)
    encoder = WPlusEncoder().to(device)
    initial = {k: v.clone() for k, v in encoder.state_dict().items()}
    return G.to(device), encoder, ArcFaceBackbone().eval().to(device), initial


def measure(nets, data, batch, bf16, multi_view, steps, lpips, out):
    """(steps/s, peak GiB allocated, peak GiB reserved) over `steps` steps after two warm-up steps."""
    G, encoder, arcface, initial = nets
    encoder.load_state_dict(initial)  # every row starts from the same weights
    config = make_config(
        out=out,
        batch_size=batch,
        bf16=bf16,
        device="cuda",
        workers=4,
        progress=False,
        lpips_lambda=0.8 if lpips else 0.0,
        multi_view_start_step=0 if multi_view else 10**9,
    )
    trainer = Trainer(config, generator=G, encoder=encoder, arcface=arcface, dataset=data)
    try:
        for _ in range(2):  # a generated and a real step: cuDNN picks its algorithms, memory settles
            trainer.train_step()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        for _ in range(steps):
            trainer.train_step()
        torch.cuda.synchronize()
        rate = steps / (time.perf_counter() - start)
        return rate, torch.cuda.max_memory_allocated() / 2**30, torch.cuda.max_memory_reserved() / 2**30
    finally:
        del trainer
        gc.collect()
        torch.cuda.empty_cache()


def fits(nets, data, batch, bf16, lpips, out) -> bool:
    try:
        measure(nets, data, batch, bf16, True, 0, lpips, out)
        ok = True
    except RuntimeError as exc:  # OutOfMemoryError, or cuDNN failing to allocate its workspace
        if not isinstance(exc, torch.cuda.OutOfMemoryError) and "ALLOC" not in str(exc):
            raise
        ok = False
    # outside the except block: the exception's traceback no longer holds the step's tensors
    gc.collect()
    torch.cuda.empty_cache()
    print(f"batch {batch}: {'fits' if ok else 'out of memory'}", flush=True)
    return ok


def largest_batch(nets, data, bf16, lpips, out, limit, deadline) -> int:
    """The largest batch (with multi-view) that trains without running out of memory, up to `limit`."""
    good, bad = 2, None
    while bad is None and good < limit and time.time() < deadline:
        candidate = min(good * 2, limit)
        if fits(nets, data, candidate, bf16, lpips, out):
            good = candidate
        else:
            bad = candidate
    while bad is not None and bad - good > 1 and time.time() < deadline:
        middle = (good + bad) // 2
        if fits(nets, data, middle, bf16, lpips, out):
            good = middle
        else:
            bad = middle
    return good


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per row (default 10)")
    parser.add_argument("--max-batch", type=int, default=64, help="stop the batch search here (default 64)")
    parser.add_argument(
        "--budget", type=float, default=200, help="seconds for the batch searches (default 200)"
    )
    parser.add_argument(
        "--lpips", action="store_true", help="include LPIPS (needs `lpips` and its AlexNet weights)"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_training.py needs a CUDA GPU.")
    device = torch.device("cuda")
    started = time.time()
    nets = networks(device)
    data = RandomFaces()
    out = tempfile.mkdtemp(prefix="bench_training_")
    rows = []
    for bf16 in (False, True):
        precision = "bf16 autocast" if bf16 else "fp32"
        for multi_view in (False, True):
            rate, alloc, reserved = measure(nets, data, 2, bf16, multi_view, args.steps, args.lpips, out)
            rows.append(
                dict(
                    precision=precision,
                    batch=2,
                    multi_view=multi_view,
                    steps_per_s=rate,
                    images_per_s=2 * rate,
                    peak_alloc_gib=alloc,
                    peak_reserved_gib=reserved,
                )
            )
            print(rows[-1], flush=True)
        deadline = time.time() + args.budget / 2
        batch = largest_batch(nets, data, bf16, args.lpips, out, args.max_batch, deadline)
        rate, alloc, reserved = measure(
            nets, data, batch, bf16, True, max(2, args.steps // 2), args.lpips, out
        )
        rows.append(
            dict(
                precision=precision,
                batch=batch,
                multi_view=True,
                largest=True,
                steps_per_s=rate,
                images_per_s=batch * rate,
                peak_alloc_gib=alloc,
                peak_reserved_gib=reserved,
            )
        )
        print(rows[-1], flush=True)

    gpu = torch.cuda.get_device_name(device)
    print(
        f"\n{datetime.date.today()}, {gpu}, torch {torch.__version__}, `python benchmarks/bench_training.py "
        f"{' '.join(sys.argv[1:])}`, {time.time() - started:.0f} s"
    )
    print(
        "\n| precision | batch | multi-view ID | steps/s | images/s "
        "| peak allocated GiB | peak reserved GiB |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        batch = f"{r['batch']} (largest)" if r.get("largest") else str(r["batch"])
        print(
            f"| {r['precision']} | {batch} | {'on' if r['multi_view'] else 'off'} | {r['steps_per_s']:.2f} | "
            f"{r['images_per_s']:.1f} | {r['peak_alloc_gib']:.1f} | {r['peak_reserved_gib']:.1f} |"
        )
    if args.json:
        args.json.write_text(json.dumps({"gpu": gpu, "torch": torch.__version__, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
