"""What the demo's controls and API endpoints do: component values in, the public preim3d API, values out.

Nothing here lays out the page (that is `demo.ui`). Two lanes share the networks:

* short work (a photo, an edit, a new view, a grid, a depth map) runs in the queue's "gpu"
  concurrency group, one request at a time, with the Editor's own renderer and tri-plane cache;
* long work (turntable videos, meshes) runs in the "long" group on `Handlers.long_editor`, the same
  networks with a renderer and cache of its own, so a slider edit is answered while a video renders.

What both lanes share is guarded: finding, aligning and inverting a face holds `_prepare_lock` (dlib
and the encoder's CUDA graphs are not for two threads at once). Errors a user can act on (no face,
unreadable file, bad value) become `gr.Error`, which the page shows as a message and gradio_client
raises as AppError; anything unexpected is logged with its traceback and shown as a message too.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import logging
import math
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import gradio as gr
import torch
from PIL import Image, ImageDraw

from preim3d import (
    AlignedFace,
    Editor,
    InputImageError,
    NoFaceError,
    Preim3DError,
    TriPlaneRenderer,
    align_face,
    detect_faces,
    load_image,
    load_latent,
    paste_back,
    save_latent,
)
from preim3d.editing import ATTRIBUTE_GROUPS, attribute_label, friendly_name
from preim3d.validation import (
    CPU_MESH_RESOLUTION,
    MESH_RESOLUTIONS,
    MIN_PHOTO_SIDE,
    check_angles,
    check_edits,
    check_face_index,
    check_frames,
    check_mesh_resolution,
    face_index_from_number,
)

if TYPE_CHECKING:
    from preim3d.align import FaceDetection

log = logging.getLogger("demo")

# The sliders most people reach for first, shown above the grouped ones; a bank without one skips it.
QUICK_EDITS = ("Smiling", "Young", "Eyeglasses", "No_Beard", "Male", "Wearing_Lipstick")
# The sliders' camera range: the official web demo's 0.8 and 0.6 rad, where the model knows the views,
# in whole degrees. (The HTTP API takes any angle `preim3d.validation` allows.)
YAW_LIMIT = round(math.degrees(0.8))
PITCH_LIMIT = round(math.degrees(0.6))
VIDEO_FPS = 30
DEFAULT_FRAMES = 120
MAX_FRAMES = 480  # the page's and the API's limit: 16 s of video, under `preim3d.validation`'s
OUTPUT_MAX_AGE = 3600  # seconds a written video, mesh or latent file is kept (gradio serves its own copy)
PROGRESS = gr.Progress()  # as a default it marks the progress argument; updates reach the calling event
NO_FACE = (
    "No face was found in this photo. Use a photo where one face looks roughly toward the camera, "
    "is not hidden, and is at least 64 pixels wide."
)


@dataclass(frozen=True, eq=False)  # compared and hashed by identity: gradio may hash state values
class Session:
    """One browser session's work: the photo (None when started from a latent file) and its codes."""

    name: str  # file stem for downloads
    ws: torch.Tensor  # [1, 14, 512] inverted or loaded code
    edited: torch.Tensor  # ws after the current edits
    pose: tuple[float, float] = (0.0, 0.0)  # (yaw, pitch) radians of the photo's camera
    photo: Image.Image | None = None
    face: AlignedFace | None = None
    edits: dict[str, float] = field(default_factory=dict)
    precise: bool = False
    hold: tuple[str, ...] = ()


@dataclass(frozen=True)
class Prepared:
    """A photo's faces (detected once) and the chosen one, aligned from that detection and inverted."""

    photo: Image.Image
    faces: list[FaceDetection]
    number: int  # the face's number as users count: 1 is the first of `faces`
    face: AlignedFace
    ws: torch.Tensor
    pose: tuple[float, float]


# ---------------------------------------------------------------------------------- errors


def problem(message: str) -> gr.Error:
    """An error the page shows to the user; it is the user's to fix, so the server log gets no traceback."""
    return gr.Error(message, print_exception=False)


