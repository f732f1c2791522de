"""Following one person through a video: face detection, identity, landmarks (stage 2 of `preim3d.video`).

    pool = shared_pool(workers)                  # dlib in worker processes
    follower = FaceFollower(pool, face_index=0)  # state carries from chunk to chunk
    track = follower.follow(frames)              # frames uint8 [n, H, W, 3] -> ChunkTrack

Faces are detected (dlib's HOG) on key frames, every KEY_INTERVAL frames and each chunk's last, and
the chosen face is matched from one observation to the next by overlap. Between two observations
of the same face, boxes are interpolated, and each frame's face is checked to still look like
itself (correlation of grey thumbnails with the two observations, at least SAME_LOOK): where the
face appears, vanishes, jumps (a cut) or fails that check, every frame in between is detected. A
face lost and found again is recognised by dlib's 128-d face descriptor (distance below
SAME_PERSON; without that model file, the largest face is taken). A face the detector misses for
up to two key intervals is bridged where it is found again at the same place. The 68 landmarks
(`preim3d.align`) are then found on every frame with the face. Detection, landmarks and
descriptors run in a pool of processes (dlib holds Python's lock); this module imports no torch,
so the workers start light.
"""

from __future__ import annotations

import math
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np

from . import align
from .batch import default_workers
from .errors import NoSuchFaceError, WeightsError
from .validation import MIN_FACE_SIZE, face_number

KEY_INTERVAL = 8  # frames between face detections
SAME_PERSON = 0.6  # dlib face-descriptor distance below which two faces are the same person
SAME_LOOK = 0.5  # correlation of a face's thumbnails between frames below which it is taken as gone


@dataclass
class Observation:
    """The chosen face on one frame where faces were detected: its box, or None when it is not there."""

    box: tuple[float, float, float, float] | None
    continues: bool  # the same track as the previous observation (not found again after a loss or cut)


@dataclass
class ChunkTrack:
    """The face on each frame of a chunk: raw landmarks (NaN where absent) and where filters restart."""

    landmarks: np.ndarray  # [n, 68, 2] frame pixels
    restart: np.ndarray  # [n] bool: a new track starts here (first frame, after a loss, after a cut)
    boxes: list  # [n] face boxes or None

    @property
    def present(self) -> np.ndarray:
        return ~np.isnan(self.landmarks[:, 0, 0])


class SerialPool:
    """The `map` of a process pool, run in this process (for small jobs and tests)."""

    def map(self, fn, *iterables):
        return map(fn, *iterables)

    def shutdown(self, wait: bool = True) -> None:
        pass


def make_pool(workers: int | None):
    """A process pool of `workers` dlib workers (default: half the CPU cores), or a SerialPool for 0."""
    workers = default_workers() if workers is None else int(workers)
    if workers <= 0:
        return SerialPool()
    import multiprocessing

    # spawn: the workers must not inherit the CUDA context or the threads of this process
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))


