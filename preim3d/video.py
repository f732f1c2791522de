"""Editing the face in a video: follow one person, edit their face in 3D, paste it back into every frame.

    report = edit_video(editor, "me.mp4", "out.mp4", {"smile": 2})    # or Editor.edit_video(...)

The chain runs on chunks of frames (at most 128 MB of pixels each), in four overlapped stages, so
memory is bounded whatever the clip's length:

1. Decode (`preim3d.mp4.VideoReader`, a thread): upright RGB frames at the clip's constant rate.
2. Follow (`preim3d.tracking.FaceFollower`, a thread driving a pool of processes for dlib): faces
   are detected on key frames, the chosen face is matched from one observation to the next, every
   frame is detected where it appears, vanishes or jumps (a cut), a face found again after a loss
   is recognised by its descriptor, and the 68 landmarks are found on every frame with the face.
3. Edit (the caller's thread, on the editor's device): the landmarks are smoothed over time by a
   One-Euro filter (`OneEuroFilter`), which gives the crops (EG3D's crop geometry,
   `preim3d.align.crop_transform`) and the cameras (`preim3d.align.estimate_poses`). The crops are
   cut from the frames on the device, inverted in batches, the codes smoothed by a One-Euro filter
   driven by the same face speed, edited (a constant step in W+, computed once), and rendered,
   each frame's code at its own camera. Each render is pasted back into its frame through the
   inverse crop map: blended inside the face (the hull of the jaw line and the eyebrows raised to
   the forehead) with a feathered edge, its colours matched to the frame's along that edge.
4. Encode (`preim3d.mp4.Mp4Writer`, a thread): H.264 at the clip's frame rate and size, with its
   audio track, into a hidden file renamed when complete. Frames without the face are the decoded
   frames, unchanged.

Temporal smoothing. A One-Euro filter (Casiez et al., CHI 2012) is an exponential low-pass whose
cut-off rises with the signal's speed: x̂_t = x̂_{t-1} + a (x_t - x̂_{t-1}), a = 1 / (1 + f / (2π f_c)),
f_c = min_cutoff + beta · speed, where f is the frame rate and speed the low-passed (1 Hz) rate of
change. At rest it averages over ~1/(2π min_cutoff) s and removes the landmarks' jitter; in motion
the cut-off rises and the lag stays under ~3 px of a 512 crop for a head moving its own size per
second. Speed is the root mean square speed of the 68 landmarks in crop sides per second (so it
includes expressions: a talking mouth is not smoothed away). It drives the landmarks', the codes'
and the colour correction's filters; filters restart where the face was lost or a cut happened.

Temporal quality (`VideoEditReport`): jitter is the mean frame-to-frame movement of the face's
landmarks found again on the output frames, minus the input's (pixels of a 512 crop); flicker the
mean absolute change between consecutive frames inside the face (0-255), output minus input. Both
are about zero when the edit moves with the face, positive when it shakes or flickers.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import align
from .cameras import camera_vector
from .errors import NoFaceError
from .inversion import invert
from .mp4 import Mp4Writer, VideoReader, exact_fps
from .tracking import ChunkTrack, FaceFollower, find_landmarks, region_of, shared_pool
from .validation import MIN_FACE_SIZE, check_face_index

CHUNK_BYTES = 128 * 2**20  # decoded pixels per chunk
MAX_CHUNK = 32  # frames per chunk at most (also the GPU batch)
QUEUE_CHUNKS = 2  # chunks waiting between two stages
SMOOTHING = {"min_cutoff": 0.5, "beta": 50.0, "d_cutoff": 1.0}  # Hz, Hz per (crop side / s), Hz
FEATHER = 24.0  # width of the mask's soft edge, pixels of a 512 crop
MASK_GROW = 8.0  # the mask reaches this far beyond the landmarks' hull, pixels of a 512 crop
FOREHEAD = 0.35  # eyebrows raised by this share of the brow-to-chin height: the hull covers the forehead
GAIN_LIMITS = (0.67, 1.5)  # the colour match may scale each channel's contrast at most this much

Progress = Callable[[int, int], None] | None


@dataclass
class VideoEditReport:
    """What `edit_video` wrote and measured."""

    path: Path
    frames: int  # frames written
    fps: float
    size: tuple[int, int]  # (width, height) of the input; the output is twice as wide side by side
    faces: int  # frames where the face was edited
    audio: bool  # the input's audio track was copied
    jitter_input: float | None = None  # mean landmark movement per frame, px of a 512 crop
    jitter_output: float | None = None
    flicker_input: float | None = None  # mean |change| per frame inside the face, 0-255
    flicker_output: float | None = None
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)  # busy time of each stage

    @property
    def jitter(self) -> float | None:
        """Output jitter beyond the input's (px of a 512 crop); <= 0 means no added shaking."""
        if self.jitter_output is None or self.jitter_input is None:
            return None
        return self.jitter_output - self.jitter_input

    @property
    def flicker(self) -> float | None:
        """Output flicker beyond the input's (0-255); about 0 means no added flicker."""
        if self.flicker_output is None or self.flicker_input is None:
            return None
        return self.flicker_output - self.flicker_input

    def summary(self) -> str:
        """One line for people: frames, faces, speed and the temporal measures."""
        text = (
            f"{self.frames} frames ({self.size[0]}x{self.size[1]}, {self.fps:.2f} fps"
            f"{', audio kept' if self.audio else ', no audio'}), face edited in {self.faces}, "
            f"{self.frames / max(self.seconds, 1e-9):.1f} frames/s"
        )
        if self.jitter is not None:
            text += f"; jitter {self.jitter:+.2f} px (input {self.jitter_input:.2f})"
        if self.flicker is not None:
            text += f", flicker {self.flicker:+.2f} (input {self.flicker_input:.2f})"
        return text


