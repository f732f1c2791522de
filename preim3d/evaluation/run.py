"""One call that measures the whole chain on a set of photos: `evaluate(editor, photos, labels, out)`.

For every photo whose face can be aligned:

1. Inversion. The code w = E(crop) is rendered from the camera estimated from the face
   (`AlignedFace.estimate_pose`); the aligned crop is compared with that render: MSE, PSNR, SSIM,
   LPIPS (`metrics`) and identity similarity (`identity`).
2. 3D consistency. w is rendered on the grid of `yaws` x `pitches` (radians off the frontal view)
   and from the frontal view. Per view: identity similarity to the input crop and the mean to the
   other views; the frontal view warped onto the view through the view's depth, with the
   photometric error on co-visible pixels (`consistency`), for the raw neural-resolution render
   and for the super-resolved image.
3. Editing precision. Each edit alone, plain and precise (holding `hold`, default every other
   attribute of the bank): latent target shift and leakage (`editing`), and the identity
   similarity of the edited render to the reconstruction (same camera). With a labels CSV, an
   edit moves each photo away from what its label says it has (a smiling face is edited towards
   not smiling), and the inverted codes' attribute scores are checked against the labels (AUC).
4. Speed, on the first photo (`speed`).

All evaluation renders use fixed depth samples (deterministic=True), so a run repeats exactly and
the random sampling of the official renderer adds no noise to the consistency check.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import dlib
import numpy as np
import torch
from PIL import Image

from ..batch import AlignmentPool, describe_failure, failure_traceback, list_photos
from ..cameras import camera_vector
from ..distributed import Processes
from ..editing import read_label_table
from ..errors import InputImageError, WeightsError
from ..images import load_image
from ..plots import heatmap, image_grid, line_chart
from ..rendering import to_uint8
from ..weights.bundle import is_bundle, read_bundle_config
from .consistency import DEFAULT_TOLERANCE, reproject
from .editing import available_edits, latent_leakage, plain_and_precise
from .identity import cosine, identity_model, similarity_matrix
from .metrics import image_metrics, lpips_status
from .report import EvaluationReport
from .speed import time_stages

DEFAULT_YAWS = (-0.8, -0.4, 0.0, 0.4, 0.8)  # radians: up to ~46 degrees, the large poses PREIM3D claims
DEFAULT_PITCHES = (-0.25, 0.0, 0.25)  # the official turntable's pitch amplitude
DEFAULT_EDITS = {"smile": 3.0, "age": 3.0, "glasses": 3.0, "beard": 3.0, "female": 3.0}
_EXAMPLE_PHOTOS = 4  # rows of examples.png


def _photo_list(photos) -> list[tuple[str, object]]:
    """(name, image source) pairs from a folder, a file, or a list of paths / images."""
    if isinstance(photos, (str, os.PathLike)):
        return [(p.name, p) for p in list_photos(photos)]
    items = list(photos)
    if not items:
        raise InputImageError("No photos to evaluate.")
    return [
        (Path(p).name if isinstance(p, (str, os.PathLike)) else f"photo_{i}", p) for i, p in enumerate(items)
    ]


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def environment(editor, weights=None) -> dict[str, str]:
    """Device, library versions and the weights' provenance, as strings.

    `weights`: the bundle folder the editor was loaded from; without it, `editor.source` is used
    when it names a bundle folder. Each bundle component's provenance and licence are listed.
    """
    device = editor.device
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
    env = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "device": str(device),
        "device_name": name,
        "torch_threads": str(torch.get_num_threads()),
        "precision": str(getattr(editor.generator, "precision", "fp32")),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        **{
            f"version {p}": _version(p)
            for p in (
                "preim3d",
                "torch",
                "numpy",
                "pillow",
                "scikit-image",
                "face-recognition-models",
                "lpips",
            )
        },
        "version dlib": dlib.__version__,
        "weights": str(editor.source),
    }
    folder = Path(weights) if weights is not None else Path(str(editor.source))
    if is_bundle(folder):
        for component, section in read_bundle_config(folder).items():
            if isinstance(section, dict):
                for key in ("provenance", "licence"):
                    if key in section:
                        env[f"weights {component} {key}"] = json.dumps(section[key], sort_keys=True)
    elif editor.directions is not None:
        env["weights directions provenance"] = json.dumps(
            editor.directions.provenance, sort_keys=True, default=str
        )
    return env


def _pil(images: torch.Tensor) -> list[Image.Image]:
    return [Image.fromarray(a) for a in to_uint8(images)]


def _label_row(table, name: str) -> int | None:
    """The row of a photo in a labels table, matched by file name (the table may list relative paths)."""
    files = [Path(f).name for f in table[0]]
    return files.index(name) if name in files else None


def _labelled_edits(bank, edits: Mapping[str, float], table, name: str) -> dict[str, float]:
    """The edits, each sign chosen to move the photo away from what its label says it has."""
    row = _label_row(table, name) if table is not None else None
    out = dict(edits)
    for edit, strength in edits.items():
        stored, sign = bank.resolve(edit)
        column = next(
            (c for c in (table[1] if row is not None else ()) if c in bank and bank.resolve(c)[0] == stored),
            None,
        )
        if column is None or math.isnan(label := float(table[1][column][row])):
            continue
        has = (1 if label == 1 else -1) * bank.resolve(column)[
            1
        ]  # +1: the photo's stored score should be high
        if has * sign * strength > 0:  # sign * strength: the edit's change of the stored score
            out[edit] = -strength
    return out


def _auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties counted half (the Mann-Whitney AUC)."""
    positives, negatives = scores[labels], scores[~labels]
    greater = (positives[:, None] > negatives[None, :]).sum() + 0.5 * (
        positives[:, None] == negatives[None, :]
    ).sum()
    return float(greater / (len(positives) * len(negatives)))


