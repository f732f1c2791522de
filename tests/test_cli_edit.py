"""The `preim3d edit`, `convert` and `info` commands, end to end on the tiny random-weight bundle."""

import subprocess
import sys

import imageio_ffmpeg
import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from preim3d import cli
from preim3d.editing import DirectionBank
from preim3d.evaluation.metrics import psnr
from preim3d.pipeline import Editor, load_latent


def test_edit_one_photo_writes_every_output(tiny_bundle, astronaut_png, tmp_path, capsys):
    out = tmp_path / "out"
    code = cli.main(
        [
            "edit",
            str(astronaut_png),
            "--edit",
            "smile=2",
            "--edit",
            "age=-1",
            "--views",
            "grid",
            "--video",
            "out.mp4",
            "--frames",
            "3",
            "--mesh",
            "out.glb",
            "--mesh-resolution",
            "64",
            "--weights",
            str(tiny_bundle),
            "--device",
            "cpu",
            "--out",
            str(out),
        ]
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert code == 0
    assert len(lines) == 1 and lines[0].startswith("astronaut.png: done") and "smile +2, age -1" in lines[0]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [
            "aligned.png",
            "reconstruction.png",
            "edited.png",
            "inverted.npz",
            "edited.npz",
            "views.png",
            "out.mp4",
            "out.glb",
        ]
    )
    assert Image.open(out / "aligned.png").size == (512, 512)
    assert Image.open(out / "views.png").size == (256, 256)
    # the edited code is the inverted one moved along the directions, as asked
    bank = DirectionBank.from_bundle(tiny_bundle)
    ws, edited = load_latent(out / "inverted.npz"), load_latent(out / "edited.npz")
    torch.testing.assert_close(edited, ws + 2 * bank.direction("smile") + -1 * bank.direction("age"))
    assert load_latent(out / "edited.npz", with_metadata=True)[1]["edits"] == "smile=2, age=-1"
    frames, _ = imageio_ffmpeg.count_frames_and_secs(str(out / "out.mp4"))
    assert frames == 3
    assert next(imageio_ffmpeg.read_frames(str(out / "out.mp4")))["size"] == (3 * 128, 128)  # photo|rec|edit
    assert len(trimesh.load(out / "out.glb", force="mesh").faces) > 0


def test_edit_runs_the_fast_mode_unless_fp32_is_asked_for(tiny_bundle, astronaut_png, tmp_path, monkeypatch):
    asked = []
    load = Editor.from_pretrained.__func__

    def recording_load(cls, *args, **kwargs):
        asked.append(kwargs.get("precision"))
        return load(cls, *args, **kwargs)

    monkeypatch.setattr(Editor, "from_pretrained", classmethod(recording_load))
    for extra in ([], ["--precision", "fp32"]):
        out = tmp_path / f"out{len(asked)}"
        args = ["edit", str(astronaut_png), "--weights", str(tiny_bundle), "--device", "cpu"]
        assert cli.main([*args, "--out", str(out), *extra]) == 0
    assert asked == ["fast", "fp32"]
    # a CPU computes in float32 either way
    assert np.array_equal(*(np.asarray(Image.open(tmp_path / f"out{i}" / "edited.png")) for i in (0, 1)))


def test_edit_a_folder_reports_each_photo_and_fails_on_a_bad_one(
    tiny_bundle, astronaut_png, tmp_path, capsys
):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.open(astronaut_png).save(photos / "astronaut.jpg")
    Image.new("RGB", (160, 120), (128, 128, 128)).save(photos / "wall.png")
    (photos / "notes.txt").write_text("not a photo")
    out = tmp_path / "out"
    code = cli.main(
        [
            "edit",
            str(photos),
            "--edit",
            "glasses=1",
            "--precise",
            "--weights",
            str(tiny_bundle),
            "--device",
            "cpu",
            "--out",
            str(out),
        ]
    )
    captured = capsys.readouterr()
    assert code == 1
    assert captured.out.splitlines()[0].startswith("astronaut.jpg: done")
    assert "precise" in captured.out.splitlines()[0]
    assert "1 of 2 photos edited, 1 failed" in captured.out
    assert captured.err.startswith("wall.png: failed: No face was found")
    assert (out / "astronaut" / "edited.png").is_file() and not (out / "wall").exists()


