"""The web demo on a tiny random-weight bundle: the named API through gradio_client, the page's handlers,
bad input, the page without weights, `python app.py`, and 20 requests at once."""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import gradio as gr
import imageio_ffmpeg
import numpy as np
import pytest
import torch
import trimesh
from demo_helpers import (
    BAD_INPUT_MESSAGES,
    bad_files,
    client_for,
    loopback_only,
    serving,
    start_app,
    stop,
    weights_to_download,
)
from gradio_client import handle_file
from gradio_client.exceptions import AppError
from gradio_client.utils import QueueError
from PIL import Image

from demo.handlers import Handlers, slider_groups
from demo.ui import EXAMPLES
from preim3d.align import align_face, detect_faces
from preim3d.pipeline import Editor, load_latent

ROOT = Path(__file__).resolve().parent.parent
TWO_FACES = ROOT / "examples" / "two_faces.jpg"


@pytest.fixture(scope="module", autouse=True)
def no_network():
    with loopback_only():
        yield


@pytest.fixture(scope="module")
def editor(tiny_bundle):
    return Editor.from_pretrained(tiny_bundle, device="cpu", deterministic=True)


@pytest.fixture(scope="module")
def client(editor):
    with serving(editor) as (url, _):
        yield client_for(url)


@pytest.fixture(scope="module")
def astronaut(editor, astronaut_png):
    """The photo's first detected face aligned, its code and its pose, computed here without the demo."""
    face = align_face(astronaut_png, detect_faces(astronaut_png)[0])
    return face, editor.invert(face), face.estimate_pose()


def pixels(image) -> np.ndarray:
    return np.asarray(Image.open(image) if isinstance(image, (str, Path)) else image, dtype=np.int16)


# ---------------------------------------------------------------------------------- named API


def test_named_endpoints_and_their_parameters(client):
    api = client.view_api(return_format="dict", print_info=False)
    params = {
        name: [p["parameter_name"] for p in e["parameters"]] for name, e in api["named_endpoints"].items()
    }
    assert params == {
        "/align": ["photo", "face"],
        "/invert": ["photo", "face"],
        "/edit": ["photo", "latent", "edits", "yaw", "pitch", "precise", "face"],
        "/turntable": ["photo", "latent", "edits", "precise", "frames", "face"],
        "/mesh": ["photo", "latent", "edits", "precise", "resolution", "face"],
        "/edit_video": ["video", "edits", "precise", "face", "side_by_side"],
    }
    assert not api["unnamed_endpoints"]  # the page's own events are not part of the API
    # everything but the photo-or-latent is optional
    assert all(p["parameter_has_default"] for e in api["named_endpoints"].values() for p in e["parameters"])


def test_align_returns_the_crop_and_the_faces(client, astronaut, astronaut_png):
    crop, info = client.predict(photo=handle_file(astronaut_png), api_name="/align")
    face, _, (yaw, pitch) = astronaut
    assert Image.open(crop).size == (512, 512)
    assert np.array_equal(pixels(crop), pixels(face.image))  # the face listed first is the face aligned
    assert info["faces"] == 1 and info["face"] == 1  # faces are numbered from 1, as on the page
    assert info["boxes"] == [pytest.approx(f.box, abs=0.1) for f in detect_faces(astronaut_png)]
    left, top, right, bottom = info["boxes"][0]
    assert left < (face.box[0] + face.box[2]) / 2 < right and top < (face.box[1] + face.box[3]) / 2 < bottom
    assert (info["yaw"], info["pitch"]) == pytest.approx((math.degrees(yaw), math.degrees(pitch)))

    first, info = client.predict(photo=handle_file(TWO_FACES), api_name="/align")
    second, info_second = client.predict(photo=handle_file(TWO_FACES), face=2, api_name="/align")
    assert info["faces"] == info_second["faces"] == 2 and (info["face"], info_second["face"]) == (1, 2)
    assert np.abs(pixels(first) - pixels(second)).mean() > 5  # the mirrored, smaller copy
    faces = detect_faces(TWO_FACES)
    assert np.array_equal(pixels(second), pixels(align_face(TWO_FACES, faces[1]).image))


