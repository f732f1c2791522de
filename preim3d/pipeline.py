"""The whole chain in one object: photo -> aligned crop -> W+ code -> edited code -> images, video, mesh.

    editor = preim3d.Editor.from_pretrained()              # weights: see preim3d.weights.resolve
    result = editor.edit_photo("me.jpg", {"smile": 2, "age": -1})
    result.image.save("edited.png")

    face = editor.align("me.jpg")                          # each stage on its own
    ws = editor.invert(face)                               # [1, 14, 512]
    ws_edit = editor.edit(ws, {"glasses": 3}, precise=True)
    editor.grid(ws_edit).save("views.png")
    editor.turntable(ws_edit, "turntable.mp4")
    editor.mesh(ws_edit, "head.glb")
    editor.save_latent(ws_edit, "me.npz")
    editor.save_pretrained("my-bundle")                    # Editor.from_pretrained("my-bundle") loads it

Codes returned to the caller are float32 CPU tensors (small, and usable with autograd); the
networks run on `editor.device`. Renders of one code share its tri-planes through the renderer's
cache, so a grid, a video and a mesh of the same code run the backbone once.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from .align import AlignedFace, align_face, paste_back
from .cameras import camera_vector
from .distributed import default_device
from .editing import CODE_DIM, NUM_WS, W_DIM, DirectionBank
from .errors import LatentFileError, WeightsError
from .images import load_image
from .inversion import compute_latent_avg, invert
from .refine import (
    RefineSettings,
    crop_target,
    delta_state,
    generator_fingerprint,
    refine_generator,
    tuned_copy,
    weights_digest,
)
from .rendering import TriPlaneRenderer, depths_to_uint8, multiview_grid, uint8_images
from .validation import (
    MIN_PHOTO_SIDE,
    check_angles,
    check_edits,
    check_mesh_resolution,
    check_refine_steps,
)
from .weights.bundle import read_bundle_config
from .weights.checks import check_latent_avg
from .weights.encoder import (
    OFFICIAL_LICENCE,
    encoder_from_official,
    load_encoder,
    load_latent_avg,
    save_encoder,
    save_latent_avg,
)
from .weights.generator import EG3D_LICENCE, load_generator, save_generator
from .weights.resolve import WeightsLocation, resolve_weights

LATENT_KEY = "latents"  # the array name fit-direction's --latents files use too


@dataclass
class EditResult:
    """What `Editor.edit_photo` made: the face, both codes and the renders from the photo's camera."""

    photo: Image.Image | None  # the input, upright RGB (None where a folder run did not keep it)
    face: AlignedFace
    ws: torch.Tensor  # [1, 14, 512] inverted code
    edited_ws: torch.Tensor  # [1, 14, 512] after the edits
    edits: dict[str, float]
    pose: tuple[float, float]  # (yaw, pitch) the renders were made from
    reconstruction: Image.Image  # render of ws
    image: Image.Image  # render of edited_ws
    head: Editor | None = None  # the RefinedHead that made the renders, when refine > 0

    def pasted(self, feather: float = 0.15) -> Image.Image:
        """The edited render blended back into the photo (see `preim3d.align.paste_back`)."""
        return paste_back(self.photo, self.image, self.face, feather=feather)


