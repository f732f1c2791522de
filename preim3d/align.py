"""Face alignment with dlib: any photo -> the EG3D-style 512x512 crop the PREIM3D encoder expects.

Coordinates: (x, y) in pixels with the origin at the top-left corner of the image, so the centre of
pixel (column i, row j) is (i + 0.5, j + 0.5) -- PIL's convention. 3x3 matrices act on (x, y, 1).

1. Detection. dlib's HOG frontal-face detector on a downscaled grayscale copy, so time and memory
   stay bounded for any photo. HOG finds faces of about 80 px and more at the scale it looks at.
   For the default face, `align_face` first looks at a copy whose long side is <= 640 px (enough
   for any face wider than 1/8 of the photo); `detect_faces`, and `align_face` when that finds
   nothing, look at the scale where a face of `MIN_FACE_SIZE` px becomes 80 px (at most 4 MP).
   dlib's CNN (MMOD) detector is the fallback when HOG finds nothing (turned or partly hidden
   faces); it is ~50x slower.
2. Landmarks. dlib's 68-point shape predictor, run on the face's region only, downscaled so the
   face box is at most 400 px (the points then move by < 1 px of the 512 crop against full
   resolution). It runs twice, on the region and on its mirror image (whose points are mirrored
   back and renumbered), and the two sets are averaged: the predictor's own left/right bias and
   noise cancel, which halves the error of the camera estimate below.
3. Crop geometry: EG3D's in-the-wild crop (Deep3DFaceRecon's `align_img`), preceded by FFHQ's roll
   normalisation, because the FFHQ crops EG3D and PREIM3D were trained on have level eyes.
   * Roll. eye = mean of its 6 points, mouth = mean of points 48 and 54; e2e = right eye - left
     eye, e2m = mouth - eye midpoint; the crop's x axis is  a = e2e - rot90(e2m),
     rot90(x, y) = (-y, x), and the photo is rotated by -theta, theta = atan2(a_y, a_x).
   * Scale and centre. Five points of the rotated landmarks -- eyes mean(36, 39) and mean(42, 45),
     nose mean(30, 33), mouth corners 48 and 54 -- are fitted to the five standard 3-D landmarks
     P_i of Deep3DFaceRecon by an affine camera (its "POS" fit), with image y flipped to point up:
         (q_x, -q_y)_i  ~  [k0 k1 k2; k4 k5 k6] P_i + (k3, k7)      (least squares, 10 equations).
     s = (|k0..2| + |k4..6|) / 2 is the pixels per 3-D unit, (k3, -k7) the projected 3-D origin.
     EG3D's crop is a square of side (700/300) s centred there.
   * Calibration against EG3D's own crops (dlib's points are not the MTCNN points EG3D used): the
     side is divided by 0.975 and the centre moved by -(1.5, 2.8) * side / 512 (x right, y down).
   So, with L the side and c the corrected centre in the rotated frame,
         crop_from_original = T(256, 256) . S(512 / L) . T(-c) . R(-theta).
4. Warp. One bicubic affine resampling of only the photo region the crop covers. When the crop
   shrinks the photo, the region is first box-reduced by an integer factor and the affine step
   renders at 2x and is reduced with Lanczos, because PIL's affine transform does not low-pass
   filter. Outside the photo the crop is mirror-padded by default: FFHQ's training crops were
   padded that way (mirrored, blurred and faded to the median colour further out), so the
   encoder knows that look, whereas EG3D's in-the-wild script pads with black (`padding="zero"`).

5. Camera (`AlignedFace.estimate_pose`, `estimate_poses`). The 68 landmarks of a mean head in
   EG3D's world frame (`preim3d.head_template`, fitted to EG3D's own camera labels) are fitted to
   the crop's landmarks by a perspective camera with EG3D's intrinsics (focal 4.2647 crop widths,
   principal point at the centre): the rotation R and translation t minimising the squared
   reprojection error, by Gauss-Newton from the weak-perspective solution. The camera's viewing
   direction in the head's frame gives EG3D's yaw and pitch.

Models: the 68-point predictor and the CNN detector are the files bundled in the
`face-recognition-models` package, found on disk without importing it; nothing is downloaded.
The 68-point model was trained on iBUG 300-W, whose licence excludes commercial use.
PREIM3D_DLIB_MODELS, when set, names a folder holding the two model files
(shape_predictor_68_face_landmarks.dat, mmod_human_face_detector.dat) to use instead, for machines
where face-recognition-models cannot be installed.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os
from dataclasses import dataclass
from pathlib import Path

import dlib
import numpy as np
from PIL import Image, ImageFilter

from .errors import FaceTooSmallError, NoFaceError, WeightsError
from .head_template import LANDMARKS_3D, MIRROR
from .images import load_image
from .validation import MIN_FACE_SIZE, MIN_PHOTO_SIDE, check_face_index

CROP_SIZE = 512

_DETECT_SIDE = 640  # long side of the copy the first HOG pass looks at
_DETECT_MAX_PIXELS = 4_000_000  # bound of the second, small-face pass
_HOG_FACE = 80  # HOG's window: the smallest face it finds, in pixels of the image it looks at
# Neither detector finds a face in an image with a side under ~80 px, and dlib's CNN corrupts memory
# (crashing the process) on sides under 10 px: downscaled copies narrower than this are not looked at.
_DETECT_MIN_SIDE = 32
_LANDMARK_BOX = 400  # face-box side above which the landmark region is downscaled
_CONFIDENT = 0.5  # faces scoring at least this fraction of the best score count as confident

# Deep3DFaceRecon's standard 3-D landmarks, 5-point reduction: left eye, right eye, nose tip,
# left and right mouth corners ("left" = image left); x right, y up, z toward the camera.
_LM3D = np.array(
    [
        [-0.311487, 0.290361, 0.133780],
        [0.309799, 0.289720, 0.131795],
        [0.003253, -0.046179, 0.552442],
        [-0.252169, -0.381339, 0.224057],
        [0.248466, -0.381282, 0.222358],
    ]
)
_SIDE_PER_UNIT = 700 / 300  # EG3D: rescale factor 300 at 1024 px, centre crop of 700 px
_SIDE_CORRECTION = 0.975  # dlib-5-point side / EG3D side, measured on EG3D's crops
_CENTRE_OFFSET = np.array([1.5, 2.8])  # dlib-5-point centre - EG3D centre, px of a 512 crop
# EG3D's camera, as in preim3d.cameras (not imported: it would load torch for four numbers)
_FRONTAL_ANGLE = 3.14 / 2  # PREIM3D's frontal angle
_RADIUS = 2.7
_PIVOT = np.array([0.0, 0.0, 0.2])
_FOCAL = 4.2647  # in image widths
_POSE_ITERATIONS = 8  # Gauss-Newton steps of the camera fit; it converges in 3 to 5


@dataclass(frozen=True)
class FaceDetection:
    """A face found by `detect_faces`: box (left, top, right, bottom) in photo pixels, score, detector."""

    box: tuple[float, float, float, float]
    score: float
    detector: str  # "hog" or "cnn"

    @property
    def size(self) -> float:
        """The box's shorter side in photo pixels (what `min_face_size` is compared with)."""
        return min(self.box[2] - self.box[0], self.box[3] - self.box[1])


