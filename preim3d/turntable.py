"""Turntable videos: one latent seen along a camera path, rendered in batches and streamed to an mp4.

    render_turntable(renderer, ws_edit, "edit.mp4", side_by_side=[photo, ws_rec])

Cameras come from `preim3d.cameras`, frames from the tri-plane cache of `preim3d.rendering`, and the
file from `preim3d.mp4`.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from .cameras import turntable_path
from .images import load_image
from .mp4 import CRF, Mp4Writer
from .rendering import Progress, TriPlaneRenderer, depths_to_uint8, images_to_uint8
from .validation import check_fps, check_frames


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """[N,C,H,W] → [N,C,size,size], antialiased bilinear (identity when already that size)."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return F.interpolate(
        images.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True
    )


def render_turntable(
    renderer: TriPlaneRenderer,
    ws,
    path,
    frames: int = 120,
    fps: float = 60,
    size=None,
    depth: bool = False,
    side_by_side=None,
    progress: Progress = None,
    cameras=None,
    deterministic: bool = False,
    crf: int = CRF,
    bitrate: str | None = None,
) -> Path:
    """Write an H.264 mp4 (yuv420p, plays in browsers) of ws seen along a camera path; returns its path.

    cameras: c [F,25] of any trajectory (see preim3d.cameras); default `turntable_path(frames)`, the
    official PREIM3D turntable (frames counts only then). Each frame is a row of square panels of
    side `size` (default the generator's image resolution; rounded up to an even number, as yuv420p
    needs):
        side_by_side[0] | side_by_side[1] | … | render of ws | depth of ws (if depth=True)
    A side_by_side entry that is a tensor is a latent rendered from the same camera (e.g. the
    reconstruction); anything else is an image (PIL, array or path; letterboxed into the panel), so
    side_by_side=[photo, ws_reconstruction] gives input | reconstruction | edit.
    The depth panel maps the depth range of the first batch of frames to white … black and keeps it
    for the whole video (a per-frame range would flicker). Panels are resized and converted to uint8
    where they were rendered, and frames are encoded (`Mp4Writer`: x264 constant quality `crf`, or
    a target `bitrate` such as "10M") while the next ones render, so memory does not grow with the
    frame count. progress(done_frames, total) after each batch. frames: 1 to 3600, fps: 1 to 120
    (`preim3d.validation`).
    """
    frames, fps = check_frames(frames), check_fps(fps)
    path = Path(path)
    if path.suffix.lower() != ".mp4":
        raise ValueError(f"render_turntable writes H.264 .mp4 files; got {path.name!r}")
    cameras = turntable_path(frames) if cameras is None else torch.as_tensor(cameras).reshape(-1, 25)
    total = len(cameras)
    panel = int(size or renderer.G.img_resolution)
    panel += panel % 2
    entries = [*(side_by_side or []), torch.as_tensor(ws)]
    depth_range = []  # near and far of the first batch, as tensors on the device (read without waiting)

    def panels(out: dict, with_depth: bool) -> dict:
        """On the device: the render (and depth) as uint8 panels [N,panel,panel,3]."""
        result = {"image": images_to_uint8(_resize(out["image"], panel))}
        if with_depth:
            d = out["image_depth"]
            depth_range[:] = depth_range or [d.amin(), d.amax()]
            gray = depths_to_uint8(_resize(d, panel), depth_range)
            result["depth"] = gray.unsqueeze(-1).expand(-1, -1, -1, 3)
        return result

    last = len(entries) - 1
    streams = [
        renderer.render_batches(
            e,
            cameras,
            deterministic,
            outputs=("image", "image_depth") if depth and i == last else ("image",),
            on_device=functools.partial(panels, with_depth=depth and i == last),
        )
        for i, e in enumerate(entries)
        if isinstance(e, torch.Tensor)
    ]
    stills = {
        i: np.asarray(ImageOps.pad(load_image(e), (panel, panel), Image.LANCZOS))
        for i, e in enumerate(entries)
        if not isinstance(e, torch.Tensor)
    }

    width = panel * (len(entries) + int(depth))
    with Mp4Writer(path, (width, panel), fps=fps, crf=crf, bitrate=bitrate) as video:
        done = 0
        for outs in zip(*streams):
            n = len(outs[0]["image"])
            rendered = iter(outs)
            row = [
                np.broadcast_to(stills[i], (n, panel, panel, 3))
                if i in stills
                else next(rendered)["image"].numpy()
                for i in range(len(entries))
            ]
            if depth:
                row.append(outs[-1]["depth"].numpy())
            video.write(np.concatenate(row, axis=2))
            done += n
            if progress is not None:
                progress(done, total)
    return path
