"""The page: layout sections, their event wiring and the named API endpoints. What each control does is in
`demo.handlers`; getting the weights from the page is in `demo.weights`.

demo = build_demo()                 # weights from $PREIM3D_WEIGHTS or the default folder
launch(demo)                        # bounded queue; short and long work in lanes of their own

Other tabs plug in through `build_demo(tabs=...)`: a tab builder is a function (page, handlers) -> None
that lays out its controls and wires their events inside the page, registering with
`page.control(...)` whatever must stay disabled until weights are loaded.
"""

from __future__ import annotations

try:  # Hugging Face ZeroGPU Spaces: must be imported before torch initialises CUDA
    import spaces
except ImportError:
    spaces = None

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import gradio as gr

from preim3d import default_device
from preim3d.editing import friendly_name
from preim3d.validation import STRENGTH_LIMIT

from .handlers import (
    DEFAULT_FRAMES,
    MAX_FRAMES,
    PITCH_LIMIT,
    VIDEO_FPS,
    YAW_LIMIT,
    Handlers,
    hold_choices,
    mesh_resolutions,
    slider_groups,
)
from .video_tab import video_endpoint, video_tab
from .weights import WeightsDownload, files_table, licence_text, load_editor

EXAMPLES = tuple(
    sorted(
        p
        for p in (Path(__file__).resolve().parent.parent / "examples").glob("*")
        if p.suffix.lower() in {".png", ".jpg", ".jpeg"}
    )
)
QUEUE_SIZE = 32  # requests waiting beyond this are turned away with "queue full" instead of piling up
MAX_FILE_SIZE = "50mb"
VIEW_HEIGHT = 320  # px of the photo, crop and renders, so the row keeps its shape at any render size
SHORT = {"concurrency_id": "gpu", "concurrency_limit": 1}  # photos, edits, views: one at a time
LONG = {"concurrency_id": "long", "concurrency_limit": 1}  # videos and meshes, beside the short lane
PAGE = {"api_visibility": "private"}  # the page's own events; scripts use the named API

INTRO = """\
# preim3d: edit a face in 3D from one photo
Upload a portrait: the face is aligned, encoded by [PREIM3D](https://github.com/mybabyyh/Preim3D) (CVPR 2023)
into the latent space of the [EG3D](https://github.com/NVlabs/eg3d) 3D generator, and can then be edited and
seen from any angle. Compare the reconstruction with the aligned crop to judge how well the face was captured.
"""


def on_gpu(fn):
    """On a ZeroGPU Space a GPU is attached only while a function decorated with spaces.GPU runs."""
    return spaces.GPU(fn) if spaces is not None else fn


class Page:
    """The components of one page, as the layout sections create them, for the event wiring.

    `controls` are disabled while no weights are loaded and enabled once they are.
    """

    def __init__(self, ready: bool, device):
        self.ready = ready
        self.device = device  # where the networks run: what the page offers depends on it
        self.controls: list[gr.components.Component] = []
        self.sliders: dict[str, gr.Slider] = {}

    def control(self, component):
        """Register a control that needs the weights; returns it."""
        self.controls.append(component)
        return component


def build_demo(
    editor_or_source=None,
    *,
    examples: Sequence = EXAMPLES,
    tabs: Sequence[Callable[[Page, Handlers], None]] | None = None,
    live: bool | None = None,
    weights_files=None,
) -> gr.Blocks:
    """The demo page around an Editor, or one loaded from a weights source
    (None: $PREIM3D_WEIGHTS, default folder).

    Without weights the page still builds: it lists what to download, with the licences, and its
    controls enable once the Download button has fetched them. live: the edited view follows a slider
    while it is dragged (default: on a GPU); otherwise it updates when the slider is released.
    tabs: the output tab builders (default `TABS`). weights_files: the files the Download button fetches
    (default the official ones).
    """
    editor, missing = load_editor(editor_or_source)
    h = Handlers(editor, missing, examples)
    page = Page(ready=editor is not None, device=editor.device if editor is not None else default_device())
    live = page.device.type == "cuda" if live is None else live
    with gr.Blocks(
        title="preim3d: 3D face editing", analytics_enabled=False, delete_cache=(3600, 3600)
    ) as demo:
        download = None if page.ready else WeightsDownload(h, weights_files)
        _api_endpoints(h, download)  # first, so that they get the plain names (/edit, /mesh, ...)
        gr.Markdown(INTRO)
        if download is not None:
            _weights_section(page, download)
        page.state = gr.State(None)
        _photo_row(page, examples)
        with gr.Row(equal_height=False):
            with gr.Column(scale=2):
                _attribute_section(page, h, editor)
            with gr.Column(scale=1):
                _camera_section(page)
        with gr.Tabs():
            for tab in TABS if tabs is None else tabs:
                tab(page, h)
        _wire_input(page, h)
        _wire_edits(page, h, live)
        if download is not None:
            _wire_download(page, h, download)
    demo.preim3d_summary = h.summary()  # printed by `launch`
    return demo