def _label_scores(bank, table, ws) -> dict[str, float]:
    """The code's score of each labelled attribute the bank has (sign: + = has it)."""
    columns = [column for column in table[1] if column in bank]
    return {
        column: bank.resolve(column)[1] * float(bank.scores(ws, [bank.resolve(column)[0]])[0, 0])
        for column in columns
    }


def _attribute_table(table, names: list[str], scores: list[dict[str, float]]) -> list[dict]:
    """AUC of each labelled attribute's score over the evaluated photos that have both labels."""
    rows_of = [_label_row(table, name) for name in names]
    out = []
    for column, values in table[1].items():
        if not scores or column not in scores[0]:
            continue
        known = [
            (i, float(values[r]) == 1)
            for i, r in enumerate(rows_of)
            if r is not None and not math.isnan(values[r])
        ]
        positive = np.array([p for _, p in known], dtype=bool)
        if positive.all() or not positive.any():
            continue
        out.append(
            {
                "attribute": column,
                "positives": int(positive.sum()),
                "negatives": int((~positive).sum()),
                "auc": _auc(np.array([scores[i][column] for i, _ in known]), positive),
            }
        )
    return out


@dataclass
class _Setup:
    """What every photo is measured with."""

    editor: object
    identity: object
    grid: list[tuple[float, float]]  # (yaw, pitch) of the novel views
    edits: dict[str, float]
    hold: list[str] | None
    labels: tuple | None  # (files, {column: values}) of read_label_table
    tolerance: float
    skipped: dict[str, str]  # what could not be measured -> why

    def render(self, ws, c) -> dict:
        with torch.inference_mode():
            return self.editor.renderer.render(ws, c, deterministic=True)


@dataclass
class _PhotoResult:
    inversion: dict
    views: list[dict]
    edits: list[dict]
    tiles: list[tuple[str, Image.Image]]  # (label, image) of the example grid's row; [] past the first few
    scores: dict[str, float]  # the code's score of each labelled attribute