@dataclass(frozen=True, eq=False)
class AlignedFace:
    """One aligned face: the crop, where it came from, and the maps between crop and photo."""

    image: Image.Image  # CROP_SIZE x CROP_SIZE RGB, EG3D-style
    landmarks: np.ndarray  # [68, 2] dlib points in the (EXIF-upright) photo
    box: tuple[float, float, float, float]  # face box (left, top, right, bottom) in the photo
    score: float  # detector score of the face (inf when the caller gave the box)
    crop_from_original: np.ndarray  # [3, 3]: photo (x, y, 1) -> crop (x, y, 1)
    original_size: tuple[int, int]  # (width, height) of the upright photo

    @property
    def original_from_crop(self) -> np.ndarray:
        """[3, 3]: crop (x, y, 1) -> photo (x, y, 1), the inverse of `crop_from_original`."""
        return np.linalg.inv(self.crop_from_original)

    @property
    def scale(self) -> float:
        """Photo pixels per crop pixel (the crop covers a square of side scale * 512 in the photo)."""
        return 1.0 / math.sqrt(abs(np.linalg.det(self.crop_from_original[:2, :2])))

    @property
    def roll(self) -> float:
        """Angle in radians by which the face was tilted in the photo (clockwise on screen > 0)."""
        return math.atan2(self.crop_from_original[0, 1], self.crop_from_original[0, 0])

    @property
    def crop_landmarks(self) -> np.ndarray:
        """[68, 2] landmarks in crop coordinates."""
        return self.to_crop(self.landmarks)

    def to_crop(self, points) -> np.ndarray:
        """Map photo points [..., 2] to crop points."""
        return _apply(self.crop_from_original, points)

    def to_original(self, points) -> np.ndarray:
        """Map crop points [..., 2] to photo points."""
        return _apply(self.original_from_crop, points)

    def estimate_pose(self) -> tuple[float, float]:
        """(yaw, pitch) in radians such that `preim3d.camera_vector(yaw, pitch)`
        views the head as the photo did.

        The head template's 68 landmarks are fitted to the crop's by a perspective camera with
        EG3D's intrinsics (see `estimate_poses`). Against EG3D's own camera labels on 36 public
        EG3D-style crops, held out from the template's fit, the viewing direction is off by a median
        of 2.4 degrees, 5.1 at the 90th percentile and at most 5.3 for faces turned up to 60 degrees
        (benchmarks/RESULTS.md, "Camera estimate"). Beyond ~60 degrees dlib's landmarks themselves
        fail, and so does the estimate.
        """
        yaw, pitch = estimate_poses(self.crop_landmarks)[0]
        return float(yaw), float(pitch)


