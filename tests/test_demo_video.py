"""The page's Video tab and the /edit_video endpoint, on the tiny random-weight bundle and a clip."""

from __future__ import annotations

from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from demo_helpers import client_for, loopback_only, serving
from gradio_client import handle_file
from gradio_client.exceptions import AppError
from PIL import Image
from skimage import data

from demo.handlers import Handlers
from demo.video_tab import VideoHandlers
from preim3d.mp4 import VideoReader
from preim3d.pipeline import Editor
from preim3d.testing import make_face_video

FACE = Image.fromarray(data.astronaut()).crop((120, 40, 360, 280))


def frames_of(path) -> np.ndarray:
    with VideoReader(path) as clip:
        return np.stack(list(clip.frames()))


@pytest.fixture(scope="module")
def editor(tiny_bundle):
    return Editor.from_pretrained(tiny_bundle, device="cpu")


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("clips") / "me.mp4"
    make_face_video(path, FACE, size=(320, 240), frames=4, fps=8, face_width=0.75, motion=0.2)
    return path


def test_edit_video_endpoint_returns_the_edited_clip(editor, clip, tmp_path):
    with loopback_only(), serving(editor) as (url, _):
        client = client_for(url)
        out = client.predict(video=handle_file(clip), edits={"smile": 2}, face=1, api_name="/edit_video")
        frames = frames_of(out if isinstance(out, str) else out["video"])
        assert frames.shape == (4, 240, 320, 3)
        assert np.abs(frames.astype(float) - frames_of(clip)).mean() > 1  # the face was edited
        bad = tmp_path / "notes.mp4"
        bad.write_text("not a video")
        with pytest.raises(AppError, match="not a video ffmpeg can read"):
            client.predict(video=handle_file(bad), api_name="/edit_video")
        with pytest.raises(AppError, match="there is no face 3"):
            client.predict(video=handle_file(clip), face=3, api_name="/edit_video")


def test_video_tab_edits_with_the_sliders(editor, clip):
    handlers = Handlers(editor)
    handlers.attributes = list(editor.directions.names)
    values = [2.0 if name == "Smiling" else 0 for name in handlers.attributes]
    video = VideoHandlers(handlers)
    out, summary = video.edit_video(str(clip), 1, True, False, [], *values, progress=lambda *a, **k: None)
    assert Path(out).name == "me-edited.mp4" and frames_of(out).shape == (4, 240, 640, 3)
    assert "smile +2" in summary and "face edited in 4" in summary
    with pytest.raises(gr.Error, match="Upload a video or record one"):
        video.edit_video(None, 1, False, False, [], *values, progress=lambda *a, **k: None)