# --- smoothing ------------------------------------------------------------------------------------------


class OneEuroFilter:
    """The One-Euro filter of the module docstring, for arrays of any shape, one step per frame.

    `__call__(x, speed=None)` filters the next value. Without `speed`, the filter measures its own:
    the root mean square of its low-passed derivative times `scale` (the units beta is given in).
    `reset()` forgets the past (the next value passes unchanged).
    """

    def __init__(self, fps: float, min_cutoff: float, beta: float, d_cutoff: float = 1.0, scale: float = 1.0):
        self.rate = float(fps)
        self.min_cutoff, self.beta, self.d_cutoff, self.scale = min_cutoff, beta, d_cutoff, scale
        self.reset()

    def reset(self) -> None:
        self.value = None
        self.derivative = None
        self.speed = 0.0

    def _alpha(self, cutoff):
        return 1.0 / (1.0 + self.rate / (2 * math.pi * cutoff))

    def __call__(self, x, speed: float | None = None):
        x = np.asarray(x, dtype=np.float64)
        if self.value is None:
            self.value, self.derivative = x.copy(), np.zeros_like(x)
            return self.value.copy()
        change = (x - self.value) * self.rate
        self.derivative += self._alpha(self.d_cutoff) * (change - self.derivative)
        self.speed = float(np.sqrt(np.mean(self.derivative**2))) * self.scale if speed is None else speed
        self.value += self._alpha(self.min_cutoff + self.beta * self.speed) * (x - self.value)
        return self.value.copy()


# --- the edit on the device -------------------------------------------------------------------------------


