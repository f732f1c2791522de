"""Bad user values get one clear message from the library (and, below, the command line), never a crash."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import preim3d
import preim3d.mesh
from preim3d import align, cli, validation
from preim3d.errors import InputImageError, InvalidValueError, NoSuchFaceError, Preim3DError

ROOT = Path(__file__).resolve().parents[1]
TWO_FACES = ROOT / "examples" / "two_faces.jpg"


@pytest.fixture(scope="module")
def editor(tiny_bundle):
    return preim3d.Editor.from_pretrained(tiny_bundle, device="cpu", deterministic=True)


@pytest.fixture(scope="module")
def ws(editor):
    torch.manual_seed(0)
    return editor.latent_avg.cpu().reshape(1, 14, 512) + 0.3 * torch.randn(1, 14, 512)


def message(call) -> str:
    """The message of the Preim3DError that call() raises."""
    with pytest.raises(Preim3DError) as info:
        call()
    return str(info.value)


# ------------------------------------------------------------------ the checks themselves


def test_numbers_are_parsed_and_kept_within_their_limits():
    assert validation.check_strength("-2.5", "smile") == -2.5
    assert validation.check_strength(10) == 10.0
    assert validation.check_frames(120.0) == 120 and validation.check_frames("12") == 12
    assert validation.check_fps(29.97) == 29.97
    assert validation.check_mesh_resolution("128") == 128
    assert validation.check_mesh_resolution(512, device="cuda:0") == 512
    assert validation.check_mesh_resolution(512, device="cpu", allow_slow=True) == 512
    assert validation.check_refine_steps(0) == 0 and validation.check_refine_steps(1000) == 1000
    assert validation.check_edits({"smile": "2", "age": -1}) == {"smile": 2.0, "age": -1.0}
    validation.check_angles(math.pi, -math.pi / 2)
    validation.check_angles(torch.linspace(-3, 3, 7), np.zeros(7))


V = validation
STRENGTH = "must be a number from -10 to 10, not"
ANGLE = "of the frontal view, not"


@pytest.mark.parametrize(
    "call, expected",
    [
        (lambda: V.check_strength(1e9, "smile"), f"The strength of 'smile' {STRENGTH} 1e+09"),
        (lambda: V.check_strength(math.inf, "age"), f"The strength of 'age' {STRENGTH} inf"),
        (lambda: V.check_strength("lots", "age"), f"{STRENGTH} 'lots'"),
        (lambda: V.check_strength(True, "age"), f"{STRENGTH} True"),
        (lambda: V.check_edits(["smile"]), "Edits must be a mapping"),
        (lambda: V.check_angles(yaw=1e9), f"yaw must be a number within ±180° (±π rad) {ANGLE} 5.72958e+10°"),
        (lambda: V.check_angles(yaw=1e9), "(1e+09 rad)"),
        (lambda: V.check_angles(pitch=[0.1, math.nan]), "pitch must be a number within ±90° (±π/2 rad)"),
        (lambda: V.check_angles(pitch=torch.tensor([0.0, 2.0])), f"{ANGLE} 114.592° (2 rad)"),
        (lambda: V.check_frames(0), "frames must be a whole number from 1 to 3600, not 0."),
        (lambda: V.check_frames(2.5), "frames must be a whole number from 1 to 3600, not 2.5."),
        (lambda: V.check_frames(600, maximum=480), "from 1 to 480, not 600"),
        (lambda: V.check_fps(0), "fps must be a number from 1 to 120, not 0."),
        (lambda: V.check_fps(math.nan), "fps must be a number from 1 to 120, not nan."),
        (lambda: V.check_mesh_resolution(7), "The mesh resolution must be 64, 128, 256 or 512"),
        (lambda: V.check_mesh_resolution(7), "(density samples per side), not 7."),
        (lambda: V.check_mesh_resolution(512, device="cpu"), "A 512³ mesh takes several minutes"),
        (lambda: V.check_refine_steps(-1), "The refine steps must be a whole number from 0 to 1000, not -1."),
        (lambda: V.face_index_from_number(0), "Faces are numbered from 1 (face 1 is the first face);"),
        (lambda: V.face_index_from_number(0), "there is no face 0."),
        (lambda: V.face_index_from_number("two"), "A face number must be a whole number from 1, not 'two'."),
        (lambda: V.check_face_index(2, 2), "This photo has 2 faces (numbered 1 to 2); there is no face 3."),
        (lambda: V.check_face_index(1, 1), "This photo has 1 face (numbered 1); there is no face 2."),
        (lambda: V.check_face_index(-1, 3), "face_index counts faces from 0"),
    ],
)
def test_bad_values_are_refused_with_what_is_allowed(call, expected):
    with pytest.raises(InvalidValueError) as info:
        call()
    assert expected in str(info.value)
    assert isinstance(info.value, ValueError)  # callers that catch ValueError keep working


def test_face_numbers_and_indices_convert_one_way_only_here():
    assert validation.face_index_from_number(1) == 0 and validation.face_index_from_number("3") == 2
    assert validation.face_number(0) == 1
    assert validation.check_face_index(validation.face_index_from_number(2), 2) == 1
    with pytest.raises(IndexError):  # as Python's own out-of-range index
        validation.check_face_index(5, 2)


def test_image_size_limits_name_the_image():
    validation.check_image_size(64, 64, min_side=64)
    text = message(lambda: validation.check_image_size(5, 3, "the file 'x.png'", min_side=64))
    assert text.startswith(
        "The file 'x.png' is 5x3 pixels, too small to hold a face: use a photo at least 64 pixels"
    )
    assert "is empty" in message(lambda: validation.check_image_size(0, 10))
    assert "more than the limit of 100" in message(lambda: validation.check_image_size(20_000, 20_000))


# ------------------------------------------------------------------ photos: tiny images never reach dlib


@pytest.mark.parametrize("side", [1, 2, 3, 5])
def test_tiny_photos_are_refused_before_face_detection(side, tmp_path):
    """1-5 px photos used to crash dlib's CNN detector, once with heap corruption that ended the process."""
    path = tmp_path / "tiny.png"
    Image.new("RGB", (side, side), (200, 150, 120)).save(path)
    array = np.full((side, side + 1, 3), 128, np.uint8)
    expected = f"is {side}x{side} pixels, too small to hold a face: use a photo at least 64 pixels"
    for call in (
        lambda: preim3d.detect_faces(path),
        lambda: preim3d.align_face(path),
        lambda: preim3d.load_image(path, min_side=validation.MIN_PHOTO_SIDE),
    ):
        with pytest.raises(InputImageError, match=expected):
            call()
    with pytest.raises(InputImageError, match=f"The image array is {side + 1}x{side} pixels, too small"):
        preim3d.detect_faces(array)
    assert preim3d.load_image(path).size == (side, side)  # as an image, not a photo to search, it is fine


