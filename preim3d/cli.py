"""The `preim3d` command line: one sub-command per task, each a thin layer over the public API.

Every sub-command has an `_add_<name>(parser)` that declares its arguments and a `_run_<name>(args)`
that does the work; both are registered in `_COMMANDS`. Heavy imports (torch, PIL) happen inside
the run functions, so `preim3d --help` answers at once.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from pathlib import Path

from . import __version__
from .errors import InvalidValueError, Preim3DError, Preim3DWarning, WeightsError
from .validation import (
    check_angles,
    check_fps,
    check_frames,
    check_mesh_resolution,
    check_mesh_threshold,
    check_refine_steps,
    check_strength,
    face_index_from_number,
)


def _checked(check):
    """An argparse `type=` from a `preim3d.validation` check: a bad value is a usage error, same message."""

    def convert(text: str):
        try:
            return check(text)
        except InvalidValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc

    convert.__name__ = check.__name__  # argparse names the type in some messages
    return convert


# ------------------------------------------------------------------ fit-direction


def _add_fit_direction(parser: argparse.ArgumentParser) -> None:
    source = parser.add_argument_group("training codes (one of)")
    source.add_argument(
        "--latents",
        type=Path,
        metavar="FILE",
        help=".npz or .safetensors with 'latents' [N,14,512] or [N,7168] and one 1-D array "
        "of N labels (0/1 or -1/1, NaN = unknown) per attribute, named after it "
        "(an array called 'labels' takes its name from --name)",
    )
    source.add_argument(
        "--photos",
        type=Path,
        metavar="FOLDER",
        help="folder of photos, labelled by --labels and encoded with --encoder",
    )
    parser.add_argument(
        "--labels",
        type=Path,
        metavar="CSV",
        help="with --photos: CSV with a file-name column and one 0/1 or -1/1 column per attribute",
    )
    parser.add_argument(
        "--encoder", metavar="BUNDLE", help="with --photos: a preim3d bundle holding the encoder"
    )
    parser.add_argument("--device", default="cpu", help="with --photos: device for the encoder (default cpu)")
    parser.add_argument(
        "--save-latents",
        type=Path,
        metavar="FILE.npz",
        help="with --photos: also save the codes and labels, to refit later with --latents",
    )
    parser.add_argument("--name", help="attribute name for an array called 'labels'")
    parser.add_argument("--attributes", help="comma-separated attributes to fit (default: all in the file)")
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="FOLDER",
        help="bundle folder to write the directions to (existing directions are kept, same names replaced)",
    )
    parser.add_argument(
        "--method",
        choices=("logistic", "svm"),
        default="logistic",
        help="logistic regression or linear L2-SVM (default logistic)",
    )
    parser.add_argument("--l2", type=float, default=1e-2, help="ridge penalty (default 0.01)")
    parser.add_argument(
        "--test-fraction",
        type=float,
        default=0.2,
        help="share of codes held out to measure accuracy (default 0.2)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the held-out split (default 0)")


def _run_fit_direction(args) -> int:
    from .editing import DirectionBank, fit_direction, fit_directions_from_photos

    if (args.latents is None) == (args.photos is None):
        raise Preim3DError("Give either --latents FILE or --photos FOLDER (with --labels and --encoder).")
    fit_kwargs = dict(method=args.method, l2=args.l2, test_fraction=args.test_fraction, seed=args.seed)
    wanted = [a.strip() for a in args.attributes.split(",")] if args.attributes else None
    try:
        if args.latents is not None:
            latents, table = _read_latents_file(args.latents, args.name)
            for name in wanted or ():
                if name not in table:
                    raise Preim3DError(f"{args.latents} has no labels {name!r}; it has: {', '.join(table)}.")
            results = {
                name: fit_direction(latents, table[name], name=name, **fit_kwargs)
                for name in (wanted or table)
            }
        else:
            if args.labels is None or args.encoder is None:
                raise Preim3DError("--photos needs --labels CSV and --encoder BUNDLE.")
            encode_fn = _bundle_encode_fn(args.encoder, args.device)
            fit = fit_directions_from_photos(
                args.photos, args.labels, encode_fn, attributes=wanted, **fit_kwargs
            )
            for file, reason in fit.skipped.items():
                print(f"skipped {file}: {reason}", file=sys.stderr)
            if args.save_latents:
                _save_latents_file(args.save_latents, fit)
            results = fit.results
    except ValueError as exc:  # bad labels or data: say so without a traceback
        raise Preim3DError(str(exc)) from exc

    bank = DirectionBank.from_bundle(args.out) if _has_directions(args.out) else None
    fitted = {
        **(bank.provenance.get("fitted", {}) if bank else {}),
        **{n: r.summary() for n, r in results.items()},
    }
    new = {name: r.direction for name, r in results.items()}
    bank = bank.with_directions(new, {"fitted": fitted}) if bank else DirectionBank(new, {"fitted": fitted})
    bank.save(args.out)

    print(
        f"{'attribute':<24} {'held-out acc':>12} {'balanced':>9} {'train acc':>9} {'n train':>8} "
        f"{'n test':>7} {'pos/neg':>11}"
    )
    for name, r in results.items():
        acc = "-" if r.accuracy is None else f"{r.accuracy:.3f}"
        bal = "-" if r.balanced_accuracy is None else f"{r.balanced_accuracy:.3f}"
        print(
            f"{name:<24} {acc:>12} {bal:>9} {r.train_accuracy:>9.3f} {r.n_train:>8} {r.n_test:>7} "
            f"{f'{r.n_positive}/{r.n_negative}':>11}"
        )
        if r.balanced_accuracy is not None and r.balanced_accuracy < 0.6:
            print(
                f"warning: {name} is barely better than chance on held-out codes; its direction "
                f"is unlikely to edit anything.",
                file=sys.stderr,
            )
    print(f"wrote {len(results)} direction(s) to {args.out} ({len(bank)} in the bank)")
    return 0


def _has_directions(folder: Path) -> bool:
    from .weights.bundle import is_bundle, read_bundle_config

    return is_bundle(folder) and "directions" in read_bundle_config(folder)


def _read_latents_file(path: Path, name: str | None):
    """(latents, {attribute: labels}) from an .npz or .safetensors file; no unpickling."""
    import numpy as np
    import torch

    from .pipeline import read_arrays

    arrays, _ = read_arrays(path)
    if "latents" not in arrays:
        raise Preim3DError(f"{path} has no array 'latents' (it has: {', '.join(arrays)}).")
    latents = torch.as_tensor(np.asarray(arrays.pop("latents")))
    table = {}
    for key, value in arrays.items():
        value = np.asarray(value)
        if value.ndim == 1 and len(value) == len(latents) and value.dtype.kind in "biuf":
            table[key] = torch.as_tensor(value.astype(np.float64))
    if "labels" in table:
        if not name:
            raise Preim3DError(f"{path} has an array called 'labels': give the attribute's name with --name.")
        table[name] = table.pop("labels")
    if not table:
        raise Preim3DError(
            f"{path} has no label arrays: add one 1-D array of {len(latents)} labels per attribute."
        )
    return latents, table


def _save_latents_file(path: Path, fit) -> None:
    import numpy as np

    arrays = {"latents": fit.latents.numpy(), "files": np.array(fit.files)}
    arrays.update({name: labels.numpy() for name, labels in fit.labels.items()})
    np.savez(path, **arrays)


def _bundle_encode_fn(bundle, device: str):
    """photos -> W+ codes with a bundle's encoder: align each face (dlib), then ws = E(x) + latent_avg.

    A photo without a usable face raises an InputImageError, which `fit_directions_from_photos`
    turns into a skipped photo.
    """
    from .weights.bundle import read_bundle_config

    config = read_bundle_config(bundle)
    missing = [name for name in ("encoder", "latent_avg") if name not in config]
    if missing:
        present = sorted(k for k, v in config.items() if isinstance(v, dict))
        raise WeightsError(
            f"--photos needs an encoder bundle, and {bundle} has no {' or '.join(missing)} "
            f"(it holds: {', '.join(present) or 'nothing'})."
        )
    from .align import align_face
    from .inversion import invert
    from .weights.encoder import load_encoder, load_latent_avg

    encoder = load_encoder(bundle, device=device)
    latent_avg = load_latent_avg(bundle, device=device)

    def encode(images):
        return invert(encoder, latent_avg, [align_face(image) for image in images]).cpu()

    return encode


# ------------------------------------------------------------------ directions-heatmap


def _add_directions_heatmap(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "source", type=Path, help="folder of official <Attribute>.pt direction files, or a preim3d bundle"
    )
    parser.add_argument("--out", type=Path, required=True, metavar="PNG", help="where to write the picture")
    parser.add_argument("--names", help="comma-separated directions or aliases to show (default: all)")


def _run_directions_heatmap(args) -> int:
    from .editing import DirectionBank, similarity_heatmap

    bank = DirectionBank.load(args.source)
    names = [n.strip() for n in args.names.split(",")] if args.names else list(bank.names)
    image = similarity_heatmap(bank, names)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    image.save(args.out)
    sim = bank.similarity(names)
    pairs = sorted(
        (
            (abs(float(sim[i, j])), names[i], names[j], float(sim[i, j]))
            for i in range(len(names))
            for j in range(i + 1, len(names))
        ),
        reverse=True,
    )
    print(f"wrote {args.out} ({len(names)} directions)")
    if pairs:
        print("most entangled pairs (cosine):")
        for _, a, b, value in pairs[:5]:
            print(f"  {a} / {b}: {value:+.2f}")
    return 0


# ------------------------------------------------------------------ download


def _add_download(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--generator",
        choices=("preim3d", "ngc", "ngc-rebalanced"),
        default="preim3d",
        help="which copy of the EG3D generator: PREIM3D's (Google Drive; the one its encoder was "
        "trained with, default), or NVIDIA NGC's ffhq512-128 / ffhqrebalanced512-128",
    )
    parser.add_argument(
        "--out",
        type=Path,
        metavar="FOLDER",
        help="bundle folder to write (default: $PREIM3D_HOME/weights, where preim3d looks for "
        "weights by default; PREIM3D_HOME defaults to ~/.cache/preim3d)",
    )
    parser.add_argument(
        "--downloads",
        type=Path,
        metavar="FOLDER",
        help="where the official files go (default: $PREIM3D_HOME/downloads); an interrupted "
        "download resumes from there",
    )
    parser.add_argument(
        "--accept-licences",
        action="store_true",
        help="accept the licences shown without being asked (needed when not run in a terminal)",
    )
    parser.add_argument(
        "--remove-downloads", action="store_true", help="delete the official files once they are converted"
    )
    parser.add_argument(
        "--device", default="cpu", help="device for the latent average computed once (default cpu)"
    )


def _run_download(args) -> int:
    from .weights.resolve import WEIGHTS_ENV, default_downloads_dir, default_weights_dir
    from .weights.sources import licence_notice, official_files

    files = official_files(args.generator)
    out = args.out or default_weights_dir()
    downloads = args.downloads or default_downloads_dir()
    directions = [f for f in files if f.role == "direction"]
    print(f"preim3d download: {len(files)} official files into {downloads}, converted into the bundle {out}:")
    total = sum(f.size for f in directions) / 1e6
    print(
        f"  {'directions':<10} {f'{len(directions)} files, {total:.1f} MB':<34} "
        f"{directions[0].url().rsplit('/', 1)[0]}/"
    )
    for file in files:
        if file.role != "direction":  # NGC and Google Drive publish no sizes: show the lower bound
            print(f"  {file.role:<10} {f'{file.filename}, > {file.min_size / 1e6:.0f} MB':<34} {file.url()}")
    print("Licences:\n" + licence_notice(files))
    if not args.accept_licences and not _confirm("Do you accept these licences? [y/N] "):
        raise Preim3DError(
            "The licences were not accepted, so nothing was downloaded. To accept them, answer yes "
            "in a terminal or pass --accept-licences."
        )
    from .weights.download import download_official

    download_official(
        generator=args.generator,
        out=out,
        downloads=downloads,
        accept_licences=True,
        device=args.device,
        keep_downloads=not args.remove_downloads,
    )
    print(f"done: the bundle is in {out}.")
    if args.out is not None:
        print(
            f"preim3d looks in {default_weights_dir()} by default: set {WEIGHTS_ENV}={out} or pass --weights "
            f"{out}."
        )
    return 0


def _confirm(question: str) -> bool:
    """Ask a yes/no question in a terminal; False when there is nobody to ask."""
    if not sys.stdin.isatty():
        return False
    return input(question).strip().lower() in ("y", "yes")


# ------------------------------------------------------------------ space


def _add_space(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="space_action", metavar="ACTION", required=True)
    build = actions.add_parser(
        "build", help="write a runnable Space folder", description="Write the web demo as a Space folder."
    )
    build.add_argument("folder", type=Path, help="new or empty folder to write")
    build.add_argument(
        "--weights", metavar="REPO", help="Hub model repo id holding a bundle, the weights the Space loads"
    )
    push = actions.add_parser(
        "push",
        help="create the Space on the Hugging Face Hub and upload it",
        description="Upload a weights bundle (optional), create the Space, upload the demo and set its "
        "PREIM3D_WEIGHTS variable. The token comes from HF_TOKEN or `hf auth login`.",
    )
    push.add_argument("repo", metavar="USER/NAME", help="the Space to create or update")
    push.add_argument(
        "--weights-repo", metavar="REPO", help="Hub model repo holding (or to hold) the weights bundle"
    )
    push.add_argument(
        "--bundle", type=Path, metavar="FOLDER", help="a local bundle to upload to --weights-repo first"
    )
    push.add_argument("--private", action="store_true", help="make the Space (and the weights repo) private")


def _run_space(args) -> int:
    from .space import build_space, push_space

    if args.space_action == "build":
        folder = build_space(args.folder, weights=args.weights)
        print(f"wrote the Space into {folder}: try it with `cd {folder} && python app.py`")
        return 0
    url = push_space(args.repo, weights_repo=args.weights_repo, bundle=args.bundle, private=args.private)
    print(f"done: {url}")
    return 0


# ------------------------------------------------------------------ convert


def _add_convert(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--generator",
        type=Path,
        metavar="FILE",
        help="EG3D generator: PREIM3D's eg3d_G_ema.pkl or NGC's ffhq512-128.pkl",
    )
    parser.add_argument(
        "--encoder",
        type=Path,
        metavar="FILE",
        help="PREIM3D's preim3d_ffhq.pt (needs --generator, for the latent average)",
    )
    parser.add_argument(
        "--directions", type=Path, metavar="FOLDER", help="folder of official <Attribute>.pt files"
    )
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="FOLDER",
        help="bundle folder to write (components already there and not given are kept)",
    )
    parser.add_argument("--device", default="cpu", help="device for the latent average (default cpu)")


def _run_convert(args) -> int:
    for flag in ("generator", "encoder", "directions"):
        value = getattr(args, flag)
        if value is not None and not value.exists():
            raise Preim3DError(f"--{flag} {value} does not exist.")
    from .weights.convert import convert_official
    from .weights.info import describe

    convert_official(
        args.out,
        generator=args.generator,
        encoder=args.encoder,
        directions=args.directions,
        device=args.device,
    )
    print(describe(args.out))
    return 0


# ------------------------------------------------------------------ info


def _add_info(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "source",
        nargs="?",
        help="bundle folder, Hugging Face Hub repo id, official file, or folder of official files "
        "(default: the weights preim3d would use)",
    )


def _run_info(args) -> int:
    from .weights.info import describe
    from .weights.resolve import resolve_weights

    print(describe(args.source if args.source is not None else resolve_weights().path))
    return 0


# ------------------------------------------------------------------ edit


def _add_edit(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", type=Path, metavar="PHOTO_OR_FOLDER", help="a photo, or a folder of photos")
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="FOLDER",
        help="output folder (one sub-folder per photo when the input is a folder)",
    )
    parser.add_argument(
        "--edit",
        action="append",
        default=[],
        metavar="NAME=STRENGTH",
        help="an attribute edit, repeatable: smile=2, age=-1, glasses=3, or any of the 39 CelebA "
        "attributes (Wavy_Hair=2); + means more of what the name says",
    )
    parser.add_argument(
        "--precise",
        action="store_true",
        help="precise edit: each attribute's score moves by exactly its strength, the edited "
        "attributes do not move each other",
    )
    parser.add_argument(
        "--hold",
        action="append",
        default=[],
        metavar="NAME",
        help="an attribute to keep as it is (implies --precise), repeatable",
    )
    parser.add_argument(
        "--views",
        choices=("grid", "row"),
        help="also write views.png: 'grid' PREIM3D's 2x2 yaw/pitch grid of the edit, 'row' five "
        "yaws with the reconstruction above the edit",
    )
    parser.add_argument(
        "--video",
        metavar="NAME.mp4",
        help="also write a turntable video: aligned photo | reconstruction | edit",
    )
    parser.add_argument(
        "--frames", type=_checked(check_frames), default=120, help="video frames, 1 to 3600 (default 120)"
    )
    parser.add_argument(
        "--fps", type=_checked(check_fps), default=60, help="video frame rate, 1 to 120 (default 60)"
    )
    parser.add_argument(
        "--mesh", metavar="NAME.glb", help="also write the edited head's mesh (.glb, .ply or .obj)"
    )
    parser.add_argument(
        "--mesh-resolution",
        type=_checked(check_mesh_resolution),
        default=256,
        help="density samples per side of the mesh: 64, 128, 256 (default) or 512",
    )
    parser.add_argument(
        "--mesh-threshold",
        type=_checked(check_mesh_threshold),
        default="auto",
        metavar="SIGMA",
        help="density level of the mesh's surface: a number, or 'auto' (default): the official 10, or "
        "the middle of the density's range where it never reaches 10, with a warning",
    )
    parser.add_argument(
        "--allow-slow",
        action="store_true",
        help="allow a 512 mesh on a CPU (it takes minutes there)",
    )
    parser.add_argument(
        "--paste", action="store_true", help="also write pasted.png: the edit blended into the photo"
    )
    parser.add_argument(
        "--precision",
        choices=("fast", "fp32"),
        default="fast",
        help="fast (default): on a GPU, float16 networks and fused kernels, several times faster, "
        "images within about 70 dB PSNR of fp32; fp32: the reference computation. A CPU computes "
        "in float32 either way",
    )
    parser.add_argument(
        "--refine",
        type=_checked(check_refine_steps),
        default=0,
        metavar="STEPS",
        help="tune the generator to each photo for STEPS steps (0 to 1000; default 0 = off) before "
        "rendering: a more faithful head, every edit still works; seconds on a GPU, several seconds "
        "a step on a CPU; also writes refined.safetensors (Editor.load_refined reads it)",
    )
    parser.add_argument(
        "--pose",
        choices=("photo", "frontal"),
        default="photo",
        help="render from the camera estimated from the photo (default) or from the front",
    )
    parser.add_argument(
        "--face",
        type=_checked(face_index_from_number),
        dest="face_index",
        metavar="N",
        help="which face of a photo with several, numbered from 1 as the web page shows them "
        "(default: the largest face)",
    )
    parser.add_argument(
        "--weights",
        metavar="SOURCE",
        help="bundle folder, Hugging Face Hub repo id or folder of official files (default: "
        "$PREIM3D_WEIGHTS, then the folder `preim3d download` writes)",
    )
    parser.add_argument("--device", help="cuda, mps or cpu (default: the first available, in that order)")
    _add_folder_run_arguments(parser)


def _add_folder_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the commands that work through folders of photos, on one process or under torchrun."""
    runs = parser.add_argument_group(
        "folders of photos (several GPUs: torchrun --nproc_per_node=N -m preim3d COMMAND ...)"
    )
    runs.add_argument(
        "--resume",
        action="store_true",
        help="skip the photos whose outputs an earlier run with the same options completed",
    )
    runs.add_argument(
        "--batch-size", type=int, default=8, help="photos inverted and rendered together (default 8)"
    )
    _add_workers_argument(runs)
    _add_debug_argument(runs)
    runs.add_argument(
        "--timings", type=Path, metavar="FILE.json", help="write the seconds each stage took, per process"
    )