def test_edit_from_a_photo_renders_the_edit_from_the_photos_view(client, editor, astronaut, astronaut_png):
    face, ws, pose = astronaut
    edited = client.predict(photo=handle_file(astronaut_png), edits={"smile": 3, "age": -2}, api_name="/edit")
    expected = editor.render(editor.edit(ws, {"smile": 3, "age": -2}), *pose)
    assert Image.open(edited).size == (128, 128)  # the tiny generator's image resolution
    assert np.array_equal(pixels(edited), pixels(expected))
    # no edits: the reconstruction; JSON text works as well as an object; precise is another edit
    same = client.predict(photo=handle_file(astronaut_png), edits="{}", api_name="/edit")
    assert np.array_equal(pixels(same), pixels(editor.render(ws, *pose)))
    precise = client.predict(
        photo=handle_file(astronaut_png), edits={"smile": 3, "age": -2}, precise=True, api_name="/edit"
    )
    expected = editor.render(editor.edit(ws, {"smile": 3, "age": -2}, precise=True), *pose)
    assert np.array_equal(pixels(precise), pixels(expected))
    assert not np.array_equal(
        pixels(precise), pixels(edited)
    )  # the tiny bank's directions are near-orthogonal


def test_invert_then_edit_the_latent_from_another_camera(client, editor, astronaut, astronaut_png):
    _, ws, _ = astronaut
    code = client.predict(photo=handle_file(astronaut_png), api_name="/invert")
    assert Path(code).suffix == ".npz"
    torch.testing.assert_close(load_latent(code), ws)
    image = client.predict(latent=handle_file(code), edits={"glasses": 4}, yaw=20, api_name="/edit")
    expected = editor.render(
        editor.edit(ws, {"glasses": 4}), math.radians(20), 0.0
    )  # a latent's view: frontal
    assert np.array_equal(pixels(image), pixels(expected))


def test_turntable_is_a_decodable_mp4(client, astronaut_png):
    video = client.predict(
        photo=handle_file(astronaut_png), edits={"smile": 2}, frames=12, api_name="/turntable"
    )
    assert Path(video).suffix == ".mp4"
    reader = imageio_ffmpeg.read_frames(video)
    meta = next(reader)
    frames = [np.frombuffer(f, np.uint8).reshape(128, 128, 3).astype(np.int16) for f in reader]
    assert meta["size"] == (128, 128) and meta["fps"] == 30
    assert len(frames) == 12
    assert np.abs(frames[0] - frames[3]).mean() > 1  # the camera moves


def test_mesh_is_a_glb_that_loads(client, editor, astronaut, astronaut_png):
    path = client.predict(
        photo=handle_file(astronaut_png), edits={"beard": 2}, resolution=64, api_name="/mesh"
    )
    assert Path(path).suffix == ".glb"
    mesh = trimesh.load(path, force="mesh", process=False, skip_materials=True)  # COLOR_0 as vertex colours
    expected = editor.mesh(editor.edit(astronaut[1], {"beard": 2}), resolution=64)
    assert len(mesh.vertices) == len(expected.vertices) > 100 and len(mesh.faces) == len(expected.faces)
    assert mesh.visual.kind == "vertex" and mesh.visual.vertex_colors[:, :3].std() > 1


