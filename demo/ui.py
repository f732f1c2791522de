"""The page: layout, event wiring and the named API endpoints. What each control does is in `demo.handlers`.

demo = build_demo()                 # weights from $PREIM3D_WEIGHTS or the default folder
launch(demo)                        # bounded queue, GPU work one request at a time
"""

from __future__ import annotations

try:  # Hugging Face ZeroGPU Spaces: must be imported before torch initialises CUDA
    import spaces
except ImportError:
    spaces = None

from pathlib import Path

import gradio as gr
from PIL import Image

from preim3d import Editor, Preim3DError

from .handlers import (
    MESH_RESOLUTIONS,
    PITCH_LIMIT,
    STRENGTH_LIMIT,
    VIDEO_FPS,
    YAW_LIMIT,
    Handlers,
    problem,
    slider_attributes,
)
from .refine import refine_controls, wire_refine

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
GPU = {"concurrency_id": "gpu", "concurrency_limit": 1}  # one network job at a time, across all events

INTRO = """\
# preim3d: edit a face in 3D from one photo
Upload a portrait: the face is aligned, encoded by [PREIM3D](https://github.com/mybabyyh/Preim3D) (CVPR 2023)
into the latent space of the [EG3D](https://github.com/NVlabs/eg3d) 3D generator, and can then be edited and
seen from any angle. Compare the reconstruction with the aligned crop to judge how well the face was captured.
"""


def on_gpu(fn):
    """On a ZeroGPU Space a GPU is attached only while a function decorated with spaces.GPU runs."""
    return spaces.GPU(fn) if spaces is not None else fn


def photo_input(**kwargs) -> gr.Image:
    """A gr.Image (filepath) whose unreadable uploads get a readable message instead of a bare "Error".

    gr.Image opens each upload with PIL before any handler runs. (A gr.Image subclass would do the
    same, but gradio writes a .pyi stub beside the module of every component class.)
    """
    image = gr.Image(type="filepath", image_mode=None, **kwargs)  # image_mode None: the file as uploaded
    preprocess = image.preprocess

    def checked(payload):
        name = f"The file {payload.orig_name}" if payload is not None and payload.orig_name else "The file"
        try:
            return preprocess(payload)
        except Image.DecompressionBombError as exc:
            raise problem(f"{name} is too large to open safely: downscale it first ({exc}).") from exc
        except OSError as exc:  # PIL's UnidentifiedImageError and truncated files
            raise problem(f"{name} is not an image that can be read: use a JPEG, PNG or WebP photo.") from exc

    image.preprocess = checked
    return image


def load_editor(editor_or_source) -> tuple[Editor | None, str | None]:
    """(editor, None), or (None, why) when the weights cannot be found or loaded."""
    if isinstance(editor_or_source, Editor):
        return editor_or_source, None
    try:
        # deterministic depth samples: the view does not shimmer when only the camera moves
        return Editor.from_pretrained(editor_or_source, precision="fast", deterministic=True), None
    except Preim3DError as exc:
        return None, str(exc)