def detect_faces(image, *, cnn_fallback: bool = True) -> list[FaceDetection]:
    """All faces in a photo, the default choice first: the largest of the confident faces.

    Looks for faces down to MIN_FACE_SIZE px (in photos above ~6 MP the 4 MP detection budget
    raises that to 80 * sqrt(pixels / 4e6) px). A face is confident when its score is at least
    half the best score: HOG also reports weak false positives, e.g. on patterned clothes, some
    as large as the face. `image` is anything `preim3d.images.load_image` reads, at least
    `preim3d.validation.MIN_PHOTO_SIDE` px on each side. An empty list when there is no face.
    """
    return _rank(_detect(load_image(image, min_side=MIN_PHOTO_SIDE), cnn_fallback, thorough=True))


def align_face(
    image,
    face=None,
    *,
    padding: str = "reflect",
    min_face_size: float = MIN_FACE_SIZE,
    cnn_fallback: bool = True,
) -> AlignedFace:
    """Detect, landmark and crop one face of a photo the way EG3D's preprocessing crops faces.

    image: a path, bytes, file object, PIL image or array (see `preim3d.images.load_image`).
    face: None for the default face (the first of `detect_faces`; found faster by looking at a
        640 px copy first, which is enough unless the face is under 1/8 of the photo's long
        side), an index from 0 into `detect_faces`' list (face_index; users' face numbers count
        from 1: see `preim3d.validation.face_index_from_number`), a `FaceDetection`, or a box
        (left, top, right, bottom) in photo pixels.
    padding: "reflect" (FFHQ's look, default) or "zero" (black, as EG3D's in-the-wild script) for
        crop pixels outside the photo.
    min_face_size: smallest face box side in photo pixels; smaller faces raise FaceTooSmallError.

    Raises NoFaceError when no face is found, FaceTooSmallError for a face below min_face_size,
    NoSuchFaceError for an index beyond the faces found, InputImageError for unreadable input
    or a photo under MIN_PHOTO_SIDE px a side.
    """
    if padding not in ("reflect", "zero"):
        raise ValueError(f"padding must be 'reflect' or 'zero', not {padding!r}")
    photo = load_image(image, min_side=MIN_PHOTO_SIDE)
    detection = _choose(photo, face, cnn_fallback)
    if detection.size < min_face_size:
        raise FaceTooSmallError(
            f"The face found is {detection.size:.0f} px wide; at least {min_face_size:.0f} px is needed "
            "for a useful 512 px crop. Use a larger photo or one taken closer to the face."
        )
    landmarks = _landmarks(photo, detection.box)
    crop_from_original = crop_transform(landmarks)
    crop = _warp(photo, np.linalg.inv(crop_from_original), padding)
    return AlignedFace(crop, landmarks, detection.box, detection.score, crop_from_original, photo.size)


