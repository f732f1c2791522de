"""What the demo's controls and API endpoints do: component values in, the public preim3d API, values out.

Nothing here lays out the page (that is `demo.ui`). Every handler that touches the networks runs
in the queue's single "gpu" concurrency group, so the Editor and its tri-plane cache are only
ever used by one request at a time. Errors a user can act on (no face, unreadable file, bad
edit) become `gr.Error`, which the page shows as a message and gradio_client raises as AppError.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import shutil
import tempfile
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
    align_face,
    detect_faces,
    load_image,
    load_latent,
    paste_back,
    save_latent,
)

from .refine import RefineHandlers

if TYPE_CHECKING:
    from preim3d.align import FaceDetection

# The sliders most people reach for first (friendly alias, label); a bank without one just skips it.
QUICK_EDITS = (
    ("smile", "Smile"),
    ("age", "Age (older →)"),
    ("glasses", "Glasses"),
    ("beard", "Beard"),
    ("Male", "Male"),
    ("lipstick", "Lipstick"),
)
STRENGTH_LIMIT = 10.0  # the official web demo's attribute sliders span -10 ... 10
# Camera ranges of the official web demo, 0.8 and 0.6 rad, in the degrees the sliders show.
YAW_LIMIT = round(math.degrees(0.8))
PITCH_LIMIT = round(math.degrees(0.6))
VIDEO_FPS = 30
MAX_FRAMES = 480
MESH_RESOLUTIONS = (64, 128, 256, 512)
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
    refined: str | None = None  # ticket of this session's refined head (demo.refine.HeadStore)


@dataclass(frozen=True)
class Prepared:
    """A photo's faces, the chosen one aligned and inverted, and its reconstruction from the photo's view."""

    photo: Image.Image
    faces: list[FaceDetection]
    index: int
    face: AlignedFace
    ws: torch.Tensor
    pose: tuple[float, float]
    reconstruction: Image.Image


def problem(message: str) -> gr.Error:
    """An error the page shows to the user; it is the user's to fix, so the server log gets no traceback."""
    return gr.Error(message, print_exception=False)


def user_errors(fn: Callable) -> Callable:
    """Turn preim3d's own errors and bad values into gr.Error, whose message the page shows."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except (Preim3DError, ValueError) as exc:
            raise problem(str(exc)) from exc

    return wrapper


def digest(path) -> str:
    return hashlib.blake2b(Path(path).read_bytes(), digest_size=16).hexdigest()


def degrees(pose: tuple[float, float]) -> tuple[float, float]:
    """A pose in radians -> the (yaw, pitch) slider values, rounded and kept within the sliders' range."""
    yaw, pitch = (math.degrees(v) for v in pose)
    return (
        round(min(max(yaw, -YAW_LIMIT), YAW_LIMIT), 1),
        round(min(max(pitch, -PITCH_LIMIT), PITCH_LIMIT), 1),
    )