# ---------------------------------------------------------------------------------- layout sections


def _weights_section(page: Page, download: WeightsDownload) -> None:
    with gr.Group(elem_id="weights-panel") as page.weights_panel:
        gr.Markdown(
            "### The model weights are missing\n\n"
            f"{download.handlers.unavailable}\n\n"
            "Or download them here: these official files are fetched, checked and converted into a safe "
            "bundle (once; later starts find them). They come under these licences:\n\n"
            f"{files_table(download.files)}\n\n{licence_text(download.files)}",
            elem_id="weights-missing",
        )
        with gr.Row():
            page.accept = gr.Checkbox(
                label="I accept these licences (the images, videos and meshes are for non-commercial use)",
                elem_id="accept-licences",
            )
            page.download_button = gr.Button("Download the weights", variant="primary", elem_id="download")
        page.download_status = gr.Markdown(elem_id="download-status")


def _photo_row(page: Page, examples: Sequence) -> None:
    """Photo with its status and face choice, then the aligned crop, the reconstruction and the edit."""
    with gr.Row(equal_height=False):
        with gr.Column():
            page.photo = page.control(
                gr.Image(
                    type="filepath",  # the handlers read the file themselves (preprocess=False)
                    label="Photo",
                    sources=["upload", "webcam", "clipboard"],
                    interactive=page.ready,
                    height=VIEW_HEIGHT,
                    elem_id="photo",
                )
            )
            page.status = gr.Markdown(elem_id="status")
            page.faces = gr.Image(label="Faces found", visible=False, interactive=False, elem_id="faces")
            page.face_choice = page.control(
                gr.Dropdown(
                    label="Face to edit",
                    choices=[],
                    visible=False,
                    interactive=page.ready,
                    elem_id="face-choice",
                )
            )
            with gr.Column(visible=page.ready and bool(examples)) as page.examples:
                if examples:
                    gr.Examples(
                        [[str(p)] for p in examples], inputs=[page.photo], label="Examples (click one)"
                    )
        page.aligned = gr.Image(
            label="Aligned crop", interactive=False, height=VIEW_HEIGHT, elem_id="aligned"
        )
        page.reconstruction = gr.Image(
            label="Reconstruction (photo's view)",
            interactive=False,
            height=VIEW_HEIGHT,
            elem_id="reconstruction",
        )
        page.edited = gr.Image(
            label="Edited", interactive=False, format="png", height=VIEW_HEIGHT, elem_id="edited"
        )


def _attribute_section(page: Page, h: Handlers, editor) -> None:
    """The main sliders, every other attribute in its group's tab, precise edits and the held attributes."""
    groups = slider_groups(editor)
    main, others = groups.get("Main", []), {g: a for g, a in groups.items() if g != "Main"}
    _sliders(page, main, columns=3)
    page.more, page.groups = None, {}
    if others:
        count = sum(len(a) for a in others.values())
        with gr.Accordion(more_label(count), open=False, elem_id="more-attributes") as page.more:
            with gr.Tabs():
                for group, attributes in others.items():
                    with gr.Tab(group) as tab:
                        _sliders(page, attributes, columns=3)
                    page.groups[tab] = [name for name, _ in attributes]
    h.attributes = list(page.sliders)  # the order the handlers read the slider values in
    page.precise = page.control(
        gr.Checkbox(
            label="Precise edits",
            interactive=page.ready,
            elem_id="precise",
            info="Move each attribute by exactly its amount and hold the others still "
            "(conditional editing), instead of the plain, entangled edit.",
        )
    )
    page.hold = page.control(
        gr.Dropdown(
            hold_choices(editor),
            multiselect=True,
            label="Keep these attributes unchanged",
            interactive=page.ready,
            elem_id="hold",
        )
    )
    page.reset = page.control(gr.Button("Reset edits and view", interactive=page.ready, elem_id="reset"))


