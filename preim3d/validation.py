"""The limits on values users give, checked in one place for every entry point.

The Python library, the `preim3d` command line, the web page with its HTTP API, and the notebook
all call these functions, so a bad value gets the same message from each of them. A `check_*`
function returns the value in the form the library uses (int, float) or raises an error whose
message names the value, what was given and what is allowed: `InvalidValueError` (a
`Preim3DError` and a `ValueError`), `NoSuchFaceError` for face numbers (also an `IndexError`),
`InputImageError` for photos. Numbers may come as strings ("12"), as from a form or a command line.

* photo size: at least MIN_PHOTO_SIDE = 64 px on each side and at most MAX_PIXELS = 100 MP. A face
  must be at least MIN_FACE_SIZE = 64 px wide to give a useful crop, and dlib finds none in smaller
  photos (its CNN detector even corrupts memory on images under 10 px a side); the pixel limit
  keeps decoding bounded.
* face number: 1 ... the number of faces found. Users count faces from 1, as the page's boxes show
  (`--face 2`, `face=2`); the library's `face_index` counts from 0, as Python does.
  `face_index_from_number` / `face_number` are the one conversion.
* edit strength: finite, -10 <= s <= 10 (STRENGTH_LIMIT), the span of the official demo's sliders;
  the official examples use 10, already a strong edit.
* yaw: -180° ... 180° (-π ... π rad); beyond, the camera goes round again. pitch: -90° ... 90°
  (-π/2 ... π/2 rad); beyond, the camera is held at the pole. The model saw views within about
  ±46° yaw and ±34° pitch (the official demo's ±0.8 and ±0.6 rad): farther out, renders degrade.
* frames: a whole number from 1 to MAX_FRAMES = 3600 (a minute at 60 fps). Frames are streamed to
  the file, so only the time grows with the count; an entry point may allow fewer.
* fps: MIN_FPS = 1 to MAX_FPS = 120 frames per second.
* videos to edit: at most MAX_FRAMES = 3600 frames (two minutes at 30 fps) of at most
  MAX_VIDEO_PIXELS = 3840 x 2160 (4K UHD, either way up), at MIN_FPS to MAX_FPS; at least
  MIN_PHOTO_SIDE pixels a side. Frames are streamed, so memory does not grow with the length, but
  the time does: about a second of a GPU per second of 720p video, minutes per second on a CPU.
* mesh resolution (density samples per side): 64, 128, 256 or 512 (MESH_RESOLUTIONS). On a CPU,
  above CPU_MESH_RESOLUTION = 256 only with allow_slow=True (`--allow-slow`): a 512³ mesh takes
  minutes there. Mesh threshold: "auto" (see `preim3d.mesh.surface_level`) or any finite σ.
* refine steps (optimisation after the encoder's one-pass guess): 0 to MAX_REFINE_STEPS = 1000.

Angles: the library takes radians (`Editor.render(ws, yaw=0.3)`, `camera_vector`); the command
line, the page and its HTTP API take degrees and convert them with `math.radians` before these
checks, whose messages give both. This module imports nothing heavy, so the command line can check
its arguments before torch loads.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping

from .errors import InputImageError, InputVideoError, InvalidValueError, NoSuchFaceError

MAX_PIXELS = 100_000_000  # 100 MP: larger than any phone photo; ~300 MB once decoded as RGB
MIN_FACE_SIZE = 64  # px of face box in the photo; smaller faces would be magnified > ~3x in the crop
MIN_PHOTO_SIDE = MIN_FACE_SIZE  # a photo narrower than the smallest usable face cannot hold one
STRENGTH_LIMIT = 10.0
YAW_LIMIT = math.pi  # radians
PITCH_LIMIT = math.pi / 2  # radians
MAX_FRAMES = 3600
MAX_VIDEO_PIXELS = 3840 * 2160
MIN_FPS, MAX_FPS = 1.0, 120.0
MESH_RESOLUTIONS = (64, 128, 256, 512)
CPU_MESH_RESOLUTION = 256  # the largest resolution a CPU makes without allow_slow=True
MAX_REFINE_STEPS = 1000


# --- photos ---------------------------------------------------------------------------------------------


def check_image_size(width: int, height: int, what: str = "the image", *, min_side: int = 1, max_pixels=None):
    """Refuse a `width` x `height` image that is empty, narrower than `min_side` or above `max_pixels` pixels.

    `what` names the image in the message ("the file 'me.jpg'"). Readers call this on the header,
    before decoding; face detection asks for min_side=MIN_PHOTO_SIDE. Raises InputImageError.
    """
    max_pixels = MAX_PIXELS if max_pixels is None else max_pixels
    what = what[:1].upper() + what[1:]
    if width < 1 or height < 1:
        raise InputImageError(f"{what} is empty ({width}x{height} pixels).")
    if min(width, height) < min_side:
        raise InputImageError(
            f"{what} is {width}x{height} pixels, too small to hold a face: use a photo at least "
            f"{min_side} pixels on each side, where the face is at least {MIN_FACE_SIZE} pixels wide."
        )
    if width * height > max_pixels:
        raise InputImageError(
            f"{what} has {width}x{height} = {width * height:,} pixels, more than the limit of "
            f"{max_pixels:,}: downscale it first, or raise max_pixels if you trust the file."
        )


# --- faces ----------------------------------------------------------------------------------------------


def face_index_from_number(number) -> int:
    """A user's face number (1 = the first face, as the page's boxes show) -> the library's face_index."""
    value = _whole(number, lambda given: f"A face number must be a whole number from 1, not {given}.")
    if value < 1:
        raise NoSuchFaceError(
            f"Faces are numbered from 1 (face 1 is the first face); there is no face {value}."
        )
    return value - 1


