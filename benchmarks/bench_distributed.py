"""Several GPUs of one host under torchrun: encoder training and batch editing, 1 GPU against N.

    python benchmarks/bench_distributed.py [--gpus 2] [--models DIR]     # a host with 2 or more GPUs
    python benchmarks/bench_distributed.py --tiny                        # check it on a CPU (gloo)

One command line; it starts torchrun itself for each measurement and prints a table at the end
(details as JSON in $OUT, or --out, when set).

Training (full-size networks, random weights: the ffhq512-128 EG3D generator, the IR-SE50 W+
encoder and the IR-SE50 ArcFace identity network; random 256 px images; PREIM3D's recipe of the
first steps: L2 + identity + latent discriminator, generated and real batches alternating, no
multi-view loss, fp32):
  * steps/s on 1 GPU and on N GPUs at the same batch per GPU (--batch, default the official 2), and
    the images/s they give (steps/s x processes x batch): N GPUs at the steps/s of one make N times
    the progress through the data, which is the scaling compared;
  * the first --steps (200) steps' losses of N GPUs with that batch each against one GPU with the
    same global batch (N x --batch), both from the same initial weights; the noise they are judged
    against is the difference between two one-GPU runs that differ only in their seed. Compared: the
    mean loss over windows of 20 steps.

Batch editing (`preim3d edit FOLDER` with a full-size random-weight bundle; --photos variants of
the example photo, resized, turned, mirrored, brightened, as JPEG and PNG; one edit; the default
outputs): photos/s on 1 GPU and on N GPUs, where each process's time goes, and whether the N-GPU
run wrote the same files as the 1-GPU run.

dlib's 68-point landmark model comes from the face-recognition-models package, or from --models
DIR (a folder with shape_predictor_68_face_landmarks.dat[.bz2] and, optionally, the CNN detector
mmod_human_face_detector.dat[.bz2]).
"""

from __future__ import annotations

import argparse
import bz2
import datetime
import filecmp
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from torch.utils.data import Dataset  # noqa: E402

DLIB_FILES = ("shape_predictor_68_face_landmarks.dat", "mmod_human_face_detector.dat")
WINDOW = 20  # steps per window of the loss comparison


def log(text: str) -> None:
    print(f"[{datetime.datetime.now():%H:%M:%S}] {text}", flush=True)


# ------------------------------------------------------------------ training (one torchrun process)


class RandomFaces(Dataset):
    """Seeded random images in [-1, 1] with the frontal camera: the content does not change the work."""

    def __init__(self, size: int, n: int = 4096):
        from preim3d.cameras import camera_vector

        self.size, self.n, self.c = size, n, camera_vector()[0]

    def __len__(self):
        return self.n

    def __getitem__(self, index):
        g = torch.Generator().manual_seed(index)
        return torch.rand(3, self.size, self.size, generator=g) * 2 - 1, self.c


def train_worker(args) -> None:
    """Train for args.steps steps; the first process writes steps/s and the per-step mean losses."""
    from preim3d.networks.encoder import WPlusEncoder
    from preim3d.testing import TINY_ARCFACE_KWARGS, TINY_ENCODER_KWARGS, ffhq512_generator, tiny_generator
    from preim3d.training import make_config
    from preim3d.training.identity import ArcFaceBackbone
    from preim3d.training.trainer import Trainer

    if args.tiny:
        G, resolution = tiny_generator(0), 64
        encoder_kwargs, arcface_kwargs = TINY_ENCODER_KWARGS, TINY_ARCFACE_KWARGS
    else:
        G, resolution = ffhq512_generator(11), 256
        encoder_kwargs, arcface_kwargs = {}, {}
    torch.manual_seed(0)  # the same initial weights in every run
    encoder = WPlusEncoder(**encoder_kwargs)
    arcface = ArcFaceBackbone(**arcface_kwargs).eval()
    config = make_config(
        out=args.folder,
        batch_size=args.batch,
        seed=args.seed,
        device="cpu" if args.tiny else "cuda",
        resolution=resolution,
        lpips_lambda=0.0,
        workers=0 if args.tiny else 4,
        progress=False,
        max_steps=args.steps,
    )
    trainer = Trainer(config, generator=G, encoder=encoder, arcface=arcface, dataset=RandomFaces(resolution))
    cuda = trainer.device.type == "cuda"
    records, start = [], None
    try:
        for step in range(args.steps):
            if step == args.warmup:
                if cuda:
                    torch.cuda.synchronize()
                start = time.perf_counter()
            records.append(trainer.train_step())
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        everything = trainer.processes.gather(records)
    finally:
        trainer.close()
    if everything is not None:
        keys = ("loss", "loss_l2", "loss_id", "loss_adv")
        losses = {
            k: [sum(p[i][k] for p in everything) / len(everything) for i in range(args.steps)] for k in keys
        }
        result = {
            "processes": len(everything),
            "batch_per_process": args.batch,
            "seed": args.seed,
            "steps_per_s": (args.steps - args.warmup) / seconds,
            "images_per_s": (args.steps - args.warmup) / seconds * args.batch * len(everything),
            "losses": losses,
        }
        Path(args.result).write_text(json.dumps(result))