class FaceEditor:
    """Stage 3 of the module docstring for one editor and one edit; filter state carries across chunks.

    Codes are encoded and rendered with the editor's networks on `editor.device`; renders use fixed
    depth samples (deterministic=True), so a still face does not shimmer.
    """

    def __init__(self, editor, edits: Mapping[str, float], precise: bool = False, hold=(), fps: float = 30.0):
        self.editor = editor
        self.device = editor.device
        # every edit is a constant step in W+ (plain or precise): computed once for the whole video
        zero = torch.zeros(1, 14, 512)
        step = editor.edit(zero, edits, precise=precise, hold=hold) if edits or hold else zero
        self.delta = step.to(self.device)
        self.filters = {name: OneEuroFilter(fps, **SMOOTHING) for name in ("landmarks", "codes", "colours")}
        self.had_face = False  # on the previous frame
        self.previous = None  # (input, output, mask) of the previous frame's face region, for flicker
        self.flicker = np.zeros(3)  # sums of input and output change, and their count

    @torch.no_grad()
    def edit(self, frames: np.ndarray, track: ChunkTrack, timings: dict) -> np.ndarray:
        """The chunk's frames with the face edited where it was followed (a new array)."""
        out = frames.copy()
        present = np.flatnonzero(track.present)
        restarts = np.zeros(len(frames), bool)
        for i in range(len(frames)):
            restarts[i] = track.present[i] and (track.restart[i] or not self.had_face)
            self.had_face = bool(track.present[i])
        if len(present) == 0:
            return out
        clock = time.perf_counter()
        landmarks, speed = self._smooth_landmarks(track.landmarks[present], restarts[present])
        crop_from_frame = np.stack([align.crop_transform(points) for points in landmarks])
        crop_points = (
            np.einsum("nij,nkj->nki", crop_from_frame[:, :2, :2], landmarks) + crop_from_frame[:, None, :2, 2]
        )
        poses = align.estimate_poses(crop_points)
        pixels = torch.from_numpy(frames[present]).to(self.device)
        crops = warp_crops(pixels, np.linalg.inv(crop_from_frame), ENCODER_SIZE)
        _add_time(timings, "crops and cameras", clock, self.device)

        clock = time.perf_counter()
        ws = invert(self.editor.encoder, self.editor.latent_avg, crops).cpu().double().numpy()
        for k in range(len(ws)):
            if restarts[present[k]]:
                self.filters["codes"].reset()
            ws[k] = self.filters["codes"](ws[k], speed=speed[k])
        ws = torch.from_numpy(ws).to(self.device, torch.float32) + self.delta
        _add_time(timings, "inversion", clock, self.device)

        clock = time.perf_counter()
        cameras = camera_vector(poses[:, 0], poses[:, 1], device=self.device)
        renders = self.editor.generator.synthesis(ws, cameras, noise_mode="const", deterministic=True)[
            "image"
        ]
        _add_time(timings, "rendering", clock, self.device)

        clock = time.perf_counter()
        for k, i in enumerate(present):
            if restarts[i]:
                self.filters["colours"].reset()
                self.previous = None
            out[i] = self._paste(pixels[k], renders[k].float(), crop_from_frame[k], crop_points[k], speed[k])
        _add_time(timings, "paste-back", clock, self.device)
        return out

    def _smooth_landmarks(self, landmarks: np.ndarray, restarts: np.ndarray):
        """One-Euro smoothed landmarks and the face's speed (crop sides per second) of each frame."""
        smoothed, speed = np.empty_like(landmarks), np.zeros(len(landmarks))
        flt = self.filters["landmarks"]
        for k, points in enumerate(landmarks):
            if restarts[k]:
                flt.reset()
            flt.scale = 1.0 / crop_side(points)
            smoothed[k] = flt(points)
            speed[k] = flt.speed
        return smoothed, speed

    def _paste(self, frame, render, crop_from_frame, crop_points, speed) -> np.ndarray:
        """One frame [H,W,3] uint8 on the device with the render [3,R,R] in [-1,1] blended into its face."""
        height, width = frame.shape[:2]
        region = align._clip_box(
            align._bounds(np.linalg.inv(crop_from_frame), align.CROP_SIZE, 1.0), (width, height)
        )
        x0, y0, x1, y1 = region
        if x1 <= x0 or y1 <= y0:
            return frame.cpu().numpy()
        # region pixel centres -> crop coordinates
        xs = torch.arange(x0, x1, device=self.device, dtype=torch.float32) + 0.5
        ys = torch.arange(y0, y1, device=self.device, dtype=torch.float32) + 0.5
        m = torch.as_tensor(crop_from_frame, dtype=torch.float32, device=self.device)
        u = m[0, 0] * xs[None, :] + m[0, 1] * ys[:, None] + m[0, 2]
        v = m[1, 0] * xs[None, :] + m[1, 1] * ys[:, None] + m[1, 2]
        alpha = face_mask(u, v, crop_points)
        side = align.CROP_SIZE / math.sqrt(abs(np.linalg.det(crop_from_frame[:2, :2])))  # crop side, frame px
        if side < render.shape[-1]:  # drawn smaller than rendered: shrink first, sampling does not low-pass
            size = max(2, math.ceil(side))
            render = F.interpolate(render[None], size=(size, size), mode="bilinear", antialias=True)[0]
        grid = torch.stack([u, v], -1)[None] * (2.0 / align.CROP_SIZE) - 1.0
        drawn = F.grid_sample(
            render[None], grid, mode="bilinear", padding_mode="border", align_corners=False
        )[0]
        drawn = (drawn.permute(1, 2, 0) * 127.5 + 127.5).clamp(0, 255)
        base = frame[y0:y1, x0:x1].float()
        drawn = self._match_colours(drawn, base, alpha, speed)
        blended = base + (drawn - base) * alpha[..., None]
        result = blended.round().clamp(0, 255).to(torch.uint8)
        self._measure_flicker(base, blended, alpha, (x0, y0))
        out = frame.clone()
        out[y0:y1, x0:x1] = result
        return out.cpu().numpy()

    def _match_colours(self, drawn, base, alpha, speed):
        """The render's channels scaled and shifted to the frame's mean and spread on the mask's soft edge."""
        edge = (alpha > 0.02) & (alpha < 0.98)
        if int(edge.sum()) < 16:
            return drawn
        a, b = drawn[edge], base[edge]
        gain = (b.std(0) / a.std(0).clamp_min(1.0)).clamp(*GAIN_LIMITS)
        offset = b.mean(0) - gain * a.mean(0)
        smoothed = self.filters["colours"](torch.cat([gain, offset / 255]).cpu().numpy(), speed=speed)
        smoothed = torch.as_tensor(smoothed, dtype=torch.float32, device=drawn.device)
        return (drawn * smoothed[:3] + smoothed[3:] * 255).clamp(0, 255)

    def _measure_flicker(self, base, blended, alpha, origin) -> None:
        """Adds the mean |change| inside the face since the previous frame, for the input and the output."""
        current = (base, blended, alpha, origin)
        if self.previous is not None:
            p_base, p_blended, p_alpha, p_origin = self.previous
            # the two regions' overlap, in frame pixels
            x0, y0 = max(origin[0], p_origin[0]), max(origin[1], p_origin[1])
            x1 = min(origin[0] + base.shape[1], p_origin[0] + p_base.shape[1])
            y1 = min(origin[1] + base.shape[0], p_origin[1] + p_base.shape[0])
            if x1 > x0 and y1 > y0:
                here = (slice(y0 - origin[1], y1 - origin[1]), slice(x0 - origin[0], x1 - origin[0]))
                there = (slice(y0 - p_origin[1], y1 - p_origin[1]), slice(x0 - p_origin[0], x1 - p_origin[0]))
                inside = (alpha[here] > 0.5) & (p_alpha[there] > 0.5)
                if int(inside.sum()) > 0:
                    changed_in = (base[here] - p_base[there]).abs()[inside].mean()
                    changed_out = (blended[here] - p_blended[there]).abs()[inside].mean()
                    self.flicker += (float(changed_in), float(changed_out), 1)
        self.previous = current