def face_number(face_index: int) -> int:
    """The number users see for a face_index: face_index 0 is face 1."""
    return int(face_index) + 1


def check_face_index(face_index, count: int) -> int:
    """face_index (from 0) among `count` faces found, or NoSuchFaceError naming faces as users number them."""
    index = _whole(face_index, lambda given: f"face_index must be a whole number from 0, not {given}.")
    if index < 0:
        raise NoSuchFaceError(f"face_index counts faces from 0 (face 1 is face_index 0), not {index}.")
    if index >= count:
        plural = "face (numbered 1)" if count == 1 else f"faces (numbered 1 to {count})"
        raise NoSuchFaceError(f"This photo has {count} {plural}; there is no face {face_number(index)}.")
    return index


# --- edits ----------------------------------------------------------------------------------------------


def check_strength(strength, name: str = "") -> float:
    """An edit strength: a finite number within ±STRENGTH_LIMIT; `name` is the attribute, for the message."""
    value = _number(strength)
    if value is None or not abs(value) <= STRENGTH_LIMIT:
        of = f" of {name!r}" if name else ""
        raise InvalidValueError(
            f"The strength{of} must be a number from {-STRENGTH_LIMIT:g} to {STRENGTH_LIMIT:g}, "
            f"not {_show(strength)} ({STRENGTH_LIMIT:g} is already a strong edit)."
        )
    return value


def check_edits(edits) -> dict[str, float]:
    """{attribute: strength} with every strength checked; the names are checked by the direction bank."""
    if not isinstance(edits, Mapping):
        raise InvalidValueError(
            f'Edits must be a mapping {{attribute: strength}} such as {{"smile": 2, "age": -1}}, '
            f"not a {type(edits).__name__}."
        )
    return {str(name): check_strength(strength, str(name)) for name, strength in edits.items()}


# --- cameras --------------------------------------------------------------------------------------------


def check_angles(yaw=0.0, pitch=0.0) -> None:
    """Yaw and pitch offsets from the frontal view in radians: numbers, or sequences, arrays or tensors."""
    _check_angle("yaw", yaw, YAW_LIMIT, "±180° (±π rad)")
    _check_angle("pitch", pitch, PITCH_LIMIT, "±90° (±π/2 rad)")


def _check_angle(name: str, angle, limit: float, allowed: str) -> None:
    if isinstance(angle, (numbers.Real, str)):
        values = [_number(angle)]
    else:
        import numpy as np  # only for arrays and tensors

        if hasattr(angle, "detach"):  # a torch tensor, possibly on a GPU
            angle = angle.detach().cpu()
        try:
            values = [_number(v) for v in np.asarray(angle, dtype=np.float64).reshape(-1).tolist()]
        except (TypeError, ValueError):
            values = [None]
    for value in values:
        if value is None or not abs(value) <= limit:
            given = _show(angle) if value is None else f"{_show(math.degrees(value))}° ({_show(value)} rad)"
            raise InvalidValueError(
                f"{name} must be a number within {allowed} of the frontal view, not {given}."
            )


# --- videos ---------------------------------------------------------------------------------------------


def check_frames(frames, maximum: int = MAX_FRAMES) -> int:
    """A video's frame count: a whole number from 1 to `maximum` (an entry point may allow fewer)."""

    def message(given) -> str:
        return f"frames must be a whole number from 1 to {maximum}, not {given}."

    value = _whole(frames, message)
    if not 1 <= value <= maximum:
        raise InvalidValueError(message(value))
    return value


def check_fps(fps) -> float:
    """A video's frame rate, from MIN_FPS to MAX_FPS frames per second."""
    value = _number(fps)
    if value is None or not MIN_FPS <= value <= MAX_FPS:
        raise InvalidValueError(f"fps must be a number from {MIN_FPS:g} to {MAX_FPS:g}, not {_show(fps)}.")
    return value