def _add_workers_argument(parser) -> None:
    parser.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="processes aligning photos ahead, per GPU process (default: half the CPU cores of each)",
    )


def _add_debug_argument(parser) -> None:
    parser.add_argument("--debug", action="store_true", help="show the traceback of unexpected errors")


def _check_workers(args) -> None:
    if args.workers is not None and args.workers < 0:
        raise Preim3DError(f"--workers must be 0 or more, got {args.workers}.")


def _run_edit(args) -> int:
    from .weights.resolve import resolve_weights

    edits = dict(_parse_edit(text) for text in args.edit)
    for option, suffixes in (("video", (".mp4",)), ("mesh", (".glb", ".ply", ".obj"))):
        value = getattr(args, option)
        if value is not None and Path(value).suffix.lower() not in suffixes:
            raise Preim3DError(f"--{option} {value}: the file name must end in {' or '.join(suffixes)}.")
    if args.mesh:  # the CPU limit needs the device, which is known without loading a model
        from .pipeline import default_device

        check_mesh_resolution(args.mesh_resolution, args.device or default_device(), args.allow_slow)
    if args.batch_size < 1:
        raise Preim3DError(f"--batch-size must be at least 1, got {args.batch_size}.")
    _check_workers(args)
    from .batch import list_photos

    list_photos(args.input)  # a missing input or an empty folder is reported before any loading
    location = resolve_weights(args.weights)  # before torch loads: a missing-weights message comes at once

    from .batch_edit import EditOptions, edit_folder
    from .distributed import OBJECT_TIMEOUT, start_processes
    from .pipeline import Editor

    processes = start_processes(args.device, timeout=OBJECT_TIMEOUT)
    try:
        # fixed depth samples: the same photo and options give the same files
        editor = Editor.from_pretrained(
            location, device=processes.device, precision=args.precision, deterministic=True
        )
        if edits or args.hold:
            if editor.directions is None:
                raise Preim3DError(
                    f"The weights {location.path} hold no editing directions, so --edit and --hold "
                    "cannot be used; add directions with `preim3d convert --directions`."
                )
            for name in (*edits, *args.hold):
                editor.directions.resolve(name)  # unknown names fail now, with the valid ones listed
        options = EditOptions(
            edits=edits,
            precise=args.precise,
            hold=list(args.hold),
            face=args.face_index,
            pose=args.pose,
            views=args.views,
            video=args.video,
            frames=args.frames,
            fps=args.fps,
            mesh=args.mesh,
            mesh_resolution=args.mesh_resolution,
            mesh_threshold=args.mesh_threshold,
            allow_slow=args.allow_slow,
            paste=args.paste,
            refine=args.refine,
        )
        try:
            status, timings = edit_folder(
                editor,
                args.input,
                args.out,
                options,
                processes=processes,
                resume=args.resume,
                batch_size=args.batch_size,
                workers=args.workers,
                debug=args.debug,
                manifest_options={"weights": str(location.path)},
            )
        except KeyboardInterrupt:
            text = "preim3d edit: interrupted; the files written are complete"
            if args.input.is_dir():
                text += "; the same command with --resume continues where it stopped"
            print(text, file=sys.stderr)
            return 130
        if args.timings is not None and processes.main:
            args.timings.parent.mkdir(parents=True, exist_ok=True)
            args.timings.write_text(json.dumps(timings, indent=1))
        return status
    finally:
        processes.close()