def paste_back(original, edited, face: AlignedFace, *, mask=None, feather: float = 0.15) -> Image.Image:
    """Put an edited crop back into the photo it came from; returns a new RGB image of the photo's size.

    The crop (any square size; 512 is the aligned size) is warped back by face.original_from_crop
    and blended as  out = photo (1 - alpha) + warped alpha.  alpha is `mask` (a grayscale image or
    array of the crop, white = use the edit) warped the same way, or by default a soft disc
    inscribed in the crop: alpha = smoothstep(clip((1 - rho) / feather, 0, 1)), rho = distance
    from the crop centre in half-sides (feather in (0, 1]: the width of the soft edge). The crop's
    corners thus keep the photo's own background. `original` must be the photo given to align_face.
    """
    photo = load_image(original)
    if photo.size != face.original_size:
        raise ValueError(
            f"The photo is {photo.size[0]}x{photo.size[1]} but the face was aligned in a "
            f"{face.original_size[0]}x{face.original_size[1]} photo: pass the same photo to paste_back."
        )
    crop = load_image(edited)
    if crop.size[0] != crop.size[1]:
        raise ValueError(f"The edited crop must be square, not {crop.size[0]}x{crop.size[1]}.")
    side = CROP_SIZE * face.scale  # crop side in photo pixels
    if side < crop.size[0]:  # drawn smaller than it is: shrink first, PIL's affine does not low-pass
        crop = crop.resize((math.ceil(side),) * 2, Image.Resampling.LANCZOS)
    k = crop.size[0] / CROP_SIZE
    region = _clip_box(_bounds(face.original_from_crop, CROP_SIZE, margin=1.0), photo.size)
    size = (region[2] - region[0], region[3] - region[1])
    # region pixel -> photo -> edited crop
    to_crop = _scaling(k) @ face.crop_from_original @ _translation(region[0], region[1])
    data = tuple(to_crop[:2].ravel())
    warped = crop.transform(size, Image.Transform.AFFINE, data, resample=Image.Resampling.BICUBIC)
    if mask is None:
        xs = np.arange(size[0]) + 0.5
        ys = np.arange(size[1]) + 0.5
        cx = to_crop[0, 0] * xs[None, :] + to_crop[0, 1] * ys[:, None] + to_crop[0, 2]
        cy = to_crop[1, 0] * xs[None, :] + to_crop[1, 1] * ys[:, None] + to_crop[1, 2]
        half = crop.size[0] / 2
        rho = np.hypot(cx - half, cy - half) / half
        t = np.clip((1.0 - rho) / feather, 0.0, 1.0)
        alpha = t * t * (3.0 - 2.0 * t)
    else:
        alpha_img = load_image(mask).convert("L").resize(crop.size, Image.Resampling.BILINEAR)
        alpha_img = alpha_img.transform(
            size, Image.Transform.AFFINE, data, resample=Image.Resampling.BILINEAR
        )
        alpha = np.asarray(alpha_img, dtype=np.float32) / 255.0
    base = np.asarray(photo.crop(region), dtype=np.float32)
    blended = base + (np.asarray(warped, dtype=np.float32) - base) * alpha[..., None]
    out = photo.copy()
    out.paste(Image.fromarray(np.round(blended).astype(np.uint8), "RGB"), region[:2])
    return out


def crop_transform(landmarks) -> np.ndarray:
    """crop_from_original [3, 3] for 68 dlib landmarks [68, 2] (see the module docstring)."""
    lm = np.asarray(landmarks, dtype=np.float64)
    eye_l, eye_r = lm[36:42].mean(0), lm[42:48].mean(0)
    e2e = eye_r - eye_l
    e2m = (lm[48] + lm[54]) / 2 - (eye_l + eye_r) / 2
    axis = e2e - np.array([-e2m[1], e2m[0]])
    theta = math.atan2(axis[1], axis[0])
    rot = np.array([[math.cos(theta), math.sin(theta)], [-math.sin(theta), math.cos(theta)]])  # R(-theta)
    k, s = _pos_fit(_five_points(lm) @ rot.T)
    side = _SIDE_PER_UNIT * s / _SIDE_CORRECTION
    centre = np.array([k[3], -k[7]]) - _CENTRE_OFFSET * side / CROP_SIZE
    zoom = CROP_SIZE / side
    m = np.eye(3)
    m[:2, :2] = zoom * rot
    m[:2, 2] = CROP_SIZE / 2 - zoom * centre
    return m


def _five_points(lm: np.ndarray) -> np.ndarray:
    """[5, 2]: eye corner means, nose (mean of 30 and 33), mouth corners -- the calibrated dlib choice."""
    return np.stack([lm[[36, 39]].mean(0), lm[[42, 45]].mean(0), lm[[30, 33]].mean(0), lm[48], lm[54]])


def _pos_fit(points: np.ndarray) -> tuple[np.ndarray, float]:
    """Affine camera k [8] with (x, -y) ~ [k0 k1 k2; k4 k5 k6] P + (k3, k7), and its scale."""
    n = len(_LM3D)
    a = np.zeros((2 * n, 8))
    a[:n, :3] = _LM3D
    a[:n, 3] = 1
    a[n:, 4:7] = _LM3D
    a[n:, 7] = 1
    b = np.concatenate([points[:, 0], -points[:, 1]])
    k = np.linalg.lstsq(a, b, rcond=None)[0]
    return k, (np.linalg.norm(k[0:3]) + np.linalg.norm(k[4:7])) / 2


# --- camera ------------------------------------------------------------------------------------


