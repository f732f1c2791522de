"""Repeatable batch editing on GPUs: the same files from one process, from two (torchrun) and again.

    python benchmarks/check_determinism.py                 # a host with 2 GPUs (with 1: no 2-process runs)
    python benchmarks/check_determinism.py --tiny          # tiny random weights on the CPU (gloo): a check

`preim3d edit FOLDER` promises the same files whatever the number of processes (preim3d/batch_edit.py).
This runs its driver, `batch_edit.edit_folder`, on --photos synthetic 256 px face crops (the example
astronaut turned, shifted, scaled, mirrored and brightened, each given as already aligned and with a
camera of its own, so that no dlib model is needed) with full-size random weights (the ffhq512-128
generator and the IR-SE50 encoder, as benchmarks/bench_video.py builds them), deterministic=True,
`--edit smile=2`, batches of --batch-size, in each --precision (fp32 is what `preim3d edit` uses):

1. renders: the driver's render call (`Editor.render_each` of 2 x batch-size codes, two batches whose
   copies to the host overlap the next batch) --renders times in one process, the float32 images
   compared bit for bit: how many distinct results, with cuDNN free to choose its algorithms (torch's
   default) and with the deterministic ones the generator asks for;
2. folder runs: 1 process, 2 processes (torchrun, a GPU each), 1 process again, --repeats times;
   every file of every run compared with the first run's: the files that differ and by how much
   (largest difference of a pixel value, pixels that differ; largest difference of a latent);
3. two GPUs in one process: an Editor (fast mode) on cuda:0, then one on cuda:1 after
   torch.cuda.set_device(1), then one on cuda:1 while cuda:0 is current: each should run the
   Triton kernels and its CUDA graphs (no fallback warnings), leave the current device and streams
   as they were, and give the same codes and images.

--unfixed runs part 2 with cuDNN free too (the generator as it was before it asked for
deterministic algorithms). Details go to $OUT/check_determinism.json (or --out).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
ASTRONAUT = REPO / "examples" / "astronaut.png"
EDITS = {"smile": 2.0}


def log(text: str) -> None:
    print(f"[{datetime.datetime.now():%H:%M:%S}] {text}", flush=True)


# ------------------------------------------------------------------ inputs and the editor


def make_crops(folder: Path, count: int, size: int = 256) -> None:
    """`count` face crops of the example astronaut: scaled, shifted, turned, mirrored, brightened."""
    import torch
    from PIL import Image, ImageEnhance

    folder.mkdir(parents=True, exist_ok=True)
    astronaut = Image.open(ASTRONAUT).convert("RGB")  # 512 px, the face around (240, 165)
    g = torch.Generator().manual_seed(0)
    for i in range(count):
        scale, dx, dy, turn, light = (torch.rand(5, generator=g) * 2 - 1).tolist()
        side = 300 * (1 + 0.12 * scale)
        cx, cy = 240 + 15 * dx, 165 + 15 * dy
        photo = astronaut.rotate(8 * turn, Image.Resampling.BICUBIC, center=(cx, cy))
        box = (round(cx - side / 2), round(cy - side / 2), round(cx + side / 2), round(cy + side / 2))
        crop = photo.crop(box).resize((size, size), Image.Resampling.LANCZOS)
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if i % 2 else crop
        ImageEnhance.Brightness(crop).enhance(1 + 0.15 * light).save(folder / f"photo_{i:04d}.png")


def camera_of(path: Path) -> tuple[float, float]:
    """A (yaw, pitch) per photo, as dlib's pose estimate would give one: fixed by its number."""
    i = int(path.stem.split("_")[-1])
    return 0.45 * math.sin(1.7 * i), 0.15 * math.cos(2.3 * i)


@dataclass
class GivenCrop:
    """An aligned face without dlib: the crop itself and its camera."""

    image: object  # PIL image
    pose: tuple[float, float]

    def estimate_pose(self) -> tuple[float, float]:
        return self.pose