ENCODER_SIZE = 256


def crop_side(landmarks: np.ndarray) -> float:
    """Side in frame pixels of the EG3D crop of a face with these landmarks."""
    m = align.crop_transform(landmarks)
    return align.CROP_SIZE / math.sqrt(abs(np.linalg.det(m[:2, :2])))


def warp_crops(frames: torch.Tensor, frame_from_crop: np.ndarray, size: int) -> torch.Tensor:
    """Face crops [N, 3, size, size] in [-1, 1] cut from frames [N, H, W, 3] uint8 on any device.

    frame_from_crop [N, 3, 3] maps 512-px crop coordinates to frame pixels (`AlignedFace`'s
    original_from_crop). Crop pixel centres are sampled bilinearly, mirrored beyond the frame's
    edges; frames are first box-filtered by the whole factor the crop shrinks them by, so that
    shrinking does not alias (what `preim3d.align` does with PIL for photos).
    """
    n, height, width = frames.shape[:3]
    device = frames.device
    m = torch.as_tensor(frame_from_crop, dtype=torch.float32, device=device)
    spacing = float(np.sqrt(np.abs(np.linalg.det(frame_from_crop[:, :2, :2]))).min()) * align.CROP_SIZE / size
    reduce = max(1, int(spacing))
    images = frames.permute(0, 3, 1, 2).float()
    if reduce > 1:
        images = F.avg_pool2d(images, reduce, ceil_mode=True)
    centres = (torch.arange(size, device=device, dtype=torch.float32) + 0.5) * (align.CROP_SIZE / size)
    cy, cx = torch.meshgrid(centres, centres, indexing="ij")
    points = torch.stack([cx, cy, torch.ones_like(cx)], -1).reshape(-1, 3)  # [size², 3]
    frame_points = torch.einsum("nij,pj->npi", m[:, :2], points)  # [N, size², 2] frame pixels
    scale = torch.tensor([2.0 / width, 2.0 / height], device=device)
    grid = (frame_points * scale - 1.0).reshape(n, size, size, 2)
    crops = F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    return crops / 127.5 - 1.0