def more_label(count: int) -> str:
    return f"More attributes ({count}, by group)"


def _sliders(page: Page, attributes: list[tuple[str, str]], columns: int) -> None:
    for start in range(0, len(attributes), columns):
        with gr.Row():
            for name, label in attributes[start : start + columns]:
                page.sliders[name] = page.control(
                    gr.Slider(
                        -STRENGTH_LIMIT,
                        STRENGTH_LIMIT,
                        0,
                        step=0.5,
                        label=label,
                        interactive=page.ready,
                        min_width=160,
                        elem_id=f"edit-{friendly_name(name)}",
                    )
                )


def _camera_section(page: Page) -> None:
    page.yaw = page.control(
        gr.Slider(
            -YAW_LIMIT,
            YAW_LIMIT,
            0,
            step=1,
            precision=0,
            label="Yaw (°, positive: camera to the right)",
            interactive=page.ready,
            elem_id="yaw",
        )
    )
    page.pitch = page.control(
        gr.Slider(
            -PITCH_LIMIT,
            PITCH_LIMIT,
            0,
            step=1,
            precision=0,
            label="Pitch (°, negative: from above)",
            interactive=page.ready,
            elem_id="pitch",
        )
    )
    page.photo_view = page.control(gr.Button("Back to the photo's view", interactive=page.ready))


# ---------------------------------------------------------------------------------- output tabs


def grid_tab(page: Page, h: Handlers) -> None:
    with gr.Tab("Multi-view grid"):
        button = page.control(gr.Button("Render the grid", interactive=page.ready, elem_id="grid-button"))
        grid = gr.Image(label="Four views (yaw ±20°, pitch ±5°)", interactive=False, elem_id="grid")
    button.click(on_gpu(h.grid), [page.state], [grid], **PAGE, **SHORT)


def turntable_tab(page: Page, h: Handlers) -> None:
    with gr.Tab("Turntable video"):
        with gr.Row():
            frames = page.control(
                gr.Slider(
                    12,
                    240,
                    DEFAULT_FRAMES,
                    step=12,
                    label=f"Frames (at {VIDEO_FPS} fps)",
                    interactive=page.ready,
                    elem_id="frames",
                )
            )
            beside = page.control(gr.Checkbox(label="Reconstruction beside the edit", interactive=page.ready))
            depth = page.control(gr.Checkbox(label="Depth panel", interactive=page.ready))
        with gr.Row():
            button = page.control(
                gr.Button("Render the video", interactive=page.ready, elem_id="video-button")
            )
            estimate = gr.Markdown(elem_id="video-estimate")
        video = gr.Video(
            label="Turntable",
            interactive=False,
            autoplay=True,
            loop=True,
            height=VIEW_HEIGHT + 80,
            elem_id="video",
        )
    # the estimate follows the frame count and the pace of the latest views
    gr.on(
        [frames.change, page.edited.change], h.turntable_estimate, [frames], [estimate], queue=False, **PAGE
    )
    button.click(on_gpu(h.turntable), [page.state, frames, beside, depth], [video], **PAGE, **LONG)


def mesh_tab(page: Page, h: Handlers) -> None:
    with gr.Tab("3D mesh"):
        with gr.Row():
            resolution = page.control(
                gr.Radio(
                    mesh_resolutions(page.device),
                    value=128,
                    interactive=page.ready,
                    label="Grid resolution (higher: finer and slower)",
                    elem_id="resolution",
                )
            )
            estimate = gr.Markdown(elem_id="mesh-estimate")
        button = page.control(gr.Button("Extract the mesh", interactive=page.ready, elem_id="mesh-button"))
        model = gr.Model3D(label="Mesh", interactive=False, elem_id="mesh")
        glb = gr.File(label="GLB download", interactive=False, elem_id="glb")
    gr.on(
        [resolution.change, page.edited.change],
        h.mesh_estimate,
        [resolution],
        [estimate],
        queue=False,
        **PAGE,
    )
    button.click(on_gpu(h.mesh), [page.state, resolution], [model, glb], **PAGE, **LONG)


def depth_tab(page: Page, h: Handlers) -> None:
    with gr.Tab("Depth"):
        button = page.control(
            gr.Button("Render the depth map", interactive=page.ready, elem_id="depth-button")
        )
        depth = gr.Image(
            label="Depth (near is bright), from the current view", interactive=False, elem_id="depth"
        )
    button.click(on_gpu(h.depth), [page.state, page.yaw, page.pitch], [depth], **PAGE, **SHORT)


