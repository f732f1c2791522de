"""The Colab notebook, alone in an empty folder, runs headless from top to bottom: its install cell
installs the preim3d it carries, then it works on a tiny random-weight bundle (PREIM3D_WEIGHTS).

The kernel runs in a fresh virtual environment where preim3d is not installed. To keep the run short
and offline, that environment sees this test environment's other packages through a path file (not
their .pth hooks, so not the editable preim3d): pip finds the dependencies already satisfied and
builds and installs only preim3d, from the notebook's own copy (the build backend, setuptools, comes
from the package index). Nothing else is downloaded.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from preim3d.editing import DirectionBank
from preim3d.pipeline import load_latent
from preim3d.testing import TINY_GENERATOR_KWARGS

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "preim3d_colab.ipynb"
GENERATOR_SCRIPT = ROOT / "notebooks" / "make_colab_notebook.py"
KERNEL = "preim3d-notebook-test"
RESOLUTION = TINY_GENERATOR_KWARGS["img_resolution"]  # the tiny generator's image size

# Form parameters set as a user would in Colab: a short video, a coarse mesh, and a precise edit
# that uses two sliders, the free-text field and a held attribute.
FRAMES = 8
VIEWS = 5
PARAMETERS = {
    "SMILE": "4",
    "AGE": "3",
    "MORE_EDITS": '"Wearing_Lipstick=2"',
    "HOLD": '"Male"',
    "VIEWS": str(VIEWS),
    "FRAMES": str(FRAMES),
    "FPS": "8",
    "MESH_RESOLUTION": "64",
    "VIDEO_SECONDS": "1",
}
# what those edits must do to the attribute scores: age = -Young; Male is held
EXPECTED_SCORE_CHANGES = {"Smiling": 4.0, "Young": -3.0, "Wearing_Lipstick": 2.0, "Male": 0.0}


def set_parameters(nb, parameters: dict[str, str]) -> None:
    """Replace the value of each `NAME = value  # @param ...` form line; each must occur exactly once."""
    for name, value in parameters.items():
        pattern = re.compile(rf"^{name} = [^\n#]*?(  # @param)", re.M)
        hits = 0
        for cell in nb.cells:
            if cell.cell_type == "code":
                replace = lambda m, k=name, v=value: f"{k} = {v}{m.group(1)}"  # noqa: E731
                cell.source, n = pattern.subn(replace, cell.source)
                hits += n
        assert hits == 1, f"form parameter {name} occurs {hits} times in the notebook"


def generator_script():
    spec = importlib.util.spec_from_file_location("make_colab_notebook", GENERATOR_SCRIPT)
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    return generator


@pytest.fixture(scope="module")
def fresh_python(tmp_path_factory):
    """The python of a fresh virtual environment without preim3d, and a kernel spec that runs it."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--clear", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    outer = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (Path(site) / "outer-packages.pth").write_text("\n".join(outer) + "\n")
    assert subprocess.run([python, "-c", "import preim3d"], cwd=venv, capture_output=True).returncode != 0
    spec = venv / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "preim3d tests",
                "language": "python",
            }
        )
    )
    return python


@pytest.fixture
def kernel_env(tmp_path, monkeypatch, fresh_python):
    """An empty folder holding only the notebook, and an environment with no weights but the ones given."""
    monkeypatch.setenv("JUPYTER_PATH", str(fresh_python.parent.parent / "jupyter"))
    monkeypatch.setenv("PREIM3D_HOME", str(tmp_path / "home"))  # no default weights, no downloads
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("PREIM3D_WEIGHTS", raising=False)
    monkeypatch.delenv("PYTHONPATH", raising=False)
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(NOTEBOOK, work / NOTEBOOK.name)
    return work


def execute(nb, workdir: Path):
    client = nbclient.NotebookClient(
        nb, kernel_name=KERNEL, timeout=600, resources={"metadata": {"path": str(workdir)}}
    )
    return client.execute()


