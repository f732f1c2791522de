"""Video files through imageio-ffmpeg: a streaming H.264 writer that plays in browsers, and a reader.

    with Mp4Writer("out.mp4", (width, height), fps=30) as video:
        for frames in batches:            # uint8 [N,H,W,3] or one [H,W,3]
            video.write(frames)

    with VideoReader("clip.mov") as clip:  # any format ffmpeg reads
        for frames in clip.chunks(32):    # uint8 [<=32,H,W,3], upright, at clip.fps
            ...

Frames go to the encoder as they come and come from the decoder as they are asked for, so memory
does not grow with the video's length. The writer hands frames to ffmpeg (a process of its own,
using every core) from a thread of its own, so that the caller renders the next frames while these
are encoded. It encodes into a hidden file beside `path` and renames it to `path` only when the
video is complete: a failed, interrupted or killed run never leaves a truncated video under the
name asked for.
"""

from __future__ import annotations

import os
import queue
import tempfile
import threading
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import imageio_ffmpeg
import numpy as np

from .errors import InputVideoError
from .validation import MAX_FPS, MIN_FPS, check_video_size

FALLBACK_FPS = 30.0  # the rate of videos that state none, or one beyond what can be edited
# x264 in constant-quality mode, chosen with `benchmarks/bench_user_paths.py --encoder-sweep` (file
# size and PSNR of the decoded frames against the source): on 120 natural 512² frames as good as the
# 10 Mbit/s at the default preset used before (38.5 dB), 30 % larger, in about half the time.
PRESET = "veryfast"
CRF = 4


class Mp4Writer:
    """Streams RGB uint8 frames of size (width, height) into an H.264 (yuv420p) mp4 at `path`.

    Quality: x264's constant-quality mode (crf, lower is better; 0–51) at a speed `preset`, or a
    target `bitrate` such as "10M" instead of crf. yuv420p needs even sides: odd ones are rounded
    up by one pixel. The index is written first (+faststart), so browsers start playing at once.
    audio_from: a file whose first audio track is muxed in (re-encoded as AAC; ffmpeg's -shortest
    would drop the last video frames, so a longer track is kept whole). Use it as a context
    manager, or call `close()` when done and `abort()` on failure. `write` returns at once (up to a
    few batches wait in a queue); an encoder failure is raised by the next `write` or by `close`.
    """

    def __init__(
        self,
        path,
        size: tuple[int, int],
        fps: float,
        crf: int = CRF,
        preset: str = PRESET,
        bitrate: str | None = None,
        audio_from=None,
    ):
        self.path = Path(path)
        if self.path.suffix.lower() != ".mp4":
            raise ValueError(f"Mp4Writer writes H.264 .mp4 files; got {self.path.name!r}")
        self.size = (int(size[0]), int(size[1]))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle, partial = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.stem}.", suffix=".mp4")
        os.close(handle)
        self._partial = Path(partial)
        quality = ["-b:v", str(bitrate)] if bitrate is not None else ["-crf", str(int(crf))]
        self._writer = imageio_ffmpeg.write_frames(
            str(self._partial),
            self.size,
            fps=fps,
            codec="libx264",
            pix_fmt_out="yuv420p",
            quality=None,  # imageio-ffmpeg's default would add a crf of its own
            macro_block_size=2,
            ffmpeg_log_level="error",
            output_params=["-preset", preset, *quality, "-movflags", "+faststart"],
            audio_path=None if audio_from is None else str(audio_from),
            audio_codec=None if audio_from is None else "aac",
        )
        try:
            self._writer.send(None)  # starts ffmpeg
        except BaseException:
            self._partial.unlink(missing_ok=True)
            raise
        self._batches: queue.Queue = queue.Queue(maxsize=4)
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._feed, name="mp4-writer", daemon=True)
        self._thread.start()

    def write(self, frames) -> None:
        """One frame uint8 [H,W,3] or several [N,H,W,3]; the array must not change afterwards."""
        frames = np.ascontiguousarray(frames, dtype=np.uint8)
        width, height = self.size
        if frames.shape[-3:] != (height, width, 3):
            raise ValueError(f"frames must be [N,{height},{width},3] uint8, got {list(frames.shape)}")
        if self._failure is not None:
            raise RuntimeError(f"the video encoder failed: {self._failure}") from self._failure
        self._batches.put(frames)

    def close(self) -> Path:
        """Finish the file (waiting for the encoder) and give it its name; returns its path."""
        self._stop_feeding()
        if self._failure is not None:
            self.abort()
            raise RuntimeError(f"the video encoder failed: {self._failure}") from self._failure
        try:
            self._writer.close()
        except BaseException:
            self._partial.unlink(missing_ok=True)
            raise
        os.replace(self._partial, self.path)
        return self.path

    def abort(self) -> None:
        """Stop the encoder and delete the unfinished file."""
        self._stop_feeding()
        try:
            self._writer.close()
        finally:
            self._partial.unlink(missing_ok=True)

    def __enter__(self) -> Mp4Writer:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()

    def _feed(self) -> None:
        """The writer thread: hands each batch to ffmpeg's input pipe in one write."""
        while (frames := self._batches.get()) is not None:
            if self._failure is None:
                try:
                    self._writer.send(frames)
                except BaseException as exc:  # ffmpeg died: reported to the caller, the rest dropped
                    self._failure = exc

    def _stop_feeding(self) -> None:
        if self._thread.is_alive():
            self._batches.put(None)
            self._thread.join()