class Editor:
    """Generator, encoder, latent average and directions on one device, with a caching renderer.

    Build it with `from_pretrained` (bundle folder, Hub repo id, folder of official files, or the
    default weights), `from_bundle`, `from_official`, or directly from loaded networks; write it
    as a bundle with `save_pretrained`. `provenance` and `licences` map component names
    ("generator", "encoder", "latent_avg") to where the weights came from and their terms; the
    loaders fill them and `save_pretrained` writes them.
    precision="fast" runs the generator's backbone and super-resolution and the encoder in float16
    on CUDA (float32 elsewhere). deterministic=True renders with fixed depth samples instead of
    the official random ones, so renders repeat without seeding.
    """

    def __init__(
        self,
        generator,
        encoder,
        latent_avg: torch.Tensor,
        directions: DirectionBank | None = None,
        *,
        device=None,
        precision: str = "fp32",
        deterministic: bool = False,
        batch_size: int = 8,
        cache_size: int = 4,
        source: str | None = None,
        provenance: Mapping[str, dict] | None = None,
        licences: Mapping[str, str] | None = None,
    ):
        self.device = torch.device(device) if device is not None else default_device()
        self.generator = generator.to(self.device).eval().set_precision(precision)
        encoder = encoder.to(self.device).eval()
        self.encoder = encoder.fast() if precision == "fast" else encoder
        # save_pretrained writes the encoder's own weights (the fast copy has its batch norms folded).
        self._encoder_weights = encoder.cpu() if precision == "fast" else encoder
        self.latent_avg = latent_avg.to(self.device, torch.float32)
        self.directions = directions
        self.deterministic = deterministic
        self.renderer = TriPlaneRenderer(self.generator, batch_size=batch_size, cache_size=cache_size)
        self.source = source
        self.provenance = {"generator": dict(getattr(generator, "source_info", {})), **(provenance or {})}
        self.licences = dict(licences or {})

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_pretrained(cls, source=None, device=None, *, revision: str | None = None, **kwargs) -> Editor:
        """Load the weights from `source`, else $PREIM3D_WEIGHTS, else the default folder.

        source: a bundle folder, a Hugging Face Hub repo id holding a bundle (cached; the cache
        only with HF_HUB_OFFLINE=1), or a folder of the official files. device: default CUDA,
        then MPS, then CPU. revision: of a Hub repo. Other keywords go to `Editor(...)`.
        Raises WeightsNotFoundError, naming `preim3d download`, when there are no weights.
        """
        if isinstance(source, WeightsLocation):  # already resolved (the command line does that first)
            location = source
        else:
            location = resolve_weights(source, revision=revision)
        if location.kind == "official":
            return cls.from_official(**location.files, device=device, source=str(location.path), **kwargs)
        return cls.from_bundle(
            location.path, device=device, source=f"{location.path} ({location.origin})", **kwargs
        )

    @classmethod
    def from_bundle(cls, folder, device=None, **kwargs) -> Editor:
        """Load a local bundle folder; its directions are optional (without them, `edit` is unavailable)."""
        device = torch.device(device) if device is not None else default_device()
        sections = {k: v for k, v in read_bundle_config(folder).items() if isinstance(v, dict)}
        has_directions = "directions" in sections
        kwargs.setdefault("source", str(folder))
        kwargs.setdefault("provenance", {k: v.get("provenance", {}) for k, v in sections.items()})
        kwargs.setdefault("licences", {k: v["licence"] for k, v in sections.items() if "licence" in v})
        return cls(
            load_generator(folder, device),
            load_encoder(folder, device),
            load_latent_avg(folder, device),
            DirectionBank.from_bundle(folder) if has_directions else None,
            device=device,
            **kwargs,
        )

    @classmethod
    def from_official(cls, generator, encoder, directions=None, device=None, **kwargs) -> Editor:
        """Load the official files as they are: a generator pickle, preim3d_ffhq.pt and a directions folder.

        The latent average is computed from the generator at each load (a second or so on a GPU);
        convert the files into a bundle (`preim3d convert`) to skip that. As in the conversion, it
        must match the one the encoder checkpoint stores, if any: otherwise the generator is not the
        one the encoder was trained with.
        """
        device = torch.device(device) if device is not None else default_device()
        G = load_generator(generator, device)
        latent_avg = compute_latent_avg(G, device=device)
        E, stored = encoder_from_official(encoder, device)
        if stored is not None:
            check_latent_avg(latent_avg, stored, Path(generator).name, Path(encoder).name)
        kwargs.setdefault("source", f"official files {Path(generator).name}, {Path(encoder).name}")
        kwargs.setdefault(
            "provenance",
            {
                "encoder": {"source": Path(encoder).name, "format": "PREIM3D training checkpoint"},
                "latent_avg": {"computed_from": Path(generator).name},
            },
        )
        kwargs.setdefault("licences", {"generator": EG3D_LICENCE, "encoder": OFFICIAL_LICENCE})
        return cls(
            G,
            E,
            latent_avg,
            DirectionBank.from_dir(directions) if directions is not None else None,
            device=device,
            **kwargs,
        )

    def save_pretrained(self, folder) -> Path:
        """Write the weights as a bundle in `folder` (new or empty), which `Editor.from_pretrained`
        loads back: generator, encoder, latent average and directions (if any), each with its
        provenance and licence. Returns the folder."""
        folder = Path(folder)
        if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
            raise ValueError(
                f"save_pretrained writes a new bundle: {folder} exists and is not an empty folder."
            )
        save_generator(
            self.generator,
            folder,
            self.provenance.get("generator"),
            self.licences.get("generator", EG3D_LICENCE),
        )
        save_encoder(
            self._encoder_weights,
            folder,
            provenance=self.provenance.get("encoder"),
            licence=self.licences.get("encoder"),
        )
        save_latent_avg(self.latent_avg, folder, provenance=self.provenance.get("latent_avg"))
        if self.directions is not None:
            self.directions.save(folder)
        return folder

    def __repr__(self) -> str:
        n = len(self.directions) if self.directions is not None else 0
        return (
            f"Editor(device={self.device}, image {self.generator.img_resolution}px, {n} directions, "
            f"source={self.source!r})"
        )

    # ------------------------------------------------------------------ stages

    def align(self, image, face_index: int | None = None, **kwargs) -> AlignedFace:
        """Detect and crop one face (`preim3d.align_face`).

        face_index picks among `detect_faces`' list, from 0; users number faces from 1 (see
        `preim3d.validation.face_index_from_number`).
        """
        return align_face(image, face=face_index, **kwargs)

    def invert(self, faces) -> torch.Tensor:
        """Aligned faces (or their 512 crops; one or a list) -> W+ codes [N, 14, 512], float32 CPU."""
        with torch.inference_mode():
            ws = invert(self.encoder, self.latent_avg, faces).cpu()
        return ws.clone()  # a normal tensor: inference-mode tensors refuse autograd later

    def edit(
        self, ws, edits: Mapping[str, float], *, precise: bool = False, hold: Iterable[str] = ()
    ) -> torch.Tensor:
        """ws + attribute edits, e.g. {"smile": 2, "age": -1} (see `DirectionBank.apply`).

        precise=True, or attributes in `hold`, gives the precise edit: each target's score moves by
        exactly its strength and the held attributes' scores stay put.
        """
        if self.directions is None:
            raise WeightsError(
                f"These weights ({self.source}) hold no editing directions: add some with "
                "`preim3d convert --directions FOLDER --out BUNDLE` or `preim3d fit-direction`."
            )
        return self.directions.apply(torch.as_tensor(ws).cpu(), edits, hold=hold, precise=precise)

    def refine(self, face, ws=None, steps: int = 300, *, pose=None, progress=None, **options) -> RefinedHead:
        """Pivotal tuning for one photo (`preim3d.refine`): a `RefinedHead`, an Editor whose generator
        renders this face's code as the aligned crop, more faithfully than the encoder alone.

        face: an AlignedFace (its crop is the target, its estimated camera the pose) or an aligned
        512 crop (frontal unless pose=(yaw, pitch) radians is given). ws: the code to keep (default:
        the encoder's). steps: 0 to 1000 (seconds on a GPU; on a CPU several seconds each at full
        size, estimated in the log before the rest). progress(done, total) after each step.
        Keywords: identity (an ArcFace model for the identity term), lpips=False, and
        `preim3d.refine.RefineSettings` fields (rank, learning_rate, loss weights, ...). The editor's
        own generator is not changed; the edit term keeps the edits of this editor's directions.
        """
        identity, lpips = options.pop("identity", None), options.pop("lpips", True)
        steps = check_refine_steps(steps)
        if pose is None:
            pose = face.estimate_pose() if hasattr(face, "estimate_pose") else (0.0, 0.0)
        check_angles(*pose)
        settings = RefineSettings(steps=steps, **options)
        ws = self.invert(face) if ws is None else torch.as_tensor(ws).detach().to("cpu", torch.float32)
        bank = self.directions
        directions = None if bank is None else torch.stack([bank.direction(name) for name in bank.names])
        result = refine_generator(
            self.generator,
            ws,
            crop_target(face, self.generator.img_resolution),
            pose,
            settings,
            directions=directions,
            identity=identity,
            lpips=lpips,
            progress=progress,
        )
        return RefinedHead(
            self,
            result.generator,
            ws,
            pose,
            settings,
            result.losses,
            history=result.history,
            seconds=result.seconds,
        )

    def load_refined(self, path) -> RefinedHead:
        """A refined head saved with `RefinedHead.save`, on these weights (see `refine`)."""
        return RefinedHead.load(self, path)

    def render(self, ws, yaw: float = 0.0, pitch: float = 0.0) -> Image.Image:
        """One code seen from (yaw, pitch) radians off the frontal view, as a PIL image.

        Angles: |yaw| <= π, |pitch| <= π/2 (here and in `depth`, `views`, `grid`); the model knows
        views within about ±0.8 rad yaw and ±0.6 rad pitch.
        """
        return self.views(ws, [yaw], [pitch])[0]

    def render_each(self, ws, yaws, pitches) -> list[Image.Image]:
        """Several codes ws [N, 14, 512], each seen from its own (yaws[i], pitches[i]) radians: N images.

        Renders `renderer.batch_size` codes at a time, which is faster than one `render` per code.
        """
        c = camera_vector(
            torch.as_tensor(yaws, dtype=torch.float32), torch.as_tensor(pitches, dtype=torch.float32)
        )
        with torch.inference_mode():
            batches = self.renderer.render_codes(
                ws, c, deterministic=self.deterministic, outputs=("image",), on_device=uint8_images
            )
            return [Image.fromarray(image) for out in batches for image in out["image"].numpy()]

    def depth(self, ws, yaw: float = 0.0, pitch: float = 0.0) -> Image.Image:
        """The depth map of one view (neural rendering resolution, near = bright) as a grayscale image."""
        gray = self._render(
            ws,
            camera_vector([yaw], [pitch]),
            outputs=("image_depth",),
            on_device=lambda out: {"gray": depths_to_uint8(out["image_depth"])},
        )["gray"]
        return Image.fromarray(gray[0].numpy())

    def views(self, ws, yaws, pitches=0.0) -> list[Image.Image]:
        """One code from several cameras: yaws and pitches are sequences of equal length or numbers."""
        yaw, pitch = torch.broadcast_tensors(
            torch.as_tensor(yaws, dtype=torch.float32).reshape(-1),
            torch.as_tensor(pitches, dtype=torch.float32).reshape(-1),
        )
        # Converted to uint8 where they were rendered: only those bytes travel to the host.
        images = self._render(ws, camera_vector(yaw, pitch), outputs=("image",), on_device=uint8_images)
        return [Image.fromarray(image) for image in images["image"].numpy()]

    def grid(
        self, ws, yaws=(-math.pi / 9, math.pi / 9), pitches=(-math.pi / 36, math.pi / 36)
    ) -> Image.Image:
        """One image of every (yaw, pitch) pair: a row per pitch, a column per yaw (default PREIM3D's 2x2)."""
        with torch.inference_mode():
            return multiview_grid(self.renderer, _one(ws), yaws, pitches, deterministic=self.deterministic)

    def turntable(self, ws, path, frames: int = 120, fps: float = 60, **kwargs) -> Path:
        """An mp4 of the code on the official turntable path (see `preim3d.turntable.render_turntable`).

        Keywords: size, depth (add a depth panel), side_by_side (photos or codes shown beside it),
        cameras (another path), progress. frames: 1 to 3600; fps: 1 to 120 (see `preim3d.validation`).
        """
        from .turntable import render_turntable  # loads imageio-ffmpeg: only when a video is made

        kwargs.setdefault("deterministic", self.deterministic)
        with torch.inference_mode():
            return render_turntable(self.renderer, _one(ws), path, frames=frames, fps=fps, **kwargs)

    def mesh(self, ws, path=None, resolution: int = 256, *, allow_slow: bool = False, **kwargs):
        """The head's surface as a coloured trimesh.Trimesh,
        also written to `path` (.glb, .ply, .obj) if given.

        resolution: density samples per side, 64, 128, 256 or 512; 512 on a CPU only with
        allow_slow=True (it takes minutes there). Keywords go to `preim3d.mesh.extract_mesh`:
        threshold ("auto", the default: the official level 10, or one from the density with a
        MeshLevelWarning where it never gets there; or a density σ), trim, progress.
        """
        from .mesh import export_mesh, extract_mesh  # loads trimesh and scikit-image: only for meshes

        resolution = check_mesh_resolution(resolution, self.device, allow_slow)
        ws = _one(ws)
        with torch.inference_mode():
            mesh = extract_mesh(
                self.generator, ws, resolution=resolution, planes=self.renderer.planes(ws), **kwargs
            )
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            export_mesh(mesh, path)
        return mesh

    def _render(self, ws, c, **kwargs) -> dict:
        with torch.inference_mode():
            return self.renderer.render(_one(ws), c, deterministic=self.deterministic, **kwargs)

    # ------------------------------------------------------------------ all at once

    def edit_photo(
        self,
        image,
        edits: Mapping[str, float] | None = None,
        *,
        precise: bool = False,
        hold: Iterable[str] = (),
        face_index: int | None = None,
        pose="photo",
        refine: int = 0,
        progress=None,
    ) -> EditResult:
        """Align, invert, edit and render one photo; returns an EditResult.

        face_index: which face, from 0 (None: the default face; see `align`).
        pose: "photo" renders from the camera estimated from the face (so the render lines up with
        the crop and `EditResult.pasted()` fits), "frontal", or a (yaw, pitch) pair in radians.
        With no edits, the edited code is the reconstruction. refine: steps of pivotal tuning
        (`refine`) before rendering, 0 = none; the result's `head` then renders anything else.
        progress(done, total) after each tuning step.
        """
        # values first, so a bad one fails before the slow steps
        if isinstance(pose, str) and pose not in ("photo", "frontal"):
            raise ValueError(f"pose must be 'photo', 'frontal' or (yaw, pitch), not {pose!r}")
        if not isinstance(pose, str):
            check_angles(*pose)
        edits = check_edits(edits or {})
        refine = check_refine_steps(refine)
        photo = load_image(image, min_side=MIN_PHOTO_SIDE)
        face = self.align(photo, face_index)
        ws = self.invert(face)
        edited = self.edit(ws, edits, precise=precise, hold=hold) if edits or hold else ws.clone()
        if isinstance(pose, str):
            pose = face.estimate_pose() if pose == "photo" else (0.0, 0.0)
        yaw, pitch = (float(v) for v in pose)
        head = self.refine(face, ws, refine, progress=progress) if refine else None
        viewer = head or self
        return EditResult(
            photo=photo,
            face=face,
            ws=ws,
            edited_ws=edited,
            edits=edits,
            pose=(yaw, pitch),
            reconstruction=viewer.render(ws, yaw, pitch),
            image=viewer.render(edited, yaw, pitch),
            head=head,
        )

    def edit_video(
        self,
        video,
        out,
        edits: Mapping[str, float] | None = None,
        *,
        precise: bool = False,
        hold: Iterable[str] = (),
        face_index: int | None = None,
        side_by_side: bool = False,
        **kwargs,
    ):
        """Edit one person's face through a video, pasted back into every frame; writes an H.264 mp4.

        face_index: which face of the first frame with faces, from 0 (None: the largest).
        side_by_side: the output shows input | edit. Keywords go to `preim3d.video.edit_video`
        (measure, workers, max_frames, progress). Returns a `preim3d.video.VideoEditReport`.
        """
        from .video import edit_video  # loads imageio-ffmpeg and the worker pool: only for videos

        edits = check_edits(edits or {})
        with torch.inference_mode():
            return edit_video(
                self,
                video,
                out,
                edits,
                precise=precise,
                hold=hold,
                face_index=face_index,
                side_by_side=side_by_side,
                **kwargs,
            )

    # ------------------------------------------------------------------ latent files

    @staticmethod
    def save_latent(ws, path, metadata: Mapping[str, str] | None = None) -> Path:
        """See `save_latent`."""
        return save_latent(ws, path, metadata)

    @staticmethod
    def load_latent(path, with_metadata: bool = False):
        """See `load_latent`."""
        return load_latent(path, with_metadata)