def estimate_poses(crop_landmarks) -> np.ndarray:
    """[N, 2] (yaw, pitch) in radians for landmarks [N, 68, 2] (or one [68, 2]) in 512-px crops.

    The camera that sees the head template (`preim3d.head_template.LANDMARKS_3D`) as the landmarks
    is fitted by `fit_head_camera`; its viewing direction f (the camera's z axis in the head's
    frame) is turned into EG3D's orbit angles: `camera_vector` puts the camera at o on the sphere
    |o| = 2.7 looking at the pivot p, so o = p - lam f with lam > 0, and EG3D's orbit
    o / |o| = (sin(phi) sin(h'), cos(phi), sin(phi) cos(h')), phi = arccos(1 - 2 v / pi), gives
    h' = atan2(o_x, o_z) + pi / 2 and v = (pi / 2) (1 - o_y / |o|), returned as offsets from
    PREIM3D's frontal angle 3.14 / 2. Roll does not enter: it turns the camera about f.
    Note that pitch is in EG3D's polar-angle units: the camera's elevation above the face is
    -asin(2 pitch / pi) ~ -0.64 pitch (negative pitch = camera above).
    """
    rotation, _ = fit_head_camera(crop_landmarks)
    toward = -rotation[:, 2]  # unit vectors from the head toward the camera, head frame
    pv = toward @ _PIVOT
    lam = -pv + np.sqrt(pv * pv - _PIVOT @ _PIVOT + _RADIUS**2)
    o = (_PIVOT + lam[:, None] * toward) / _RADIUS
    yaw = np.arctan2(o[:, 0], o[:, 2]) + math.pi / 2 - _FRONTAL_ANGLE
    pitch = (math.pi / 2) * (1.0 - o[:, 1]) - _FRONTAL_ANGLE
    return np.stack([yaw, pitch], axis=1)


def fit_head_camera(crop_landmarks, template=LANDMARKS_3D, size: float = CROP_SIZE):
    """World-to-camera rotations R [N, 3, 3] and translations t [N, 3] seeing `template` as the landmarks.

    crop_landmarks: [N, K, 2] (or [K, 2]) pixels of a `size`-px crop; template: [K, 3] points in
    EG3D's world frame (x right, y up, z out of the face). The camera is EG3D's: OpenCV axes,
    focal F = 4.2647 size, principal point c = size / 2, so a point X projects to
    F (R X + t)_xy / (R X + t)_z + c. Start: the least-squares affine camera, whose 2x3 matrix made
    orthonormal (SVD) gives R's first rows and its scale s the depth t_z = F / s (weak
    perspective). Then Gauss-Newton on the squared reprojection error, rotation updated as
    exp([delta]x) R; a step that does not lower the error is not taken.
    """
    points = np.asarray(crop_landmarks, dtype=np.float64)
    points = points.reshape(-1, *points.shape[-2:])
    template = np.asarray(template, dtype=np.float64)
    focal, centre = _FOCAL * size, size / 2
    # weak perspective: points - c ~ M X + b
    affine = np.linalg.pinv(np.c_[template, np.ones(len(template))]) @ (points - centre)  # [N, 4, 2]
    u, s, vt = np.linalg.svd(np.swapaxes(affine[:, :3], 1, 2), full_matrices=False)
    rows = u @ vt
    rotation = np.concatenate([rows, np.cross(rows[:, 0], rows[:, 1])[:, None]], axis=1)
    depth = focal / s.mean(axis=1)
    translation = np.concatenate([affine[:, 3] * (depth / focal)[:, None], depth[:, None]], axis=1)

    def residuals(rotation, translation):
        cam = template @ np.swapaxes(rotation, 1, 2) + translation[:, None]
        return focal * cam[..., :2] / cam[..., 2:] + centre - points, cam

    r, cam = residuals(rotation, translation)
    cost = (r**2).sum(axis=(1, 2))
    for _ in range(_POSE_ITERATIONS):
        # d(projection)/d(cam) [N, K, 2, 3]; d(cam)/d(delta) = -[R X]x, d(cam)/dt = I
        inv_z = 1.0 / cam[..., 2]
        dproj = np.zeros(cam.shape[:2] + (2, 3))
        dproj[..., 0, 0] = dproj[..., 1, 1] = focal * inv_z
        dproj[..., :, 2] = -focal * cam[..., :2] * inv_z[..., None] ** 2
        jac = np.concatenate([dproj @ -_skew(cam - translation[:, None]), dproj], axis=-1)
        jac = jac.reshape(len(points), -1, 6)
        step = -np.linalg.solve(
            np.swapaxes(jac, 1, 2) @ jac + 1e-9 * np.eye(6),
            np.einsum("nki,nk->ni", jac, r.reshape(len(points), -1))[..., None],
        )[..., 0]
        new_rotation = _rotation_from_vector(step[:, :3]) @ rotation
        new_translation = translation + step[:, 3:]
        new_r, new_cam = residuals(new_rotation, new_translation)
        new_cost = (new_r**2).sum(axis=(1, 2))
        better = new_cost < cost
        rotation = np.where(better[:, None, None], new_rotation, rotation)
        translation = np.where(better[:, None], new_translation, translation)
        r = np.where(better[:, None, None], new_r, r)
        cam = np.where(better[:, None, None], new_cam, cam)
        cost = np.where(better, new_cost, cost)
    return rotation, translation