class FaceFollower:
    """Follows one person through a video's chunks (see the module docstring, stage 2).

    face_index: which face of the first frame with faces (0 = the largest, as `detect_faces`
    ranks them). identity=False skips dlib's face descriptor (a face found again is then the
    largest one). A face missed by the detector for up to 2 key intervals is bridged when it is
    found again where it was. State carries from chunk to chunk.
    """

    def __init__(self, pool, face_index: int | None = None, identity: bool = True, key_interval=KEY_INTERVAL):
        self.pool = pool
        self.face_index = 0 if face_index is None else face_index
        self.identity = identity
        self.key_interval = key_interval
        self.reference = None  # face descriptor of the person followed
        self.started = False
        self.last = None  # (frame number, box) of the latest observation with the face
        self.frames_seen = 0

    def follow(self, frames: np.ndarray) -> ChunkTrack:
        n, start = len(frames), self.frames_seen
        keys = sorted({i for i in range(n) if (start + i) % self.key_interval == 0} | {0, n - 1})
        detections = dict(zip(keys, self.pool.map(detect, [frames[i] for i in keys])))
        state = (self.reference, self.started, self.last)
        observed = self._resolve(frames, detections, start)
        # every frame is detected between key frames where the face appears, vanishes, jumps, or
        # does not look like itself all along the way
        dense = []
        for a, b in zip(keys, keys[1:]):
            if observed[a].box is None and observed[b].box is None:
                continue
            if observed[a].box is not None and observed[b].continues:
                if all(box is not None for box in self._between(frames, observed, a, b)):
                    continue
            dense.extend(range(a + 1, b))
        if dense:
            detections.update(zip(dense, self.pool.map(detect, [frames[i] for i in dense])))
            self.reference, self.started, self.last = state
            observed = self._resolve(frames, detections, start)
        boxes = [None] * n
        restart = np.zeros(n, bool)
        found = [i for i in sorted(observed) if observed[i].box is not None]
        for a, b in zip([None, *found], found):
            boxes[b], restart[b] = observed[b].box, not observed[b].continues
            if a is not None and observed[b].continues:
                boxes[a + 1 : b] = self._between(frames, observed, a, b)
        # a track resumes after frames without the face: its filters start again
        restart[1:] |= np.array([boxes[i] is not None and boxes[i - 1] is None for i in range(1, n)], bool)
        landmarks = np.full((n, 68, 2), np.nan)
        tracked = [i for i in range(n) if boxes[i] is not None]
        regions = [region_of(frames[i], boxes[i]) for i in tracked]
        for i, points in zip(tracked, self.pool.map(find_landmarks, regions)):
            landmarks[i] = points
        self.frames_seen += n
        return ChunkTrack(landmarks, restart, boxes)

    @staticmethod
    def _between(frames, observed, a: int, b: int) -> list:
        """Boxes interpolated between observations a and b, None where the face does not look like
        itself (correlation with its look at a and at b below SAME_LOOK: gone, covered, a cut)."""
        ends = [_patch(frames[i], observed[i].box) for i in (a, b)]
        boxes = []
        for i in range(a + 1, b):
            t = (i - a) / (b - a)
            box = tuple((1 - t) * p + t * q for p, q in zip(observed[a].box, observed[b].box))
            look = _patch(frames[i], box)
            boxes.append(box if max(_correlation(look, end) for end in ends) >= SAME_LOOK else None)
        return boxes

    def _resolve(self, frames, detections: dict, start: int) -> dict[int, Observation]:
        """Which detection, if any, is the person followed, observation by observation."""
        observed = {}
        for i in sorted(detections):
            faces, box, continues = detections[i], None, False
            if self.last is not None and start + i - self.last[0] <= 2 * self.key_interval:
                box = _matching(self.last[1], faces)
                continues = box is not None
            if box is None and faces:
                box = self._choose(frames[i], faces, start + i)
            if box is not None:
                self.last = (start + i, box)
            observed[i] = Observation(box, continues)
        return observed

    def _choose(self, frame, faces, number):
        """The person followed among `faces`: the first choice, or found again; None if not there."""
        if not self.started:
            if self.face_index >= len(faces):
                raise NoSuchFaceError(
                    f"The first frame with faces (frame {number + 1}) has {len(faces)} face(s); "
                    f"there is no face {face_number(self.face_index)}."
                )
            self.started = True
            box = faces[self.face_index]
            if self.identity:
                try:
                    self.reference = self._descriptors(frame, [box])[0]
                except WeightsError:  # no face-recognition model: a face found again is the largest
                    self.identity = False
            return box
        if self.reference is None:
            return faces[0]
        distances = [np.linalg.norm(d - self.reference) for d in self._descriptors(frame, faces)]
        best = int(np.argmin(distances))
        return faces[best] if distances[best] < SAME_PERSON else None

    def _descriptors(self, frame, faces):
        return list(self.pool.map(describe, [region_of(frame, box) for box in faces]))


