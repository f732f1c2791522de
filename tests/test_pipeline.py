"""The Editor: the whole chain on a tiny random-weight bundle, weight resolution, latent files."""

import json
import shutil
import socket
import subprocess
import sys

import imageio_ffmpeg
import numpy as np
import pytest
import torch
import trimesh
from official_format import write_torch_save
from PIL import Image
from safetensors.torch import load_file

from preim3d import pipeline
from preim3d.errors import LatentFileError, WeightsError, WeightsNotFoundError
from preim3d.pipeline import Editor, EditResult, load_latent, save_latent
from preim3d.testing import TINY_DIRECTION_NAMES, make_tiny_bundle, tiny_generator
from preim3d.weights.resolve import find_official_files, resolve_weights


@pytest.fixture(scope="module")
def editor(tiny_bundle):
    return Editor.from_pretrained(tiny_bundle, device="cpu", deterministic=True)


@pytest.fixture(scope="module")
def result(editor, astronaut_png):
    return editor.edit_photo(astronaut_png, {"smile": 2.0, "age": -1.0})


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.float64)


def test_tiny_bundle_is_complete_deterministic_and_not_flat(tiny_bundle, tmp_path, editor):
    config = json.loads((tiny_bundle / "config.json").read_text())
    assert {"generator", "encoder", "latent_avg", "directions"} <= set(config)
    assert "random" in config["generator"]["licence"].lower()  # not EG3D's licence: these weights are ours
    again = make_tiny_bundle(tmp_path / "again", seed=0)
    for name in ("generator", "encoder", "latent_avg", "directions"):
        ours, theirs = (
            load_file(tiny_bundle / f"{name}.safetensors"),
            load_file(again / f"{name}.safetensors"),
        )
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert editor.directions.names == TINY_DIRECTION_NAMES
    # renders vary over the image and with the camera, as a real model's do
    front, side = editor.views(editor.latent_avg, [0.0, 0.5], [0.0, 0.0])
    assert pixels(front).std() > 10 and np.abs(pixels(front) - pixels(side)).mean() > 1


def test_edit_photo_runs_the_chain(editor, result):
    assert isinstance(result, EditResult)
    assert result.face.image.size == (512, 512)
    assert result.ws.shape == result.edited_ws.shape == (1, 14, 512)
    assert result.ws.device.type == "cpu" and not result.ws.is_inference()
    # the edit is exactly the plain PREIM3D edit: +2 along Smiling, +1 along Young (age = -Young)
    bank = editor.directions
    expected = result.ws + 2 * bank.direction("Smiling") + 1 * bank.direction("Young")
    torch.testing.assert_close(result.edited_ws, expected)
    scores = bank.scores(result.edited_ws, ["Smiling", "Young"]) - bank.scores(
        result.ws, ["Smiling", "Young"]
    )
    assert scores[0, 0] == pytest.approx(2 + float(bank.similarity(["Smiling", "Young"])[0, 1]), abs=1e-4)
    # renders come from the camera estimated from the photo and show the edit
    assert result.pose == pytest.approx(result.face.estimate_pose())
    assert result.image.size == result.reconstruction.size == (128, 128)
    assert np.abs(pixels(result.image) - pixels(result.reconstruction)).mean() > 1
    pasted = result.pasted()
    assert pasted.size == result.photo.size == (512, 512)
    assert np.abs(pixels(pasted) - pixels(result.photo)).mean() > 1


def test_invert_depends_on_the_face(editor, result):
    flipped = result.face.image.transpose(Image.FLIP_LEFT_RIGHT)
    ws = editor.invert([result.face, flipped])
    torch.testing.assert_close(ws[:1], result.ws)
    assert (ws[0] - ws[1]).abs().max() > 1e-3


def test_precise_edit_and_hold(editor, result):
    bank = editor.directions
    held = editor.edit(result.ws, {"smile": 2.0}, hold=["Young"])
    shift = bank.scores(held, ["Smiling", "Young"]) - bank.scores(result.ws, ["Smiling", "Young"])
    assert shift[0].tolist() == pytest.approx([2.0, 0.0], abs=1e-4)
    with pytest.raises(Exception, match="Unknown attribute"):
        editor.edit(result.ws, {"freckles": 1.0})


def test_views_grid_turntable_and_mesh(editor, result, tmp_path):
    ws = result.edited_ws
    views = editor.views(ws, [-0.4, 0.0])
    assert [v.size for v in views] == [(128, 128)] * 2
    assert np.abs(pixels(views[0]) - pixels(views[1])).mean() > 1
    assert np.abs(pixels(editor.render(ws)) - pixels(views[1])).max() <= 2  # batched convolutions round apart
    grid = editor.grid(ws)
    assert grid.size == (256, 256)
    assert pixels(editor.depth(ws)).std() > 0

    video = editor.turntable(ws, tmp_path / "turn.mp4", frames=4, fps=4, side_by_side=[result.face.image])
    frames, _ = imageio_ffmpeg.count_frames_and_secs(str(video))
    assert frames == 4
    reader = imageio_ffmpeg.read_frames(str(video))
    assert next(reader)["size"] == (256, 128)  # photo | edit, two 128 px panels

    mesh = editor.mesh(ws, tmp_path / "head.glb", resolution=64)
    assert (tmp_path / "head.glb").read_bytes()[:4] == b"glTF"
    loaded = trimesh.load(tmp_path / "head.glb", force="mesh")
    assert len(loaded.faces) == len(mesh.faces) > 0


