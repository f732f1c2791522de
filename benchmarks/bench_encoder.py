"""Speed and accuracy of the W+ encoder: the official PREIM3D class against ours, fp32 and fast paths.

On a CUDA machine, for each variant: batch-1 latency (median of CUDA-event timings after warm-up)
and batch-32 throughput, plus the max abs difference of its W+ from our fp32 output on the same 32
images (fp32 runs with TF32 off, so "fp32" means fp32). Without CUDA (or with --device cpu): CPU
seconds per image. Weights are random but well-scaled (batch-norm statistics calibrated on images)
unless --checkpoint gives PREIM3D's preim3d_ffhq.pt.

The official encoder is imported from an official checkout (GitHub mybabyyh/Preim3D) given by
--official or PREIM3D_OFFICIAL_PREIM3D; its CUDA-extension import is replaced by a stand-in that the
W+ encoder never calls. Without a checkout only our variants run.

Run:  export PREIM3D_OFFICIAL_PREIM3D=/path/to/Preim3D
      python benchmarks/bench_encoder.py [--no-compile] [--json out.json]
"""

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

import torch

import preim3d
from preim3d.inversion import preprocess_for_encoder
from preim3d.networks.graphs import CUDAGraphed

OPTS = dict(encoder_type="WPlusEncoder", stylegan_size=256, start_from_latent_avg=True, n_styles=14)


def official_encoder_class(folder):
    """BackboneEncoderUsingLastLayerIntoWPlus from an official checkout, without compiling its CUDA ops."""

    def unavailable(*args, **kwargs):
        raise RuntimeError("stand-in for a CUDA extension")

    op = types.ModuleType("models.stylegan2.op")
    op.FusedLeakyReLU = op.fused_leaky_relu = op.upfirdn2d = unavailable
    sys.modules.setdefault("models.stylegan2.op", op)
    sys.path.insert(0, str(Path(folder).resolve()))
    from models.encoders.psp_encoders import BackboneEncoderUsingLastLayerIntoWPlus

    return BackboneEncoderUsingLastLayerIntoWPlus


def sample_images(n, seed=0):
    """n preprocessed 256 crops: skimage's astronaut (if available) and smooth random images."""
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    smooth = torch.nn.functional.interpolate(torch.rand(n, 3, 16, 16, generator=g), size=512, mode="bicubic")
    pixels = (smooth.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()
    images = [Image.fromarray(p) for p in pixels]
    with contextlib.suppress(ImportError):
        from skimage.data import astronaut

        images[0] = Image.fromarray(astronaut())
    return preprocess_for_encoder(images)


@torch.no_grad()
def randomize_(encoder, images, seed=0):
    """Random affine batch norms / PReLUs, then running statistics measured on `images` (train mode)."""
    g = torch.Generator().manual_seed(seed)  # CPU draws, copied to the encoder's device
    for m in encoder.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            m.momentum = None  # cumulative average over the calibration batches
            m.reset_running_stats()
        elif isinstance(m, torch.nn.PReLU):
            m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 0.4)
    encoder.linear.bias.copy_(torch.randn(encoder.linear.bias.shape, generator=g) * 0.1)
    encoder.train()
    for batch in images.split(8):
        encoder(batch)
    return encoder.eval()


def with_tf32(fn):
    """`fn` run with PyTorch's default of TF32 convolutions (how the official inference runs on Ampere+)."""

    def run(x):
        torch.backends.cudnn.allow_tf32 = True
        try:
            return fn(x)
        finally:
            torch.backends.cudnn.allow_tf32 = False

    return run


def time_cuda(fn, x, iters, warmup):
    """Per-call milliseconds, each call between two CUDA events."""
    for _ in range(warmup):
        fn(x)
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn(x)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return times