def test_tiny_photo_through_the_editor_fails_before_any_network_runs(editor, tmp_path, monkeypatch):
    path = tmp_path / "dot.png"
    Image.new("RGB", (4, 4)).save(path)
    monkeypatch.setattr(editor, "invert", lambda *a: pytest.fail("inverted a photo that should be refused"))
    with pytest.raises(InputImageError, match="4x4 pixels, too small to hold a face"):
        editor.edit_photo(path, {"smile": 1})


def test_no_detector_is_given_an_image_under_the_safe_size(monkeypatch):
    """A long thin photo passes the size check, but its 640 px copy would be 6 px tall."""
    seen = []

    class Detector:
        def run(self, gray, *args):  # HOG
            seen.append(gray.shape)
            return [], [], []

        def __call__(self, gray, *args):  # CNN
            seen.append(gray.shape)
            return []

    monkeypatch.setattr(align, "_hog_detector", Detector)
    monkeypatch.setattr(align, "_cnn_detector", Detector)
    photo = Image.new("RGB", (6400, 64), (90, 90, 90))
    assert preim3d.detect_faces(photo) == []
    with pytest.raises(preim3d.NoFaceError):
        preim3d.align_face(photo)
    assert seen and min(min(shape) for shape in seen) >= align._DETECT_MIN_SIDE


