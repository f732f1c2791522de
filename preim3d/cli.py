"""The `preim3d` command line: one sub-command per task, each a thin layer over the public API.

Every sub-command has an `_add_<name>(parser)` that declares its arguments and a `_run_<name>(args)`
that does the work; both are registered in `_COMMANDS`. Heavy imports (torch, PIL) happen inside
the run functions, so `preim3d --help` answers at once.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import __version__
from .errors import Preim3DError, WeightsError

# ------------------------------------------------------------------ fit-direction


def _add_fit_direction(parser: argparse.ArgumentParser) -> None:
    source = parser.add_argument_group("training codes (one of)")
    source.add_argument("--latents", type=Path, metavar="FILE",
                        help=".npz or .safetensors with 'latents' [N,14,512] or [N,7168] and one 1-D array "
                             "of N labels (0/1 or -1/1, NaN = unknown) per attribute, named after it "
                             "(an array called 'labels' takes its name from --name)")
    source.add_argument("--photos", type=Path, metavar="FOLDER",
                        help="folder of photos, labelled by --labels and encoded with --encoder")
    parser.add_argument("--labels", type=Path, metavar="CSV",
                        help="with --photos: CSV with a file-name column and one 0/1 or -1/1 column per attribute")
    parser.add_argument("--encoder", metavar="BUNDLE", help="with --photos: a preim3d bundle holding the encoder")
    parser.add_argument("--device", default="cpu", help="with --photos: device for the encoder (default cpu)")
    parser.add_argument("--save-latents", type=Path, metavar="FILE.npz",
                        help="with --photos: also save the codes and labels, to refit later with --latents")
    parser.add_argument("--name", help="attribute name for an array called 'labels'")
    parser.add_argument("--attributes", help="comma-separated attributes to fit (default: all in the file)")
    parser.add_argument("--out", type=Path, required=True, metavar="FOLDER",
                        help="bundle folder to write the directions to (existing directions are kept, "
                             "same names replaced)")
    parser.add_argument("--method", choices=("logistic", "svm"), default="logistic",
                        help="logistic regression or linear L2-SVM (default logistic)")
    parser.add_argument("--l2", type=float, default=1e-2, help="ridge penalty (default 0.01)")
    parser.add_argument("--test-fraction", type=float, default=0.2,
                        help="share of codes held out to measure accuracy (default 0.2)")
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
            results = {name: fit_direction(latents, table[name], name=name, **fit_kwargs)
                       for name in (wanted or table)}
        else:
            if args.labels is None or args.encoder is None:
                raise Preim3DError("--photos needs --labels CSV and --encoder BUNDLE.")
            encode_fn = _bundle_encode_fn(args.encoder, args.device)
            fit = fit_directions_from_photos(args.photos, args.labels, encode_fn, attributes=wanted, **fit_kwargs)
            for file, reason in fit.skipped.items():
                print(f"skipped {file}: {reason}", file=sys.stderr)
            if args.save_latents:
                _save_latents_file(args.save_latents, fit)
            results = fit.results
    except ValueError as exc:  # bad labels or data: say so without a traceback
        raise Preim3DError(str(exc)) from exc

    bank = DirectionBank.from_bundle(args.out) if _has_directions(args.out) else None
    fitted = {**(bank.provenance.get("fitted", {}) if bank else {}), **{n: r.summary() for n, r in results.items()}}
    new = {name: r.direction for name, r in results.items()}
    bank = bank.with_directions(new, {"fitted": fitted}) if bank else DirectionBank(new, {"fitted": fitted})
    bank.save(args.out)

    print(f"{'attribute':<24} {'held-out acc':>12} {'balanced':>9} {'train acc':>9} {'n train':>8} "
          f"{'n test':>7} {'pos/neg':>11}")
    for name, r in results.items():
        acc = "-" if r.accuracy is None else f"{r.accuracy:.3f}"
        bal = "-" if r.balanced_accuracy is None else f"{r.balanced_accuracy:.3f}"
        print(f"{name:<24} {acc:>12} {bal:>9} {r.train_accuracy:>9.3f} {r.n_train:>8} {r.n_test:>7} "
              f"{f'{r.n_positive}/{r.n_negative}':>11}")
        if r.balanced_accuracy is not None and r.balanced_accuracy < 0.6:
            print(f"warning: {name} is barely better than chance on held-out codes; its direction "
                  f"is unlikely to edit anything.", file=sys.stderr)
    print(f"wrote {len(results)} direction(s) to {args.out} ({len(bank)} in the bank)")
    return 0


def _has_directions(folder: Path) -> bool:
    from .weights.bundle import is_bundle, read_bundle_config

    return is_bundle(folder) and "directions" in read_bundle_config(folder)


def _read_latents_file(path: Path, name: str | None):
    """(latents, {attribute: labels}) from an .npz or .safetensors file; no unpickling."""
    import numpy as np
    import torch

    if not path.is_file():
        raise Preim3DError(f"Latents file {path} does not exist.")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            arrays = load_file(str(path))
        else:
            with np.load(path, allow_pickle=False) as data:
                arrays = {key: data[key] for key in data.files}
    except Exception as exc:  # damaged, pickled or foreign file
        raise WeightsError(f"{path} is not a readable .npz or .safetensors file ({exc}).") from exc
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
        raise Preim3DError(f"{path} has no label arrays: add one 1-D array of {len(latents)} labels per attribute.")
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
        raise WeightsError(f"--photos needs an encoder bundle, and {bundle} has no {' or '.join(missing)} "
                           f"(it holds: {', '.join(present) or 'nothing'}).")
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
    parser.add_argument("source", type=Path,
                        help="folder of official <Attribute>.pt direction files, or a preim3d bundle")
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
    pairs = sorted(((abs(float(sim[i, j])), names[i], names[j], float(sim[i, j]))
                    for i in range(len(names)) for j in range(i + 1, len(names))), reverse=True)
    print(f"wrote {args.out} ({len(names)} directions)")
    if pairs:
        print("most entangled pairs (cosine):")
        for _, a, b, value in pairs[:5]:
            print(f"  {a} / {b}: {value:+.2f}")
    return 0


# ------------------------------------------------------------------ entry point

# name -> (help, add arguments, run)
_COMMANDS = {
    "fit-direction": ("fit editing directions from labelled codes or photos", _add_fit_direction,
                      _run_fit_direction),
    "directions-heatmap": ("picture of how entangled the editing directions are", _add_directions_heatmap,
                           _run_directions_heatmap),
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
        return args.run(args)
    except Preim3DError as exc:
        print(f"preim3d {args.command}: error: {exc}", file=sys.stderr)
        return 1