def test_bad_input_gets_a_readable_message(client, tmp_path, astronaut_png):
    for name, path in bad_files(tmp_path).items():
        with pytest.raises(AppError, match=BAD_INPUT_MESSAGES[name]):
            client.predict(photo=handle_file(path), api_name="/edit")
    with pytest.raises(AppError, match="Give a photo or a latent file"):
        client.predict(api_name="/edit")
    with pytest.raises(AppError, match="Unknown attribute 'smiel'. Did you mean 'smile'"):
        client.predict(photo=handle_file(astronaut_png), edits={"smiel": 2}, api_name="/edit")
    with pytest.raises(AppError, match="edits must be a JSON object"):
        client.predict(photo=handle_file(astronaut_png), edits="smile=2", api_name="/edit")
    (tmp_path / "ws.npz").write_bytes(b"PK not really a zip")
    with pytest.raises(AppError, match="is not a readable .npz or .safetensors file"):
        client.predict(latent=handle_file(tmp_path / "ws.npz"), api_name="/edit")


def test_bad_values_get_a_message_and_the_server_stays_up(client, editor, astronaut, astronaut_png, tmp_path):
    tiny = tmp_path / "tiny.png"
    Image.new("RGB", (3, 2), (200, 180, 150)).save(tiny)  # dlib fails on such images: refused before it
    photo = handle_file(astronaut_png)
    refused = {  # each with the message of preim3d.validation, as the command line and library give it
        "tiny.png is 3x2 pixels, too small to hold a face": dict(photo=handle_file(tiny), api_name="/edit"),
        "frames must be a whole number from 1 to 480, not 0": dict(
            photo=photo, frames=0, api_name="/turntable"
        ),
        "The strength of 'smile' must be a number from -10 to 10, not 1e\\+09": dict(
            photo=photo, edits={"smile": 1e9}, api_name="/edit"
        ),
        "yaw must be a number within ±180°": dict(photo=photo, yaw=1e9, api_name="/edit"),
        "pitch must be a number within ±90°": dict(photo=photo, pitch=-100, api_name="/edit"),
        "This photo has 1 face \\(numbered 1\\); there is no face 2": dict(
            photo=photo, face=2, api_name="/align"
        ),
        "Faces are numbered from 1": dict(photo=photo, face=0, api_name="/edit"),
        "The mesh resolution must be 64, 128, 256 or 512": dict(
            photo=photo, resolution=100, api_name="/mesh"
        ),
        "A 512³ mesh takes several minutes": dict(photo=photo, resolution=512, api_name="/mesh"),  # on a CPU
    }
    for message, request in refused.items():
        with pytest.raises(AppError, match=message):
            client.predict(**request)
    _, ws, pose = astronaut  # and the next request is answered as usual
    image = client.predict(photo=photo, edits={"smile": 10}, yaw=46, api_name="/edit")
    expected = editor.render(editor.edit(ws, {"smile": 10}), math.radians(46), pose[1])
    assert np.array_equal(pixels(image), pixels(expected))


def test_an_unexpected_error_is_shown_and_logged_with_its_traceback(
    editor, astronaut_png, monkeypatch, caplog
):
    handlers = Handlers(editor)
    monkeypatch.setattr(editor, "invert", lambda face: 1 / 0)
    with pytest.raises(gr.Error, match=r"Something went wrong on the server \(ZeroDivisionError"):
        handlers.api_invert(str(astronaut_png))
    (record,) = [r for r in caplog.records if r.name == "demo"]
    assert "api_invert failed" in record.message and record.exc_info[0] is ZeroDivisionError


def test_an_edit_is_answered_while_a_turntable_renders(editor, astronaut_png):
    with serving(editor) as (url, demo):
        lanes = {fn.api_name: fn.concurrency_id for fn in demo.fns.values()}
        assert lanes["turntable"] == lanes["mesh"] == "long" and lanes["edit"] == lanes["align"] == "gpu"
        client = client_for(url)
        code = handle_file(client.predict(photo=handle_file(astronaut_png), api_name="/invert"))
        video = client.submit(latent=code, frames=24, api_name="/turntable")
        while video.status().code.name not in ("PROCESSING", "PROGRESS"):  # the video is being made
            assert not video.done()
            time.sleep(0.05)
        client.predict(latent=code, edits={"smile": 3}, yaw=10, api_name="/edit")
        assert not video.done()  # the edit did not wait for the video
        assert Path(video.result(timeout=600)).suffix == ".mp4"


