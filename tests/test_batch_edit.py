"""`preim3d edit FOLDER` on one process or several (torchrun, gloo): sharding, resuming, manifest, failures.

The photos: the astronaut, mirrored, turned a little (JPEG), a grey wall (no face) and a 64 px copy
(too small). With --batch-size 2 the chunks are [astronaut, mirrored], [turned, wall], [tiny]:
under two processes the first process gets chunks 0 and 2, the second chunk 1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from preim3d import batch_edit, cli
from preim3d.batch import list_photos, write_atomically

GOOD = ("a_astronaut.png", "b_mirrored.png", "c_turned.jpg")


@pytest.fixture(scope="module")
def photos(astronaut_png, tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    astronaut = Image.open(astronaut_png)
    astronaut.save(folder / "a_astronaut.png")
    astronaut.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(folder / "b_mirrored.png")
    astronaut.rotate(8, resample=Image.Resampling.BICUBIC).save(folder / "c_turned.jpg", quality=95)
    Image.new("RGB", (160, 120), (128, 128, 128)).save(folder / "d_wall.png")
    astronaut.resize((64, 64)).save(folder / "e_tiny.png")
    return folder


@pytest.fixture
def one_thread():
    """Floats depend on the number of threads: runs compared bit for bit use one each, as under torchrun."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def edit_args(photos, out, bundle, *extra):
    return [
        "edit",
        str(photos),
        "--edit",
        "smile=2",
        "--batch-size",
        "2",
        "--weights",
        str(bundle),
        "--device",
        "cpu",
        "--out",
        str(out),
        *extra,
    ]