def _parse_edit(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    try:
        strength = float(value)
    except ValueError:
        strength = math.nan
    if not sep or not name.strip() or not math.isfinite(strength):
        raise Preim3DError(f"--edit {text!r}: write NAME=STRENGTH, e.g. smile=2 or age=-1.")
    return name.strip(), check_strength(strength, name.strip())


# ------------------------------------------------------------------ edit-video


def _add_edit_video(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", type=Path, metavar="VIDEO", help="a video (mp4, mov, webm, ...; up to 4K)")
    parser.add_argument("--out", type=Path, required=True, metavar="OUT.mp4", help="the edited video")
    parser.add_argument(
        "--edit",
        action="append",
        default=[],
        metavar="NAME=STRENGTH",
        help="an attribute edit, repeatable, as for `preim3d edit`: smile=2, age=-1, glasses=3; "
        "none reconstructs the face",
    )
    parser.add_argument("--precise", action="store_true", help="precise edit (see `preim3d edit --help`)")
    parser.add_argument(
        "--hold", action="append", default=[], metavar="NAME", help="an attribute to keep (implies --precise)"
    )
    parser.add_argument(
        "--face",
        type=_checked(face_index_from_number),
        dest="face_index",
        metavar="N",
        help="which face to follow, numbered from 1 in the first frame with faces (default: the largest)",
    )
    parser.add_argument(
        "--side-by-side", action="store_true", help="write input | edit side by side, twice as wide"
    )
    parser.add_argument(
        "--no-measure",
        dest="measure",
        action="store_false",
        help="skip finding the landmarks again on the output (the jitter measure)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="processes for face detection and landmarks (default: CPUs - 1)",
    )
    parser.add_argument(
        "--weights",
        metavar="SOURCE",
        help="bundle folder, Hugging Face Hub repo id or folder of official files (default: "
        "$PREIM3D_WEIGHTS, then the folder `preim3d download` writes)",
    )
    parser.add_argument("--device", help="cuda, mps or cpu (default: the first available, in that order)")


def _run_edit_video(args) -> int:
    from .mp4 import VideoReader
    from .weights.resolve import resolve_weights

    if args.out.suffix.lower() != ".mp4":
        raise Preim3DError(f"--out {args.out}: the file name must end in .mp4.")
    _check_workers(args)
    edits = dict(_parse_edit(text) for text in args.edit)
    clip = VideoReader(args.input)  # a bad video fails now, before the models load
    location = resolve_weights(args.weights)

    from .pipeline import Editor

    editor = Editor.from_pretrained(location, device=args.device, precision="fast")
    if (edits or args.hold) and editor.directions is None:
        raise Preim3DError(
            f"The weights {location.path} hold no editing directions, so --edit and --hold cannot be used."
        )
    for name in (*edits, *args.hold):
        editor.directions.resolve(name)  # unknown names fail now, with the valid ones listed
    length = f"about {clip.frame_count} frames" if clip.frame_count else "length unknown"
    print(
        f"{args.input.name}: {clip.size[0]}x{clip.size[1]}, {clip.fps:.2f} fps, {length}"
        f"{', with audio' if clip.has_audio else ''}; editing on {editor.device}",
        file=sys.stderr,
    )

    def progress(done: int, total: int) -> None:
        print(f"\r{done}/{total} frames", end="", file=sys.stderr, flush=True)

    report = editor.edit_video(
        args.input,
        args.out,
        edits,
        precise=args.precise,
        hold=args.hold,
        face_index=args.face_index,
        side_by_side=args.side_by_side,
        measure=args.measure,
        workers=args.workers,
        progress=progress,
    )
    print(file=sys.stderr)
    print(f"{args.out}: {report.summary()}")
    times = ", ".join(f"{stage} {seconds:.1f} s" for stage, seconds in report.stage_seconds.items())
    print(f"  {report.seconds:.1f} s in all; busy time per stage (stages overlap): {times}")
    if report.faces < report.frames:
        print(f"  {report.frames - report.faces} frames without the face were left as they were")
    return 0


# ------------------------------------------------------------------ train


def _add_train(parser: argparse.ArgumentParser) -> None:
    from .training.config import add_config_arguments

    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="JSON or TOML file of training settings; the options below override it",
    )
    add_config_arguments(parser)


def _run_train(args) -> int:
    import logging
    import os

    from .training.config import config_from_args
    from .training.trainer import train

    config = config_from_args(args)
    first = os.environ.get("RANK", "0") == "0"  # under torchrun only the first process talks
    logging.basicConfig(level=logging.INFO if first else logging.WARNING, format="%(asctime)s %(message)s")
    train(config)
    return 0


# ------------------------------------------------------------------ export-encoder


def _add_export_encoder(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=Path, help="training checkpoint (checkpoints/step_*.pt of a run)")
    parser.add_argument(
        "--bundle", type=Path, metavar="FOLDER", help="write the encoder and latent average here"
    )
    parser.add_argument(
        "--generator",
        metavar="SOURCE",
        help="with --bundle: add this generator (bundle or official file) to make it complete",
    )
    parser.add_argument(
        "--official", type=Path, metavar="FILE.pt", help="write PREIM3D's checkpoint layout here"
    )


def _run_export_encoder(args) -> int:
    if args.bundle is None and args.official is None:
        raise Preim3DError("Give --bundle FOLDER and/or --official FILE.pt.")
    from .training.export import encoder_from_checkpoint, export_bundle, export_official

    encoder, latent_avg, step = encoder_from_checkpoint(args.checkpoint)
    if args.bundle is not None:
        from .weights.generator import load_generator

        generator = load_generator(args.generator) if args.generator else None
        provenance = {"checkpoint": args.checkpoint.name, "steps": step}
        export_bundle(encoder, latent_avg, args.bundle, provenance=provenance, generator=generator)
        print(f"wrote the encoder of step {step} to the bundle {args.bundle}")
    if args.official is not None:
        export_official(encoder, latent_avg, args.official)
        print(f"wrote the encoder of step {step} to {args.official}")
    return 0


# ------------------------------------------------------------------ evaluate


def _add_evaluate(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--photos",
        type=Path,
        required=True,
        metavar="FOLDER",
        help="folder of photos (or one photo) to measure the chain on",
    )
    parser.add_argument(
        "--labels",
        type=Path,
        metavar="CSV",
        help="CSV with a file-name column and 0/1 or -1/1 attribute columns: edits then move each "
        "photo away from its labels, and the inverted codes' scores are checked against them",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("evaluation"),
        metavar="FOLDER",
        help="where the report goes: report.md, CSV tables, PNG plots (default ./evaluation)",
    )
    parser.add_argument(
        "--edit",
        action="append",
        default=[],
        metavar="NAME=STRENGTH",
        help="an edit to measure, repeatable (default: smile, age, glasses, beard and female at 3, "
        "those the directions have)",
    )
    parser.add_argument(
        "--hold",
        action="append",
        default=None,
        metavar="NAME",
        help="an attribute the precise edits keep fixed, repeatable (default: every other one)",
    )
    parser.add_argument(
        "--yaws",
        default="-45,-23,0,23,45",
        metavar="DEGREES",
        help="comma-separated yaws of the novel views; write --yaws=-30,0,30 when the first is "
        "negative (default -45,-23,0,23,45)",
    )
    parser.add_argument(
        "--pitches",
        default="-14,0,14",
        metavar="DEGREES",
        help="comma-separated pitches of the novel views, negative = camera above (default -14,0,14)",
    )
    parser.add_argument(
        "--arcface",
        type=Path,
        metavar="FILE",
        help="ArcFace IR-SE50 weights (model_ir_se50.pth) for the identity metric; default: dlib's "
        "face-recognition model, which needs no download",
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed calls per stage for the speed table (default 3)"
    )
    parser.add_argument(
        "--weights",
        metavar="SOURCE",
        help="bundle folder, Hugging Face Hub repo id or folder of official files (default: "
        "$PREIM3D_WEIGHTS, then the folder `preim3d download` writes)",
    )
    parser.add_argument("--device", help="cuda, mps or cpu (default: the first available, in that order)")
    runs = parser.add_argument_group("several GPUs: torchrun --nproc_per_node=N -m preim3d evaluate ...")
    _add_workers_argument(runs)
    _add_debug_argument(runs)


def _degrees(text: str, option: str) -> list[float]:
    try:
        values = [math.radians(float(v)) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or not all(math.isfinite(v) for v in values):
        raise Preim3DError(f"--{option} {text!r}: give comma-separated angles in degrees, e.g. -30,0,30.")
    check_angles(yaw=values) if option == "yaws" else check_angles(pitch=values)
    return values


def _run_evaluate(args) -> int:
    from .weights.resolve import resolve_weights

    if not args.photos.exists():
        raise Preim3DError(f"--photos {args.photos} does not exist: give a folder of photos or a photo.")
    if args.labels is not None and not args.labels.is_file():
        raise Preim3DError(f"--labels {args.labels} does not exist.")
    if args.arcface is not None and not args.arcface.is_file():
        raise Preim3DError(f"--arcface {args.arcface} does not exist.")
    if args.repeats < 1:
        raise Preim3DError(f"--repeats must be at least 1, got {args.repeats}.")
    yaws, pitches = _degrees(args.yaws, "yaws"), _degrees(args.pitches, "pitches")
    _check_workers(args)
    edits = dict(_parse_edit(text) for text in args.edit) or None
    location = resolve_weights(args.weights)

    from .batch import default_workers
    from .distributed import OBJECT_TIMEOUT, start_processes
    from .evaluation import evaluate
    from .pipeline import Editor

    processes = start_processes(args.device, timeout=OBJECT_TIMEOUT)
    try:
        editor = Editor.from_pretrained(location, device=processes.device)
        report = evaluate(
            editor,
            args.photos,
            args.labels,
            args.out if processes.main else None,
            yaws=yaws,
            pitches=pitches,
            edits=edits,
            hold=args.hold,
            arcface=args.arcface,
            weights=location.path,
            repeats=args.repeats,
            log=print,
            processes=processes,
            workers=default_workers(processes.world_size) if args.workers is None else args.workers,
            debug=args.debug,
        )
        processes.barrier()  # torchrun stops the others when one leaves with an error
    finally:
        processes.close()
    if report is None:  # another process writes the report
        return 0
    if not report.photos:
        raise Preim3DError(f"No face could be aligned in any photo of {args.photos}; nothing was measured.")
    width = max(len(row["metric"]) for row in report.summary())
    for row in report.summary():
        value = row["value"]
        shown = "-" if value is None else f"{value:.4g}"
        print(f"{row['section']:<12} {row['metric']:<{width}} {shown}")
    print(f"wrote the report to {args.out / 'report.md'} ({len(report.files)} files)")
    return 0


# ------------------------------------------------------------------ entry point

# name -> (help, add arguments, run)
_COMMANDS = {
    "fit-direction": (
        "fit editing directions from labelled codes or photos",
        _add_fit_direction,
        _run_fit_direction,
    ),
    "directions-heatmap": (
        "picture of how entangled the editing directions are",
        _add_directions_heatmap,
        _run_directions_heatmap,
    ),
    "download": ("fetch the official weights and convert them into a bundle", _add_download, _run_download),
    "convert": ("convert official weight files into a bundle", _add_convert, _run_convert),
    "info": ("what a bundle or an official weights file holds", _add_info, _run_info),
    "space": ("the web demo as a Hugging Face Space: build a folder, or push it", _add_space, _run_space),
    "edit": ("edit the faces of photos: align, invert, edit, render", _add_edit, _run_edit),
    "edit-video": (
        "edit a person's face through a video, pasted back into every frame",
        _add_edit_video,
        _run_edit_video,
    ),
    "train": ("train the encoder against a frozen generator (PREIM3D's recipe)", _add_train, _run_train),
    "export-encoder": (
        "export a trained encoder to a bundle or PREIM3D's checkpoint layout",
        _add_export_encoder,
        _run_export_encoder,
    ),
    "evaluate": (
        "measure inversion, 3D consistency, editing precision and speed on photos",
        _add_evaluate,
        _run_evaluate,
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="preim3d", description="3D face editing from a single photo.")
    parser.add_argument("--version", action="version", version=f"preim3d {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (text, add, run) in _COMMANDS.items():
        sub = commands.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        add(sub)
        sub.set_defaults(run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the `preim3d` command line; returns the exit status (1 on a preim3d error, 2 on bad usage)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        with warnings.catch_warnings():  # restores the usual display afterwards
            warnings.showwarning = _warning_display(args.command, warnings.showwarning)
            return args.run(args)
    except Preim3DError as exc:
        print(f"preim3d {args.command}: error: {exc}", file=sys.stderr)
        return 1


def _warning_display(command: str, usual):
    """Show preim3d's own warnings as one line like its errors; others as Python shows them."""

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, Preim3DWarning):
            print(f"preim3d {command}: warning: {message}", file=sys.stderr)
        else:
            usual(message, category, filename, lineno, file, line)

    return show