def test_twenty_requests_at_once_are_all_answered(client, editor, astronaut_png):
    code = client.predict(photo=handle_file(astronaut_png), api_name="/invert")
    yaws = list(range(-38, 40, 4))
    assert len(yaws) == 20
    start = time.perf_counter()
    jobs = [client.submit(latent=handle_file(code), yaw=yaw, api_name="/edit") for yaw in yaws]
    results = [job.result(timeout=120) for job in jobs]
    elapsed = time.perf_counter() - start
    assert len(set(results)) == 20
    ws = load_latent(code)
    for yaw, result in zip(yaws, results):  # each answer is the render its own request asked for
        assert np.array_equal(pixels(result), pixels(editor.render(ws, math.radians(yaw), 0.0))), yaw
    print(f"20 concurrent /edit requests answered in {elapsed:.1f} s")


def test_the_queue_is_bounded(editor, astronaut_png):
    with serving(editor, queue_size=2) as (url, _):
        client = client_for(url)
        code = client.predict(photo=handle_file(astronaut_png), api_name="/invert")
        jobs = [client.submit(latent=handle_file(code), frames=12, api_name="/turntable") for _ in range(6)]
        answered, refused = 0, 0
        for job in jobs:
            try:
                job.result(timeout=120)
                answered += 1
            except QueueError as exc:
                assert "Queue is full" in str(exc)
                refused += 1
    # one runs and two wait; the others are turned away at once rather than piling up
    assert answered >= 2 and refused >= 1 and answered + refused == 6


# ---------------------------------------------------------------------------------- the page's handlers


@pytest.fixture
def handlers(editor):
    h = Handlers(editor, examples=EXAMPLES)
    h.attributes = [a for names in slider_groups(editor).values() for a, _ in names]  # as the page lays out
    return h


def load(handlers, path, face=1, strengths=None, **controls):
    """What the page does on upload: load the photo, then apply the sliders.
    Returns (outputs, state, edited)."""
    outputs = handlers.load_photo(path, face)
    state, edited = edit(handlers, outputs[0], strengths, **controls)
    return outputs, state, edited


def edit(handlers, state, strengths=None, yaw=0, pitch=0, precise=False, hold=()):
    """The sliders at `strengths` ({attribute or friendly name: value}), then the page's edit event."""
    bank = handlers.editor.directions
    by_attribute = {bank.resolve(name)[0]: value for name, value in (strengths or {}).items()}
    values = [by_attribute.get(name, 0) for name in handlers.attributes]
    return handlers.apply_edits(state, yaw, pitch, precise, list(hold), *values)


def test_upload_shows_crop_reconstruction_and_the_photos_view(handlers, editor, astronaut, astronaut_png):
    face, ws, pose = astronaut
    (state, crop, reconstruction, faces, choice, yaw, pitch, status), _, _ = load(handlers, astronaut_png)
    assert np.array_equal(pixels(crop), pixels(face.image))
    assert np.array_equal(pixels(reconstruction), pixels(editor.render(ws, *pose)))
    assert (yaw, pitch) == tuple(round(math.degrees(v)) for v in pose)  # whole degrees, as the sliders step
    assert f"yaw {yaw}°" in status and not faces["visible"] and not choice["visible"]  # one face: no choice

    _, _, _, faces, choice, *_, status = handlers.load_photo(str(TWO_FACES), 2)
    assert faces["visible"] and choice["visible"] and choice["value"] == 2 and "editing face 2" in status
    assert choice["choices"] == [("Face 1", 1), ("Face 2", 2)]
    assert faces["value"].size == (768, 439)  # the 896 x 512 photo with the faces boxed, at most 768 px