def _skew(v: np.ndarray) -> np.ndarray:
    """[..., 3, 3] cross-product matrices [v]x, with [v]x w = v x w."""
    zero = np.zeros(v.shape[:-1])
    x, y, z = v[..., 0], v[..., 1], v[..., 2]
    return np.stack(
        [np.stack([zero, -z, y], -1), np.stack([z, zero, -x], -1), np.stack([-y, x, zero], -1)], -2
    )


def _rotation_from_vector(v: np.ndarray) -> np.ndarray:
    """Rodrigues: [..., 3] rotation vectors -> [..., 3, 3] matrices exp([v]x)."""
    angle = np.linalg.norm(v, axis=-1)[..., None, None]
    k = _skew(v / np.maximum(angle[..., 0], 1e-12))
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)


# --- detection and landmarks ---------------------------------------------------------------------


@functools.cache
def dlib_model_path(name: str) -> str:
    """Path of a dlib model file: in $PREIM3D_DLIB_MODELS if set, else bundled in face-recognition-models.

    The package is found without importing it (its import breaks on new setuptools).
    """
    folder = os.environ.get("PREIM3D_DLIB_MODELS")
    if folder:
        path = Path(folder).expanduser() / name
        if not path.is_file():
            raise WeightsError(f"dlib model {name} not found in PREIM3D_DLIB_MODELS={folder}.")
        return str(path)
    spec = importlib.util.find_spec("face_recognition_models")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for folder in locations:
        path = Path(folder) / "models" / name
        if path.is_file():
            return str(path)
    raise WeightsError(
        f"dlib model {name} not found: install it with `pip install face-recognition-models` "
        "(the package ships dlib's face models)."
    )


@functools.cache
def _hog_detector():
    return dlib.get_frontal_face_detector()


@functools.cache
def _cnn_detector():
    return dlib.cnn_face_detection_model_v1(dlib_model_path("mmod_human_face_detector.dat"))


@functools.cache
def _shape_predictor():
    return dlib.shape_predictor(dlib_model_path("shape_predictor_68_face_landmarks.dat"))


def _gray(photo: Image.Image, scale: float) -> np.ndarray:
    """Grayscale copy of the photo at `scale` (resized before the conversion, to bound memory)."""
    if scale != 1.0:
        size = (max(1, round(photo.width * scale)), max(1, round(photo.height * scale)))
        photo = photo.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
    return np.asarray(photo.convert("L"))


def _detect(photo: Image.Image, cnn_fallback: bool, thorough: bool) -> list[FaceDetection]:
    """HOG at <= 640 px (skipped when thorough), HOG at the small-face scale, then the CNN; first hit wins."""
    width, height = photo.size
    fast = min(1.0, _DETECT_SIDE / max(width, height))
    # the scale where a MIN_FACE_SIZE face fills HOG's window, within the pixel budget
    small = max(fast, min(_HOG_FACE / MIN_FACE_SIZE, math.sqrt(_DETECT_MAX_PIXELS / (width * height))))
    faces = [] if thorough else _run_detector(photo, fast, "hog")
    if not faces and (thorough or small > 1.2 * fast):  # a second look only if it sees smaller faces
        faces = _run_detector(photo, small, "hog")
    if not faces and cnn_fallback:
        faces = _run_detector(photo, fast, "cnn")
    return faces


def _run_detector(photo: Image.Image, scale: float, kind: str) -> list[FaceDetection]:
    gray = _gray(photo, scale)
    if min(gray.shape) < _DETECT_MIN_SIDE:  # e.g. the 640 px copy of a very long, thin photo
        return []
    sx, sy = photo.width / gray.shape[1], photo.height / gray.shape[0]
    if kind == "hog":
        rects, scores, _ = _hog_detector().run(gray, 0, 0.0)
    else:
        found = _cnn_detector()(gray, 0)
        rects, scores = [d.rect for d in found], [d.confidence for d in found]
    # dlib boxes are inclusive pixel indices: the right edge is right() + 1
    return [
        FaceDetection(
            (r.left() * sx, r.top() * sy, (r.right() + 1) * sx, (r.bottom() + 1) * sy), float(s), kind
        )
        for r, s in zip(rects, scores)
    ]