def test_renders_of_one_code_share_its_triplanes(editor, result, monkeypatch):
    calls = []
    original = editor.generator.synthesize_planes

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(editor.generator, "synthesize_planes", counting)
    editor.renderer.clear()
    editor.render(result.ws, 0.2, 0.0)
    editor.grid(result.ws, yaws=(0.1,), pitches=(0.0,))
    editor.mesh(result.ws, resolution=64)
    assert len(calls) == 1
    editor.depth(result.edited_ws)
    assert len(calls) == 2


def test_one_code_at_a_time(editor, result):
    with pytest.raises(ValueError, match="one code at a time"):
        editor.render(torch.cat([result.ws, result.edited_ws]))


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_latent_files_round_trip(tmp_path, suffix, result):
    ws = torch.cat([result.ws, result.edited_ws])
    path = save_latent(ws, tmp_path / f"codes{suffix}", {"photo": "astronaut.png"})
    loaded, metadata = load_latent(path, with_metadata=True)
    assert torch.equal(loaded, ws) and metadata == {"photo": "astronaut.png"}
    assert torch.equal(Editor.load_latent(Editor.save_latent(ws[0], tmp_path / f"one{suffix}")), ws[:1])


def test_latent_files_accept_fit_direction_layout_and_refuse_bad_ones(tmp_path):
    codes = np.random.default_rng(0).standard_normal((3, 7168)).astype(np.float32)
    np.savez(tmp_path / "flat.npz", ws=codes)
    assert load_latent(tmp_path / "flat.npz").shape == (3, 14, 512)
    np.savez(tmp_path / "pickled.npz", latents=np.array([{"a": 1}], dtype=object))
    with pytest.raises(LatentFileError):
        load_latent(tmp_path / "pickled.npz")  # object arrays would need unpickling: refused
    np.savez(tmp_path / "wrong.npz", latents=np.zeros((2, 10, 512), np.float32))
    with pytest.raises(LatentFileError, match="shape"):
        load_latent(tmp_path / "wrong.npz")
    with pytest.raises(LatentFileError, match=".npz or .safetensors"):
        save_latent(torch.zeros(1, 14, 512), tmp_path / "codes.pt")
    with pytest.raises(LatentFileError, match="does not exist"):
        load_latent(tmp_path / "missing.npz")


def test_official_files_give_the_same_editor_as_the_bundle(tiny_official_files, editor, result, monkeypatch):
    assert set(find_official_files(tiny_official_files)) == {"generator", "encoder", "directions"}
    reads = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda path, *a, **k: reads.append(path) or real_load(path, *a, **k))
    official = Editor.from_pretrained(tiny_official_files, device="cpu", deterministic=True)
    encoder_reads = [p for p in reads if str(p).endswith("preim3d_ffhq.pt")]
    assert len(encoder_reads) == 1  # the large checkpoint gives encoder and stored latent average at once
    torch.testing.assert_close(official.latent_avg, editor.latent_avg)
    torch.testing.assert_close(official.invert(result.face), result.ws)
    assert official.directions.names == editor.directions.names
    assert np.abs(pixels(official.render(result.ws)) - pixels(editor.render(result.ws))).max() <= 2


def test_official_files_with_another_generator_are_refused(tiny_official_files, tmp_path):
    folder = tmp_path / "mismatched"
    shutil.copytree(tiny_official_files, folder)
    write_torch_save(tiny_generator(seed=5), folder / "eg3d_G_ema.pkl")
    with pytest.raises(WeightsError, match="latent average"):
        Editor.from_pretrained(folder, device="cpu")


def test_bundle_without_directions_inverts_but_cannot_edit(tiny_bundle, tmp_path, result):
    folder = tmp_path / "no-directions"
    shutil.copytree(tiny_bundle, folder)
    config = json.loads((folder / "config.json").read_text())
    del config["directions"]
    (folder / "config.json").write_text(json.dumps(config))
    editor = Editor.from_pretrained(folder, device="cpu")
    assert editor.directions is None
    with pytest.raises(WeightsError, match="no editing directions"):
        editor.edit(result.ws, {"smile": 1})


def tensors_of(folder) -> dict[str, dict[str, torch.Tensor]]:
    names = ("generator", "encoder", "latent_avg", "directions")
    return {name: load_file(folder / f"{name}.safetensors") for name in names}


def assert_same_tensors(ours: dict, theirs: dict) -> None:
    for name in theirs:
        assert ours[name].keys() == theirs[name].keys(), name
        for key in theirs[name]:
            assert torch.equal(ours[name][key], theirs[name][key]), f"{name}: {key}"