def files(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def reference(photos, tiny_bundle, tmp_path_factory):
    """One uninterrupted run in this process, on one thread: (output folder, exit code, stdout, stderr)."""
    out = tmp_path_factory.mktemp("reference")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        from contextlib import redirect_stderr, redirect_stdout
        from io import StringIO

        stdout, stderr = StringIO(), StringIO()
        with redirect_stdout(stdout), redirect_stderr(stderr):
            code = cli.main(edit_args(photos, out, tiny_bundle, "--workers", "0"))
    finally:
        torch.set_num_threads(threads)
    return out, code, stdout.getvalue(), stderr.getvalue()


def test_a_folder_reports_each_photo_and_writes_a_manifest(reference, photos):
    out, code, stdout, stderr = reference
    assert code == 1  # two photos failed
    for name in GOOD:
        line = next(line for line in stdout.splitlines() if line.startswith(name))
        assert line.startswith(f"{name}: done (yaw ") and "; smile +2)" in line
    assert "d_wall.png: failed: No face was found in the 160x120 photo" in stderr
    assert "e_tiny.png: failed: No face was found in the 64x64 photo" in stderr
    assert "Traceback" not in stderr
    assert "3 of 5 photos edited, 2 failed" in stdout.splitlines()[-1]

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and (manifest["done"], manifest["failed"]) == (3, 2)
    assert manifest["options"]["edits"] == {"smile": 2.0} and manifest["options"]["batch_size"] == 2
    records = manifest["records"]
    assert [r["photo"] for r in records] == [p.name for p in list_photos(photos)]
    assert records[0]["outputs"] == [
        "aligned.png",
        "reconstruction.png",
        "edited.png",
        "inverted.npz",
        "edited.npz",
    ]
    assert records[3]["status"] == "failed" and "No face" in records[3]["failed"]["photo"]
    rows = (out / "manifest.csv").read_text().splitlines()
    assert rows[0] == "photo,folder,status,yaw_deg,pitch_deg,outputs,failed"
    assert rows[1].startswith("a_astronaut.png,a_astronaut,done,") and rows[4].startswith(
        "d_wall.png,d_wall,failed,,,,"
    )
    # nothing half written, nothing for the photos that failed, no progress logs left
    assert sorted(p.name for p in out.iterdir()) == [
        "a_astronaut",
        "b_mirrored",
        "c_turned",
        "manifest.csv",
        "manifest.json",
    ]
    assert not any(p.name.startswith(".") for p in out.rglob("*"))


def test_two_processes_under_torchrun_write_the_same_files_as_one(reference, photos, tiny_bundle, tmp_path):
    """torchrun --nproc_per_node=2 on the CPU (gloo): each process its chunks; the files of one process."""
    out = tmp_path / "out"
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    done = subprocess.run(
        [*command, "-m", "preim3d", *edit_args(photos, out, tiny_bundle)],
        capture_output=True,
        text=True,
        timeout=600,
        env=environment,
    )
    assert done.returncode != 0, done.stdout + done.stderr  # the two photos without a usable face
    assert "3 of 5 photos edited, 2 failed" in done.stdout and "on 2 process(es)" in done.stdout
    for name in GOOD:
        assert sum(line.startswith(f"{name}: done") for line in done.stdout.splitlines()) == 1
    expected = files(reference[0])
    assert files(out) == expected


def test_an_interrupted_run_resumes_without_redoing_work(
    reference, photos, tiny_bundle, tmp_path, monkeypatch, one_thread, capsys
):
    out = tmp_path / "out"
    make_outputs = batch_edit.photo_outputs

    def interrupted(editor, result, options, name, single):
        if name == "b_mirrored.png":  # the second photo of the first chunk
            raise KeyboardInterrupt
        return make_outputs(editor, result, options, name, single)

    monkeypatch.setattr(batch_edit, "photo_outputs", interrupted)
    assert cli.main(edit_args(photos, out, tiny_bundle, "--workers", "0")) == 130
    assert (
        "interrupted; the files written are complete; the same command with --resume"
        in capsys.readouterr().err
    )
    assert sorted(p.name for p in out.iterdir()) == [
        ".progress",
        "a_astronaut",
        "manifest.csv",
        "manifest.json",
    ]
    assert not json.loads((out / "manifest.json").read_text())["complete"]
    first = {p.name: p.stat().st_mtime_ns for p in (out / "a_astronaut").iterdir()}
    capsys.readouterr()

    monkeypatch.setattr(batch_edit, "photo_outputs", make_outputs)
    written = []
    monkeypatch.setattr(
        batch_edit,
        "photo_outputs",
        lambda editor, result, options, name, single: (
            written.append(name) or make_outputs(editor, result, options, name, single)
        ),
    )
    assert cli.main(edit_args(photos, out, tiny_bundle, "--workers", "0", "--resume")) == 1
    stdout = capsys.readouterr().out
    assert stdout.startswith("resuming: 1 of 5 photos were done before and are skipped")
    assert written == ["b_mirrored.png", "c_turned.jpg"]  # the astronaut's files are not written again
    assert {p.name: p.stat().st_mtime_ns for p in (out / "a_astronaut").iterdir()} == first
    # the mirrored photo was inverted in the same batch as before (with the astronaut's aligned.png)
    assert files(out) == files(reference[0])

    # resuming with other options would mix outputs of two kinds: refused
    assert cli.main(edit_args(photos, out, tiny_bundle, "--resume", "--precise")) == 1
    assert "used other options (precise differ)" in capsys.readouterr().err


def test_optional_outputs_fail_alone_and_the_report_says_so(
    astronaut_png, tiny_bundle, tmp_path, monkeypatch, capsys
):
    from preim3d.pipeline import Editor

    def no_surface(self, ws, path=None, resolution=256, **kwargs):
        raise ValueError("no surface at threshold 10: the density σ inside the box ranges over [0.1, 3]")

    monkeypatch.setattr(Editor, "mesh", no_surface)
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.open(astronaut_png).save(folder / "astronaut.png")
    out = tmp_path / "out"
    args = edit_args(
        folder, out, tiny_bundle, "--workers", "0", "--video", "v.mp4", "--frames", "2", "--mesh", "m.glb"
    )
    assert cli.main(args) == 1
    captured = capsys.readouterr()
    line = captured.err.strip().splitlines()[0]
    assert line.startswith("astronaut.png: partly done: m.glb failed: no surface at threshold 10")
    assert "edited.png" in line and "v.mp4" in line
    assert sorted(p.name for p in (out / "astronaut").iterdir()) == sorted(
        ["aligned.png", "reconstruction.png", "edited.png", "inverted.npz", "edited.npz", "v.mp4"]
    )
    record = json.loads((out / "manifest.json").read_text())["records"][0]
    assert record["status"] == "partial" and list(record["failed"]) == ["m.glb"]
    assert "0 of 1 photos edited, 1 partial" in captured.out


def test_unexpected_errors_take_one_line_and_debug_shows_the_traceback(
    astronaut_png, tiny_bundle, tmp_path, monkeypatch, capsys
):
    def broken(editor, batch, options):
        raise TypeError("a bug")

    monkeypatch.setattr(batch_edit, "_compute", broken)
    args = edit_args(astronaut_png, tmp_path / "out", tiny_bundle, "--workers", "0")
    assert cli.main(args) == 1
    err = capsys.readouterr().err
    assert err == "astronaut.png: failed: unexpected error: TypeError: a bug (--debug shows the traceback)\n"
    assert cli.main([*args, "--debug"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and 'raise TypeError("a bug")' in err

    def out_of_memory(editor, batch, options):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(batch_edit, "_compute", out_of_memory)
    assert cli.main(args) == 1
    assert capsys.readouterr().err == (
        "astronaut.png: failed: out of memory: lower --batch-size or run with --device cpu\n"
    )


def test_written_files_appear_whole_or_not_at_all(tmp_path):
    target = tmp_path / "sub" / "image.png"
    write_atomically(target, lambda path: Image.new("RGB", (4, 4)).save(path))
    assert Image.open(target).size == (4, 4)

    def half_then_fail(path):
        path.write_bytes(b"half a file")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomically(target, half_then_fail)
    assert Image.open(target).size == (4, 4)  # the old file is still there, whole
    assert sorted(p.name for p in target.parent.iterdir()) == ["image.png"]


def test_a_face_number_some_photos_lack_fails_those_photos_only(astronaut_png, tiny_bundle, tmp_path, capsys):
    """Good, one-face, faceless and tiny photos with --face 2: a line each, the folder goes on to the end."""
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a_two_faces.jpg").write_bytes(
        (Path(__file__).parent.parent / "examples" / "two_faces.jpg").read_bytes()
    )
    Image.open(astronaut_png).save(folder / "b_one_face.png")
    Image.new("RGB", (160, 120), (128, 128, 128)).save(folder / "c_no_face.png")
    Image.open(astronaut_png).resize((40, 40)).save(folder / "d_tiny.png")
    out = tmp_path / "out"
    assert cli.main(edit_args(folder, out, tiny_bundle, "--workers", "0", "--face", "2")) == 1
    captured = capsys.readouterr()
    lines = captured.out.splitlines()[:-1] + captured.err.splitlines()  # the last: the count
    assert sorted(line.split(":")[0] for line in lines) == [
        "a_two_faces.jpg",
        "b_one_face.png",
        "c_no_face.png",
        "d_tiny.png",
    ]
    assert any(line.startswith("a_two_faces.jpg: done") for line in lines)
    assert "b_one_face.png: failed: This photo has 1 face (numbered 1); there is no face 2.\n" in captured.err
    assert "c_no_face.png: failed: No face was found" in captured.err
    assert "d_tiny.png: failed: " in captured.err and "40" in captured.err
    assert "Traceback" not in captured.err and "unexpected" not in captured.err
    assert "1 of 4 photos edited, 3 failed" in captured.out
    assert [p.name for p in out.iterdir() if p.is_dir()] == ["a_two_faces"]