def _rank(faces: list[FaceDetection]) -> list[FaceDetection]:
    if not faces:
        return []
    best = max(f.score for f in faces)

    def key(f: FaceDetection):
        area = (f.box[2] - f.box[0]) * (f.box[3] - f.box[1])
        return (f.score < _CONFIDENT * best, -area, -f.score)

    return sorted(faces, key=key)


def _choose(photo: Image.Image, face, cnn_fallback: bool) -> FaceDetection:
    if isinstance(face, FaceDetection):
        return face
    if face is not None and not isinstance(face, (int, np.integer)):
        box = tuple(float(v) for v in face)
        if len(box) != 4 or box[2] <= box[0] or box[3] <= box[1]:
            raise ValueError(
                f"face must be a (left, top, right, bottom) box, an index or a FaceDetection: {face!r}"
            )
        if box[2] <= 0 or box[3] <= 0 or box[0] >= photo.width or box[1] >= photo.height:
            raise ValueError(f"The face box {box} lies outside the {photo.width}x{photo.height} photo.")
        return FaceDetection(box, math.inf, "given")
    faces = _rank(_detect(photo, cnn_fallback, thorough=face is not None))
    if not faces:
        raise NoFaceError(
            f"No face was found in the {photo.width}x{photo.height} photo. Use a photo where one face "
            f"looks roughly toward the camera, is not hidden, and is at least {MIN_FACE_SIZE} px wide."
        )
    return faces[0 if face is None else check_face_index(face, len(faces))]


def _landmarks(photo: Image.Image, box) -> np.ndarray:
    """[68, 2] photo points: the predictor runs on the box's region, downscaled to a box of <= 400 px."""
    left, top, right, bottom = box
    side = max(right - left, bottom - top)
    margin = 0.5 * side
    region = _clip_box((left - margin, top - margin, right + margin, bottom + margin), photo.size)
    scale = min(1.0, _LANDMARK_BOX / side)
    if scale < 1.0:
        size = (
            max(1, round((region[2] - region[0]) * scale)),
            max(1, round((region[3] - region[1]) * scale)),
        )
        patch = photo.resize(size, Image.Resampling.BILINEAR, box=region, reducing_gap=2.0)
    else:
        patch = photo.crop(region)
    sx, sy = patch.width / (region[2] - region[0]), patch.height / (region[3] - region[1])
    rect = dlib.rectangle(
        round((left - region[0]) * sx),
        round((top - region[1]) * sy),
        round((right - region[0]) * sx) - 1,
        round((bottom - region[1]) * sy) - 1,
    )
    # the predictor on the region and on its mirror image; mirrored points are flipped back and
    # renumbered (point i of the mirror image is point MIRROR[i] of the face), then averaged
    gray = np.asarray(patch.convert("L"))
    flipped = dlib.rectangle(
        gray.shape[1] - 1 - rect.right(), rect.top(), gray.shape[1] - 1 - rect.left(), rect.bottom()
    )
    pts = _predict(gray, rect)
    mirror = _predict(np.ascontiguousarray(gray[:, ::-1]), flipped)
    mirror[:, 0] = gray.shape[1] - mirror[:, 0]
    pts = (pts + mirror[MIRROR]) / 2
    return pts / (sx, sy) + region[:2]


def _predict(gray: np.ndarray, rect) -> np.ndarray:
    """[68, 2] pixel-centre points of dlib's shape predictor in a grayscale image."""
    shape = _shape_predictor()(gray, rect)
    # dlib points are pixel indices; +0.5 moves them to pixel centres in our coordinates
    return np.array([(p.x + 0.5, p.y + 0.5) for p in shape.parts()], dtype=np.float64)


# --- warping -------------------------------------------------------------------------------------