class GivenCrops:
    """Stands in for `batch.AlignmentPool` in `edit_folder`: each photo is a crop already."""

    def __init__(self, *args, **kwargs):
        self.waited = 0.0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def run(self, photos):
        from PIL import Image

        from preim3d.batch import Aligned

        for path in photos:
            yield path, Aligned(GivenCrop(Image.open(path).convert("RGB"), camera_of(path)), None, 0.0)


def build_editor(args, device, precision: str):
    """The editor every run uses: tiny bundle weights, or seeded full-size random ones."""
    import torch

    import preim3d
    from preim3d import testing
    from preim3d.networks.encoder import WPlusEncoder

    if args.tiny:
        return preim3d.Editor.from_bundle(args.bundle, device=device, precision=precision, deterministic=True)
    latent_avg = 0.5 * torch.randn(1, 14, 512, generator=torch.Generator().manual_seed(13))
    return preim3d.Editor(
        testing.ffhq512_generator(11),
        testing.fill_random_encoder(WPlusEncoder(), 12).eval(),
        latent_avg,
        testing.tiny_directions(),
        device=device,
        precision=precision,
        deterministic=True,
    )


@contextlib.contextmanager
def cudnn_free():
    """The generator as before it asked for cuDNN's deterministic algorithms (torch's default)."""
    import torch

    from preim3d.networks import triplane

    fixed, flag = triplane.deterministic_convolutions, torch.backends.cudnn.deterministic
    triplane.deterministic_convolutions = contextlib.nullcontext
    torch.backends.cudnn.deterministic = False
    try:
        yield
    finally:
        triplane.deterministic_convolutions, torch.backends.cudnn.deterministic = fixed, flag


def crops_and_cameras(folder: Path, count: int):
    from PIL import Image

    paths = sorted(folder.glob("*.png"))[:count]
    return [Image.open(p).convert("RGB") for p in paths], [camera_of(p) for p in paths]


def fused_kernels() -> list:
    """Every FusedKernel of the networks (the fast mode's Triton steps)."""
    import importlib
    import pkgutil

    import preim3d.networks as networks
    from preim3d.networks.fused import FusedKernel

    found = []
    for info in pkgutil.iter_modules(networks.__path__):
        if info.name == "fast_kernels":  # the raw launchers (imports Triton)
            continue
        module = importlib.import_module(f"preim3d.networks.{info.name}")
        found += [k for k in vars(module).values() if isinstance(k, FusedKernel) and k not in found]
    return found


# ------------------------------------------------------------------ workers (subprocesses)


def edit_worker(args) -> None:
    """One process of a folder run: `edit_folder` on the crops; the first process writes the result."""
    import torch

    from preim3d import batch_edit
    from preim3d.batch_edit import EditOptions, edit_folder
    from preim3d.distributed import start_processes

    processes = start_processes("cpu" if args.tiny else None)
    caught = []
    try:
        with (
            warnings.catch_warnings(record=True) as caught,
            cudnn_free() if args.unfixed else contextlib.nullcontext(),
        ):
            warnings.simplefilter("always")
            editor = build_editor(args, processes.device, args.precision)
            batch_edit.AlignmentPool = GivenCrops
            status, timings = edit_folder(
                editor,
                args.crops,
                args.folder,
                EditOptions(edits=dict(EDITS)),
                processes=processes,
                batch_size=args.batch_size,
                say=lambda line: None,
            )
        messages = sorted({f"{w.category.__name__}: {w.message}" for w in caught})
        everyone = processes.gather(messages)
    finally:
        processes.close()
    if everyone is not None:
        result = {
            "status": status,
            "processes": timings.get("processes", []),
            "warnings": sorted({m for part in everyone for m in part}),
            "cudnn_deterministic_at_end": torch.backends.cudnn.deterministic,
        }
        Path(args.result).write_text(json.dumps(result))