def paste_tab(page: Page, h: Handlers) -> None:
    with gr.Tab("Pasted into the photo"):
        button = page.control(
            gr.Button("Paste the edit into the photo", interactive=page.ready, elem_id="paste-button")
        )
        pasted = gr.Image(label="Edited photo", interactive=False, elem_id="pasted")
    button.click(on_gpu(h.pasted), [page.state], [pasted], **PAGE, **SHORT)


def latent_tab(page: Page, h: Handlers) -> None:
    with gr.Tab("Latent code"):
        gr.Markdown(
            "Download the edited W+ code to continue later or to use it with the preim3d library "
            "and command line; upload one to edit it here."
        )
        button = page.control(
            gr.Button("Download the edited code", interactive=page.ready, elem_id="save-latent")
        )
        latent_out = gr.File(label="Edited code (.npz)", interactive=False, elem_id="latent-out")
        page.latent_in = page.control(
            gr.File(
                label="Upload a code (.npz or .safetensors)",
                file_types=[".npz", ".safetensors"],
                interactive=page.ready,
                elem_id="latent-in",
            )
        )
    button.click(h.save_latent, [page.state], [latent_out], **PAGE)


TABS = [grid_tab, turntable_tab, mesh_tab, depth_tab, paste_tab, video_tab, latent_tab]


# ---------------------------------------------------------------------------------- event wiring


def _loaded(page: Page) -> list:
    """What `Handlers.load_photo` and `load_latent_file` write."""
    return [
        page.state,
        page.aligned,
        page.reconstruction,
        page.faces,
        page.face_choice,
        page.yaw,
        page.pitch,
        page.status,
    ]


def _edit_inputs(page: Page) -> list:
    return [page.state, page.yaw, page.pitch, page.precise, page.hold, *page.sliders.values()]


def _wire_input(page: Page, h: Handlers) -> None:
    """A photo, another face of it, or a latent file: load it, then show it with the current edits."""
    apply_edits = on_gpu(h.apply_edits)
    load_photo = on_gpu(h.load_photo)
    raw = {"preprocess": False, **PAGE, **SHORT}  # the handlers read and check uploads themselves
    uploaded = page.photo.change(load_photo, [page.photo], _loaded(page), **raw)
    uploaded.success(apply_edits, _edit_inputs(page), [page.state, page.edited], **PAGE, **SHORT)
    uploaded.failure(h.cleared, None, [*_loaded(page), page.edited], queue=False, **PAGE)  # no stale face
    page.face_choice.input(load_photo, [page.photo, page.face_choice], _loaded(page), **raw).success(
        apply_edits, _edit_inputs(page), [page.state, page.edited], **PAGE, **SHORT
    )
    page.latent_in.upload(on_gpu(h.load_latent_file), [page.latent_in], _loaded(page), **raw).success(
        apply_edits, _edit_inputs(page), [page.state, page.edited], **PAGE, **SHORT
    )


def _wire_edits(page: Page, h: Handlers, live: bool) -> None:
    """Sliders, precise, hold, camera and reset."""
    # Live: the view follows a dragged slider; always_last drops the values a busy lane could not
    # reach yet, so requests never pile up. Otherwise the view updates when the slider is let go.
    moved = "input" if live else "release"
    quiet = {"trigger_mode": "always_last", "show_progress": "hidden" if live else "minimal", **PAGE, **SHORT}
    gr.on(
        [getattr(s, moved) for s in page.sliders.values()] + [page.precise.input, page.hold.input],
        on_gpu(h.apply_edits),
        _edit_inputs(page),
        [page.state, page.edited],
        **quiet,
    )
    gr.on(
        [getattr(page.yaw, moved), getattr(page.pitch, moved)],
        on_gpu(h.render_view),
        [page.state, page.yaw, page.pitch],
        [page.edited],
        **quiet,
    )
    page.photo_view.click(h.photo_view, [page.state], [page.yaw, page.pitch], queue=False, **PAGE).then(
        on_gpu(h.render_view), [page.state, page.yaw, page.pitch], [page.edited], **PAGE, **SHORT
    )
    page.reset.click(
        h.reset,
        [page.state],
        [*page.sliders.values(), page.precise, page.hold, page.yaw, page.pitch],
        queue=False,
        **PAGE,
    ).then(on_gpu(h.apply_edits), _edit_inputs(page), [page.state, page.edited], **PAGE, **SHORT)