def _evaluate_photo(setup: _Setup, name: str, face) -> _PhotoResult:
    """Steps 1-3 of the module docstring for one aligned face."""
    ws = setup.editor.invert(face)
    yaw, pitch = face.estimate_pose()
    c_photo = camera_vector(yaw, pitch)
    reconstruction = _pil(setup.render(ws, c_photo)["image"])[0]
    input_id, recon_id = setup.identity.embed(face.image), setup.identity.embed(reconstruction)
    inversion = {
        "photo": name,
        "yaw_deg": math.degrees(yaw),
        "pitch_deg": math.degrees(pitch),
        **image_metrics(face.image, reconstruction),
        "identity": cosine(input_id, recon_id),
        "face_detected": recon_id.detected,
    }
    views, view_images = _consistency(setup, name, ws, input_id)
    row_pitch = min((p for _, p in setup.grid), key=abs)  # the example row shows the views nearest to level
    tiles = [
        ("input", face.image),
        ("reconstruction", reconstruction),
        *[
            (f"yaw {math.degrees(y):+.0f}°", image)
            for (y, p), image in zip(setup.grid, view_images)
            if p == row_pitch
        ],
    ]
    edits = []
    if setup.edits:
        edits = _editing(setup, name, ws, c_photo, recon_id, tiles)
    bank = setup.editor.directions
    scores = _label_scores(bank, setup.labels, ws) if setup.labels is not None and bank is not None else {}
    return _PhotoResult(inversion, views, edits, tiles, scores)


def _consistency(setup: _Setup, name: str, ws, input_id) -> tuple[list[dict], list[Image.Image]]:
    """Per novel view: identity to the input and to the other views, the frontal view warped onto it."""
    n = len(setup.grid)
    c_grid = camera_vector([y for y, _ in setup.grid], [p for _, p in setup.grid])
    c_front = camera_vector(0.0, 0.0)
    out = setup.render(ws, torch.cat([c_grid, c_front]))  # the frontal view is the last
    images = _pil(out["image"][:n])
    embeddings = [setup.identity.embed(image) for image in images]
    between = similarity_matrix(embeddings)
    depth = out["image_depth"]
    rows = []
    for k, (yaw, pitch) in enumerate(setup.grid):
        row = {
            "photo": name,
            "yaw_deg": round(math.degrees(yaw), 2),
            "pitch_deg": round(math.degrees(pitch), 2),
            "identity_to_input": cosine(input_id, embeddings[k]),
            "identity_to_views": float((between[k].sum() - between[k, k]) / max(n - 1, 1)),
        }
        for kind, pixels in (
            ("raw", out["image_raw"]),
            ("final", out["image"]),
        ):  # one view at a time: memory
            check = reproject(
                pixels[k : k + 1],
                depth[k : k + 1],
                c_grid[k],
                pixels[n:],
                depth[n:],
                c_front,
                setup.tolerance,
            )
            row[f"reprojection_{kind}"], row[f"covisible_{kind}"] = check.error.item(), check.covisible.item()
        rows.append({**row, "face_detected": embeddings[k].detected})
    return rows, images


def _editing(setup: _Setup, name: str, ws, c_photo, recon_id, tiles: list) -> list[dict]:
    """Per edit and mode: latent leakage and identity to the reconstruction;
    the edited renders join `tiles`."""
    bank = setup.editor.directions
    rows = []
    for edit, strength in _labelled_edits(bank, setup.edits, setup.labels, name).items():
        try:
            edited = plain_and_precise(bank, ws, edit, strength, setup.hold)
        except ValueError as exc:  # the target is (almost) a combination of the held directions
            setup.skipped[f"{name}: {edit} edit"] = str(exc)
            continue
        for mode, code in edited.items():
            image = _pil(setup.render(code, c_photo)["image"])[0]
            tiles.append((f"{edit} {mode}", image))
            rows.append(
                {
                    "photo": name,
                    "edit": edit,
                    "strength": strength,
                    "mode": mode,
                    "identity": cosine(recon_id, setup.identity.embed(image)),
                    **latent_leakage(bank, ws, code, edit, strength),
                }
            )
    return rows