def build_demo(editor_or_source=None, *, examples=EXAMPLES) -> gr.Blocks:
    """The demo page around an Editor, or one loaded from a weights source
    (None: $PREIM3D_WEIGHTS, default folder).

    Without weights the page still builds: it explains how to get them and its controls are disabled.
    """
    editor, missing = load_editor(editor_or_source)
    ready = editor is not None
    h = Handlers(editor, missing, examples)
    quick, more = slider_attributes(editor)
    bank_names = list(editor.directions.names) if ready and editor.directions is not None else []

    with gr.Blocks(
        title="preim3d: 3D face editing", analytics_enabled=False, delete_cache=(3600, 3600)
    ) as demo:
        gr.Markdown(INTRO)
        if not ready:
            gr.Markdown(
                f"### The model weights are missing, so the controls are disabled\n\n{missing}\n\n"
                "Then restart this app.",
                elem_id="weights-missing",
            )
        state = gr.State(None, delete_callback=h.release)  # the session's refined head goes with it

        with gr.Row(equal_height=False):
            with gr.Column():
                photo = photo_input(
                    label="Photo",
                    sources=["upload", "webcam", "clipboard"],
                    interactive=ready,
                    height=VIEW_HEIGHT,
                    elem_id="photo",
                )
                faces = gr.Image(label="Faces found", visible=False, interactive=False, elem_id="faces")
                face_choice = gr.Dropdown(
                    label="Face to edit", choices=[], visible=False, interactive=ready, elem_id="face-choice"
                )
                if examples and ready:
                    gr.Examples([[str(p)] for p in examples], inputs=[photo], label="Examples (click one)")
            aligned = gr.Image(label="Aligned crop", interactive=False, height=VIEW_HEIGHT, elem_id="aligned")
            with gr.Column():
                reconstruction = gr.Image(
                    label="Reconstruction (photo's view)",
                    interactive=False,
                    height=VIEW_HEIGHT,
                    elem_id="reconstruction",
                )
                refine = refine_controls(editor)
            with gr.Column():
                edited = gr.Image(
                    label="Edited", interactive=False, format="png", height=VIEW_HEIGHT, elem_id="edited"
                )
                status = gr.Markdown(elem_id="status")

        with gr.Row(equal_height=False):
            with gr.Column(scale=2):
                by_name = {name: _strength(name, label, ready) for name, label in quick}
                with gr.Accordion(
                    f"All attributes ({len(quick) + len(more)})", open=False, visible=bool(more)
                ):
                    with gr.Row():
                        for column in range(3):
                            with gr.Column(min_width=200):
                                by_name |= {
                                    name: _strength(name, label, ready) for name, label in more[column::3]
                                }
                sliders = [by_name[name] for name in h.attributes]  # the order the handlers read them in
                precise = gr.Checkbox(
                    label="Precise edits",
                    interactive=ready,
                    elem_id="precise",
                    info="Move each attribute by exactly its amount and hold the others still "
                    "(conditional editing), instead of the plain, entangled edit.",
                )
                hold = gr.Dropdown(
                    bank_names,
                    multiselect=True,
                    label="Keep these attributes unchanged",
                    interactive=ready,
                    elem_id="hold",
                )
                reset = gr.Button("Reset edits and view", interactive=ready, elem_id="reset")
            with gr.Column(scale=1):
                yaw = gr.Slider(
                    -YAW_LIMIT,
                    YAW_LIMIT,
                    0,
                    step=1,
                    label="Yaw (°, positive: camera to the right)",
                    interactive=ready,
                    elem_id="yaw",
                )
                pitch = gr.Slider(
                    -PITCH_LIMIT,
                    PITCH_LIMIT,
                    0,
                    step=1,
                    label="Pitch (°, negative: from above)",
                    interactive=ready,
                    elem_id="pitch",
                )
                photo_view = gr.Button("Back to the photo's view", interactive=ready)

        with gr.Tabs():
            with gr.Tab("Multi-view grid"):
                grid_button = gr.Button("Render the grid", interactive=ready, elem_id="grid-button")
                grid = gr.Image(label="Four views (yaw ±20°, pitch ±5°)", interactive=False, elem_id="grid")
            with gr.Tab("Turntable video"):
                with gr.Row():
                    frames = gr.Slider(
                        12,
                        240,
                        120,
                        step=12,
                        label=f"Frames (at {VIDEO_FPS} fps)",
                        interactive=ready,
                        elem_id="frames",
                    )
                    beside = gr.Checkbox(label="Reconstruction beside the edit", interactive=ready)
                    depth_panel = gr.Checkbox(label="Depth panel", interactive=ready)
                video_button = gr.Button("Render the video", interactive=ready, elem_id="video-button")
                video = gr.Video(
                    label="Turntable",
                    interactive=False,
                    autoplay=True,
                    loop=True,
                    height=VIEW_HEIGHT + 80,
                    elem_id="video",
                )
            with gr.Tab("3D mesh"):
                resolution = gr.Radio(
                    list(MESH_RESOLUTIONS),
                    value=128,
                    interactive=ready,
                    label="Grid resolution (higher: finer and slower)",
                )
                mesh_button = gr.Button("Extract the mesh", interactive=ready, elem_id="mesh-button")
                model = gr.Model3D(label="Mesh", interactive=False, elem_id="mesh")
                glb = gr.File(label="GLB download", interactive=False, elem_id="glb")
            with gr.Tab("Depth"):
                depth_button = gr.Button("Render the depth map", interactive=ready, elem_id="depth-button")
                depth = gr.Image(
                    label="Depth (near is bright), from the current view", interactive=False, elem_id="depth"
                )
            with gr.Tab("Pasted into the photo"):
                paste_button = gr.Button(
                    "Paste the edit into the photo", interactive=ready, elem_id="paste-button"
                )
                pasted = gr.Image(label="Edited photo", interactive=False, elem_id="pasted")
            with gr.Tab("Latent code"):
                gr.Markdown(
                    "Download the edited W+ code to continue later or to use it with the preim3d library "
                    "and command line; upload one to edit it here."
                )
                save_button = gr.Button("Download the edited code", interactive=ready, elem_id="save-latent")
                latent_out = gr.File(label="Edited code (.npz)", interactive=False, elem_id="latent-out")
                latent_in = gr.File(
                    label="Upload a code (.npz or .safetensors)",
                    file_types=[".npz", ".safetensors"],
                    interactive=ready,
                    elem_id="latent-in",
                )

        _api_endpoints(h)  # first, so that they get the plain names (/edit, /mesh, ...)

        # ---- page events: per-session state, all network work in the one "gpu" queue group
        ui = {"api_visibility": "private", **GPU}  # the page's own events; scripts use the named API below
        loaded = [state, aligned, reconstruction, faces, face_choice, yaw, pitch, status]
        edit_inputs = [state, yaw, pitch, precise, hold, *sliders]
        apply_edits = on_gpu(h.apply_edits)
        render_view = on_gpu(h.render_view)

        uploaded = photo.change(on_gpu(h.load_photo), [photo], loaded, **ui)
        uploaded.success(apply_edits, edit_inputs, [state, edited], **ui)
        uploaded.failure(
            h.cleared, None, [*loaded, edited], queue=False, api_visibility="private"
        )  # no stale face
        face_choice.input(on_gpu(h.load_photo), [photo, face_choice], loaded, **ui).success(
            apply_edits, edit_inputs, [state, edited], **ui
        )
        latent_in.upload(on_gpu(h.load_latent_file), [latent_in], loaded, **ui).success(
            apply_edits, edit_inputs, [state, edited], **ui
        )
        gr.on(
            [s.release for s in sliders] + [precise.input, hold.input],
            apply_edits,
            edit_inputs,
            [state, edited],
            trigger_mode="always_last",
            show_progress="minimal",
            **ui,
        )
        gr.on(
            [yaw.release, pitch.release],
            render_view,
            [state, yaw, pitch],
            [edited],
            trigger_mode="always_last",
            show_progress="minimal",
            **ui,
        )
        photo_view.click(h.photo_view, [state], [yaw, pitch], queue=False, api_visibility="private").then(
            render_view, [state, yaw, pitch], [edited], **ui
        )
        reset.click(
            h.reset, [state], [*sliders, precise, hold, yaw, pitch], queue=False, api_visibility="private"
        ).then(apply_edits, edit_inputs, [state, edited], **ui)
        wire_refine(
            on_gpu(h.refine),
            refine,
            state,
            reconstruction,
            cleared_by=[photo.change, latent_in.upload],
            then=(apply_edits, edit_inputs, [state, edited]),
            **ui,
        )
        grid_button.click(on_gpu(h.grid), [state], [grid], **ui)
        video_button.click(on_gpu(h.turntable), [state, frames, beside, depth_panel], [video], **ui)
        mesh_button.click(on_gpu(h.mesh), [state, resolution], [model, glb], **ui)
        depth_button.click(on_gpu(h.depth), [state, yaw, pitch], [depth], **ui)
        paste_button.click(on_gpu(h.pasted), [state], [pasted], **ui)
        save_button.click(h.save_latent, [state], [latent_out], api_visibility="private")
    return demo