def handled(fn: Callable) -> Callable:
    """Every handler's guard: preim3d's errors and bad values become a message the page shows; anything
    else is logged with its traceback and becomes a message too, so no request fails silently."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except (Preim3DError, ValueError) as exc:
            raise problem(str(exc)) from exc
        except Exception as exc:
            log.exception("%s failed", fn.__name__)
            raise problem(
                f"Something went wrong on the server ({type(exc).__name__}: {exc}). The details are in the "
                "server's log; try again, or with another photo."
            ) from exc

    return wrapper


# ---------------------------------------------------------------------------------- user values


def face_index(number, count: int) -> int:
    """A face number as users count (1 = the first face listed; None: 1) -> the library's 0-based index."""
    return check_face_index(face_index_from_number(1 if number is None else number), count)


def check_view(yaw, pitch) -> tuple[float, float]:
    """Yaw and pitch in degrees, as the page and the API take them, checked as the library checks radians."""

    def radians(value):
        try:
            return value if isinstance(value, bool) else math.radians(float(value))
        except (TypeError, ValueError, OverflowError):
            return value  # not a number: check_angles says so

    check_angles(radians(yaw), radians(pitch))
    return float(yaw), float(pitch)


def mesh_resolutions(device) -> list[int]:
    """The mesh resolutions the page offers on `device`: a CPU takes minutes for the finest."""
    return [r for r in MESH_RESOLUTIONS if device.type != "cpu" or r <= CPU_MESH_RESOLUTION]


def parse_edits(edits) -> dict[str, float]:
    """{"smile": 2, "age": -1} as a dict or its JSON text -> {name: strength}; empty for None or ""."""
    if edits is None or edits == "":
        return {}
    if isinstance(edits, str):
        try:
            edits = json.loads(edits)
        except json.JSONDecodeError as exc:
            raise ValueError(f'edits must be a JSON object such as {{"smile": 2, "age": -1}}: {exc}') from exc
    if not isinstance(edits, dict):
        raise ValueError(
            f'edits must be an object such as {{"smile": 2, "age": -1}}, not {type(edits).__name__}.'
        )
    return check_edits(edits)


def uploaded_path(payload) -> str | None:
    """The file of an upload as gradio hands it over unprocessed (a FileData dict), or a plain path."""
    if payload is None or isinstance(payload, (str, Path)):
        return None if payload is None else str(payload)
    path = payload.get("path")
    if not path:
        raise ValueError("The upload holds no file: upload it again.")
    return path


def read_photo(path) -> Image.Image:
    """The uploaded photo as RGB, big enough to hold a face; messages name the file the user chose."""
    try:
        return load_image(path, min_side=MIN_PHOTO_SIDE)
    except InputImageError as exc:
        message = str(exc)
        for file in (f"the file {str(path)!r}", f"The file {str(path)!r}"):
            message = message.replace(file, f"the photo {Path(path).name}")
        raise InputImageError(message[:1].upper() + message[1:]) from exc


# ---------------------------------------------------------------------------------- sliders


def degrees(pose: tuple[float, float]) -> tuple[int, int]:
    """A pose in radians -> (yaw, pitch) slider values: whole degrees within the sliders' range."""
    yaw, pitch = (round(math.degrees(v)) for v in pose)
    return min(max(yaw, -YAW_LIMIT), YAW_LIMIT), min(max(pitch, -PITCH_LIMIT), PITCH_LIMIT)


def slider_groups(editor: Editor | None) -> dict[str, list[tuple[str, str]]]:
    """Group -> [(attribute, label)] of the sliders: "Main" first, then `ATTRIBUTE_GROUPS`' order.

    Each direction of the editor's bank gets one slider (directions outside the groups go to
    "Other"). Without an editor, the official attributes are laid out, so the page can enable them
    once weights are downloaded.
    """
    bank = editor.directions if editor is not None else None
    known = [a for names in ATTRIBUTE_GROUPS.values() for a in names]
    if editor is not None and bank is None:
        return {}
    names = list(bank.names) if bank is not None else known
    groups = {"Main": [a for a in QUICK_EDITS if a in names]}
    for group, members in ATTRIBUTE_GROUPS.items():
        groups[group] = [a for a in members if a in names and a not in QUICK_EDITS]
    groups["Other"] = [a for a in names if a not in known]
    return {g: [(a, attribute_label(a)) for a in members] for g, members in groups.items() if members}