def check_video_size(width: int, height: int, frames: int, fps: float, what: str, max_frames=None) -> int:
    """Refuse a video to edit that is too large, too long or of an unusable frame rate.

    frames: the expected frame count (0 when unknown: the caller checks again while decoding).
    Raises InputVideoError naming `what` ("the video 'me.mp4'"); returns the frame limit applied
    (max_frames, default MAX_FRAMES).
    """
    limit = MAX_FRAMES if max_frames is None else int(max_frames)
    what = what[:1].upper() + what[1:]
    if min(width, height) < MIN_PHOTO_SIDE:
        raise InputVideoError(
            f"{what} is {width}x{height} pixels, too small to hold a face: at least {MIN_PHOTO_SIDE} "
            "pixels on each side are needed."
        )
    if width * height > MAX_VIDEO_PIXELS:
        raise InputVideoError(
            f"{what} is {width}x{height} pixels, larger than 4K UHD (3840x2160): downscale it first, "
            "e.g. ffmpeg -i in.mp4 -vf scale=-2:1080 out.mp4"
        )
    if not MIN_FPS <= fps <= MAX_FPS:
        raise InputVideoError(
            f"{what} has a frame rate of {_show(fps)} fps; videos from {MIN_FPS:g} to {MAX_FPS:g} fps "
            "can be edited."
        )
    if frames > limit:
        raise InputVideoError(
            f"{what} has about {frames} frames ({frames / fps:.0f} s at {fps:g} fps), more than the "
            f"limit of {limit}: cut it shorter first, e.g. ffmpeg -i in.mp4 -t 60 -c copy short.mp4"
        )
    return limit


# --- meshes ---------------------------------------------------------------------------------------------


def check_mesh_resolution(resolution, device=None, allow_slow: bool = False) -> int:
    """One of MESH_RESOLUTIONS; above CPU_MESH_RESOLUTION on a CPU only with allow_slow=True.

    device: where the mesh is made (torch.device or its name); None checks only the allowed set.
    """
    allowed = f"{', '.join(map(str, MESH_RESOLUTIONS[:-1]))} or {MESH_RESOLUTIONS[-1]}"

    def message(given) -> str:
        return f"The mesh resolution must be {allowed} (density samples per side), not {given}."

    value = _whole(resolution, message)
    if value not in MESH_RESOLUTIONS:
        raise InvalidValueError(message(value))
    on_cpu = device is not None and str(device).split(":")[0] == "cpu"
    if value > CPU_MESH_RESOLUTION and on_cpu and not allow_slow:
        raise InvalidValueError(
            f"A {value}³ mesh takes several minutes and gigabytes of memory on a CPU: use a resolution of "
            f"at most {CPU_MESH_RESOLUTION} there, or ask for it anyway with allow_slow=True "
            "(--allow-slow on the command line)."
        )
    return value


def check_mesh_threshold(threshold) -> float | str:
    """The density level of a mesh's surface: "auto" (or None) to let `preim3d.mesh` choose, or a finite σ."""
    if threshold is None or (isinstance(threshold, str) and threshold.strip().lower() == "auto"):
        return "auto"
    value = _number(threshold)
    if value is None:
        raise InvalidValueError(
            "The mesh threshold must be 'auto' or a density σ (the official level is 10), "
            f"not {_show(threshold)}."
        )
    return value


# --- refinement -----------------------------------------------------------------------------------------


def check_refine_steps(steps) -> int:
    """Optimisation steps after the encoder's one-pass guess: a whole number from 0 to MAX_REFINE_STEPS."""

    def message(given) -> str:
        return f"The refine steps must be a whole number from 0 to {MAX_REFINE_STEPS}, not {given}."

    value = _whole(steps, message)
    if not 0 <= value <= MAX_REFINE_STEPS:
        raise InvalidValueError(message(value))
    return value


# --- numbers --------------------------------------------------------------------------------------------


def _number(value) -> float | None:
    """A finite float from a number or its text; None for anything else (booleans, NaN, ±inf, words)."""
    if isinstance(value, bool):
        return None
    try:
        number = float(value.strip()) if isinstance(value, str) else float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def _whole(value, message) -> int:
    """An int from an int, a whole float (12.0, as forms send numbers) or its text; else message(given)."""
    number = _number(value)
    if number is None or number != int(number):
        raise InvalidValueError(message(_show(value)))
    return int(number)


def _show(value) -> str:
    """A value as messages show it: numbers, and text that reads as one, as 12, 2.5, 1e+09; else its repr."""
    if isinstance(value, str) and _number(value) is not None:
        value = _number(value)
    return f"{value:g}" if isinstance(value, numbers.Real) and not isinstance(value, bool) else repr(value)