def test_camera_changes_reuse_the_tri_planes(handlers, editor, astronaut_png, monkeypatch):
    calls = []
    synthesize = editor.generator.synthesize_planes
    monkeypatch.setattr(
        editor.generator, "synthesize_planes", lambda *a, **k: calls.append(1) or synthesize(*a, **k)
    )
    editor.renderer.clear()
    _, state, front = load(handlers, astronaut_png, strengths={"smile": 4})
    after_upload = len(calls)  # reconstruction + edited code
    side = handlers.render_view(state, 30, -10)
    other = handlers.render_view(state, -30, 10)
    assert len(calls) == after_upload  # camera only: no backbone run
    assert np.abs(pixels(side) - pixels(front)).mean() > 1 and np.abs(pixels(side) - pixels(other)).mean() > 1
    edit(handlers, state, {"smile": 5})
    assert len(calls) == after_upload + 1  # a new edit is a new code


def test_examples_are_prepared_once_then_reused(handlers, editor, tmp_path, monkeypatch):
    calls = []
    invert = editor.invert
    monkeypatch.setattr(editor, "invert", lambda faces: calls.append(1) or invert(faces))
    example = next(p for p in EXAMPLES if p.name == "astronaut.png")
    copy = shutil.copy(example, tmp_path / "upload.png")  # the page hands over its own copy of the file
    first = handlers.load_photo(str(example))
    again = handlers.load_photo(copy)
    assert len(calls) == 1
    assert np.array_equal(pixels(first[2]), pixels(again[2]))
    mirrored = tmp_path / "mirrored.png"
    Image.open(example).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(mirrored)
    handlers.load_photo(mirrored)
    handlers.load_photo(mirrored)
    assert len(calls) == 3  # other photos are not kept


def test_precise_hold_reset_and_paste(handlers, editor, astronaut, astronaut_png):
    _, ws, pose = astronaut
    _, plain, plain_view = load(handlers, astronaut_png, strengths={"Male": 4})
    _, precise, precise_view = load(
        handlers, astronaut_png, strengths={"Male": 4}, precise=True, hold=["Wearing_Lipstick"]
    )
    bank = editor.directions
    moved = bank.scores(precise.edited, ["Male", "Wearing_Lipstick"]) - bank.scores(
        ws, ["Male", "Wearing_Lipstick"]
    )
    assert moved[0].tolist() == pytest.approx([4.0, 0.0], abs=1e-3)
    assert not np.array_equal(pixels(plain_view), pixels(precise_view))
    assert precise.edits == {"male": 4.0} and precise.hold == ("Wearing_Lipstick",)
    with pytest.raises(gr.Error, match="cannot be both edited and held"):
        edit(handlers, precise, {"Male": 4}, hold=["female"])
    # the hold list offers the names the sliders show, and they work as held attributes
    _, lipstick_held, _ = load(
        handlers, astronaut_png, strengths={"Male": 4}, precise=True, hold=["lipstick"]
    )
    torch.testing.assert_close(lipstick_held.edited, precise.edited)

    *zeros, precise_off, hold, yaw, pitch = handlers.reset(precise)
    assert zeros == [0] * len(handlers.attributes) and precise_off is False and hold == []
    assert (yaw, pitch) == tuple(round(math.degrees(v)) for v in pose)

    pasted = handlers.pasted(plain)
    photo = Image.open(astronaut_png)
    assert pasted.size == photo.size
    assert np.abs(pixels(pasted) - pixels(photo)).mean() > 1
    assert np.array_equal(pixels(pasted)[:20, :20], pixels(photo)[:20, :20])  # the corners keep the photo