class VideoReader:
    """Decodes a video file into upright RGB uint8 frames at a constant frame rate.

    ffmpeg applies rotation metadata (phone videos), so frames are as a player shows them, of size
    `size` = (width, height). A variable frame rate is resampled to the file's average rate `fps`
    (frames repeated or dropped by their time stamps), which keeps them in step with the audio; a
    file that states no usable rate (browser recordings) or one beyond MIN_FPS ... MAX_FPS
    (slow-motion clips) is read at FALLBACK_FPS.
    `frame_count` is the expected number of frames, duration x fps (the decoder may give one or two
    fewer or more). Opening checks the file (InputVideoError for anything ffmpeg cannot decode or
    that holds no video) and its size against `preim3d.validation.check_video_size`.
    """

    def __init__(self, path, max_frames: int | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise InputVideoError(f"No video file at {str(self.path)!r}: check the path.")
        meta = self._header()
        self.size = tuple(int(v) for v in meta["size"])
        self.fps = float(meta.get("fps") or 0)
        if not MIN_FPS <= self.fps <= MAX_FPS:
            self.fps = FALLBACK_FPS
        self.duration = float(meta.get("duration") or 0)
        self.has_audio = "audio_codec" in meta
        self.frame_count = round(self.duration * self.fps)  # 0 when the file does not say its duration
        self.max_frames = check_video_size(
            *self.size, self.frame_count, self.fps, f"the video {self.path.name!r}", max_frames=max_frames
        )
        self._frames = None

    def _header(self) -> dict:
        """ffmpeg's description of the file, read without decoding it."""
        reader = None
        try:
            reader = imageio_ffmpeg.read_frames(str(self.path))
            return next(reader)
        except (OSError, RuntimeError, StopIteration, IndexError, ValueError, AttributeError) as exc:
            raise InputVideoError(
                f"{self.path.name!r} is not a video ffmpeg can read (or holds no video track): "
                f"{_first_line(exc)}"
            ) from exc
        finally:
            if reader is not None:
                reader.close()

    def frames(self) -> Iterator[np.ndarray]:
        """Yields each frame, uint8 [H, W, 3]. Call once; `close()` stops the decoder early."""
        width, height = self.size
        self._frames = imageio_ffmpeg.read_frames(
            str(self.path), output_params=["-r", str(exact_fps(self.fps))]
        )
        try:
            next(self._frames)  # the header again
            for count, data in enumerate(self._frames, start=1):
                if count > self.max_frames:  # a file that did not say its length
                    check_video_size(
                        width, height, count, self.fps, f"the video {self.path.name!r}", self.max_frames
                    )
                yield np.frombuffer(data, np.uint8).reshape(height, width, 3)
        except (OSError, RuntimeError) as exc:
            raise InputVideoError(f"{self.path.name!r} could not be decoded: {_first_line(exc)}") from exc
        finally:
            self.close()

    def chunks(self, size: int) -> Iterator[np.ndarray]:
        """Yields frames in arrays of `size` (the last may be shorter), uint8 [n, H, W, 3]."""
        batch = []
        for frame in self.frames():
            batch.append(frame)
            if len(batch) == size:
                yield np.stack(batch)
                batch = []
        if batch:
            yield np.stack(batch)

    def close(self) -> None:
        """Stop the decoder (it also stops by itself at the end of the file)."""
        if self._frames is not None:
            self._frames.close()
            self._frames = None

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def exact_fps(fps: float) -> Fraction:
    """The frame rate ffmpeg prints rounded (29.97) as the exact rate it stands for (30000/1001)."""
    for base in (24, 30, 48, 60, 120):  # NTSC rates, base x 1000/1001
        if abs(fps - base * 1000 / 1001) < 0.006:
            return Fraction(base * 1000, 1001)
    return Fraction(fps).limit_denominator(1000)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