# ------------------------------------------------------------------ the driver


def torchrun(n: int, arguments: list[str], env: dict, what: str) -> subprocess.CompletedProcess:
    log(f"{what}: torchrun --nproc_per_node={n} ...")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}"]
    done = subprocess.run([*command, *arguments], capture_output=True, text=True, env=env, cwd=REPO)
    return done


def checked(done: subprocess.CompletedProcess, what: str) -> subprocess.CompletedProcess:
    if done.returncode != 0:
        sys.exit(f"{what} failed (exit {done.returncode}):\n{done.stdout[-4000:]}\n{done.stderr[-6000:]}")
    return done


def train_run(n, batch, steps, seed, args, env, work) -> dict:
    what = f"training, {n} process(es) x batch {batch}, seed {seed}, {steps} steps"
    result = work / f"train_{n}x{batch}_seed{seed}.json"
    worker = [
        str(Path(__file__).resolve()),
        "--worker",
        "--batch",
        str(batch),
        "--steps",
        str(steps),
        "--warmup",
        str(args.warmup),
        "--seed",
        str(seed),
        "--folder",
        str(work / "run"),
        "--result",
        str(result),
        *(["--tiny"] if args.tiny else []),
    ]
    checked(torchrun(n, worker, env, what), what)
    out = json.loads(result.read_text())
    log(f"{what}: {out['steps_per_s']:.2f} steps/s")
    return out


def window_means(values: list[float]) -> list[float]:
    return [sum(values[i : i + WINDOW]) / len(values[i : i + WINDOW]) for i in range(0, len(values), WINDOW)]


def mean_gap(a: list[float], b: list[float]) -> float:
    pairs = list(zip(window_means(a), window_means(b)))
    return sum(abs(x - y) for x, y in pairs) / len(pairs)


def dlib_shim(models: Path, work: Path) -> Path:
    """A folder to put on PYTHONPATH holding a `face_recognition_models` package with the given dlib files."""
    package = work / "dlib_models" / "face_recognition_models"
    (package / "models").mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text("")
    for name in DLIB_FILES:
        for source in (models / name, models / f"{name}.bz2", models if models.name == name else None):
            if source is None or not source.is_file():
                continue
            target = package / "models" / name
            if source.suffix == ".bz2":
                target.write_bytes(bz2.decompress(source.read_bytes()))
            else:
                target.symlink_to(source.resolve())
            break
    if not (package / "models" / DLIB_FILES[0]).is_file():
        sys.exit(f"--models {models}: no {DLIB_FILES[0]} (or .bz2) there.")
    return package.parent