def _strength(name: str, label: str, interactive: bool) -> gr.Slider:
    return gr.Slider(
        -STRENGTH_LIMIT,
        STRENGTH_LIMIT,
        0,
        step=0.5,
        label=label,
        interactive=interactive,
        elem_id=f"edit-{name}",
    )


def _api_endpoints(h: Handlers) -> None:
    """The named, stateless endpoints for gradio_client (documented in demo/SPACE.md),
    on hidden components."""
    with gr.Column(visible=False):
        photo = photo_input(label="photo")
        latent = gr.File(label="latent", file_types=[".npz", ".safetensors"])
        face = gr.Number(0, precision=0, label="face")
        edits = gr.JSON({}, label="edits")
        yaw = gr.Number(None, label="yaw")
        pitch = gr.Number(None, label="pitch")
        precise = gr.Checkbox(False, label="precise")
        frames = gr.Number(120, precision=0, label="frames")
        resolution = gr.Number(128, precision=0, label="resolution")
        refine_steps = gr.Number(0, precision=0, label="refine_steps")
        crop = gr.Image(label="crop", format="png")
        info = gr.JSON(label="info")
        code = gr.File(label="code")
        image = gr.Image(label="image", format="png")
        video = gr.Video(label="video")
        mesh = gr.Model3D(label="mesh")
        trigger = gr.Button()
    trigger.click(on_gpu(h.api_align), [photo, face], [crop, info], api_name="align", **GPU)
    trigger.click(on_gpu(h.api_invert), [photo, face], [code], api_name="invert", **GPU)
    trigger.click(
        on_gpu(h.api_edit),
        [photo, latent, edits, yaw, pitch, precise, face, refine_steps],
        [image],
        api_name="edit",
        **GPU,
    )
    trigger.click(
        on_gpu(h.api_turntable),
        [photo, latent, edits, precise, frames, face, refine_steps],
        [video],
        api_name="turntable",
        **GPU,
    )
    trigger.click(
        on_gpu(h.api_mesh),
        [photo, latent, edits, precise, resolution, face, refine_steps],
        [mesh],
        api_name="mesh",
        **GPU,
    )


def launch(demo: gr.Blocks, *, queue_size: int = QUEUE_SIZE, **kwargs):
    """Start the server with a bounded queue; keywords go to `gr.Blocks.launch`
    (server_name, server_port, ...)."""
    demo.queue(max_size=queue_size, default_concurrency_limit=1)
    kwargs.setdefault("max_file_size", MAX_FILE_SIZE)
    return demo.launch(**kwargs)