def test_a_long_thin_photo_gives_no_face_not_a_crash():
    """Without the guard above, dlib's CNN would get a 640x6 copy and fail (or corrupt memory)."""
    assert preim3d.detect_faces(Image.new("RGB", (6400, 64), (120, 100, 90))) == []


# ------------------------------------------------------------------ faces: numbered from 1 in every message


def test_face_out_of_range_names_how_many_faces_there_are():
    faces = preim3d.detect_faces(TWO_FACES)
    assert len(faces) == 2
    text = message(lambda: preim3d.align_face(TWO_FACES, face=2))
    assert text == "This photo has 2 faces (numbered 1 to 2); there is no face 3."
    with pytest.raises(NoSuchFaceError, match="face_index counts faces from 0"):
        preim3d.align_face(TWO_FACES, face=-1)
    second = preim3d.align_face(TWO_FACES, face=validation.face_index_from_number(2))
    assert second.box == faces[1].box


def test_editor_face_index_out_of_range(editor, astronaut_png):
    text = message(lambda: editor.edit_photo(astronaut_png, face_index=2))
    assert text == "This photo has 1 face (numbered 1); there is no face 3."


# ------------------------------------------------------------------ edits, cameras, videos, meshes


@pytest.mark.parametrize("strength", [1e9, -10.5, math.inf, math.nan])
def test_edit_strengths_beyond_the_limit_are_refused(editor, ws, strength):
    expected = f"The strength of 'smile' must be a number from -10 to 10, not {strength:g}"
    assert expected in message(lambda: editor.edit(ws, {"smile": strength}))
    assert expected in message(lambda: editor.directions.apply(ws, {"smile": strength}, precise=True))
    assert expected in message(lambda: editor.edit_photo(Image.new("RGB", (8, 8)), {"smile": strength}))


def test_edit_strength_at_the_limit_is_the_official_edit(editor, ws):
    edited = editor.edit(ws, {"Smiling": -10})
    assert torch.allclose(edited, ws - 10 * editor.directions.direction("Smiling"))


@pytest.mark.parametrize(
    "call",
    [
        lambda e, ws: e.render(ws, yaw=1e9),
        lambda e, ws: e.depth(ws, pitch=-2.0),
        lambda e, ws: e.views(ws, [0.0, math.nan]),
        lambda e, ws: e.grid(ws, yaws=(0.0, 4.0)),
        lambda e, ws: e.edit_photo(Image.new("RGB", (8, 8)), pose=(1e9, 0.0)),
    ],
)
def test_camera_angles_out_of_range_are_refused(editor, ws, call):
    assert "of the frontal view, not" in message(lambda: call(editor, ws))


def test_turntable_values_are_checked_before_a_file_is_written(editor, ws, tmp_path):
    video = tmp_path / "turn.mp4"
    assert (
        message(lambda: editor.turntable(ws, video, frames=0))
        == "frames must be a whole number from 1 to 3600, not 0."
    )
    assert "fps must be a number from 1 to 120, not 1000" in message(
        lambda: editor.turntable(ws, video, fps=1000)
    )
    assert "not 2.5" in message(lambda: preim3d.turntable_path(2.5))
    assert not video.exists()


def test_mesh_resolution_is_one_of_the_allowed_and_capped_on_a_cpu(editor, ws, monkeypatch):
    assert "not 7." in message(lambda: editor.mesh(ws, resolution=7))
    assert "allow_slow=True" in message(lambda: editor.mesh(ws, resolution=512))
    # asked for explicitly, it goes ahead (the extraction itself is replaced: it would take minutes)
    asked = []
    monkeypatch.setattr(
        preim3d.mesh, "extract_mesh", lambda G, ws, resolution, **kw: asked.append(resolution)
    )
    editor.mesh(ws, resolution=512, allow_slow=True)
    assert asked == [512]


# ------------------------------------------------------------------ the command line: same messages, early