def hold_choices(editor: Editor | None) -> list[tuple[str, str]]:
    """(label, friendly name) of each direction, for "keep these unchanged"."""
    bank = editor.directions if editor is not None else None
    return [(attribute_label(a), friendly_name(a)) for a in bank.names] if bank is not None else []


class Pace:
    """Seconds per rendered view and per mesh density sample, as measured here: the estimates
    shown before a long job starts."""

    def __init__(self):
        self.frame: float | None = None
        self.sample: float | None = None
        self.samples_per_frame: int | None = None

    def frames_done(self, seconds: float, frames: int) -> None:
        self.frame = seconds / frames if self.frame is None else 0.5 * self.frame + 0.5 * seconds / frames

    def mesh_done(self, seconds: float, resolution: int) -> None:
        self.sample = seconds / resolution**3

    def turntable(self, frames: int) -> float | None:
        return None if self.frame is None else self.frame * frames

    def mesh(self, resolution: int) -> float | None:
        if self.sample is not None:
            return self.sample * resolution**3
        if self.frame is None or not self.samples_per_frame:
            return None
        return self.frame / self.samples_per_frame * resolution**3  # a view's samples cost about as much


def about(seconds: float | None) -> str:
    if seconds is None:
        return "no estimate yet (render a view first)"
    if seconds < 90:
        return f"about {max(1, round(seconds))} s"
    return f"about {seconds / 60:.0f} min"


# ---------------------------------------------------------------------------------- handlers