def time_cpu(fn, x, iters):
    fn(x)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--official",
        default=os.environ.get("PREIM3D_OFFICIAL_PREIM3D"),
        help="official PREIM3D checkout (default: $PREIM3D_OFFICIAL_PREIM3D)",
    )
    parser.add_argument(
        "--checkpoint", help="PREIM3D's preim3d_ffhq.pt (default: random well-scaled weights)"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, help="throughput batch (default 32 on GPU, 8 on CPU)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 (the reference and official runs)
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True

    batch = args.batch or (32 if device.type == "cuda" else 8)
    images = sample_images(max(batch, 8))
    with tempfile.TemporaryDirectory() as tmp:
        if args.checkpoint:
            ours = preim3d.load_encoder(args.checkpoint)
        else:
            torch.manual_seed(0)
            ours = randomize_(preim3d.WPlusEncoder().to(device), images.to(device)).cpu()
            path = Path(tmp) / "random_preim3d.pt"
            torch.save(
                {"state_dict": {f"encoder.{k}": v for k, v in ours.state_dict().items()}, "opts": OPTS}, path
            )
            ours = preim3d.load_encoder(path)  # through the official-layout loader
    ours = ours.to(device)
    on_gpu = device.type == "cuda"
    fast = ours.fast(torch.float16 if on_gpu else torch.float32)
    plain = {}  # name -> module, timed as is
    if args.official:
        try:
            official = official_encoder_class(args.official)(50, "ir_se", types.SimpleNamespace(**OPTS))
        except Exception as exc:  # keep benchmarking ours when the checkout is unusable
            print(
                f"official encoder unavailable from {args.official}: {type(exc).__name__}: {exc}", flush=True
            )
        else:
            official.load_state_dict(ours.state_dict())
            plain["official fp32"] = official.to(device).eval()
            if device.type == "cuda":
                plain["official, PyTorch defaults (TF32)"] = with_tf32(official)
    plain["ours fp32"] = ours
    if on_gpu:
        # `fast` replays CUDA graphs on a GPU; its `_encode` is the same computation launched kernel by kernel
        plain["ours fast fp16 channels-last, no graphs"] = fast._encode
        plain["ours fast (fp16, channels-last, CUDA graphs)"] = fast
    else:
        plain["ours fast fp32 channels-last"] = fast
    variants = {name: (lambda x, m=module: (m, m)) for name, module in plain.items()}
    if on_gpu and not args.no_compile:
        compiled = torch.compile(fast._encode, dynamic=False)
        variants["ours fast compiled + CUDA graphs"] = lambda x: (CUDAGraphed(compiled),) * 2

    x1, xb = images[:1].to(device), images[:batch].to(device)
    rows = []
    with torch.no_grad():
        reference = ours(xb).float()
        for name, make in variants.items():
            began = time.perf_counter()
            try:
                run1, runb = make(xb)
                diff = (runb(xb).float() - reference).abs().max().item()
            except Exception as exc:  # e.g. no working compiler for torch.compile: report and go on
                print(f"{name}: failed ({type(exc).__name__}: {str(exc)[:300]})", flush=True)
                continue
            row = dict(variant=name, max_abs_diff_vs_fp32=diff)
            if on_gpu:
                row["batch1_ms"] = statistics.median(time_cuda(run1, x1, iters=50, warmup=10))
                row["batch_img_per_s"] = (
                    batch * 1000 / statistics.median(time_cuda(runb, xb, iters=20, warmup=3))
                )
            else:
                row["cpu_s_per_image_batch1"] = time_cpu(run1, x1, iters=5)
                row[f"cpu_s_per_image_batch{batch}"] = time_cpu(runb, xb, iters=2) / batch
            row["wall_s"] = time.perf_counter() - began
            rows.append(row)
            print(row, flush=True)

    device_name = torch.cuda.get_device_name(device) if on_gpu else f"CPU, {torch.get_num_threads()} threads"
    print(
        f"\n{device_name}, torch {torch.__version__}, weights: "
        f"{args.checkpoint or 'random (calibrated BN)'}; max |W+ offset| {reference.abs().max():.3f}; "
        f"max|dW+| = max abs diff from our fp32 W+ on {batch} images"
    )
    if on_gpu:
        print(f"{'variant':36s} {'batch-1 ms':>10s} {f'batch-{batch} img/s':>15s} {'max|dW+|':>9s}")
        for r in rows:
            print(
                f"{r['variant']:36s} {r['batch1_ms']:10.2f} {r['batch_img_per_s']:15.0f} "
                f"{r['max_abs_diff_vs_fp32']:9.2e}"
            )
        accurate = [r for r in rows if r["max_abs_diff_vs_fp32"] <= 1e-2]
        if accurate:
            print(
                "goals (W+ within 1e-2): batch-1 <= 3 ms -> best "
                f"{min(r['batch1_ms'] for r in accurate):.2f} ms; batch-{batch} >= 2000 img/s -> best "
                f"{max(r['batch_img_per_s'] for r in accurate):.0f} img/s"
            )
    if args.json:
        Path(args.json).write_text(
            json.dumps(dict(device=device_name, torch=torch.__version__, rows=rows), indent=2)
        )


if __name__ == "__main__":
    main()