def test_save_pretrained_round_trips_bit_for_bit(tiny_bundle, editor, result, tmp_path):
    folder = editor.save_pretrained(tmp_path / "saved")
    assert_same_tensors(tensors_of(folder), tensors_of(tiny_bundle))
    # architecture, settings, provenance and licences come back as they were written
    assert json.loads((folder / "config.json").read_text()) == json.loads(
        (tiny_bundle / "config.json").read_text()
    )
    again = Editor.from_pretrained(folder, device="cpu", deterministic=True)
    assert again.provenance == editor.provenance and again.licences == editor.licences
    ws = again.invert(result.face)
    assert torch.equal(ws, result.ws)
    edited = again.edit(ws, {"smile": 2.0}, precise=True)
    assert torch.equal(edited, editor.edit(result.ws, {"smile": 2.0}, precise=True))
    assert np.array_equal(pixels(again.render(edited, 0.3)), pixels(editor.render(edited, 0.3)))
    with pytest.raises(ValueError, match="not an empty folder"):
        again.save_pretrained(folder)


def test_save_pretrained_of_a_fast_editor_writes_the_unfolded_encoder(tiny_bundle, tmp_path):
    fast = Editor.from_pretrained(tiny_bundle, device="cpu", precision="fast")
    assert type(fast.encoder).__name__ == "FastWPlusEncoder"
    assert_same_tensors(tensors_of(fast.save_pretrained(tmp_path / "saved")), tensors_of(tiny_bundle))


def test_bundles_of_format_1_still_load(tiny_bundle, editor, result, tmp_path):
    folder = tmp_path / "format-1"
    shutil.copytree(tiny_bundle, folder)
    config = json.loads((folder / "config.json").read_text())
    config["format_version"] = 1  # the network constructor arguments were under other keys
    config["generator"]["init_kwargs"] = config["generator"].pop("config")
    config["encoder"]["architecture"] = config["encoder"].pop("config")
    (folder / "config.json").write_text(json.dumps(config))
    old = Editor.from_pretrained(folder, device="cpu", deterministic=True)
    assert torch.equal(old.invert(result.face), result.ws)
    assert np.array_equal(pixels(old.render(result.ws)), pixels(editor.render(result.ws)))


def test_weights_are_found_in_order(tiny_bundle, tmp_path, monkeypatch):
    monkeypatch.setenv("PREIM3D_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("PREIM3D_WEIGHTS", raising=False)
    with pytest.raises(WeightsNotFoundError, match="preim3d download"):
        resolve_weights()
    shutil.copytree(tiny_bundle, tmp_path / "home" / "weights")
    assert resolve_weights().path == tmp_path / "home" / "weights"
    assert resolve_weights().origin == "the default weights folder"
    other = tmp_path / "other"
    shutil.copytree(tiny_bundle, other)
    monkeypatch.setenv("PREIM3D_WEIGHTS", str(other))
    assert resolve_weights().path == other
    assert resolve_weights(tiny_bundle).path == tiny_bundle  # an explicit source comes first
    monkeypatch.setenv("PREIM3D_WEIGHTS", str(tmp_path / "nowhere"))
    with pytest.raises(WeightsNotFoundError, match="PREIM3D_WEIGHTS"):
        resolve_weights()  # a wrong setting is an error, not a silent fall-back to the default folder
    with pytest.raises(WeightsError, match="neither a preim3d bundle"):
        resolve_weights(tmp_path)


def test_hub_repo_is_read_from_the_cache_when_offline(tiny_bundle, tmp_path, monkeypatch):
    from huggingface_hub import constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--someone--tiny-preim3d"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(tiny_bundle, repo / "snapshots" / commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)  # so "someone/tiny-preim3d" is no local path
    location = resolve_weights("someone/tiny-preim3d")
    assert location.path == repo / "snapshots" / commit and location.kind == "bundle"
    assert Editor.from_pretrained("someone/tiny-preim3d", device="cpu").directions is not None
    with pytest.raises(WeightsNotFoundError, match="HF_HUB_OFFLINE"):
        resolve_weights("someone/not-cached")


def test_no_weights_offline_says_what_to_run_without_touching_the_network(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("the network was used")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setenv("PREIM3D_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("PREIM3D_WEIGHTS", raising=False)
    with pytest.raises(WeightsNotFoundError) as info:
        Editor.from_pretrained()
    message = str(info.value)
    assert "`preim3d download`" in message and str(tmp_path / "weights") in message


def test_no_weights_message_comes_before_torch_loads(tmp_path, astronaut_png):
    """The command line answers without importing torch (which alone takes about a second)."""
    code = (
        "import sys; from preim3d.cli import main; rc = main(sys.argv[1:]); "
        "sys.exit(10 if 'torch' in sys.modules else rc)"
    )
    env = {"PATH": "", "PREIM3D_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1", "HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", code, "edit", str(astronaut_png), "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 1, done.stderr
    assert "No preim3d weights found" in done.stderr and "preim3d download" in done.stderr


def test_default_device_prefers_cuda_then_mps(monkeypatch):
    assert pipeline.default_device().type in ("cuda", "mps", "cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pipeline.default_device().type == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert pipeline.default_device().type == "mps"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert pipeline.default_device().type == "cpu"