def test_edit_refuses_bad_requests_before_any_work(tiny_bundle, astronaut_png, tmp_path, capsys):
    common = ["--weights", str(tiny_bundle), "--device", "cpu", "--out", str(tmp_path / "out")]
    assert cli.main(["edit", str(astronaut_png), "--edit", "freckles=1", *common]) == 1
    assert "Unknown attribute 'freckles'" in capsys.readouterr().err
    assert cli.main(["edit", str(astronaut_png), "--edit", "smile", *common]) == 1
    assert "NAME=STRENGTH" in capsys.readouterr().err
    assert cli.main(["edit", str(astronaut_png), "--mesh", "head.stl", *common]) == 1
    assert ".glb or .ply or .obj" in capsys.readouterr().err
    assert cli.main(["edit", str(tmp_path / "missing.jpg"), *common]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_convert_then_info(tiny_official_files, tiny_bundle, tmp_path, capsys):
    out = tmp_path / "bundle"
    assert (
        cli.main(
            [
                "convert",
                "--generator",
                str(tiny_official_files / "eg3d_G_ema.pkl"),
                "--encoder",
                str(tiny_official_files / "preim3d_ffhq.pt"),
                "--directions",
                str(tiny_official_files / "directions"),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "EG3D tri-plane generator: 128 px images from 32 px neural rendering" in printed
    assert "6 editing directions" in printed and "missing components" not in printed
    assert "sha256=" in printed  # provenance of the generator file
    # the converted bundle holds the same numbers as the tiny bundle those files were written from
    ours, theirs = (DirectionBank.from_bundle(f) for f in (out, tiny_bundle))
    assert all(torch.equal(ours.direction(n), theirs.direction(n)) for n in ours.names)

    assert (
        cli.main(["convert", "--encoder", str(tiny_official_files / "preim3d_ffhq.pt"), "--out", str(out)])
        == 1
    )
    assert "needs its generator" in capsys.readouterr().err


def test_info_on_official_files(tiny_official_files, capsys):
    assert cli.main(["info", str(tiny_official_files / "eg3d_G_ema.pkl")]) == 0
    text = capsys.readouterr().out
    assert "official EG3D generator" in text and "never executed" in text and "non-commercial" in text
    assert cli.main(["info", str(tiny_official_files / "preim3d_ffhq.pt")]) == 0
    text = capsys.readouterr().out
    assert "PREIM3D encoder checkpoint" in text and "stores a latent average" in text
    assert "1-1-1-1 units" in text
    assert cli.main(["info", str(tiny_official_files / "directions" / "Smiling.pt")]) == 0
    assert "[1, 7168]" in capsys.readouterr().out
    assert cli.main(["info", str(tiny_official_files / "directions")]) == 0
    assert "0 of them are official PREIM3D files" in capsys.readouterr().out
    assert cli.main(["info", str(tiny_official_files)]) == 0
    assert "folder of official files" in capsys.readouterr().out


def test_info_on_a_damaged_file(tmp_path, capsys):
    (tmp_path / "junk.pkl").write_bytes(np.arange(1000, dtype=np.uint8).tobytes())
    assert cli.main(["info", str(tmp_path / "junk.pkl")]) == 1
    assert "not an official generator, encoder or direction file" in capsys.readouterr().err


def test_python_dash_m_runs_the_command_line():
    done = subprocess.run(
        [sys.executable, "-m", "preim3d", "--help"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0
    for command in ("download", "convert", "edit", "info"):
        assert command in done.stdout


def test_edit_with_refine_renders_and_saves_the_refined_head(
    tiny_bundle, astronaut_png, tmp_path, capsys, caplog
):
    out = tmp_path / "out"
    args = ["edit", str(astronaut_png), "--edit", "smile=2", "--weights", str(tiny_bundle), "--device", "cpu"]
    with caplog.at_level("WARNING", logger="preim3d.refine"):
        code = cli.main([*args, "--refine", "2", "--out", str(out)])
    line = capsys.readouterr().out.strip()
    assert code == 0 and "smile +2; refined 2 steps" in line
    assert "Refining on the CPU: about" in caplog.text  # the estimate, on stderr without pytest
    assert {"refined.safetensors", "inverted.npz", "reconstruction.png"} <= {p.name for p in out.iterdir()}
    editor = Editor.from_pretrained(tiny_bundle, device="cpu", deterministic=True)
    head = editor.load_refined(out / "refined.safetensors")
    assert head.settings.steps == 2 and torch.equal(head.ws, load_latent(out / "inverted.npz"))
    # the files come from the refined head, which fits the aligned crop better than the base
    written = Image.open(out / "reconstruction.png")
    same = np.abs(np.asarray(written, np.float64) - np.asarray(head.reconstruction(), np.float64))
    assert same.mean() < 0.5  # rendered in a batch of two codes there: rounding apart, the same image
    aligned = Image.open(out / "aligned.png")
    assert psnr(aligned, written) > psnr(aligned, editor.render(head.ws, *head.pose))
    with pytest.raises(SystemExit) as info:
        cli.main([*args, "--refine", "5000", "--out", str(out)])
    assert (
        info.value.code == 2
        and "refine steps must be a whole number from 0 to 1000" in capsys.readouterr().err
    )