def cell_outputs(nb, tag: str) -> list:
    cells = [c for c in nb.cells if c.cell_type == "code" and tag in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"one code cell tagged {tag!r} expected, found {len(cells)}"
    return cells[0].outputs


def stdout(nb, tag: str) -> str:
    return "".join(o.text for o in cell_outputs(nb, tag) if o.output_type == "stream" and o.name == "stdout")


def images(nb, tag: str) -> list[Image.Image]:
    return [
        Image.open(io.BytesIO(base64.b64decode(o.data["image/png"])))
        for o in cell_outputs(nb, tag)
        if o.output_type == "display_data" and "image/png" in o.data
    ]


def html(nb, tag: str) -> list[str]:
    return [
        o.data["text/html"]
        for o in cell_outputs(nb, tag)
        if o.output_type == "display_data" and "text/html" in o.data
    ]


def test_committed_notebook_is_generated_carries_the_package_and_has_no_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    assert code_cells and all(c.outputs == [] and c.execution_count is None for c in code_cells)
    generator = generator_script()
    install = next(c.source for c in code_cells if "install" in c.metadata["tags"])
    payload = re.search(r'^PREIM3D_SOURCE = "([A-Za-z0-9+/=]+)"', install, re.M).group(1)
    stale = "run `python notebooks/make_colab_notebook.py`"
    carried, current = generator.unpack(payload), generator.package_files()
    assert carried.keys() == current.keys(), f"the notebook carries other files than the package has: {stale}"
    changed = [name for name in current if carried[name] != current[name]]
    assert not changed, f"the notebook carries an older copy of {', '.join(changed[:5])}: {stale}"
    assert json.loads(nbformat.writes(generator.build(payload))) == json.loads(NOTEBOOK.read_text()), (
        f"notebooks/preim3d_colab.ipynb differs from what notebooks/make_colab_notebook.py writes: {stale}"
    )


def test_the_notebook_alone_installs_preim3d_and_runs_to_the_end(
    tiny_bundle, kernel_env, fresh_python, monkeypatch
):
    monkeypatch.setenv("PREIM3D_WEIGHTS", str(tiny_bundle))
    nb = nbformat.read(kernel_env / NOTEBOOK.name, as_version=4)
    set_parameters(nb, PARAMETERS)
    execute(nb, kernel_env)
    out = kernel_env / "preim3d_results"

    installed = subprocess.run(
        [fresh_python, "-c", "import preim3d; print(preim3d.__file__)"],
        cwd=kernel_env,
        capture_output=True,
        text=True,
    ).stdout.strip()
    if "Installing preim3d" in stdout(nb, "install"):  # else an earlier test of this module installed it
        assert Path(installed).is_relative_to(fresh_python.parent.parent), installed  # the notebook's copy
    assert str(tiny_bundle) in stdout(nb, "weights")
    assert "1 face(s) found; editing face 1" in stdout(nb, "align")
    assert "Using the example photo" in stdout(nb, "photo")  # no Colab upload here: the astronaut

    # pictures shown at each step; the grid is VIEWS views of the reconstruction over those of the edit
    for tag in ("photo", "align", "invert", "edit", "view", "grid"):
        shown = images(nb, tag)
        assert shown and all(im.width > 0 and im.height > 0 for im in shown), f"step {tag!r} showed no image"
    assert len(images(nb, "edit")) == 2  # render comparison, edit pasted into the photo
    assert images(nb, "grid")[0].size == (VIEWS * RESOLUTION, 2 * RESOLUTION)
    assert Image.open(out / "aligned.png").size == (512, 512)
    for name in ("reconstruction.png", "edited.png", "view.png"):
        assert Image.open(out / name).size == (RESOLUTION, RESOLUTION)
    assert Image.open(out / "edited_photo.png").size == (512, 512)  # the astronaut photo's size

    # the sliders, the free-text edit and HOLD reached the precise edit
    assert "holding Male" in stdout(nb, "edit")
    ws, edited = load_latent(out / "latent.npz"), load_latent(out / "edited.npz")
    bank = DirectionBank.from_bundle(tiny_bundle)
    names = list(EXPECTED_SCORE_CHANGES)
    change = bank.scores(edited, names) - bank.scores(ws, names)
    expected = torch.tensor(list(EXPECTED_SCORE_CHANGES.values()), dtype=torch.float64)
    torch.testing.assert_close(change.reshape(-1).double(), expected, atol=1e-3, rtol=0)

    # the turntable: an H.264 file of FRAMES frames (photo | reconstruction | edit), embedded inline
    import imageio_ffmpeg

    video = out / "turntable.mp4"
    frames = imageio_ffmpeg.read_frames(str(video))
    assert next(frames)["size"] == (3 * RESOLUTION, RESOLUTION)
    frames.close()
    assert imageio_ffmpeg.count_frames_and_secs(str(video))[0] == FRAMES
    players = [h for h in html(nb, "turntable") if "<video" in h]
    assert len(players) == 1
    embedded = re.search(r'src="data:video/mp4;base64,([^"]+)"', players[0])
    assert embedded and base64.b64decode(embedded.group(1)) == video.read_bytes()

    # the mesh: a GLB with triangles, and an interactive preview
    import trimesh

    mesh = trimesh.load(out / "head.glb", force="mesh")
    assert len(mesh.vertices) > 0 and len(mesh.faces) > 0
    assert f"{len(mesh.faces):,} triangles" in stdout(nb, "mesh")
    assert html(nb, "mesh"), "the mesh preview was not shown"

    # the video section: a clip made from the crop (no upload here), edited, shown inline
    assert "Making one from the photo" in stdout(nb, "video")
    assert re.search(
        r"15 frames \(640x480, 15.00 fps, audio kept\), face edited in 1[0-5]", stdout(nb, "video")
    )
    assert imageio_ffmpeg.count_frames_and_secs(str(out / "edited_video.mp4"))[0] == 15
    assert [h for h in html(nb, "video") if "<video" in h]

    with zipfile.ZipFile(kernel_env / "preim3d_results.zip") as archive:
        assert {"turntable.mp4", "head.glb", "edited.png", "grid.png", "latent.npz", "edited.npz"} <= set(
            archive.namelist()
        )


def test_notebook_downloads_nothing_until_the_licences_are_accepted(kernel_env):
    nb = nbformat.read(kernel_env / NOTEBOOK.name, as_version=4)
    tags = [c.metadata.get("tags", []) for c in nb.cells]
    nb.cells = nb.cells[: tags.index(["weights"]) + 1]  # installation and weights only
    with pytest.raises(nbclient.exceptions.CellExecutionError, match="ACCEPT_LICENCES"):
        execute(nb, kernel_env)
    notice = stdout(nb, "weights")
    for terms in ("NVIDIA Source Code License", "MIT", "iBUG 300-W"):
        assert terms in notice
    home = kernel_env.parent / "home"
    written = list(home.rglob("*")) if home.exists() else []
    assert not written, f"written before the licences were accepted: {written}"
