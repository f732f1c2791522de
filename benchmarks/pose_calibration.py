"""The camera estimate against EG3D's own camera labels: measure it, and refit the head template.

A calibration folder holds EG3D-style face crops (any square size) with the 25-d camera labels
EG3D's preprocessing gave them: a `dataset.json` in EG3D's format,
{"labels": [["sub/name.png", [16 cam2world values, 9 intrinsics]], ...]}, and/or a `.npy` or `.txt`
of the 25 numbers beside an image. Several public EG3D inversion repositories ship such crops;
none of them is part of this project.

For every image, dlib's landmarks (as `preim3d.align_face` finds them) are compared with the
label's viewing direction (the camera's z axis in EG3D's world frame):

* "package": `AlignedFace.estimate_pose()` as the installed package does it;
* "held out": the template fitted on all the other images, then used on this one (leave-one-out),
  so the numbers say how the method does on faces it was not fitted to.

How the template is fitted (`fit_template`):
1. Triangulation. With every label camera known, each of the 68 points is the 3-D point whose
   projections best match that landmark in all crops (linear least squares), where each crop may
   also be scaled about its centre and shifted (faces differ in size and crops in centring); the
   point fit and the per-crop similarities alternate for 10 rounds.
2. Symmetry. The points are averaged with their mirror images (x -> -x, left and right points
   swapped): faces are symmetric on average, and this halves the noise.
3. Depth. Triangulating from near-frontal views underestimates depth; the template's depth about
   its mean is scaled by the factor that minimises the mean squared direction error of the
   estimates on the fitting images.
Faces turned beyond 60 degrees are left out of the fit: dlib's landmarks fail there.

Run:  python benchmarks/pose_calibration.py /path/to/calib [--write-template preim3d/head_template.py]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.optimize import minimize_scalar

from preim3d import align
from preim3d.cameras import camera_vector
from preim3d.head_template import MIRROR

FOCAL = 4.2647
SIZE = 512  # landmarks are compared in 512-px crop pixels
MAX_FIT_YAW = 60.0  # degrees: turned further, dlib's landmarks are unreliable
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def read_calibration(folder: Path) -> list[tuple[str, np.ndarray]]:
    """(relative image path, label [25]) for every labelled image of the folder, sorted by path."""
    labels = {}
    for dataset in sorted(folder.rglob("dataset.json")):
        for name, label in json.loads(dataset.read_text())["labels"]:
            labels[str((dataset.parent / name).relative_to(folder))] = np.asarray(label, float)
    for image in sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
        key = str(image.relative_to(folder))
        for suffix in (".npy", ".txt"):
            side = image.with_suffix(suffix)
            if key not in labels and side.is_file():
                values = np.load(side) if suffix == ".npy" else np.loadtxt(side)
                labels[key] = np.asarray(values, float).reshape(-1)
    return sorted((k, v) for k, v in labels.items() if len(v) == 25 and (folder / k).is_file())


def world_to_camera(label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    world_from_camera = label[:16].reshape(4, 4)
    camera_from_world = np.linalg.inv(world_from_camera)
    return camera_from_world[:3, :3], camera_from_world[:3, 3]


def yaw_elevation(forward: np.ndarray) -> np.ndarray:
    """[N, 2] degrees: azimuth and elevation of the direction from the head toward the camera."""
    toward = -forward / np.linalg.norm(forward, axis=-1, keepdims=True)
    return np.degrees(np.stack([np.arctan2(toward[:, 0], toward[:, 2]), np.arcsin(toward[:, 1])], axis=1))


def angle_between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    cos = (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
    return np.degrees(np.arccos(np.clip(cos, -1, 1)))


def triangulate(cameras, landmarks: np.ndarray, rounds: int = 10) -> np.ndarray:
    """[68, 3] points best seen at `landmarks` [N, 68, 2] (512-px crops) by the cameras [(R, t)]."""
    focal, centre = FOCAL * SIZE, SIZE / 2
    projections = []
    for rotation, translation in cameras:
        p = np.diag([focal, focal, 1.0]) @ np.c_[rotation, translation]
        p[:2] += centre * p[2]
        projections.append(p)
    projections = np.array(projections)  # [N, 3, 4]
    scale, shift = np.ones(len(cameras)), np.zeros((len(cameras), 2))
    points = np.zeros((landmarks.shape[1], 3))
    for _ in range(rounds):
        seen = (landmarks - centre - shift[:, None]) / scale[:, None, None] + centre
        for j in range(len(points)):
            # x (P_2 . X) = P_0 . X and y (P_2 . X) = P_1 . X for every camera, X = (point, 1)
            rows = np.concatenate(
                [
                    seen[:, j, :1] * projections[:, 2] - projections[:, 0],
                    seen[:, j, 1:] * projections[:, 2] - projections[:, 1],
                ]
            )
            points[j] = np.linalg.lstsq(rows[:, :3], -rows[:, 3], rcond=None)[0]
        for i, (rotation, translation) in enumerate(cameras):
            cam = points @ rotation.T + translation
            projected = focal * cam[:, :2] / cam[:, 2:]  # about the centre
            a = np.zeros((2 * len(points), 3))
            a[:, 0] = projected.ravel()
            a[0::2, 1] = a[1::2, 2] = 1
            scale[i], *shift[i] = np.linalg.lstsq(a, (landmarks[i] - centre).ravel(), rcond=None)[0]
        scale /= np.exp(np.log(scale).mean())
        shift -= shift.mean(0)
    return points


def symmetric(points: np.ndarray) -> np.ndarray:
    mirrored = points[MIRROR] * [-1, 1, 1]
    return (points + mirrored) / 2


def with_depth(points: np.ndarray, factor: float) -> np.ndarray:
    out = points.copy()
    mean = out[:, 2].mean()
    out[:, 2] = mean + factor * (out[:, 2] - mean)
    return out


def fit_template(cameras, landmarks, crop_landmarks, forwards) -> tuple[np.ndarray, float]:
    """The template fitted to these images (see the module docstring) and its depth factor."""
    base = symmetric(triangulate(cameras, landmarks))

    def loss(factor):
        rotation, _ = align.fit_head_camera(crop_landmarks, with_depth(base, factor))
        return float((angle_between(rotation[:, 2], forwards) ** 2).mean())

    factor = minimize_scalar(loss, bounds=(0.5, 2.0), method="bounded", options={"xatol": 1e-4}).x
    return with_depth(base, factor), float(factor)


def summary(name: str, errors: np.ndarray, est: np.ndarray, ref: np.ndarray, keep: np.ndarray) -> str:
    yaw, elevation = np.abs(est - ref).T
    within = errors[keep]
    return (
        f"| {name} | {len(errors)} | {np.median(errors):.1f} | {np.percentile(errors, 90):.1f} | "
        f"{errors.max():.1f} | {within.max():.1f} | {errors.mean():.1f} | {yaw.mean():.1f} | "
        f"{elevation.mean():.1f} | {np.mean((est - ref)[:, 1]):+.1f} |"
    )


def template_module(points: np.ndarray, factor: float, count: int) -> str:
    rows = "\n".join(f"        [{x:+.4f}, {y:+.4f}, {z:+.4f}],  # {j}" for j, (x, y, z) in enumerate(points))
    return f'''"""A mean head's 68 dlib landmarks in EG3D's world frame, for the camera estimate.

