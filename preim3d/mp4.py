"""H.264 mp4 files through imageio-ffmpeg: a streaming writer that plays in browsers.

    with Mp4Writer("out.mp4", (width, height), fps=30) as video:
        for frames in batches:            # uint8 [N,H,W,3] or one [H,W,3]
            video.write(frames)

Frames go to the encoder as they come, so memory does not grow with the video's length. A writer
left by an exception deletes its file: a failed or interrupted video never leaves a truncated file.
"""

from __future__ import annotations

from pathlib import Path

import imageio_ffmpeg
import numpy as np


class Mp4Writer:
    """Streams RGB uint8 frames of size (width, height) into an H.264 (yuv420p) mp4 at `path`.

    yuv420p needs even sides; the index is written first (+faststart), so browsers start playing at
    once. Use it as a context manager, or call `close()` when done and `abort()` on failure.
    """

    def __init__(self, path, size: tuple[int, int], fps: float, bitrate: str = "10M"):
        self.path = Path(path)
        if self.path.suffix.lower() != ".mp4":
            raise ValueError(f"Mp4Writer writes H.264 .mp4 files; got {self.path.name!r}")
        self.size = (int(size[0]), int(size[1]))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = imageio_ffmpeg.write_frames(
            str(self.path),
            self.size,
            fps=fps,
            codec="libx264",
            pix_fmt_out="yuv420p",
            bitrate=bitrate,
            macro_block_size=2,
            ffmpeg_log_level="error",
            output_params=["-movflags", "+faststart"],
        )
        self._writer.send(None)

    def write(self, frames) -> None:
        """One frame uint8 [H,W,3] or several [N,H,W,3]."""
        frames = np.asarray(frames, dtype=np.uint8)
        for frame in frames.reshape(-1, *frames.shape[-3:]):
            self._writer.send(np.ascontiguousarray(frame))

    def close(self) -> Path:
        """Finish the file; returns its path."""
        self._writer.close()
        return self.path

    def abort(self) -> None:
        """Stop the encoder and delete the unfinished file."""
        self._writer.close()
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> Mp4Writer:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()