def run_cli(argv, capsys) -> tuple[int, str]:
    """(exit status, stderr) of `preim3d ARGV`; argparse's usage errors exit with 2."""
    try:
        code = cli.main(argv)
    except SystemExit as exit:
        code = exit.code
    return code, capsys.readouterr().err


@pytest.fixture
def no_models(monkeypatch):
    """Fail the test if a command loads the models."""
    monkeypatch.setattr(preim3d.Editor, "from_pretrained", lambda *a, **k: pytest.fail("models were loaded"))


@pytest.mark.parametrize(
    "options, status, expected",
    [
        (["--frames", "0"], 2, "argument --frames: frames must be a whole number from 1 to 3600, not 0."),
        (["--fps", "0"], 2, "argument --fps: fps must be a number from 1 to 120, not 0."),
        (
            ["--mesh-resolution", "7"],
            2,
            "argument --mesh-resolution: The mesh resolution must be 64, 128, 256",
        ),
        (["--face", "0"], 2, "argument --face: Faces are numbered from 1 (face 1 is the first face)"),
        (["--face", "two"], 2, "argument --face: A face number must be a whole number from 1, not 'two'."),
        (["--edit", "smile=1e9"], 1, f"The strength of 'smile' {STRENGTH} 1e+09"),
        (["--edit", "age=nan"], 1, "--edit 'age=nan': write NAME=STRENGTH"),
        (
            ["--mesh", "head.glb", "--mesh-resolution", "512", "--device", "cpu"],
            1,
            "A 512³ mesh takes several",
        ),
    ],
)
def test_cli_refuses_bad_values_before_loading_models(
    tiny_bundle, astronaut_png, tmp_path, capsys, no_models, options, status, expected
):
    out = tmp_path / "out"
    code, err = run_cli(
        ["edit", str(astronaut_png), "--weights", str(tiny_bundle), "--out", str(out), *options], capsys
    )
    assert code == status and expected in err
    assert not out.exists()


def test_cli_messages_are_the_library_messages(editor, ws, tmp_path, capsys, no_models, astronaut_png):
    library = message(lambda: editor.edit(ws, {"smile": 1e9}))
    _, err = run_cli(["edit", str(astronaut_png), "--edit", "smile=1e9", "--out", str(tmp_path)], capsys)
    assert err.strip() == f"preim3d edit: error: {library}"
    library = message(lambda: editor.turntable(ws, tmp_path / "t.mp4", frames=0))
    _, err = run_cli(["edit", str(astronaut_png), "--frames", "0", "--out", str(tmp_path)], capsys)
    assert err.strip().endswith(f"error: argument --frames: {library}")


def test_cli_faces_are_numbered_from_1(tiny_bundle, tmp_path, capsys):
    common = ["--weights", str(tiny_bundle), "--device", "cpu"]
    code, err = run_cli(
        ["edit", str(TWO_FACES), "--face", "3", "--out", str(tmp_path / "a"), *common], capsys
    )
    assert code == 1
    assert (
        err.strip() == "two_faces.jpg: failed: This photo has 2 faces (numbered 1 to 2); there is no face 3."
    )
    assert (
        run_cli(["edit", str(TWO_FACES), "--face", "2", "--out", str(tmp_path / "b"), *common], capsys)[0]
        == 0
    )
    second = preim3d.align_face(TWO_FACES, face=1)
    aligned = np.asarray(Image.open(tmp_path / "b" / "aligned.png"), dtype=np.float32)
    assert np.abs(aligned - np.asarray(second.image, dtype=np.float32)).max() == 0


def test_cli_tiny_photo_fails_with_the_library_message(tiny_bundle, tmp_path, capsys):
    path = tmp_path / "dot.png"
    Image.new("RGB", (3, 3)).save(path)
    code, err = run_cli(
        ["edit", str(path), "--weights", str(tiny_bundle), "--device", "cpu", "--out", str(tmp_path / "o")],
        capsys,
    )
    assert code == 1
    assert err.strip() == "dot.png: failed: " + message(lambda: preim3d.align_face(path))