def slider_attributes(editor: Editor | None) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(quick, more): (name, label) of the sliders shown at once and of those in the accordion.

    Together they cover each direction of the editor's bank once. Without an editor, the quick
    sliders are listed anyway, so the disabled page still shows what it would offer.
    """
    bank = editor.directions if editor is not None else None
    if bank is None:
        return (list(QUICK_EDITS) if editor is None else []), []
    quick = [(name, label) for name, label in QUICK_EDITS if name in bank]
    covered = {bank.resolve(name)[0] for name, _ in quick}
    more = [(name, name.replace("_", " ")) for name in bank.names if name not in covered]
    return quick, more


class Handlers(RefineHandlers):
    """The callbacks of one demo page, around one Editor (None when no weights were found)."""

    refine = user_errors(RefineHandlers.refine)

    def __init__(self, editor: Editor | None, unavailable: str | None = None, examples: Sequence = ()):
        self.editor = editor
        self.unavailable = unavailable  # why there is no editor: shown on the page and in every API error
        quick, more = slider_attributes(editor)
        self.attributes = [name for name, _ in quick + more]  # the order of the sliders' values
        self._examples = {digest(path) for path in examples}
        self._prepared: dict[tuple[str, int], Prepared] = {}  # example photos, filled at first use
        self._outputs = Path(tempfile.mkdtemp(prefix="preim3d-demo-"))

    # ------------------------------------------------------------------ shared steps

    def _editor(self) -> Editor:
        if self.editor is None:
            raise problem(self.unavailable or "No model weights are loaded.")
        return self.editor

    def _prepare(self, path, face: int) -> Prepared:
        """Detect, align, invert and reconstruct; example photos are computed once and then reused."""
        editor = self._editor()
        key = (digest(path), face) if self._examples else None
        example = key is not None and key[0] in self._examples
        if example and key in self._prepared:
            return self._prepared[key]
        photo = read_photo(path)
        faces = detect_faces(photo)
        if not faces:
            raise NoFaceError(NO_FACE)
        if not 0 <= face < len(faces):
            raise problem(f"There is no face {face}: {len(faces)} found, numbered 0 to {len(faces) - 1}.")
        # The first face as the library and command line align it by default, so all give the same crop.
        aligned = align_face(photo) if face == 0 else align_face(photo, faces[face])
        ws = editor.invert(aligned)
        pose = aligned.estimate_pose()
        prepared = Prepared(photo, faces, face, aligned, ws, pose, editor.render(ws, *pose))
        if example:
            self._prepared[key] = prepared
        return prepared

    def _edit(self, ws, edits: dict[str, float], precise: bool, hold=()) -> torch.Tensor:
        if not edits and not hold:
            return ws.clone()
        return self._editor().edit(ws, edits, precise=precise, hold=hold)

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

    @user_errors
    def load_photo(self, path, face=0):
        """Photo (or face choice) -> state, crop, reconstruction, faces overview,
        face choice, yaw, pitch, status."""
        if path is None:  # the photo was cleared
            return self.cleared()[:-1]
        face = int(face or 0)
        prepared = self._prepare(path, face)
        session = Session(
            name=Path(path).stem,
            ws=prepared.ws,
            edited=prepared.ws,
            pose=prepared.pose,
            photo=prepared.photo,
            face=prepared.face,
        )
        several = len(prepared.faces) > 1
        choices = [(f"Face {i + 1}", i) for i in range(len(prepared.faces))]
        yaw, pitch = degrees(prepared.pose)
        status = f"Estimated view of the photo: yaw {yaw:.0f}°, pitch {pitch:.0f}°."
        if several:
            status = (
                f"**{len(prepared.faces)} faces found; editing face {face + 1}** (choose another below the "
                f"photo). {status}"
            )
        return (
            session,
            prepared.face.image,
            prepared.reconstruction,
            gr.update(value=mark_faces(session.photo, prepared.faces) if several else None, visible=several),
            gr.update(choices=choices, value=face, visible=several),
            yaw,
            pitch,
            status,
        )

    @user_errors
    def load_latent_file(self, path):
        """A latent file -> the same outputs as `load_photo`, without a photo."""
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
        return (
            session,
            None,
            self._editor().render(ws),
            gr.update(value=None, visible=False),
            gr.update(visible=False),
            0,
            0,
            status,
        )

    # ------------------------------------------------------------------ page: edits and camera

    @user_errors
    def apply_edits(self, session: Session | None, yaw, pitch, precise, hold, *strengths):
        """Slider values -> state with the edited code, edited view from (yaw, pitch) degrees."""
        if session is None:
            return None, None
        edits = {name: float(s) for name, s in zip(self.attributes, strengths) if s}
        hold = tuple(hold or ())
        session = replace(
            session,
            edited=self._edit(session.ws, edits, bool(precise), hold),
            edits=edits,
            precise=bool(precise),
            hold=hold,
        )
        return session, self.render_view(session, yaw, pitch)

    @user_errors
    def render_view(self, session: Session | None, yaw, pitch):
        """The edited code from another camera; its tri-planes come from the renderer's cache."""
        if session is None:
            return None
        return self.viewer(session).render(session.edited, math.radians(yaw), math.radians(pitch))

    def photo_view(self, session: Session | None):
        """(yaw, pitch) slider values of the photo's own camera."""
        return degrees(session.pose) if session is not None else (0, 0)

    def reset(self, session: Session | None):
        """Every edit slider to 0, precise off, nothing held, the camera back to the photo's view."""
        return (*[0] * len(self.attributes), False, [], *self.photo_view(session))

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

    @user_errors
    def grid(self, session):
        return self.viewer(self._need(session)).grid(session.edited)

    @user_errors
    def depth(self, session, yaw, pitch):
        session = self._need(session)
        depth = self.viewer(session).depth(session.edited, math.radians(yaw), math.radians(pitch))
        size = self._editor().generator.img_resolution
        return depth.resize(
            (size, size), Image.Resampling.BICUBIC
        )  # the neural rendering resolution is small

    @user_errors
    def pasted(self, session):
        session = self._need(session, photo=True)
        render = self.viewer(session).render(
            session.edited, *session.pose
        )  # from the photo's camera, so it lines up
        return paste_back(session.photo, render, session.face)

    @user_errors
    def turntable(self, session, frames, side_by_side, depth, progress=PROGRESS):
        session = self._need(session)
        path = self._output(f"{session.name}-turntable.mp4")
        self.viewer(session).turntable(
            session.edited,
            path,
            frames=int(frames),
            fps=VIDEO_FPS,
            depth=bool(depth),
            side_by_side=[session.ws] if side_by_side else None,
            progress=lambda done, total: progress((done, total), desc="Rendering frames"),
        )
        return str(path)

    @user_errors
    def mesh(self, session, resolution, progress=PROGRESS):
        session = self._need(session)
        path = self._output(f"{session.name}.glb")
        self.viewer(session).mesh(
            session.edited,
            path,
            resolution=int(resolution),
            progress=lambda done, total: progress((done, total), desc="Sampling the density"),
        )
        return str(path), str(path)

    @user_errors
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
        if latent is not None:
            return load_latent(latent)[:1], (0.0, 0.0)
        if photo is None:
            raise problem("Give a photo or a latent file (.npz or .safetensors).")
        prepared = self._prepare(photo, int(face or 0))
        return prepared.ws, prepared.pose

    @user_errors
    def api_align(self, photo=None, face=0):
        """Photo -> (aligned 512x512 crop of face `face`, {faces, face, boxes, yaw, pitch});
        angles in degrees."""
        if photo is None:
            raise problem("Give a photo.")
        prepared = self._prepare(photo, int(face or 0))
        yaw, pitch = (math.degrees(v) for v in prepared.pose)
        info = {
            "faces": len(prepared.faces),
            "face": prepared.index,
            "boxes": [[round(v, 1) for v in f.box] for f in prepared.faces],
            "yaw": yaw,
            "pitch": pitch,
        }
        return prepared.face.image, info

    @user_errors
    def api_invert(self, photo=None, face=0):
        """Photo -> .npz file of the W+ code [1, 14, 512] of face `face`."""
        ws, _ = self._code(photo, None, face)
        return str(save_latent(ws, self._output(f"{Path(photo).stem}.npz"), {"source": Path(photo).name}))

    @user_errors
    def api_edit(
        self, photo=None, latent=None, edits=None, yaw=None, pitch=None, precise=False, face=0, refine_steps=0
    ):
        """Photo or latent + edits -> edited image from (yaw, pitch) degrees; None = the photo's own view."""
        viewer, ws, pose = self.api_viewer(photo, latent, face, refine_steps)
        pose = (
            pose[0] if yaw is None else math.radians(yaw),
            pose[1] if pitch is None else math.radians(pitch),
        )
        return viewer.render(self._edit(ws, parse_edits(edits), bool(precise)), *pose)

    @user_errors
    def api_turntable(
        self,
        photo=None,
        latent=None,
        edits=None,
        precise=False,
        frames=120,
        face=0,
        refine_steps=0,
        progress=PROGRESS,
    ):
        """Photo or latent + edits -> H.264 turntable video of `frames` frames at 30 fps."""
        frames = int(frames or 120)
        if not 1 <= frames <= MAX_FRAMES:
            raise problem(f"frames must be between 1 and {MAX_FRAMES}, not {frames}.")
        viewer, ws, _ = self.api_viewer(photo, latent, face, refine_steps, progress)
        path = self._output("turntable.mp4")
        viewer.turntable(
            self._edit(ws, parse_edits(edits), bool(precise)),
            path,
            frames=frames,
            fps=VIDEO_FPS,
            progress=lambda done, total: progress((done, total)),
        )
        return str(path)

    @user_errors
    def api_mesh(
        self, photo=None, latent=None, edits=None, precise=False, resolution=128, face=0, refine_steps=0
    ):
        """Photo or latent + edits -> binary glTF (.glb) mesh of the head at `resolution`^3 samples."""
        resolution = int(resolution or 128)
        if resolution not in MESH_RESOLUTIONS:
            raise problem(
                f"resolution must be one of {', '.join(map(str, MESH_RESOLUTIONS))}, not {resolution}."
            )
        viewer, ws, _ = self.api_viewer(photo, latent, face, refine_steps)
        path = self._output("head.glb")
        viewer.mesh(self._edit(ws, parse_edits(edits), bool(precise)), path, resolution=resolution)
        return str(path)


def read_photo(path) -> Image.Image:
    """The uploaded photo as RGB; messages name the file the user chose, not gradio's copy of it."""
    try:
        return load_image(path)
    except InputImageError as exc:
        message = str(exc).replace(f"the file {str(path)!r}", f"the photo {Path(path).name}")
        raise InputImageError(message[:1].upper() + message[1:]) from exc


def parse_edits(edits) -> dict[str, float]:
    """{"smile": 2, "age": -1} as a dict or its JSON text -> {name: strength}; empty for None or ""."""
    if edits is None or edits == "":
        return {}
    if isinstance(edits, str):
        try:
            edits = json.loads(edits)
        except json.JSONDecodeError as exc:
            raise problem(f'edits must be a JSON object such as {{"smile": 2, "age": -1}}: {exc}') from exc
    if not isinstance(edits, dict):
        raise problem(
            f'edits must be an object such as {{"smile": 2, "age": -1}}, not {type(edits).__name__}.'
        )
    try:
        return {str(name): float(strength) for name, strength in edits.items()}
    except (TypeError, ValueError) as exc:
        raise problem(f"Each edit strength must be a number: {exc}") from exc


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