def renders_worker(args) -> None:
    """The driver's render call, repeated: distinct float results with cuDNN free and deterministic."""
    import torch

    from preim3d.cameras import camera_vector

    device = torch.device("cpu" if args.tiny else "cuda")
    editor = build_editor(args, device, args.precision)
    crops, cameras = crops_and_cameras(args.crops, args.batch_size)
    ws = editor.invert(crops)
    codes = torch.cat([ws, editor.edit(ws, EDITS)])
    yaws, pitches = zip(*cameras)
    c = camera_vector(torch.tensor(yaws * 2), torch.tensor(pitches * 2))

    def render() -> torch.Tensor:  # Editor.render_each's call, on float32 images
        with torch.inference_mode():
            out = editor.renderer.render_codes(codes, c, deterministic=True, outputs=("image",))
            return torch.cat([part["image"] for part in out])

    result = {}
    for mode in ("cuDNN free", "deterministic"):
        with cudnn_free() if mode == "cuDNN free" else contextlib.nullcontext():
            render()  # warm-up: cuDNN picks its algorithms, Triton compiles
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            images = [render() for _ in range(args.renders)]
            seconds = (time.perf_counter() - start) / args.renders
        first = images[0]
        digests = {hashlib.sha256(x.numpy().tobytes()).hexdigest() for x in images}
        differing = [x for x in images[1:] if not torch.equal(x, first)]
        as_uint8 = [((x * 127.5 + 128).clamp(0, 255).to(torch.uint8)) for x in images]
        flips = [int((u != as_uint8[0]).any(dim=1).sum()) for u in as_uint8[1:]]
        result[mode] = {
            "renders": len(images),
            "distinct results": len(digests),
            "renders differing from the first": len(differing),
            "largest float difference": max((float((x - first).abs().max()) for x in differing), default=0.0),
            "images with uint8 pixels differing": sum(
                int((u != as_uint8[0]).flatten(1).any(1).sum()) for u in as_uint8[1:]
            ),
            "uint8 pixels differing (all renders)": sum(flips),
            "seconds per call": seconds,
        }
    Path(args.result).write_text(json.dumps(result))


def fallback(message) -> bool:
    """A warning that the fast mode fell back to slower code (a kernel, a graph or float16 off)."""
    return any(text in str(message) for text in ("fused", "CUDA-graph", "float16 overflowed"))


def two_gpus_worker(args) -> None:
    """Editors on cuda:0, then cuda:1 (set_device(1)), then cuda:1 with cuda:0 current, in one process."""
    import numpy as np
    import torch

    kernels = fused_kernels()
    crops, cameras = crops_and_cameras(args.crops, args.batch_size)
    yaws, pitches = zip(*cameras)
    rows, reference = [], None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for label, index, current in (
            ("cuda:0", 0, 0),
            ("cuda:1 after set_device(1)", 1, 1),
            ("cuda:1, cuda:0 current", 1, 0),
        ):
            torch.cuda.set_device(current)
            before = len(caught)
            editor = build_editor(args, torch.device("cuda", index), "fast")
            ws = editor.invert(crops)
            edited = editor.edit(ws, EDITS)
            images = editor.render_each(torch.cat([ws, edited]), yaws * 2, pitches * 2)  # the fused kernels
            grid = editor.grid(ws[:1])  # the renderer's CUDA graphs (backbone and views)
            torch.cuda.synchronize(index)
            graphs = [*editor.encoder._graphed._graphs.values()]
            graphs += [g for graphed in editor.renderer._graphs.values() for g in graphed._graphs.values()]
            outputs = {
                "ws": ws.numpy(),
                "images": np.stack([np.asarray(im) for im in images]),
                "grid": np.asarray(grid),
            }
            if reference is None:
                reference = outputs
            streams_as_before = all(
                torch.cuda.current_stream(d) == torch.cuda.default_stream(d) for d in (0, 1)
            )
            rows.append(
                {
                    "editor": label,
                    "current device after": torch.cuda.current_device(),
                    "default streams current after": streams_as_before,
                    "Triton kernels passing their check": sum(
                        k._ok.get(f"cuda:{index}") is True for k in kernels
                    ),
                    "kernels checked": sum(f"cuda:{index}" in k._ok for k in kernels),
                    "kernels": len(kernels),
                    "graphs captured": sum(g is not None for g in graphs),
                    "graphs failed": sum(g is None for g in graphs),
                    "warnings": [f"{w.category.__name__}: {w.message}" for w in caught[before:]],
                    "fallback warnings": [str(w.message) for w in caught[before:] if fallback(w.message)],
                    "same as cuda:0": {k: bool(np.array_equal(v, reference[k])) for k, v in outputs.items()},
                }
            )
            del editor
            torch.cuda.empty_cache()
    Path(args.result).write_text(json.dumps(rows))