def test_grid_depth_video_mesh_and_latent_round_trip(handlers, editor, astronaut_png, tmp_path):
    _, state, _ = load(handlers, astronaut_png, strengths={"glasses": 3})
    assert handlers.grid(state).size == (256, 256)
    depth = handlers.depth(state, 10, 0)
    assert depth.size == (128, 128) and np.asarray(depth).std() > 5
    video = handlers.turntable(state, 12, True, True, progress=lambda *a, **k: None)
    assert Path(video).name == "astronaut-turntable.mp4"
    assert next(imageio_ffmpeg.read_frames(video))["size"] == (3 * 128, 128)  # reconstruction | edit | depth
    model, download = handlers.mesh(state, 64, progress=lambda *a, **k: None)
    assert model == download and len(trimesh.load(model, force="mesh").vertices) > 100

    saved = handlers.save_latent(state)
    codes, metadata = load_latent(saved, with_metadata=True)
    torch.testing.assert_close(codes, state.edited)
    assert json.loads(metadata["edits"]) == {"glasses": 3.0} and metadata["source"] == "astronaut"
    loaded, crop, reconstruction, *_, status = handlers.load_latent_file(saved)
    assert crop is None and loaded.photo is None and "astronaut-edited.npz" in status
    torch.testing.assert_close(loaded.ws, state.edited)
    assert np.array_equal(pixels(reconstruction), pixels(editor.render(state.edited)))
    with pytest.raises(gr.Error, match="needs the photo"):
        handlers.pasted(loaded)
    with pytest.raises(gr.Error, match="Upload a photo"):
        handlers.grid(None)
    assert handlers.apply_edits(None, 0, 0, False, [], *[1] * len(handlers.attributes)) == (None, None)


def test_every_direction_gets_one_slider_in_its_group(editor):
    groups = slider_groups(editor)
    assert groups == {  # the tiny bank's six directions are the main sliders, with readable labels
        "Main": [
            ("Smiling", "Smile"),
            ("Young", "Age (older →)"),
            ("Eyeglasses", "Glasses"),
            ("No_Beard", "Beard"),
            ("Male", "Male (← female)"),
            ("Wearing_Lipstick", "Lipstick"),
        ]
    }
    extra = {
        name: torch.randn(14, 512, generator=torch.Generator().manual_seed(i))
        for i, name in enumerate(["Bangs", "Wavy_Hair", "Rosy_Cheeks", "Has_Freckles"])
    }
    bank = editor.directions.with_directions(extra)
    wide = Editor(editor.generator, editor.encoder, editor.latent_avg, bank, device="cpu")
    groups = slider_groups(wide)
    assert groups["Hair"] == [("Bangs", "Bangs"), ("Wavy_Hair", "Wavy hair")]
    assert groups["Makeup and accessories"] == [("Rosy_Cheeks", "Rosy cheeks")]
    assert groups["Other"] == [("Has_Freckles", "Has freckles")]  # a direction fitted by the user
    covered = [name for members in groups.values() for name, _ in members]
    assert sorted(covered) == sorted(bank.names)
    # without weights, the official attributes are laid out, ready to be enabled after a download
    assert sum(len(m) for m in slider_groups(None).values()) == 39


def test_on_a_gpu_the_view_follows_a_dragged_slider_without_piling_up(editor):
    from demo import build_demo

    for live, moved in ((True, "input"), (False, "release")):  # live is the default on CUDA only
        demo = build_demo(editor, live=live)
        ids = {c["props"].get("elem_id"): c["id"] for c in demo.get_config_file()["components"]}
        for handler, slider in (("apply_edits", "edit-smile"), ("render_view", "yaw")):
            (fn,) = [f for f in demo.fns.values() if f.name == handler and (ids[slider], moved) in f.targets]
            # the latest value wins; one render at a time in the short lane, beside the long jobs
            assert (
                fn.trigger_mode == "always_last" and fn.concurrency_id == "gpu" and fn.concurrency_limit == 1
            )
            assert fn.show_progress == ("hidden" if live else "minimal")


def test_all_network_work_is_wrapped_for_zerogpu(editor, monkeypatch):
    import demo.ui

    wrapped = []

    class FakeSpaces:  # the `spaces` package of Hugging Face ZeroGPU Spaces
        @staticmethod
        def GPU(fn):
            wrapped.append(fn.__name__)
            return fn

    monkeypatch.setattr(demo.ui, "spaces", FakeSpaces)
    demo.ui.build_demo(editor)
    assert set(wrapped) == {
        "load_photo",
        "load_latent_file",
        "apply_edits",
        "render_view",
        "grid",
        "turntable",
        "mesh",
        "depth",
        "pasted",
        "api_align",
        "api_invert",
        "api_edit",
        "api_turntable",
        "api_mesh",
        "edit_video",
        "api_edit_video",
    }