def _warp(photo: Image.Image, original_from_crop: np.ndarray, padding: str) -> Image.Image:
    """The crop: original_from_crop resampled from the photo region it covers (see the module docstring)."""
    side = CROP_SIZE * math.sqrt(abs(np.linalg.det(original_from_crop[:2, :2])))
    supersample = 2 if side > CROP_SIZE else 1
    reduce = max(1, int(side // (CROP_SIZE * supersample)))  # leaves a <= 2x shrink to the affine step
    # photo region the crop needs, with a margin for the bicubic kernel (2 taps of the reduced image)
    need = _bounds(original_from_crop, CROP_SIZE, margin=3.0 * reduce)
    inside = _clip_box(need, photo.size)
    if inside[2] <= inside[0] or inside[3] <= inside[1]:
        raise ValueError("The crop lies entirely outside the photo: the face box does not belong to it.")
    src = photo.reduce(reduce, box=inside) if reduce > 1 else photo.crop(inside)
    pads = (
        max(0, math.ceil((inside[0] - need[0]) / reduce)),
        max(0, math.ceil((inside[1] - need[1]) / reduce)),
        max(0, math.ceil((need[2] - inside[2]) / reduce)),
        max(0, math.ceil((need[3] - inside[3]) / reduce)),
    )
    if any(pads):
        src = _pad(src, pads, padding, side / reduce)
    origin = (inside[0] - pads[0] * reduce, inside[1] - pads[1] * reduce)
    # output pixel (supersampled) -> crop -> photo -> padded, reduced region
    m = (
        _scaling(1.0 / reduce)
        @ _translation(-origin[0], -origin[1])
        @ original_from_crop
        @ _scaling(1.0 / supersample)
    )
    out = CROP_SIZE * supersample
    crop = src.transform(
        (out, out), Image.Transform.AFFINE, tuple(m[:2].ravel()), resample=Image.Resampling.BICUBIC
    )
    if supersample > 1:
        crop = crop.resize((CROP_SIZE, CROP_SIZE), Image.Resampling.LANCZOS)
    return crop


def _pad(src: Image.Image, pads: tuple[int, int, int, int], padding: str, side: float) -> Image.Image:
    """Pad (left, top, right, bottom) pixels: black, or mirrored and faded like FFHQ's crops.

    FFHQ-style: mirror, then with d = distance outside the photo over 0.3 * side (crop side in
    these pixels), blend toward a Gaussian blur (sigma 0.02 * side) with weight clip(3 d, 0, 1) and
    then toward the photo's median colour with weight clip(d, 0, 1).
    """
    left, top, right, bottom = pads
    arr = np.asarray(src)
    if padding == "zero":
        return Image.fromarray(np.pad(arr, ((top, bottom), (left, right), (0, 0))), "RGB")
    padded = np.pad(arr, ((top, bottom), (left, right), (0, 0)), mode="symmetric")
    h, w = arr.shape[:2]
    fade = 0.3 * side
    cols = np.arange(padded.shape[1]) + 0.5
    rows = np.arange(padded.shape[0]) + 0.5
    dx = np.maximum(left - cols, cols - (left + w)).clip(0) / fade
    dy = np.maximum(top - rows, rows - (top + h)).clip(0) / fade
    d = np.maximum(dx[None, :], dy[:, None])[..., None]
    blurred = np.asarray(
        Image.fromarray(padded).filter(ImageFilter.GaussianBlur(0.02 * side)), dtype=np.float32
    )
    out = padded.astype(np.float32)
    out += (blurred - out) * np.clip(3.0 * d, 0.0, 1.0)
    out += (np.median(arr.reshape(-1, 3), axis=0) - out) * np.clip(d, 0.0, 1.0)
    return Image.fromarray(np.round(out).astype(np.uint8), "RGB")


# --- small geometry helpers ----------------------------------------------------------------------


def _apply(matrix: np.ndarray, points) -> np.ndarray:
    pts = np.asarray(points, dtype=np.float64)
    return pts @ matrix[:2, :2].T + matrix[:2, 2]


def _translation(tx: float, ty: float) -> np.ndarray:
    return np.array([[1.0, 0.0, tx], [0.0, 1.0, ty], [0.0, 0.0, 1.0]])


def _scaling(s: float) -> np.ndarray:
    return np.diag([s, s, 1.0])


def _bounds(original_from_crop: np.ndarray, size: float, margin: float) -> tuple[int, int, int, int]:
    """Integer box around the photo-space image of the crop square [0, size]^2, grown by margin."""
    corners = _apply(original_from_crop, [[0, 0], [size, 0], [0, size], [size, size]])
    lo = np.floor(corners.min(0) - margin).astype(int)
    hi = np.ceil(corners.max(0) + margin).astype(int)
    return int(lo[0]), int(lo[1]), int(hi[0]), int(hi[1])


def _clip_box(box, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """Integer box (floor / ceil of the given one) clipped to an image of `size` (width, height)."""
    left, top, right, bottom = box
    return (
        max(0, math.floor(left)),
        max(0, math.floor(top)),
        min(size[0], math.ceil(right)),
        min(size[1], math.ceil(bottom)),
    )