# ---------------------------------------------------------------------- a refined head

HEAD_FORMAT = "preim3d refined head"
HEAD_VERSION = "1"
DELTA_PREFIX = "delta."


class RefinedHead(Editor):
    """An Editor whose generator is tuned for one photo: it renders, edits, makes grids, turntables,
    meshes and depth maps exactly as the Editor it came from (same code, same encoder, latent average
    and directions), with the tuned weights. Its tri-planes go through the base editor's cache,
    under keys of their own.

        head = editor.refine(face)                  # face = editor.align("me.jpg")
        head.render(head.ws, *head.pose)            # the photo's reconstruction, now faithful
        head.turntable(head.edit(head.ws, {"smile": 2}), "smile.mp4")
        head.save("me.head.safetensors")            # deltas + code + settings, a few MB
        head = editor.load_refined("me.head.safetensors")

    Attributes: base (the Editor), ws (the photo's code [1, 14, 512], never changed by the tuning),
    pose (the photo's (yaw, pitch)), settings (RefineSettings), losses (the terms used), history
    (per-step loss values; empty for a loaded head), seconds (tuning time).
    """

    def __init__(
        self, base: Editor, generator: nn.Module, ws, pose, settings: RefineSettings, losses, **info
    ):
        self.__dict__.update(vars(base))  # device, encoder, latent average, directions, render options
        self.base = base
        self.generator = generator
        generator.weights_key = weights_digest(generator)
        self.renderer = base.renderer.for_generator(generator)
        self.ws = (
            torch.as_tensor(ws).detach().to("cpu", torch.float32).reshape(1, -1, base.latent_avg.shape[-1])
        )
        self.pose = tuple(float(v) for v in pose)
        self.settings = settings
        self.losses = tuple(losses)
        self.history: dict[str, list[float]] = info.get("history", {})
        self.seconds: float = info.get("seconds", 0.0)

    def __repr__(self) -> str:
        return f"RefinedHead({self.settings.steps} steps, losses {', '.join(self.losses)}, of {self.base!r})"

    def refine(self, *args, **kwargs) -> RefinedHead:
        """Refine another photo, from the base weights (see `Editor.refine`)."""
        return self.base.refine(*args, **kwargs)

    def on(self, renderer) -> RefinedHead:
        """The same head rendering through `renderer`'s cache (e.g. another thread's renderer)."""
        view = copy.copy(self)
        view.renderer = renderer.for_generator(self.generator)
        return view

    def reconstruction(self):
        """The photo's code rendered from the photo's camera, as a PIL image."""
        return self.render(self.ws, *self.pose)

    def save_pretrained(self, folder):
        raise TypeError(
            "A refined head is saved with head.save(path) (its deltas and code, beside the base weights); "
            "head.base.save_pretrained(folder) writes the base weights."
        )

    def save(self, path) -> Path:
        """Write the deltas, the code and the settings as one .safetensors file; returns its path."""
        from safetensors.torch import save_file

        path = Path(path)
        if path.suffix != ".safetensors":
            raise ValueError(f"A refined head is saved as .safetensors, not {path.name!r}.")
        tensors = {
            DELTA_PREFIX + k: v.to("cpu", torch.float32).contiguous()
            for k, v in delta_state(self.generator).items()
        }
        tensors[LATENT_KEY] = self.ws.contiguous()
        metadata = {
            "format": HEAD_FORMAT,
            "version": HEAD_VERSION,
            "settings": self.settings.to_json(),
            "pose": json.dumps(list(self.pose)),
            "losses": json.dumps(list(self.losses)),
            "generator": generator_fingerprint(self.base.generator),
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(path), metadata=metadata)
        return path

    @classmethod
    def load(cls, editor: Editor, path) -> RefinedHead:
        """A head saved by `save`, on `editor`'s weights (which must be the ones it was refined on)."""
        from safetensors import safe_open

        path = Path(path)
        base = getattr(editor, "base", editor)
        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = dict(f.metadata() or {})
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as exc:  # missing, damaged or not safetensors
            raise LatentFileError(f"{path} is not a readable refined head ({exc}).") from exc
        if metadata.get("format") != HEAD_FORMAT:
            raise LatentFileError(f"{path} is not a refined head saved by preim3d (RefinedHead.save).")
        if metadata.get("version") != HEAD_VERSION:
            raise LatentFileError(
                f"{path} is a refined head of format version {metadata.get('version')}; "
                f"this preim3d reads version {HEAD_VERSION}."
            )
        if metadata.get("generator") != generator_fingerprint(base.generator):
            raise WeightsError(
                f"{path} was refined on other generator weights than these ({base.source}): load it with "
                "the weights it was made with, or refine the photo again."
            )
        try:
            settings = RefineSettings.from_json(metadata["settings"])
            pose = json.loads(metadata["pose"])
            losses = json.loads(metadata["losses"])
        except (KeyError, ValueError, TypeError) as exc:
            raise LatentFileError(f"{path}: damaged refined-head metadata ({exc}).") from exc
        generator = tuned_copy(base.generator, settings.rank, settings.seed)
        expected = delta_state(generator)
        stored = {k[len(DELTA_PREFIX) :]: v for k, v in tensors.items() if k.startswith(DELTA_PREFIX)}
        wrong = [k for k in expected if k not in stored or stored[k].shape != expected[k].shape]
        if wrong or set(stored) - set(expected) or LATENT_KEY not in tensors:
            raise LatentFileError(
                f"{path}: its deltas do not fit this generator ({len(wrong)} missing or misshapen)."
            )
        with torch.no_grad():
            for name, value in expected.items():
                value.copy_(stored[name])
        return cls(base, generator.requires_grad_(False), tensors[LATENT_KEY], pose, settings, losses)