# ---------------------------------------------------------------------------------- without weights


def test_without_weights_the_page_explains_and_is_disabled(tmp_path):
    from demo import build_demo

    demo = build_demo(tmp_path / "missing")
    config = demo.get_config_file()
    texts = " ".join(str(c["props"].get("value")) for c in config["components"] if c["type"] == "markdown")
    assert "The model weights are missing" in texts and "preim3d download" in texts
    photo = next(c for c in config["components"] if c["props"].get("elem_id") == "photo")
    assert photo["props"]["interactive"] is False
    sliders = [c for c in config["components"] if c["type"] == "slider"]
    assert sliders and not any(c["props"]["interactive"] for c in sliders)
    with pytest.raises(gr.Error, match="preim3d download"):
        Handlers(None, "No preim3d weights found ... run `preim3d download`").api_edit(photo=str(EXAMPLES[0]))


def test_download_weights_endpoint_fetches_converts_and_serves(
    server, tiny_official_files, tmp_path, astronaut_png
):
    with (
        weights_to_download(server, tiny_official_files, tmp_path / "home") as table,
        serving(tmp_path / "missing", build_kwargs={"weights_files": table}) as (url, _),
    ):
        client = client_for(url)
        assert (
            "/download_weights" in client.view_api(return_format="dict", print_info=False)["named_endpoints"]
        )
        with pytest.raises(AppError, match="no weights are loaded|No preim3d weights|does not exist"):
            client.predict(photo=handle_file(astronaut_png), api_name="/edit")
        with pytest.raises(AppError, match="Tick the box to accept the licences"):
            client.predict(accept_licences=False, api_name="/download_weights")
        assert server.requests == []  # nothing fetched before the licences were accepted
        status = client.predict(accept_licences=True, api_name="/download_weights")
        assert "Downloaded and loaded" in status and str(tmp_path / "home" / "weights") in status
        assert len(server.requests) == len(table)  # each file once, from the PREIM3D_*_URL mirrors
        image = client.predict(photo=handle_file(astronaut_png), edits={"smile": 2}, api_name="/edit")
        assert Image.open(image).size == (128, 128)  # served without a restart
        with pytest.raises(AppError, match="already loaded"):
            client.predict(accept_licences=True, api_name="/download_weights")
    assert sorted(p.name for p in (tmp_path / "home" / "weights").iterdir())[0] == "config.json"


def by_id(config, elem_id):
    return next((c for c in config["components"] if c["props"].get("elem_id") == elem_id), None)


def test_app_py_starts_without_weights(tmp_path):
    process, config = start_app(ROOT, tmp_path)
    output = stop(process)
    # the terminal says that no weights were found, and how to get them
    assert "no weights loaded" in output and "preim3d download" in output and "Download button" in output
    banner = by_id(config, "weights-missing")["props"]["value"]
    assert "preim3d download" in banner and str(tmp_path / "home" / "weights") in banner
    assert by_id(config, "photo")["props"]["interactive"] is False
    assert "Traceback" not in output


def test_app_py_reads_the_weights_from_preim3d_weights(tmp_path, tiny_bundle):
    process, config = start_app(ROOT, tmp_path, PREIM3D_WEIGHTS=str(tiny_bundle))
    output = stop(process)
    assert f"serving Editor(device=cpu, image 128px, 6 directions, source='{tiny_bundle}" in output
    assert by_id(config, "weights-missing") is None
    assert by_id(config, "photo")["props"]["interactive"] is True
    assert by_id(config, "edit-smile") is not None
    assert "Traceback" not in output