def evaluate(
    editor,
    photos,
    labels=None,
    out=None,
    *,
    yaws: Iterable[float] = DEFAULT_YAWS,
    pitches: Iterable[float] = DEFAULT_PITCHES,
    edits: Mapping[str, float] | None = None,
    hold: Iterable[str] | None = None,
    arcface=None,
    identity=None,
    weights=None,
    repeats: int = 3,
    tolerance: float = DEFAULT_TOLERANCE,
    log: Callable[[str], None] | None = None,
    processes: Processes | None = None,
    workers: int = 0,
    debug: bool = False,
) -> EvaluationReport | None:
    """Measure inversion, 3D consistency, editing precision and speed (module docstring); returns the report.

    editor: a `preim3d.Editor`. photos: a folder, a photo, or a list of paths / images. labels: a
    CSV as `preim3d fit-direction --labels` reads (file names, one 0/1 or -1/1 column per
    attribute). out: folder to save the report in (None: not saved). yaws, pitches: the novel-view
    grid in radians. edits: {attribute: strength} (default: those of DEFAULT_EDITS the bank has).
    hold: attributes the precise edits keep fixed (default: every other one). arcface: ArcFace
    IR-SE50 weights for the identity metric (default dlib's model), or pass an `identity` model
    object with `.name` and `.embed(image)`. weights: the bundle folder, for the provenance.
    repeats: timed calls per stage. log: called with a line of progress per photo.

    Under torchrun, pass `processes` (`preim3d.distributed.start_processes`): each process
    measures every N-th photo and the first one gathers the rows into the report, in the photos'
    order, the same report as one process writes but for the speed table; the others return None.
    workers: processes aligning photos ahead (0: in this one). A photo that fails is skipped and
    listed, with the traceback in the log when `debug` is true.
    """
    log = log or (lambda _line: None)
    items = _photo_list(photos)
    yaws, pitches = [float(y) for y in yaws], [float(p) for p in pitches]
    bank = editor.directions
    if bank is None and (edits or hold):
        raise WeightsError(
            f"The weights ({editor.source}) hold no editing directions, so edits cannot be measured."
        )
    if bank is None:
        edits = {}
    elif edits is None:
        edits = available_edits(bank, DEFAULT_EDITS) or {bank.names[0]: DEFAULT_EDITS["smile"]}
    else:
        edits = {edit: float(strength) for edit, strength in edits.items()}
        for edit in (*edits, *(hold or ())):
            bank.resolve(edit)  # an unknown name fails before the slow work, with the valid ones listed
    setup = _Setup(
        editor=editor,
        identity=identity or identity_model(arcface, device=editor.device),
        grid=[(y, p) for p in pitches for y in yaws],
        edits=edits,
        hold=None if hold is None else list(hold),
        labels=read_label_table(labels) if labels is not None else None,
        tolerance=tolerance,
        skipped={},
    )

    processes = processes or Processes(device=editor.device)
    mine = processes.shard(range(len(items)))  # photo by photo: each is measured on its own
    results: list[tuple[int, str, _PhotoResult]] = []
    skipped: list[tuple[int, str, str]] = []  # (photo index, what, why)
    from_files = all(isinstance(source, (str, os.PathLike)) for _, source in items)
    pool = AlignmentPool(workers if from_files and len(mine) > 1 else 0)
    with pool:
        for i, (_, aligned) in zip(mine, pool.run(items[i][1] for i in mine)):
            name = items[i][0]
            try:
                if isinstance(aligned, BaseException):
                    raise aligned
                result = _evaluate_photo(setup, name, aligned.face)
            except Exception as exc:
                if debug:
                    log(failure_traceback(exc).rstrip())
                skipped.append((i, name, describe_failure(exc)))
                log(f"{name}: skipped ({skipped[-1][2]})")
                continue
            finally:
                skipped += [
                    (i, what, why) for what, why in setup.skipped.items()
                ]  # edits it could not measure
                setup.skipped.clear()
            if len(results) >= _EXAMPLE_PHOTOS:  # only the first photos appear in examples.png
                result.tiles = []
            results.append((i, name, result))
            scores = result.inversion
            log(
                f"{name}: PSNR {scores['psnr']:.2f} dB, SSIM {scores['ssim']:.3f}, identity "
                f"{scores['identity']:.3f}; novel views: identity to input "
                f"{np.mean([v['identity_to_input'] for v in result.views]):.3f}"
            )

    speed = []
    if results and processes.main:  # the first photo this process measured
        photo = load_image(items[results[0][0]][1])
        timings = time_stages(editor, photo, next(iter(edits.items()), None), repeats=repeats)
        speed = [
            {"stage": stage, **timing, "device": str(editor.device)} for stage, timing in timings.items()
        ]
        log("speed: " + ", ".join(f"{r['stage']} {r['ms']:.0f} ms" for r in speed))

    gathered = processes.gather((results, skipped))
    if not processes.main:
        return None
    results = sorted((r for part, _ in gathered for r in part), key=lambda r: r[0])
    skipped = {
        what: why for _, what, why in sorted((s for _, part in gathered for s in part), key=lambda s: s[0])
    }
    results = [(name, result) for _, name, result in results]
    edit_rows = [row for _, r in results for row in r.edits]
    leakage = _leakage_rows(edit_rows)
    views = [row for _, r in results for row in r.views]
    names = [name for name, _ in results]
    settings = {
        "yaws": yaws,
        "pitches": pitches,
        "edits": edits,
        "tolerance": tolerance,
        "repeats": repeats,
        "identity_model": setup.identity.name,
        "lpips": lpips_status(),
        "labels": str(labels) if labels else None,
        "hold_description": "every other attribute" if hold is None else ", ".join(setup.hold) or "nothing",
        "deterministic_renders": True,
    }
    report = EvaluationReport(
        environment=environment(editor, weights),
        settings=settings,
        photos=names,
        skipped=skipped,
        inversion=[r.inversion for _, r in results],
        views=views,
        edits=[{k: v for k, v in row.items() if k != "leakage"} for row in edit_rows],
        leakage=leakage,
        attributes=(
            _attribute_table(setup.labels, names, [r.scores for _, r in results])
            if setup.labels is not None and bank is not None
            else []
        ),
        speed=speed,
        figures=_figures(views, leakage, [(name, r.tiles) for name, r in results]),
    )
    if out is not None:
        report.save(out)
    return report