# ------------------------------------------------------------------ the driver


def run_command(command: list[str], env: dict, what: str) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO)
    if done.returncode != 0:
        sys.exit(f"{what} failed (exit {done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}")
    return time.perf_counter() - start


def worker_command(kind: str, args, precision: str, result: Path, **extra) -> list[str]:
    command = [str(Path(__file__).resolve()), "--worker", kind, "--precision", precision]
    command += ["--crops", str(args.crops), "--result", str(result), "--batch-size", str(args.batch_size)]
    command += ["--renders", str(args.renders)]
    if args.tiny:
        command += ["--tiny", "--bundle", str(args.bundle)]
    for key, value in extra.items():
        command += [f"--{key}", str(value)] if value is not True else [f"--{key}"]
    return command


def folder_run(n: int, precision: str, args, env, work: Path, label: str) -> dict:
    folder, result = work / f"edited_{label}", work / f"result_{label}.json"
    shutil.rmtree(folder, ignore_errors=True)
    extra = {"folder": folder, **({"unfixed": True} if args.unfixed else {})}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}"]
    what = f"{precision}, {label}: {args.photos} photos on {n} process(es)"
    seconds = run_command([*torchrun, *worker_command("edit", args, precision, result, **extra)], env, what)
    out = json.loads(result.read_text())
    out.update(folder=str(folder), processes_count=n, seconds=seconds, label=label)
    log(f"{what}: {seconds:.1f} s, exit status {out['status']}")
    return out


def compare_folders(a: Path, b: Path) -> list[dict]:
    """Every file that differs between two output folders, with how much."""
    import numpy as np
    from PIL import Image

    names_a = {p.relative_to(a).as_posix() for p in a.rglob("*") if p.is_file()}
    names_b = {p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file()}
    found = [{"file": n, "problem": "only in one run"} for n in sorted(names_a ^ names_b)]
    for name in sorted(names_a & names_b):
        x, y = (a / name).read_bytes(), (b / name).read_bytes()
        if x == y:
            continue
        entry = {"file": name}
        if name.endswith(".png"):
            u = np.asarray(Image.open(a / name)).astype(np.int16)
            v = np.asarray(Image.open(b / name)).astype(np.int16)
            if u.shape != v.shape:
                entry["problem"] = f"shapes {u.shape} and {v.shape}"
            else:
                diff = np.abs(u - v).reshape(u.shape[0], u.shape[1], -1).max(-1)
                entry.update(max_pixel_difference=int(diff.max()), pixels=int((diff > 0).sum()))
        elif name.endswith(".npz"):
            u, v = np.load(a / name)["latents"], np.load(b / name)["latents"]
            entry["max_latent_difference"] = float(np.abs(u - v).max())
        found.append(entry)
    return found


def describe(entry: dict) -> str:
    if "problem" in entry:
        return f"{entry['file']} ({entry['problem']})"
    if "pixels" in entry:
        return f"{entry['file']} (max {entry['max_pixel_difference']}, {entry['pixels']} px)"
    if "max_latent_difference" in entry:
        return f"{entry['file']} (max {entry['max_latent_difference']:.3g})"
    return entry["file"]