def _one(ws) -> torch.Tensor:
    """A single code as [1, 14, 512]; a batch of several is refused with a hint."""
    ws = torch.as_tensor(ws)
    if ws.ndim == 2:
        ws = ws[None]
    if ws.ndim != 3 or ws.shape[0] != 1:
        raise ValueError(f"Render one code at a time: got ws of shape {list(ws.shape)}; pass ws[i:i+1].")
    return ws


def save_latent(ws, path, metadata: Mapping[str, str] | None = None) -> Path:
    """Write W+ codes [N, 14, 512] (or one [14, 512]) to .npz or .safetensors under the name 'latents'.

    metadata: short strings (source photo, edits, ...) stored beside them: safetensors metadata,
    or a JSON string array 'metadata' in the .npz. Neither format involves pickling.
    """
    path = Path(path)
    ws = torch.as_tensor(ws).detach().to("cpu", torch.float32)
    if ws.ndim == 2:
        ws = ws[None]
    if ws.ndim != 3 or tuple(ws.shape[1:]) != (NUM_WS, W_DIM):
        raise LatentFileError(f"W+ codes must have shape [N, {NUM_WS}, {W_DIM}], got {list(ws.shape)}.")
    metadata = {str(k): str(v) for k, v in (metadata or {}).items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({LATENT_KEY: ws.contiguous()}, str(path), metadata=metadata or None)
    elif path.suffix == ".npz":
        np.savez(path, **{LATENT_KEY: ws.numpy()}, metadata=np.array(json.dumps(metadata)))
    else:
        raise LatentFileError(
            f"Save latents as .npz or .safetensors, not {path.suffix or 'without a suffix'} ({path.name})."
        )
    return path


def read_arrays(path) -> tuple[dict[str, np.ndarray], dict]:
    """The named arrays and the string metadata of an .npz or .safetensors file, never unpickled."""
    path = Path(path)
    if not path.is_file():
        raise LatentFileError(f"Latent file {path} does not exist.")
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                arrays = {k: f.get_tensor(k).numpy() for k in f.keys()}
                metadata = dict(f.metadata() or {})
        else:
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files if k != "metadata"}
                metadata = json.loads(str(data["metadata"])) if "metadata" in data.files else {}
    except Exception as exc:  # a damaged, pickled or foreign file
        raise LatentFileError(f"{path} is not a readable .npz or .safetensors file ({exc}).") from exc
    return arrays, metadata