def face_mask(u: torch.Tensor, v: torch.Tensor, crop_points: np.ndarray) -> torch.Tensor:
    """Blend weight in [0, 1] at crop coordinates (u, v): 1 inside the face, a smooth fall-off at its edge.

    The face is the convex hull of the jaw line (points 0-16) and of the eyebrows (17-26) raised by
    FOREHEAD of the brow-to-chin height, grown by MASK_GROW px; with d the signed distance to the
    hull's edge (> 0 inside), weight = smoothstep(clip(d / FEATHER + 1/2, 0, 1)).
    """
    points = np.asarray(crop_points, dtype=np.float64)
    brows = points[17:27].copy()
    brows[:, 1] -= FOREHEAD * (points[8, 1] - brows[:, 1].mean())
    hull = _convex_hull(np.concatenate([points[:17], brows]))  # counter-clockwise on screen
    start = torch.as_tensor(hull, dtype=torch.float32, device=u.device)
    edge = torch.roll(start, -1, 0) - start
    normal = torch.stack([-edge[:, 1], edge[:, 0]], -1)  # the inside is on this side
    normal = normal / normal.norm(dim=-1, keepdim=True).clamp_min(1e-9)
    xy = torch.stack([u, v], -1)[..., None, :]  # [h, w, 1, 2]
    distance = ((xy - start) * normal).sum(-1).amin(-1) + MASK_GROW
    t = (distance / FEATHER + 0.5).clamp(0, 1)
    return t * t * (3 - 2 * t)


def _convex_hull(points: np.ndarray) -> np.ndarray:
    """Andrew's monotone chain: the hull's corners in order of positive (x, y) orientation."""
    pts = sorted(map(tuple, points))

    def half(seq):
        chain = []
        for p in seq:
            while len(chain) >= 2 and _cross(chain[-2], chain[-1], p) <= 0:
                chain.pop()
            chain.append(p)
        return chain[:-1]

    return np.array(half(pts) + half(pts[::-1]))


def _cross(o, a, b) -> float:
    return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])