def _leakage_rows(edit_rows: list[dict]) -> list[dict]:
    """Per (edit, mode, other attribute): the score change per unit of edit, averaged over photos."""
    sums: dict[tuple, list[float]] = {}
    for row in edit_rows:
        for attribute, value in row["leakage"].items():
            sums.setdefault((row["edit"], row["mode"], attribute), []).append(value)
    return [
        {"edit": e, "mode": m, "attribute": a, "leakage": float(np.mean(v))} for (e, m, a), v in sums.items()
    ]


def _figures(views, leakage, examples) -> dict[str, Image.Image]:
    """The report's PNGs: identity and reprojection curves over yaw, leakage heat map, example grid."""
    figures = {}
    if views:

        def curve(key):
            series = {}
            for pitch in sorted({v["pitch_deg"] for v in views}):
                yaws = sorted({v["yaw_deg"] for v in views if v["pitch_deg"] == pitch})
                series[f"pitch {pitch:+.0f}°"] = [
                    (
                        y,
                        float(
                            np.mean([v[key] for v in views if v["pitch_deg"] == pitch and v["yaw_deg"] == y])
                        ),
                    )
                    for y in yaws
                ]
            return series

        figures["identity_curve.png"] = line_chart(
            curve("identity_to_input"),
            "Identity similarity to the input",
            "yaw (degrees)",
            "cosine similarity",
        )
        figures["reprojection_curve.png"] = line_chart(
            curve("reprojection_raw"),
            "Frontal view warped onto each view (raw render)",
            "yaw (degrees)",
            "mean |RGB error| (8-bit)",
        )
    if leakage:
        rows = list(dict.fromkeys((r["edit"], r["mode"]) for r in leakage))
        columns = list(dict.fromkeys(r["attribute"] for r in leakage))
        value = {(r["edit"], r["mode"], r["attribute"]): r["leakage"] for r in leakage}
        matrix = [[value.get((e, m, a), math.nan) for a in columns] for e, m in rows]
        figures["leakage.png"] = heatmap(
            matrix,
            [f"{e} ({m})" for e, m in rows],
            columns,
            "Score change of the other attributes per unit of edit",
        )
    if examples:
        shown = examples[:_EXAMPLE_PHOTOS]
        labels = [label for label, _ in max((tiles for _, tiles in shown), key=len)]
        figures["examples.png"] = image_grid(
            [[image for _, image in tiles] for _, tiles in shown], [name for name, _ in shown], labels
        )
    return figures