class Handlers:
    """The callbacks of one demo page, around one Editor (None until weights are found or downloaded)."""

    def __init__(self, editor: Editor | None, unavailable: str | None = None, examples: Sequence = ()):
        self.unavailable = unavailable  # why there is no editor: shown on the page and in every API error
        self.editor: Editor | None = None
        self.long_editor: Editor | None = None
        self.pace = Pace()
        self._examples = {digest(path) for path in examples}
        self._prepared: dict[tuple[str, int], Prepared] = {}  # example photos, filled at first use
        self._prepare_lock = threading.Lock()
        self._outputs = Path(tempfile.mkdtemp(prefix="preim3d-demo-"))
        self.attributes: list[str] = []  # the order of the sliders' values; fixed when the page is built
        if editor is not None:
            self.set_editor(editor)

    def set_editor(self, editor: Editor) -> None:
        """Serve `editor` (at start, or once the weights were downloaded from the page)."""
        # the long lane: the same networks with a renderer, and a tri-plane cache, of its own
        long_editor = copy.copy(editor)
        long_editor.renderer = TriPlaneRenderer(editor.generator, batch_size=editor.renderer.batch_size)
        G = editor.generator
        kwargs = getattr(G, "rendering_kwargs", {})
        samples = kwargs.get("depth_resolution", 0) + kwargs.get("depth_resolution_importance", 0)
        self.pace.samples_per_frame = G.neural_rendering_resolution**2 * samples
        self.long_editor, self.editor = long_editor, editor

    def summary(self) -> str:
        """One line for the terminal: which weights are served, or how to get them."""
        if self.editor is None:
            return (
                f"preim3d demo: no weights loaded. {self.unavailable or ''} Or open the page and use its "
                "Download button."
            )
        return f"preim3d demo: serving {self.editor}"

    # ------------------------------------------------------------------ shared steps

    def _editor(self, lane: str = "short") -> Editor:
        if self.editor is None:
            raise problem(self.unavailable or "No model weights are loaded.")
        return self.long_editor if lane == "long" else self.editor

    def _prepare(self, path, face) -> Prepared:
        """Read, detect (once), align the chosen face from that detection and invert it.
        Example photos are computed once and then reused."""
        editor = self._editor()
        number = 1 if face is None else face
        with self._prepare_lock:
            key = digest(path) if self._examples else None
            if key in self._examples and (key, number) in self._prepared:
                return self._prepared[key, number]
            photo = read_photo(path)
            faces = detect_faces(photo)
            if not faces:
                raise NoFaceError(NO_FACE)
            index = face_index(number, len(faces))
            aligned = align_face(photo, faces[index])
            ws = editor.invert(aligned)
            prepared = Prepared(photo, faces, index + 1, aligned, ws, aligned.estimate_pose())
            if key in self._examples:
                self._prepared[key, number] = prepared
            return prepared

    def _edit(self, ws, edits: dict[str, float], precise: bool, hold=()) -> torch.Tensor:
        if not edits and not hold:
            return ws.clone()
        return self._editor().edit(ws, edits, precise=precise, hold=hold)

    def _render(self, ws, yaw: float, pitch: float) -> Image.Image:
        """A view from (yaw, pitch) radians; its time feeds the estimates of long jobs."""
        start = time.perf_counter()
        image = self._editor().render(ws, yaw, pitch)
        self.pace.frames_done(time.perf_counter() - start, 1)
        return image

    def _output(self, name: str) -> Path:
        """A fresh path for a file to hand to gradio; files older than OUTPUT_MAX_AGE are removed."""
        cutoff = time.time() - OUTPUT_MAX_AGE
        for old in self._outputs.iterdir():
            if old.stat().st_mtime < cutoff:
                shutil.rmtree(old, ignore_errors=True)
        folder = self._outputs / uuid.uuid4().hex  # keeps `name` readable for the download
        folder.mkdir()
        return folder / name

    # ------------------------------------------------------------------ page: input

    @staticmethod
    def cleared():
        """The outputs of `load_photo` for no photo, and an empty edited view."""
        return (
            None,
            None,
            None,
            gr.update(value=None, visible=False),
            gr.update(visible=False),
            0,
            0,
            "",
            None,
        )

    @handled
    def load_photo(self, photo, face=1):
        """Photo (or face choice) -> state, crop, reconstruction, faces overview,
        face choice, yaw, pitch, status."""
        path = uploaded_path(photo)
        if path is None:  # the photo was cleared
            return self.cleared()[:-1]
        prepared = self._prepare(path, face)
        session = Session(
            name=Path(path).stem,
            ws=prepared.ws,
            edited=prepared.ws,
            pose=prepared.pose,
            photo=prepared.photo,
            face=prepared.face,
        )
        yaw, pitch = degrees(prepared.pose)
        reconstruction = self._render(prepared.ws, *prepared.pose)  # the photo's own camera, exactly
        several = len(prepared.faces) > 1
        status = f"Estimated view of the photo: yaw {yaw}°, pitch {pitch}°."
        if several:
            status = (
                f"**{len(prepared.faces)} faces found; editing face {prepared.number}** (choose another "
                f"below). {status}"
            )
        return (
            session,
            prepared.face.image,
            reconstruction,
            gr.update(value=mark_faces(session.photo, prepared.faces) if several else None, visible=several),
            gr.update(
                choices=[(f"Face {n}", n) for n in range(1, len(prepared.faces) + 1)],
                value=prepared.number,
                visible=several,
            ),
            yaw,
            pitch,
            status,
        )

    @handled
    def load_latent_file(self, latent):
        """A latent file -> the same outputs as `load_photo`, without a photo."""
        path = uploaded_path(latent)
        if path is None:
            return (gr.skip(),) * 8
        codes = load_latent(path)
        ws = codes[:1]
        status = (
            f"Editing the code from {Path(path).name} "
            "(no photo: the aligned crop and paste-back are unavailable)."
        )
        if len(codes) > 1:
            status += f" The file holds {len(codes)} codes; this is the first."
        session = Session(name=Path(path).stem, ws=ws, edited=ws)
        hidden = gr.update(value=None, visible=False)
        return session, None, self._render(ws, 0, 0), hidden, gr.update(visible=False), 0, 0, status

    # ------------------------------------------------------------------ page: edits and camera

    @handled
    def apply_edits(self, session: Session | None, yaw, pitch, precise, hold, *strengths):
        """Slider values -> state with the edited code, edited view from (yaw, pitch) degrees."""
        if session is None:
            return None, None
        edits = {friendly_name(name): float(s) for name, s in zip(self.attributes, strengths) if s}
        hold = tuple(hold or ())
        session = replace(
            session,
            edited=self._edit(session.ws, edits, bool(precise), hold),
            edits=edits,
            precise=bool(precise),
            hold=hold,
        )
        return session, self.render_view(session, yaw, pitch)

    @handled
    def render_view(self, session: Session | None, yaw, pitch):
        """The edited code from another camera; its tri-planes come from the renderer's cache."""
        if session is None:
            return None
        return self._render(session.edited, *map(math.radians, check_view(yaw, pitch)))

    def photo_view(self, session: Session | None):
        """(yaw, pitch) slider values of the photo's own camera."""
        return degrees(session.pose) if session is not None else (0, 0)

    def reset(self, session: Session | None):
        """Every edit slider to 0, precise off, nothing held, the camera back to the photo's view."""
        return (*[0] * len(self.attributes), False, [], *self.photo_view(session))

    def turntable_estimate(self, frames) -> str:
        """What a turntable would take on this machine, shown beside its button."""
        return f"{int(frames)} frames: {about(self.pace.turntable(int(frames)))} here."

    def mesh_estimate(self, resolution) -> str:
        """What a mesh would take on this machine, shown beside its button."""
        return f"{int(resolution)}³ samples: {about(self.pace.mesh(int(resolution)))} here."

    # ------------------------------------------------------------------ page: outputs

    @staticmethod
    def _need(session: Session | None, photo: bool = False) -> Session:
        if session is None:
            raise problem("Upload a photo (or a latent file) first.")
        if photo and session.photo is None:
            raise problem(
                "This needs the photo the code came from: upload a photo rather than a latent file."
            )
        return session

    @handled
    def grid(self, session):
        return self._editor().grid(self._need(session).edited)

    @handled
    def depth(self, session, yaw, pitch):
        session = self._need(session)
        yaw, pitch = check_view(yaw, pitch)
        depth = self._editor().depth(session.edited, math.radians(yaw), math.radians(pitch))
        size = self._editor().generator.img_resolution  # the neural rendering resolution is small
        return depth.resize((size, size), Image.Resampling.BICUBIC)

    @handled
    def pasted(self, session):
        session = self._need(session, photo=True)
        render = self._editor().render(session.edited, *session.pose)  # the photo's camera: it lines up
        return paste_back(session.photo, render, session.face)

    def _turntable(self, ws, name: str, frames, progress, **kwargs) -> str:
        """The long lane's video; reports frames done and the time left."""
        frames = check_frames(DEFAULT_FRAMES if frames is None else frames, MAX_FRAMES)
        path = self._output(name)
        start = time.perf_counter()
        progress((0, frames), desc=f"Rendering {frames} frames, {about(self.pace.turntable(frames))}")
        self._editor("long").turntable(
            ws,
            path,
            frames=frames,
            fps=VIDEO_FPS,
            progress=lambda done, total: progress((done, total), desc="Rendering frames"),
            **kwargs,
        )
        self.pace.frames_done(time.perf_counter() - start, frames)
        return str(path)

    def _mesh(self, ws, name: str, resolution, progress) -> str:
        resolution = check_mesh_resolution(resolution, self._editor("long").device)
        path = self._output(name)
        start = time.perf_counter()
        progress((0, 1), desc=f"Sampling {resolution}³ points, {about(self.pace.mesh(resolution))}")
        self._editor("long").mesh(
            ws,
            path,
            resolution=resolution,
            progress=lambda done, total: progress((done, total), desc="Sampling the density"),
        )
        self.pace.mesh_done(time.perf_counter() - start, resolution)
        return str(path)

    @handled
    def turntable(self, session, frames, side_by_side, depth, progress=PROGRESS):
        session = self._need(session)
        return self._turntable(
            session.edited,
            f"{session.name}-turntable.mp4",
            frames,
            progress,
            depth=bool(depth),
            side_by_side=[session.ws] if side_by_side else None,
        )

    @handled
    def mesh(self, session, resolution, progress=PROGRESS):
        session = self._need(session)
        path = self._mesh(session.edited, f"{session.name}.glb", resolution, progress)
        return path, path

    @handled
    def save_latent(self, session):
        session = self._need(session)
        metadata = {
            "source": session.name,
            "edits": json.dumps(session.edits),
            "precise": str(session.precise),
            "hold": json.dumps(list(session.hold)),
        }
        return str(save_latent(session.edited, self._output(f"{session.name}-edited.npz"), metadata))

    # ------------------------------------------------------------------ API endpoints (stateless)

    def _code(self, photo, latent, face) -> tuple[torch.Tensor, tuple[float, float]]:
        """(code, camera pose) to work on: the latent file's first code (frontal),
        else the photo's face inverted."""
        latent, photo = uploaded_path(latent), uploaded_path(photo)
        if latent is not None:
            return load_latent(latent)[:1], (0.0, 0.0)
        if photo is None:
            raise problem("Give a photo or a latent file (.npz or .safetensors).")
        prepared = self._prepare(photo, face)
        return prepared.ws, prepared.pose

    @handled
    def api_align(self, photo=None, face=1):
        """Photo -> (aligned 512x512 crop of face `face`, {faces, face, boxes, yaw, pitch});
        faces numbered from 1, angles in degrees."""
        path = uploaded_path(photo)
        if path is None:
            raise problem("Give a photo.")
        prepared = self._prepare(path, face)
        yaw, pitch = (math.degrees(v) for v in prepared.pose)
        info = {
            "faces": len(prepared.faces),
            "face": prepared.number,
            "boxes": [[round(v, 1) for v in f.box] for f in prepared.faces],
            "yaw": yaw,
            "pitch": pitch,
        }
        return prepared.face.image, info

    @handled
    def api_invert(self, photo=None, face=1):
        """Photo -> .npz file of the W+ code [1, 14, 512] of face `face`."""
        ws, _ = self._code(photo, None, face)
        name = Path(uploaded_path(photo)).name
        return str(save_latent(ws, self._output(f"{Path(name).stem}.npz"), {"source": name}))

    @handled
    def api_edit(self, photo=None, latent=None, edits=None, yaw=None, pitch=None, precise=False, face=1):
        """Photo or latent + edits -> edited image from (yaw, pitch) degrees; None = the photo's own view."""
        edits = parse_edits(edits)
        check_view(0 if yaw is None else yaw, 0 if pitch is None else pitch)  # before the work
        ws, pose = self._code(photo, latent, face)
        yaw = pose[0] if yaw is None else math.radians(float(yaw))
        pitch = pose[1] if pitch is None else math.radians(float(pitch))
        return self._render(self._edit(ws, edits, bool(precise)), yaw, pitch)

    @handled
    def api_turntable(
        self,
        photo=None,
        latent=None,
        edits=None,
        precise=False,
        frames=DEFAULT_FRAMES,
        face=1,
        progress=PROGRESS,
    ):
        """Photo or latent + edits -> H.264 turntable video of `frames` frames at 30 fps."""
        frames = check_frames(DEFAULT_FRAMES if frames is None else frames, MAX_FRAMES)
        edits = parse_edits(edits)
        ws, _ = self._code(photo, latent, face)
        return self._turntable(self._edit(ws, edits, bool(precise)), "turntable.mp4", frames, progress)

    @handled
    def api_mesh(
        self, photo=None, latent=None, edits=None, precise=False, resolution=128, face=1, progress=PROGRESS
    ):
        """Photo or latent + edits -> binary glTF (.glb) mesh of the head at `resolution`^3 samples."""
        edits = parse_edits(edits)
        ws, _ = self._code(photo, latent, face)
        return self._mesh(self._edit(ws, edits, bool(precise)), "head.glb", resolution, progress)


def digest(path) -> str:
    return hashlib.blake2b(Path(path).read_bytes(), digest_size=16).hexdigest()


def mark_faces(photo: Image.Image, faces: list[FaceDetection], side: int = 768) -> Image.Image:
    """A copy of the photo, at most `side` px, with each face boxed and numbered as in the face choice."""
    scale = min(1.0, side / max(photo.size))
    image = (
        photo.resize((round(photo.width * scale), round(photo.height * scale))) if scale < 1 else photo.copy()
    )
    draw = ImageDraw.Draw(image)
    width = max(2, round(max(image.size) / 200))
    for i, face in enumerate(faces):
        box = [v * scale for v in face.box]
        draw.rectangle(box, outline=(255, 200, 0), width=width)
        draw.text(
            (box[0] + width, box[1] + width), str(i + 1), fill=(255, 200, 0), font_size=max(12, 6 * width)
        )
    return image