def _wire_download(page: Page, h: Handlers, download: WeightsDownload) -> None:
    """Download button: fetch, convert, load; then hide the panel and enable the page."""

    def enable():
        visible = set(h.attributes) if h.editor.directions is None else set(h.editor.directions.names)
        updates = {c: gr.update(interactive=True) for c in page.controls}
        updates |= {
            s: gr.update(interactive=True, visible=name in visible) for name, s in page.sliders.items()
        }
        updates[page.hold] = gr.update(interactive=True, choices=hold_choices(h.editor))
        updates[page.weights_panel] = gr.update(visible=False)
        updates[page.examples] = gr.update(visible=True)
        # the downloaded bank may lack some attributes: hide the groups left empty
        shown = {tab: [name for name in names if name in visible] for tab, names in page.groups.items()}
        updates |= {tab: gr.update(visible=bool(names)) for tab, names in shown.items()}
        if page.more is not None:
            count = sum(len(names) for names in shown.values())
            updates[page.more] = gr.update(visible=bool(count), label=more_label(count))
        return updates

    targets = [*page.controls, page.weights_panel, page.examples, *page.groups]
    targets += [page.more] if page.more is not None else []
    page.download_button.click(
        download.download, [page.accept], [page.download_status], concurrency_id="weights", **PAGE
    ).success(enable, None, targets, queue=False, **PAGE)


def _api_endpoints(h: Handlers, download: WeightsDownload | None) -> None:
    """The named, stateless endpoints for gradio_client (documented in demo/SPACE.md),
    on hidden components."""
    with gr.Column(visible=False):
        photo = gr.Image(type="filepath", label="photo")
        latent = gr.File(label="latent", file_types=[".npz", ".safetensors"])
        face = gr.Number(1, precision=0, label="face")
        edits = gr.JSON({}, label="edits")
        yaw = gr.Number(None, label="yaw")
        pitch = gr.Number(None, label="pitch")
        precise = gr.Checkbox(False, label="precise")
        frames = gr.Number(DEFAULT_FRAMES, label="frames", maximum=MAX_FRAMES)
        resolution = gr.Number(128, label="resolution")
        crop = gr.Image(label="crop", format="png")
        info = gr.JSON(label="info")
        code = gr.File(label="code")
        image = gr.Image(label="image", format="png")
        video = gr.Video(label="video")
        mesh = gr.Model3D(label="mesh")
        trigger = gr.Button()
    raw = {"preprocess": False}  # the handlers read and check every value themselves
    trigger.click(on_gpu(h.api_align), [photo, face], [crop, info], api_name="align", **raw, **SHORT)
    trigger.click(on_gpu(h.api_invert), [photo, face], [code], api_name="invert", **raw, **SHORT)
    trigger.click(
        on_gpu(h.api_edit),
        [photo, latent, edits, yaw, pitch, precise, face],
        [image],
        api_name="edit",
        **raw,
        **SHORT,
    )
    trigger.click(
        on_gpu(h.api_turntable),
        [photo, latent, edits, precise, frames, face],
        [video],
        api_name="turntable",
        **raw,
        **LONG,
    )
    trigger.click(
        on_gpu(h.api_mesh),
        [photo, latent, edits, precise, resolution, face],
        [mesh],
        api_name="mesh",
        **raw,
        **LONG,
    )
    video_endpoint(h, trigger)
    if download is not None:  # only while there is something to download
        accept = gr.Checkbox(False, label="accept_licences", visible=False)
        status = gr.Markdown(visible=False)
        trigger.click(
            download.download, [accept], [status], api_name="download_weights", concurrency_id="weights"
        )


def launch(demo: gr.Blocks, *, queue_size: int = QUEUE_SIZE, **kwargs):
    """Start the server with a bounded queue; keywords go to `gr.Blocks.launch`
    (server_name, server_port, ...). Says in the terminal which weights it serves."""
    if not logging.getLogger().handlers:  # unexpected handler errors reach the terminal with their traceback
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    print(getattr(demo, "preim3d_summary", ""), flush=True)
    demo.queue(max_size=queue_size, default_concurrency_limit=1)
    kwargs.setdefault("max_file_size", MAX_FILE_SIZE)
    return demo.launch(**kwargs)