def make_bundle(folder: Path, tiny: bool) -> None:
    from preim3d.inversion import compute_latent_avg
    from preim3d.networks.encoder import WPlusEncoder
    from preim3d.testing import ffhq512_generator, make_tiny_bundle, tiny_directions
    from preim3d.weights.encoder import save_encoder, save_latent_avg
    from preim3d.weights.generator import save_generator

    if tiny:
        make_tiny_bundle(folder)
        return
    G = ffhq512_generator(11).to("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    encoder = WPlusEncoder().eval()
    with torch.no_grad():  # offsets of about a real encoder's spread (0.5), not the default init's
        spread = encoder(torch.rand(2, 3, 256, 256) * 2 - 1).std()
        encoder.linear.weight.mul_(0.5 / spread)
        encoder.linear.bias.zero_()
    save_generator(G, folder)
    save_encoder(encoder, folder)
    save_latent_avg(compute_latent_avg(G), folder)
    tiny_directions(2).save(folder)


def make_photos(folder: Path, count: int) -> None:
    """`count` distinct one-face photos: the example astronaut resized, turned, mirrored, brightened."""
    from PIL import Image, ImageEnhance

    folder.mkdir(parents=True, exist_ok=True)
    astronaut = Image.open(REPO / "examples" / "astronaut.png").convert("RGB")
    g = torch.Generator().manual_seed(0)
    for i in range(count):
        scale, turn, light = (torch.rand(3, generator=g) * 2 - 1).tolist()
        photo = astronaut.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if i % 2 else astronaut
        side = int(512 * (1.15 + 0.25 * scale))
        photo = photo.resize((side, side), Image.Resampling.BICUBIC).rotate(
            6 * turn, Image.Resampling.BICUBIC
        )
        photo = ImageEnhance.Brightness(photo).enhance(1 + 0.15 * light)
        photo.save(folder / (f"photo_{i:04d}.jpg" if i % 8 else f"photo_{i:04d}.png"), quality=92)


def edit_run(n, args, env, work, bundle, photos) -> dict:
    what = f"editing {args.photos} photos on {n} process(es)"
    out, timings = work / f"edited_{n}", work / f"edit_timings_{n}.json"
    shutil.rmtree(out, ignore_errors=True)
    command = ["-m", "preim3d", "edit", str(photos), "--out", str(out), "--weights", str(bundle)]
    command += ["--edit", "smile=2", "--batch-size", str(args.edit_batch), "--timings", str(timings)]
    command += ["--device", "cpu"] if args.tiny else []
    done = checked(torchrun(n, command, env, what), what)
    processes = json.loads(timings.read_text())["processes"]
    busy = [p for p in processes if p["photos"]]
    photos_done = sum(p["photos"] for p in busy)
    wall = max(p["total"] for p in busy)
    # once running: from each process's first finished photo to its end
    running = max(p["total"] - p["until the first photo"] for p in busy)
    result = {
        "processes": processes,
        "photos": photos_done,
        "seconds": wall,
        "photos_per_s": photos_done / wall,
        "running_photos_per_s": (photos_done - len(busy)) / running,
        "summary": done.stdout.strip().splitlines()[-1],
    }
    log(f"{what}: {result['photos_per_s']:.1f} photos/s ({result['summary']})")
    return result


def differing_files(a: Path, b: Path) -> list[str]:
    """The files of either folder that the other lacks or holds with other bytes."""
    names_a = {str(p.relative_to(a)) for p in a.rglob("*") if p.is_file()}
    names_b = {str(p.relative_to(b)) for p in b.rglob("*") if p.is_file()}
    _, mismatch, errors = filecmp.cmpfiles(a, b, sorted(names_a & names_b), shallow=False)
    return sorted(set(mismatch) | set(errors) | (names_a ^ names_b))


def save(results: dict, details: Path | None) -> None:
    if details:
        details.mkdir(parents=True, exist_ok=True)
        (details / "bench_distributed.json").write_text(json.dumps(results, indent=1))


def print_tables(results: dict, args) -> None:
    n = args.gpus
    print(
        f"\n| measurement (goal: {n} GPUs / 1 GPU >= {0.9 * n:.1f}x) | 1 GPU | {n} GPUs | {n} GPUs / 1 GPU |"
    )
    print("|---|---|---|---|")
    rows = []
    if "training" in results:
        t = results["training"]
        rows.append((f"training steps/s, batch {args.batch} per GPU", t["one"], t["many"], "steps_per_s"))
        rows.append((f"training images/s, batch {args.batch} per GPU", t["one"], t["many"], "images_per_s"))
    if "editing" in results:
        e = results["editing"]
        rows.append((f"editing photos/s, batch {args.edit_batch}", e["one"], e["many"], "photos_per_s"))
        rows.append(
            (
                "editing photos/s once running (after the first photo)",
                e["one"],
                e["many"],
                "running_photos_per_s",
            )
        )
    for label, one, many, key in rows:
        print(f"| {label} | {one[key]:.2f} | {many[key]:.2f} | {many[key] / one[key]:.2f}x |")

    if "training" in results:
        print(f"\nFirst {args.steps} training steps, global batch {n * args.batch}: mean |difference| of the")
        print(f"{WINDOW}-step mean losses against one GPU with the whole batch (seed 0)")
        print(f"| loss | {n} GPUs x {args.batch} | 1 GPU x {n * args.batch}, seed 1 (noise) | ratio |")
        print("|---|---|---|---|")
        for key in ("loss", "loss_l2", "loss_id", "loss_adv"):
            reference = t["same_global"]["losses"][key]
            gap = mean_gap(t["many"]["losses"][key], reference)
            noise = mean_gap(t["other_seed"]["losses"][key], reference)
            print(f"| {key} | {gap:.4g} | {noise:.4g} | {gap / noise if noise else float('nan'):.2f} |")

    if "editing" in results:
        stages = [
            "until the first photo",
            "alignment (workers)",
            "waiting for alignment",
            "inversion + renders",
            "writing (threads)",
            "waiting for writes",
            "total",
        ]
        print("\nEditing, seconds per process (alignment and writing: summed over its workers / threads)")
        print("| run | process | photos | " + " | ".join(stages) + " |")
        print("|---|---|---|" + "---|" * len(stages))
        for label, run in (("1 GPU", e["one"]), (f"{n} GPUs", e["many"])):
            for p in run["processes"]:
                cells = " | ".join(f"{p.get(s, 0):.1f}" for s in stages)
                print(f"| {label} | {p['rank']} | {p['photos']} | {cells} |")
        differing = e["differing_files"]
        same = "yes" if not differing else f"NO, {len(differing)} differ: {', '.join(differing[:8])}"
        print(f"\nThe {n}-GPU run wrote the same files as the 1-GPU run: {same}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny networks on the CPU with gloo (a check)")
    parser.add_argument("--gpus", type=int, default=2, help="processes of the N-GPU runs (default 2)")
    parser.add_argument("--batch", type=int, default=2, help="training images per GPU (default 2)")
    parser.add_argument("--steps", type=int, default=200, help="training steps compared (default 200)")
    parser.add_argument("--speed-steps", type=int, default=50, help="steps of the 1-GPU speed run")
    parser.add_argument("--warmup", type=int, default=10, help="untimed first steps (default 10)")
    parser.add_argument("--photos", type=int, default=768, help="photos edited (default 768)")
    parser.add_argument("--edit-batch", type=int, default=8, help="preim3d edit --batch-size (default 8)")
    parser.add_argument(
        "--models", type=Path, help="folder holding dlib's shape_predictor_68_face_landmarks.dat"
    )
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--skip-editing", action="store_true")
    parser.add_argument("--out", type=Path, help="where the details go (default $OUT)")
    # one torchrun process of a training measurement
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return train_worker(args)

    if args.tiny:
        args.steps, args.speed_steps, args.warmup = min(args.steps, 6), min(args.speed_steps, 4), 1
        args.photos, args.edit_batch = min(args.photos, 6), 2
    elif torch.cuda.device_count() < args.gpus:
        found = torch.cuda.device_count()
        sys.exit(
            f"bench_distributed.py needs {args.gpus} CUDA GPUs (found {found}); --tiny runs it on a CPU."
        )
    started = time.time()
    details = args.out or (Path(os.environ["OUT"]) if os.environ.get("OUT") else None)
    work = Path(tempfile.mkdtemp(prefix="bench_distributed_"))
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1" if args.tiny else os.environ.get("OMP_NUM_THREADS", "4"),
    }
    paths = [str(REPO)]
    if args.models:
        paths.insert(0, str(dlib_shim(args.models, work)))
    env["PYTHONPATH"] = os.pathsep.join([*paths, *filter(None, [os.environ.get("PYTHONPATH")])])
    if not args.skip_editing:  # before the long training runs: the editing runs need dlib's model
        found = subprocess.run(
            [
                sys.executable,
                "-c",
                f"from preim3d.align import dlib_model_path; dlib_model_path({DLIB_FILES[0]!r})",
            ],
            env=env,
            capture_output=True,
            text=True,
        )
        if found.returncode != 0:
            sys.exit(f"dlib's {DLIB_FILES[0]} is not installed: give its folder with --models DIR.")
    n = args.gpus
    results = {"date": str(datetime.date.today()), "torch": torch.__version__, "tiny": args.tiny}
    if torch.cuda.is_available() and not args.tiny:
        results["gpu"] = torch.cuda.get_device_name(0)

    if not args.skip_training:
        one = train_run(1, args.batch, args.speed_steps, 0, args, env, work)
        many = train_run(n, args.batch, args.steps, 0, args, env, work)
        same_global = train_run(1, n * args.batch, args.steps, 0, args, env, work)
        other_seed = train_run(1, n * args.batch, args.steps, 1, args, env, work)
        results["training"] = {"one": one, "many": many, "same_global": same_global, "other_seed": other_seed}
        save(results, details)

    if not args.skip_editing:
        bundle, photos = work / "bundle", work / "photos"
        log("writing a random-weight bundle and the photos")
        make_bundle(bundle, args.tiny)
        make_photos(photos, args.photos)
        one = edit_run(1, args, env, work, bundle, photos)
        many = edit_run(n, args, env, work, bundle, photos)
        differing = differing_files(work / "edited_1", work / f"edited_{n}")
        results["editing"] = {"one": one, "many": many, "differing_files": differing}
        save(results, details)

    command = f"python benchmarks/bench_distributed.py {' '.join(sys.argv[1:])}"
    where = results.get("gpu", "CPU (tiny networks, gloo)")
    print(
        f"\n{results['date']}, {where}, torch {torch.__version__}, `{command}`, {time.time() - started:.0f} s"
    )
    print_tables(results, args)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
