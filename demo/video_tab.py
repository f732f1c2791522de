"""The page's Video tab and the `/edit_video` endpoint: a clip, uploaded or recorded with the webcam,
edited with the page's sliders and pasted back into every frame (`preim3d.Editor.edit_video`).

    video_tab(page, handlers)          # a tab builder, as `demo.ui.build_demo(tabs=...)` takes them
    video_endpoint(handlers, trigger)  # the named API endpoint, on hidden components
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from preim3d.editing import friendly_name
from preim3d.validation import face_index_from_number

from .handlers import PROGRESS, Handlers, handled, parse_edits, problem, uploaded_path

MAX_VIDEO_FRAMES = 900  # the page's and the API's limit: 30 s at 30 fps (preim3d.validation allows more)
# dlib runs in the server's own process: worker processes would start by importing the app file
# again (Python's "spawn"), building a second demo each, and a Space has few CPUs anyway
VIDEO_WORKERS = 0
VIDEO_HEIGHT = 400


class VideoHandlers:
    """The tab's and the endpoint's callbacks, on the page's long lane (videos and meshes)."""

    def __init__(self, handlers: Handlers):
        self.h = handlers

    def _edit(self, path, edits, precise: bool, hold, face, side_by_side: bool, progress):
        """Edit the clip at `path`; returns (output path, the report)."""
        editor = self.h._editor("long")
        face_index = face_index_from_number(1 if face is None else face)
        out = self.h._output(f"{Path(path).stem}-edited.mp4")
        progress(0, desc="Reading the video")
        report = editor.edit_video(
            path,
            out,
            edits,
            precise=precise,
            hold=hold,
            face_index=face_index,
            side_by_side=side_by_side,
            max_frames=MAX_VIDEO_FRAMES,
            workers=VIDEO_WORKERS,
            progress=lambda done, total: progress((done, total), desc="Editing frames"),
        )
        return str(out), report

    @handled
    def edit_video(self, video, face, side_by_side, precise, hold, *strengths, progress=PROGRESS):
        """Page: the uploaded or recorded clip, edited as the sliders say -> (video, what was done)."""
        path = uploaded_path(video)
        if path is None:
            raise problem("Upload a video or record one with the webcam first.")
        edits = {friendly_name(name): float(s) for name, s in zip(self.h.attributes, strengths) if s}
        out, report = self._edit(
            path, edits, bool(precise), tuple(hold or ()), face, bool(side_by_side), progress
        )
        edited = (
            ", ".join(f"{name} {value:+g}" for name, value in edits.items()) or "no edit (reconstruction)"
        )
        return out, f"{edited}: {report.summary()}"

    @handled
    def api_edit_video(
        self, video=None, edits=None, precise=False, face=1, side_by_side=False, progress=PROGRESS
    ):
        """Video + edits -> H.264 mp4 with the face edited in every frame, the audio kept; faces numbered
        from 1 in the first frame with faces."""
        path = uploaded_path(video)
        if path is None:
            raise problem("Give a video.")
        edits = parse_edits(edits)
        return self._edit(path, edits, bool(precise), (), face, bool(side_by_side), progress)[0]


def video_tab(page, h: Handlers) -> None:
    """The Video tab: the clip, the face to follow, input | edit or the edit alone, and the result."""
    from .ui import LONG, PAGE, on_gpu

    handlers = VideoHandlers(h)
    with gr.Tab("Video"):
        gr.Markdown(
            "Edit a face through a video with the sliders above: the face is followed from frame to "
            f"frame, edited in 3D and pasted back; the sound is kept. Up to {MAX_VIDEO_FRAMES // 30} s "
            "at 30 fps (up to 4K)."
        )
        with gr.Row(equal_height=False):
            with gr.Column():
                clip = page.control(
                    gr.Video(
                        label="Video",
                        sources=["upload", "webcam"],
                        interactive=page.ready,
                        height=VIDEO_HEIGHT,
                        elem_id="video-input",
                    )
                )
                with gr.Row():
                    face = page.control(
                        gr.Number(
                            1,
                            precision=0,
                            minimum=1,
                            label="Face to follow (1 = the largest in the first frame with faces)",
                            interactive=page.ready,
                            elem_id="video-face",
                        )
                    )
                    side_by_side = page.control(
                        gr.Checkbox(
                            label="Input beside the edit", interactive=page.ready, elem_id="video-beside"
                        )
                    )
                button = page.control(
                    gr.Button(
                        "Edit the video", interactive=page.ready, variant="primary", elem_id="video-edit"
                    )
                )
            with gr.Column():
                edited = gr.Video(
                    label="Edited video",
                    interactive=False,
                    autoplay=True,
                    height=VIDEO_HEIGHT,
                    elem_id="video-output",
                )
                summary = gr.Markdown(elem_id="video-summary")
    button.click(
        on_gpu(handlers.edit_video),
        [clip, face, side_by_side, page.precise, page.hold, *page.sliders.values()],
        [edited, summary],
        preprocess=False,  # the handler reads the upload itself
        **PAGE,
        **LONG,
    )


def video_endpoint(h: Handlers, trigger: gr.Button) -> None:
    """The named endpoint /edit_video (documented in demo/SPACE.md), on hidden components."""
    from .ui import LONG, on_gpu

    handlers = VideoHandlers(h)
    with gr.Column(visible=False):
        video = gr.Video(label="video")
        edits = gr.JSON({}, label="edits")
        precise = gr.Checkbox(False, label="precise")
        face = gr.Number(1, precision=0, label="face")
        side_by_side = gr.Checkbox(False, label="side_by_side")
        edited = gr.Video(label="edited")
    trigger.click(
        on_gpu(handlers.api_edit_video),
        [video, edits, precise, face, side_by_side],
        [edited],
        api_name="edit_video",
        preprocess=False,
        **LONG,
    )