def print_tables(results: dict, args) -> None:
    for precision, part in results["precisions"].items():
        renders = part.get("renders")
        if renders:
            print(
                f"\n{precision}: the driver's render call ({2 * args.batch_size} codes), "
                "repeated in one process"
            )
            print(
                "| cuDNN | renders | distinct float results | images with uint8 pixels differing | "
                "uint8 pixels differing | largest float difference | s per call |"
            )
            print("|---|---|---|---|---|---|---|")
            for mode, r in renders.items():
                print(
                    f"| {mode} | {r['renders']} | {r['distinct results']} | "
                    f"{r['images with uint8 pixels differing']} | "
                    f"{r['uint8 pixels differing (all renders)']} | "
                    f"{r['largest float difference']:.3g} | {r['seconds per call']:.3f} |"
                )
        runs = part.get("runs", [])
        if runs:
            cudnn = "free (--unfixed)" if args.unfixed else "deterministic"
            print(
                f"\n{precision}: edit_folder on {args.photos} photos, batch {args.batch_size}, "
                f"cuDNN {cudnn}; every run against the first"
            )
            print("| run | processes | seconds | exit | files | files differing | the worst ones |")
            print("|---|---|---|---|---|---|---|")
            for run in runs:
                differing = run.get("differing", [])
                worst = sorted(
                    differing, key=lambda e: (-e.get("max_pixel_difference", 0), -e.get("pixels", 0))
                )
                cells = ", ".join(describe(e) for e in worst[:3]) or "-"
                count = len(differing) if "differing" in run else "reference"
                print(
                    f"| {run['label']} | {run['processes_count']} | {run['seconds']:.1f} | {run['status']} | "
                    f"{run.get('files', '-')} | {count} | {cells} |"
                )
            warned = sorted({w for run in runs for w in run["warnings"]})
            if warned:
                print("warnings in these runs: " + "; ".join(w[:200] for w in warned[:5]))
    gpus = results.get("two_gpus")
    print("\nTwo GPUs in one process (fast mode):")
    if not isinstance(gpus, list):
        print(gpus or "skipped")
        return
    print(
        "| editor | Triton kernels passing | graphs captured / failed | current device after | "
        "default streams after | fallback warnings | same codes / images / grid as cuda:0 |"
    )
    print("|---|---|---|---|---|---|---|")
    for row in gpus:
        same = "/".join("yes" if row["same as cuda:0"][k] else "NO" for k in ("ws", "images", "grid"))
        print(
            f"| {row['editor']} | {row['Triton kernels passing their check']} of {row['kernels checked']} "
            f"checked ({row['kernels']} kernels) | "
            f"{row['graphs captured']} / {row['graphs failed']} | {row['current device after']} | "
            f"{'yes' if row['default streams current after'] else 'NO'} | "
            f"{len(row['fallback warnings'])} | {same} |"
        )
    for row in gpus:
        for w in row["fallback warnings"][:3]:
            print(f"  {row['editor']}: {w[:300]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny random weights on the CPU (gloo): a check")
    parser.add_argument("--photos", type=int, help="photos of each folder run (default 256, tiny 12)")
    parser.add_argument("--batch-size", type=int, help="edit_folder's batch size (default 8, tiny 4)")
    parser.add_argument("--repeats", type=int, default=2, help="rounds of 1, 2 and 1 processes (default 2)")
    parser.add_argument(
        "--renders", type=int, help="repeats of the render call in part 1 (default 12, tiny 3)"
    )
    parser.add_argument("--precision", default="fp32,fast", help="comma-separated: fp32, fast (default both)")
    parser.add_argument("--unfixed", action="store_true", help="part 2 with cuDNN free to pick any algorithm")
    parser.add_argument("--out", type=Path, help="where the details go (default $OUT)")
    # a worker process
    parser.add_argument("--worker", choices=("edit", "renders", "two-gpus"), help=argparse.SUPPRESS)
    parser.add_argument("--crops", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--bundle", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.photos = args.photos or (12 if args.tiny else 256)
    args.batch_size = args.batch_size or (4 if args.tiny else 8)
    args.renders = args.renders or (3 if args.tiny else 12)
    if args.worker:
        worker = {"edit": edit_worker, "renders": renders_worker, "two-gpus": two_gpus_worker}[args.worker]
        return worker(args)

    import torch

    precisions = [p.strip() for p in args.precision.split(",") if p.strip()]
    if not precisions or set(precisions) - {"fp32", "fast"}:
        sys.exit(f"--precision: fp32 and/or fast, got {args.precision!r}")
    gpus = 0 if args.tiny else torch.cuda.device_count()
    if not args.tiny and gpus == 0:
        sys.exit("check_determinism.py needs a CUDA GPU; --tiny runs it on a CPU.")
    started = time.time()
    details = args.out or (Path(os.environ["OUT"]) if os.environ.get("OUT") else None)
    work = Path(tempfile.mkdtemp(prefix="check_determinism_"))
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        # CPU-side floats (the edits) depend on the number of threads: the same in every run
        "OMP_NUM_THREADS": "1" if args.tiny else os.environ.get("OMP_NUM_THREADS", "4"),
        "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]),
    }
    args.crops = work / "crops"
    make_crops(args.crops, args.photos)
    if args.tiny:
        from preim3d.testing import make_tiny_bundle

        args.bundle = make_tiny_bundle(work / "bundle")
    results = {
        "date": str(datetime.date.today()),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if gpus else "CPU (tiny weights, gloo)",
        "gpus": gpus,
        "photos": args.photos,
        "batch_size": args.batch_size,
        "unfixed": args.unfixed,
        "precisions": {},
    }

    def save() -> None:
        if details:
            details.mkdir(parents=True, exist_ok=True)
            (details / "check_determinism.json").write_text(json.dumps(results, indent=1))

    counts = [1, 2, 1] if (args.tiny or gpus >= 2) else [1, 1]
    try:
        for precision in precisions:
            part = results["precisions"].setdefault(precision, {})
            result = work / f"renders_{precision}.json"
            what = f"{precision}: the render call x {args.renders}"
            run_command([sys.executable, *worker_command("renders", args, precision, result)], env, what)
            part["renders"] = json.loads(result.read_text())
            log(
                f"{what}: "
                + ", ".join(f"{m}: {r['distinct results']} distinct" for m, r in part["renders"].items())
            )
            save()
            part["runs"] = []
            for round_ in range(args.repeats):
                for k, n in enumerate(counts):
                    label = f"{precision}-r{round_ + 1}-{k + 1}"
                    run = folder_run(n, precision, args, env, work, label)
                    folder = Path(run["folder"])
                    run["files"] = sum(1 for p in folder.rglob("*") if p.is_file())
                    if part["runs"]:
                        reference = Path(part["runs"][0]["folder"])
                        run["differing"] = compare_folders(reference, folder)
                        shutil.rmtree(folder, ignore_errors=True)
                        log(f"  {len(run['differing'])} file(s) differ from the first run")
                    part["runs"].append(run)
                    save()
            shutil.rmtree(part["runs"][0]["folder"], ignore_errors=True)
        if gpus >= 2:
            result = work / "two_gpus.json"
            run_command(
                [sys.executable, *worker_command("two-gpus", args, "fast", result)],
                env,
                "two GPUs, one process",
            )
            results["two_gpus"] = json.loads(result.read_text())
        else:
            results["two_gpus"] = "skipped: " + ("the CPU check" if args.tiny else "one GPU")
        save()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    command = f"python benchmarks/check_determinism.py {' '.join(sys.argv[1:])}".strip()
    print(
        f"\n{results['date']}, {results['gpu']} x {max(gpus, 1)}, torch {torch.__version__}, `{command}`, "
        f"{time.time() - started:.0f} s"
    )
    print_tables(results, args)


if __name__ == "__main__":
    main()