def _add_time(timings: dict, stage: str, start: float, device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
    timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - start


# --- the whole chain --------------------------------------------------------------------------------------


def edit_video(
    editor,
    video,
    out,
    edits: Mapping[str, float] | None = None,
    *,
    precise: bool = False,
    hold=(),
    face_index: int | None = None,
    side_by_side: bool = False,
    measure: bool = True,
    workers: int | None = None,
    max_frames: int | None = None,
    progress: Progress = None,
) -> VideoEditReport:
    """Edit one person's face in a video and write it, with its audio, as an H.264 mp4 at `out`.

    editor: a `preim3d.Editor`. edits, precise, hold: as `Editor.edit` ({} reconstructs the face).
    face_index: which face of the first frame with faces, from 0 (default: the largest).
    side_by_side: write input | edit, twice as wide. measure: find the landmarks again on the output
    to report jitter (flicker is measured anyway). workers: processes for dlib (default: half the
    CPU cores; 0 runs it in this process). max_frames: refuse longer videos (default
    `preim3d.validation.MAX_FRAMES`). progress(frames_done, frames_expected) after each chunk.

    Raises InputVideoError for a file that is not a readable video or is too long or large,
    NoFaceError when no face is found in any frame (nothing is written then), NoSuchFaceError for
    a face_index beyond the faces of the first frame with faces. The output appears only complete.
    """
    started = time.perf_counter()
    out = Path(out)
    if out.suffix.lower() != ".mp4":
        raise ValueError(f"edit_video writes H.264 .mp4 files; got {out.name!r}")
    if face_index is not None:
        face_index = check_face_index(face_index, math.inf)
    reader = VideoReader(video, max_frames=max_frames)
    width, height = reader.size
    chunk = max(4, min(MAX_CHUNK, CHUNK_BYTES // (width * height * 3)))
    face_editor = FaceEditor(editor, edits or {}, precise=precise, hold=hold, fps=reader.fps)
    pool = shared_pool(workers)
    follower = FaceFollower(pool, face_index)
    timings: dict[str, float] = {}
    counts = {"frames": 0, "faces": 0}
    jitter = _JitterMeter(pool) if measure else None
    writer = Mp4Writer(
        out,
        (width * (2 if side_by_side else 1), height),
        fps=float(exact_fps(reader.fps)),
        # A fixed rate at x264's default preset: the turntables' near-lossless crf would make long
        # clips of any size very large.
        bitrate="10M",
        preset="medium",
        audio_from=reader.path if reader.has_audio else None,
    )
    stages = _Stages()
    try:

        def decode():
            frames = reader.chunks(chunk)
            while True:
                clock = time.perf_counter()
                batch = next(frames, None)
                _add_time(timings, "decode", clock, "cpu")
                if batch is None:
                    return
                yield batch

        def follow(batch):
            clock = time.perf_counter()
            track = follower.follow(batch)
            _add_time(timings, "detection and landmarks", clock, "cpu")
            return batch, track

        def encode(item):
            frames, edited, track = item
            if jitter is not None:
                clock = time.perf_counter()
                jitter.add(edited, track)
                _add_time(timings, "measuring", clock, "cpu")
            clock = time.perf_counter()
            writer.write(np.concatenate([frames, edited], axis=2) if side_by_side else edited)
            _add_time(timings, "encode", clock, "cpu")

        tracked = stages.run(decode, follow, encode)
        for frames, track in tracked:
            edited = face_editor.edit(frames, track, timings)
            stages.send((frames, edited, track))
            counts["frames"] += len(frames)
            counts["faces"] += int(track.present.sum())
            if progress is not None:
                progress(counts["frames"], max(reader.frame_count, counts["frames"]))
        stages.finish()
        if counts["faces"] == 0:
            raise NoFaceError(
                f"No face was found in any of the {counts['frames']} frames of {reader.path.name!r}, so "
                "nothing was edited: use a video where a face looks roughly toward the camera and is "
                f"at least {MIN_FACE_SIZE} px wide."
            )
        writer.close()
    except BaseException:
        stages.stop()
        writer.abort()
        raise
    finally:
        reader.close()
    flicker_in, flicker_out, pairs = face_editor.flicker
    return VideoEditReport(
        path=out,
        frames=counts["frames"],
        fps=reader.fps,
        size=(width, height),
        faces=counts["faces"],
        audio=reader.has_audio,
        jitter_input=jitter.input if jitter is not None else None,
        jitter_output=jitter.output if jitter is not None else None,
        flicker_input=flicker_in / pairs if pairs else None,
        flicker_output=flicker_out / pairs if pairs else None,
        seconds=time.perf_counter() - started,
        stage_seconds=timings,
    )


class _JitterMeter:
    """Mean frame-to-frame landmark movement of the input and of the output face (px of a 512 crop)."""

    def __init__(self, pool):
        self.pool = pool
        self.sums = np.zeros(3)
        self.last = None  # (input landmarks, output landmarks) of the previous frame, if it had the face

    def add(self, edited: np.ndarray, track: ChunkTrack) -> None:
        present = np.flatnonzero(track.present)
        found = self.pool.map(find_landmarks, [region_of(edited[i], track.boxes[i]) for i in present])
        output = dict(zip(present, found))
        for i in range(len(edited)):
            if i not in output:
                self.last = None
                continue
            now = (track.landmarks[i], output[i])
            if self.last is not None and not track.restart[i]:
                scale = align.CROP_SIZE / crop_side(now[0])
                moved = [np.linalg.norm(a - b, axis=-1).mean() * scale for a, b in zip(now, self.last)]
                self.sums += (*moved, 1)
            self.last = now

    @property
    def input(self) -> float | None:
        return self.sums[0] / self.sums[2] if self.sums[2] else None

    @property
    def output(self) -> float | None:
        return self.sums[1] / self.sums[2] if self.sums[2] else None


_END = object()


class _Stages:
    """Decode and follow in threads ahead of the caller, encode in a thread behind it (bounded queues).

    `run(decode, follow, encode)` starts them and returns an iterator of follow's results;
    `send(item)` hands the caller's result to encode; `finish()` waits for encode to end. The
    first error in any thread stops the others and is raised in the caller. `stop()` ends them all.
    """

    def __init__(self):
        self.halt = threading.Event()
        self.errors: list[BaseException] = []
        self.threads: list[threading.Thread] = []
        self.decoded = queue.Queue(QUEUE_CHUNKS)
        self.followed = queue.Queue(QUEUE_CHUNKS)
        self.edited = queue.Queue(QUEUE_CHUNKS)

    def run(self, decode, follow, encode):
        def produce():
            for item in decode():
                if not self._put(self.decoded, item):
                    return

        def transform():
            while (item := self._get(self.decoded)) is not _END:
                if not self._put(self.followed, follow(item)):
                    return

        def consume():
            while (item := self._get(self.edited)) is not _END:
                encode(item)

        for target, downstream in ((produce, self.decoded), (transform, self.followed), (consume, None)):
            thread = threading.Thread(target=self._guard, args=(target, downstream), daemon=True)
            thread.start()
            self.threads.append(thread)
        return self._results()

    def _results(self):
        while (item := self._get(self.followed)) is not _END:
            yield item
        self._raise()

    def send(self, item) -> None:
        if not self._put(self.edited, item):
            self._raise()

    def finish(self) -> None:
        self._put(self.edited, _END)
        self.threads[-1].join()
        self._raise()

    def stop(self) -> None:
        self.halt.set()
        for thread in self.threads:
            thread.join(timeout=30)

    def _guard(self, target, downstream) -> None:
        try:
            target()
        except BaseException as exc:  # handed to the caller
            self.errors.append(exc)
            self.halt.set()
        if downstream is not None:
            self._put(downstream, _END)

    def _raise(self) -> None:
        if self.errors:
            raise self.errors[0]

    def _put(self, where: queue.Queue, item) -> bool:
        while not self.halt.is_set() or item is _END:
            try:
                where.put(item, timeout=0.1)
                return True
            except queue.Full:
                if self.halt.is_set():
                    return False
        return False

    def _get(self, where: queue.Queue):
        while True:
            try:
                return where.get(timeout=0.1)
            except queue.Empty:
                if self.halt.is_set():
                    return _END