def load_latent(path, with_metadata: bool = False):
    """W+ codes [N, 14, 512] float32 from an .npz or .safetensors file (never unpickled).

    The array is 'latents' (as `save_latent` and fit-direction write), 'ws', or the file's only
    array; [N, 7168] rows are reshaped. with_metadata=True returns (codes, metadata dict).
    """
    found, metadata = read_arrays(path)
    arrays = {k: torch.from_numpy(v) for k, v in found.items() if v.dtype.kind in "fiu"}
    key = next((k for k in (LATENT_KEY, "ws") if k in arrays), None)
    if key is None and len(arrays) == 1:
        key = next(iter(arrays))
    if key is None:
        raise LatentFileError(
            f"{path} has no array 'latents' or 'ws' (it has: {', '.join(arrays) or 'none'})."
        )
    ws = arrays[key].float()
    if ws.shape[-1] == CODE_DIM and ws.ndim in (1, 2):
        ws = ws.reshape(-1, NUM_WS, W_DIM)
    if ws.ndim == 2:
        ws = ws[None]
    if ws.ndim != 3 or tuple(ws.shape[1:]) != (NUM_WS, W_DIM):
        raise LatentFileError(
            f"{path}: '{key}' has shape {list(ws.shape)}; W+ codes are [N, {NUM_WS}, {W_DIM}]."
        )
    if not torch.isfinite(ws).all():
        raise LatentFileError(f"{path}: '{key}' holds NaN or infinite values.")
    return (ws, metadata) if with_metadata else ws