def _matching(previous, faces):
    """The face that continues `previous` (overlapping, of a similar size), or None."""
    best, best_overlap = None, 0.25
    for box in faces:
        overlap = _iou(previous, box)
        ratio = (box[2] - box[0]) / max(previous[2] - previous[0], 1e-9)
        if overlap > best_overlap and 0.6 < ratio < 1.6:
            best, best_overlap = box, overlap
    return best


def _patch(frame: np.ndarray, box, size: int = 24) -> np.ndarray:
    """A size x size grey thumbnail of a box of the frame (nearest pixels; cheap)."""
    left, top, right, bottom = box
    xs = np.clip(
        np.linspace(left, right, size, endpoint=False) + (right - left) / (2 * size), 0, frame.shape[1] - 1
    )
    ys = np.clip(
        np.linspace(top, bottom, size, endpoint=False) + (bottom - top) / (2 * size), 0, frame.shape[0] - 1
    )
    return frame[ys.astype(int)[:, None], xs.astype(int)[None, :]].mean(-1)


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Normalised cross-correlation of two patches; 0 when either is flat."""
    a, b = a - a.mean(), b - b.mean()
    norm = math.sqrt(float((a * a).sum() * (b * b).sum()))
    return float((a * b).sum()) / norm if norm > 1e-6 else 0.0


def _iou(a, b) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def region_of(frame: np.ndarray, box):
    """(the frame's pixels around a face box, their offset, the box): what a worker needs, copied small."""
    left, top, right, bottom = box
    margin = 0.6 * max(right - left, bottom - top)  # align._landmarks looks 0.5 box beyond the box
    x0, y0 = max(0, int(left - margin)), max(0, int(top - margin))
    x1, y1 = min(frame.shape[1], math.ceil(right + margin)), min(frame.shape[0], math.ceil(bottom + margin))
    return np.ascontiguousarray(frame[y0:y1, x0:x1]), (x0, y0), tuple(box)


# The pool's tasks (top-level functions, so that worker processes can run them).


def detect(frame: np.ndarray) -> list:
    """Face boxes of a frame, the default choice first (HOG only: the CNN is too slow for every key frame)."""
    from PIL import Image

    found = align._rank(align._detect(Image.fromarray(frame), cnn_fallback=False, thorough=False))
    return [f.box for f in found if f.size >= MIN_FACE_SIZE]


def find_landmarks(region) -> np.ndarray:
    from PIL import Image

    pixels, (x0, y0), (left, top, right, bottom) = region
    box = (left - x0, top - y0, right - x0, bottom - y0)
    return align._landmarks(Image.fromarray(pixels), box) + (x0, y0)


def describe(region) -> np.ndarray:
    """dlib's 128-d face descriptor of the face in a region (raises WeightsError without the model)."""
    import dlib
    from PIL import Image

    pixels, (x0, y0), (left, top, right, bottom) = region
    box = (left - x0, top - y0, right - x0, bottom - y0)
    points = align._landmarks(Image.fromarray(pixels), box)
    rect = dlib.rectangle(*(round(v) for v in box))
    shape = dlib.full_object_detection(rect, [dlib.point(round(x - 0.5), round(y - 0.5)) for x, y in points])
    model = _recognizer()
    return np.asarray(model.compute_face_descriptor(pixels, shape))


_RECOGNIZER = None


def _recognizer():
    global _RECOGNIZER
    if _RECOGNIZER is None:
        import dlib

        _RECOGNIZER = dlib.face_recognition_model_v1(
            align.dlib_model_path("dlib_face_recognition_resnet_model_v1.dat")
        )
    return _RECOGNIZER


_POOLS: dict[int, object] = {}


def shared_pool(workers: int | None):
    """A dlib worker pool kept for the process's lifetime (workers start once, their models load once)."""
    key = default_workers() if workers is None else max(0, int(workers))
    if key not in _POOLS:
        _POOLS[key] = make_pool(key)
    return _POOLS[key]