Units and axes are EG3D's world: x toward the subject's left (image right in a frontal view), y up,
z out of the face; the head sits about the origin, seen from 2.7 units by the frontal camera.
Points are numbered as dlib's 68-point predictor numbers them.

How it was made (benchmarks/pose_calibration.py refits it from a folder of labelled crops): dlib's
landmarks on {count} public EG3D-style crops whose EG3D camera labels are known were triangulated
with those cameras (each crop allowed its own scale and shift), made left-right symmetric, and
their depth about the mean scaled by {factor:.3f} to minimise the error of the camera estimate on
those crops. The numbers are our own fit; no image or label is part of the package.
"""

import numpy as np

# MIRROR[i]: the landmark that is point i's mirror image (left eye corner <-> right eye corner, ...)
MIRROR = np.concatenate(
    [
        np.arange(16, -1, -1),  # jaw line
        np.arange(26, 16, -1),  # eyebrows
        [27, 28, 29, 30, 35, 34, 33, 32, 31],  # nose
        [45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40],  # eyes
        [54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55],  # outer lips
        [64, 63, 62, 61, 60, 67, 66, 65],  # inner lips
    ]
)

LANDMARKS_3D = np.array(
    [
{rows}
    ]
)
'''


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="calibration folder (see the module docstring)")
    parser.add_argument("--write-template", type=Path, help="write the template fitted on all images here")
    args = parser.parse_args()

    items = read_calibration(args.folder)
    if len(items) < 4:
        raise SystemExit(f"{args.folder} holds {len(items)} labelled crops; at least 4 are needed.")
    names, faces, cameras = [], [], []
    for name, label in items:
        width = Image.open(args.folder / name).width
        try:
            face = align.align_face(args.folder / name)
        except Exception as exc:  # a crop without a face dlib finds: reported, left out
            print(f"skipped {name}: {exc}")
            continue
        names.append(name)
        faces.append((face, SIZE / width))
        cameras.append(world_to_camera(label))
    landmarks = np.array([face.landmarks * k for face, k in faces])  # in the crop, at 512 px
    crop_landmarks = np.array([face.crop_landmarks for face, _ in faces])  # in our aligned crop
    forwards = np.array([rotation[2] for rotation, _ in cameras])
    reference = yaw_elevation(forwards)
    keep = np.abs(reference[:, 0]) <= MAX_FIT_YAW

    package = np.array([face.estimate_pose() for face, _ in faces])
    package_forward = camera_vector(package[:, 0], package[:, 1]).numpy()[:, :16].reshape(-1, 4, 4)[:, :3, 2]
    held_out = np.zeros((len(names), 3))
    for i in range(len(names)):
        fit = [k for k in range(len(names)) if k != i and keep[k]]
        template, _ = fit_template(
            [cameras[k] for k in fit], landmarks[fit], crop_landmarks[fit], forwards[fit]
        )
        held_out[i] = align.fit_head_camera(crop_landmarks[i], template)[0][0, 2]

    print("\n| image | label yaw, elev. | package | error | held out | error |")
    print("|---|---|---|---|---|---|")
    est_package, est_held = yaw_elevation(package_forward), yaw_elevation(held_out)
    err_package, err_held = angle_between(package_forward, forwards), angle_between(held_out, forwards)
    for i, name in enumerate(names):
        print(
            f"| {name} | {reference[i, 0]:+.1f}, {reference[i, 1]:+.1f} | {est_package[i, 0]:+.1f}, "
            f"{est_package[i, 1]:+.1f} | {err_package[i]:.1f} | {est_held[i, 0]:+.1f}, {est_held[i, 1]:+.1f} "
            f"| {err_held[i]:.1f} |"
        )
    print(
        f"\nDirection error in degrees; yaw and elevation (camera above the face > 0) errors are mean "
        f"absolute; 'max <= {MAX_FIT_YAW:.0f}' is over faces turned at most {MAX_FIT_YAW:.0f} degrees."
    )
    print(
        f"\n| method | n | median | p90 | max | max <= {MAX_FIT_YAW:.0f} | mean | yaw | elevation "
        "| elevation bias |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(summary("package estimate_pose()", err_package, est_package, reference, keep))
    print(summary("held-out template fit", err_held, est_held, reference, keep))

    if args.write_template:
        fit = np.flatnonzero(keep)
        template, factor = fit_template(
            [cameras[k] for k in fit], landmarks[fit], crop_landmarks[fit], forwards[fit]
        )
        args.write_template.write_text(template_module(template, factor, len(fit)))
        print(f"\nwrote {args.write_template} (fitted on {len(fit)} crops, depth factor {factor:.3f})")


if __name__ == "__main__":
    main()
