"""Writes preim3d_colab.ipynb beside this file, outputs cleared: `python notebooks/make_colab_notebook.py`.

Edit the cells here and regenerate; tests/test_notebook.py checks that the committed notebook is
what this script writes, then runs it headless against a tiny random-weight bundle.

Each code cell opens with a Colab form (`# @title`, `# @param`): in Colab the parameters show as
sliders, boxes and menus; anywhere else they are ordinary assignments, so the notebook also runs
top to bottom with nbclient or Jupyter.

The notebook carries the preim3d package itself: its install cell holds a zip of the package's
source (preim3d/, pyproject.toml, LICENSE), which pip installs, with the dependencies from the
package index. So the file works alone, opened from the repository or uploaded to Colab, with
nothing to fill in. Regenerate it after changing the package: the test says when it is stale.
"""

from __future__ import annotations

import base64
import io
import zipfile
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

NOTEBOOK = Path(__file__).with_name("preim3d_colab.ipynb")
ROOT = Path(__file__).resolve().parent.parent
PAYLOAD = "@PREIM3D_SOURCE@"  # where the install cell's source archive goes


def package_files(root: Path = ROOT) -> dict[str, bytes]:
    """What the notebook carries: the package's source, its build file (without the README it names) and
    the licence, by path in the archive."""
    files = {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in sorted((root / "preim3d").rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }
    pyproject = (root / "pyproject.toml").read_text().splitlines(keepends=True)
    files["pyproject.toml"] = "".join(line for line in pyproject if not line.startswith("readme =")).encode()
    files["LICENSE"] = (root / "LICENSE").read_bytes()
    return files


def archive(files: dict[str, bytes]) -> str:
    """A zip of `files` as base64 text; fixed dates and order, so the same files give the same text."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in sorted(files.items()):
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            zf.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
    return base64.b64encode(buffer.getvalue()).decode()


def unpack(text: str) -> dict[str, bytes]:
    """The files of an archive written by `archive`."""
    with zipfile.ZipFile(io.BytesIO(base64.b64decode(text))) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def md(text: str) -> nbformat.NotebookNode:
    return new_markdown_cell(text.strip("\n"))


def code(text: str, tag: str) -> nbformat.NotebookNode:
    """A code cell; the tag names the step, so tests can find each step's outputs."""
    return new_code_cell(text.strip("\n"), metadata={"tags": [tag]})


CELLS = [
    md("""
# PREIM3D: edit a face photo in 3D

This notebook turns **one photo of a face** into a 3D head that you can edit and look at from any
angle. It follows the method of *PREIM3D: 3D Consistent Precise Image Attribute Editing from a
Single Image* (Li et al., CVPR 2023), re-implemented in plain PyTorch by the `preim3d` package:

1. **align** the face the way the models expect (dlib finds 68 landmarks, the photo is cropped and straightened);
2. **invert** the crop: one pass of the PREIM3D encoder gives the face's code in the latent space of
   EG3D, a 3D-aware generator of faces;
3. **edit** the code: smile, age, glasses, hair and about 35 more attributes, optionally *precisely*
   (one attribute changes, the ones you name stay put);
4. **render** the edited head from any camera: single views, a multi-view grid, a turntable video;
5. **export** a coloured 3D mesh, and download everything.

**Before you start:** choose a GPU runtime (*Runtime → Change runtime type → GPU*). On a CPU it
works, but slowly. Then run the cells from top to bottom (*Runtime → Run all*); each step has a
small form on its right-hand side where you can change its settings and run it again.

The pretrained weights are for **non-commercial use only** (details in step 2).
"""),
    code('''
# @title 1. Install preim3d { display-mode: "form" }
# @markdown This notebook carries the preim3d package itself (its source, zipped, in this cell):
# @markdown there is nothing to fill in. Its dependencies come from the Python package index.
import base64
import importlib
import importlib.util
import io
import shutil
import subprocess
import sys
import tempfile
import zipfile

PREIM3D_SOURCE = "@PREIM3D_SOURCE@"  # written by notebooks/make_colab_notebook.py

try:
    from google.colab import files as colab_files
except ImportError:  # not running in Google Colab
    colab_files = None
IN_COLAB = colab_files is not None


def pip_install(*args):
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", *args], check=True)


if importlib.util.find_spec("preim3d") is not None:
    print("preim3d is already installed: skipping the installation.")
else:
    if importlib.util.find_spec("torch") is None:  # Colab has PyTorch; elsewhere, the build for this machine
        if shutil.which("nvidia-smi"):
            pip_install("torch")  # the default build uses CUDA
        else:
            pip_install("torch", "--index-url", "https://download.pytorch.org/whl/cpu")  # no GPU: a small build
    source = tempfile.mkdtemp(prefix="preim3d-source-")
    zipfile.ZipFile(io.BytesIO(base64.b64decode(PREIM3D_SOURCE))).extractall(source)
    print("Installing preim3d and its dependencies ...")
    pip_install(source)
    importlib.invalidate_caches()

import preim3d
import torch

print(f"preim3d {preim3d.__version__}, PyTorch {torch.__version__}")
if torch.cuda.is_available():
    print("GPU:", torch.cuda.get_device_name())
else:
    print("No GPU found: everything works, but slowly. In Colab: Runtime > Change runtime type > GPU.")
''', "install"),
    md("""
## 2. Weights and their licences

preim3d downloads the official pretrained files and converts them into its own safe format
(nothing is unpickled on load). They come with these terms:

* **EG3D generator** (NVIDIA; PREIM3D's copy by default): NVIDIA Source Code License for EG3D,
  **non-commercial** use only (research and evaluation).
* **PREIM3D encoder**: published with the PREIM3D code, which is under the **MIT** licence, but
  trained on FFHQ (CC BY-NC-SA 4.0) against the non-commercial EG3D generator: use it for
  **non-commercial** purposes only.
* **PREIM3D editing directions**: MIT licence.
* **dlib's 68-point face landmark model** (installed with preim3d, through the
  `face-recognition-models` package): trained on the iBUG 300-W dataset, whose licence
  **excludes commercial use**.
* The `preim3d` code itself is MIT-licensed.

So the images, videos and meshes you make here are for non-commercial use. If you accept these
terms, tick **ACCEPT_LICENCES** and run the cell. The download (a few hundred MB) happens once per
runtime; the converted weights are kept in `~/.cache/preim3d/weights`.
"""),
    code('''
# @title 2. Get the weights { display-mode: "form" }
# @markdown Tick to accept the licences listed above; nothing is downloaded otherwise.
ACCEPT_LICENCES = False  # @param {type:"boolean"}
# @markdown Which copy of the EG3D generator to download: PREIM3D's (the encoder was trained with it: recommended) or NVIDIA's releases on NGC.
GENERATOR = "preim3d"  # @param ["preim3d", "ngc", "ngc-rebalanced"]
# @markdown Already have preim3d weights? A bundle folder or a Hugging Face Hub repo id here skips the download.
WEIGHTS_SOURCE = ""  # @param {type:"string"}

from preim3d.errors import WeightsNotFoundError
from preim3d.weights.resolve import resolve_weights
from preim3d.weights.sources import licence_notice, official_files

try:  # the source given above, else $PREIM3D_WEIGHTS, else an earlier download
    WEIGHTS = resolve_weights(WEIGHTS_SOURCE.strip() or None)
    print(f"Using the weights in {WEIGHTS.path} ({WEIGHTS.origin}).")
except WeightsNotFoundError:
    if WEIGHTS_SOURCE.strip():
        raise
    print("The official weights come under these licences:")
    print(licence_notice(official_files(GENERATOR)))
    print("* dlib's 68-point landmark model: trained on iBUG 300-W, non-commercial use only.")
    if not ACCEPT_LICENCES:
        raise RuntimeError("The licences were not accepted, so nothing was downloaded. If you accept them, "
                           "tick ACCEPT_LICENCES in this cell's form and run it again.") from None
    from preim3d.weights.download import download_official

    download_official(generator=GENERATOR, accept_licences=True)
    WEIGHTS = resolve_weights()
    print(f"Done: the weights are in {WEIGHTS.path}.")
''', "weights"),
    md("""
## 3. Load the models

This puts the generator, the encoder and the editing directions on the GPU (or the CPU) and sets
up a few helpers to show pictures. Everything this notebook makes is saved in the folder
`preim3d_results` (see the file browser on the left in Colab).
"""),
    code('''
# @title 3. Load the models { display-mode: "form" }
# @markdown "fast" runs the networks in half precision on a GPU: quicker, with very slightly different pictures.
PRECISION = "fp32"  # @param ["fp32", "fast"]

from pathlib import Path

import numpy as np
from IPython.display import Video, display
from PIL import Image, ImageDraw, ImageFont

from preim3d.editing import friendly_name
from preim3d.pipeline import Editor

editor = Editor.from_pretrained(WEIGHTS, precision=PRECISION)
print(editor)
if editor.directions is not None:
    print("Attributes you can edit:", ", ".join(friendly_name(name) for name in editor.directions.names))

OUT = Path("preim3d_results")
OUT.mkdir(exist_ok=True)

try:
    _font = ImageFont.load_default(size=16)
except TypeError:  # Pillow < 10.1 has only the small bitmap font
    _font = ImageFont.load_default()


def show(images, labels=(), height=256):
    """Display pictures side by side at a common height, each with its label underneath."""
    tiles = [im.convert("RGB").resize((max(1, round(im.width * height / im.height)), height), Image.LANCZOS)
             for im in images]
    gap, caption = 8, (24 if labels else 0)
    row = Image.new("RGB", (sum(t.width for t in tiles) + gap * (len(tiles) - 1), height + caption), "white")
    draw = ImageDraw.Draw(row)
    x = 0
    for i, tile in enumerate(tiles):
        row.paste(tile, (x, 0))
        if i < len(labels):
            draw.text((x + 4, height + 4), labels[i], fill="black", font=_font)
        x += tile.width + gap
    display(row)
''', "load"),
    md("""
## 4. Choose a photo

Upload a photo with one clearly visible face: a portrait, the face not too small, not hidden by
hands or hair. Or use the example portrait. Outside Colab, give the path of a photo in
`PHOTO_PATH`.
"""),
    code('''
# @title 4. Choose a photo { display-mode: "form" }
PHOTO = "upload"  # @param ["upload", "example"]
# @markdown Or the path of a photo on this machine (e.g. on a mounted Google Drive); it is used when set.
PHOTO_PATH = ""  # @param {type:"string"}

from preim3d.images import load_image


def example_photo():
    """A portrait from the examples folder if there is one here, else scikit-image's astronaut."""
    for folder in (Path("examples"), Path("..") / "examples"):
        photos = sorted(p for p in folder.glob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png", ".webp"})
        if photos:
            return photos[0].name, load_image(photos[0])
    from skimage import data

    return "astronaut Eileen Collins (NASA, public domain)", load_image(data.astronaut())


photo = None
if PHOTO_PATH.strip():
    photo_name, photo = Path(PHOTO_PATH.strip()).name, load_image(PHOTO_PATH.strip())
elif PHOTO == "upload" and IN_COLAB:
    uploaded = colab_files.upload()
    if uploaded:
        photo_name, content = next(iter(uploaded.items()))
        photo = load_image(content)
    else:
        print("Nothing was uploaded: using the example photo.")
elif PHOTO == "upload":
    print("Uploading works in Google Colab; here, set PHOTO_PATH to use your own photo. Using the example photo.")
if photo is None:
    photo_name, photo = example_photo()

print(f"Photo: {photo_name}, {photo.width}x{photo.height} pixels")
show([photo], height=320)
''', "photo"),
    md("""
## 5. Align the face

dlib finds the face and 68 landmarks on it; the photo is then rotated, scaled and cropped to
512×512 pixels, the framing EG3D was trained on. Left: what was found. Right: the crop the
encoder sees. If the photo holds several faces, pick another with `FACE` (1 = the largest; the
numbers are those drawn on the picture).
"""),
    code('''
# @title 5. Align the face { display-mode: "form" }
FACE = 1  # @param {type:"integer"}

from preim3d import detect_faces
from preim3d.validation import face_index_from_number

faces = detect_faces(photo)
face = editor.align(photo, face_index=face_index_from_number(FACE))
face.image.save(OUT / "aligned.png")

marked = photo.copy()
draw = ImageDraw.Draw(marked)
width = max(2, round(max(photo.size) / 250))
for number, found in enumerate(faces, 1):
    colour = (255, 64, 64) if number == FACE else (255, 200, 0)
    draw.rectangle(found.box, outline=colour, width=width)
    draw.text((found.box[0] + width, found.box[1] + width), str(number), fill=colour, font=_font)
for x, y in face.landmarks:
    draw.ellipse((x - width, y - width, x + width, y + width), fill=(64, 255, 64))
print(f"{len(faces)} face(s) found; editing face {FACE}.")
show([marked, face.image], ["detected faces and landmarks", "aligned crop"], height=320)
''', "align"),
    md("""
## 6. Invert: from the photo to a 3D head

One pass of the encoder gives the face's code `ws` (14×512 numbers in EG3D's W+ space). The
generator renders it back from the camera angle estimated from the photo: this is the
**reconstruction**, the 3D head that all later steps edit and turn. The code is saved as
`latent.npz`; `Editor.load_latent` reads it back.
"""),
    code('''
# @title 6. Invert { display-mode: "form" }
import math

ws = editor.invert(face)
yaw, pitch = face.estimate_pose()
reconstruction = editor.render(ws, yaw, pitch)
reconstruction.save(OUT / "reconstruction.png")
editor.save_latent(ws, OUT / "latent.npz", {"photo": photo_name})

print(f"Estimated head pose: yaw {math.degrees(yaw):+.0f}°, pitch {math.degrees(pitch):+.0f}° (from frontal)")
show([face.image, reconstruction], ["aligned photo", "reconstruction"])
''', "invert"),
    md("""
## 7. Edit

Move the sliders and run the cell again. A positive value moves towards what the name says (more
smile, older, glasses, more beard, ...), a negative one away from it; 0 leaves the attribute alone.
Values around 5 to 10 give clear changes. `MORE_EDITS` takes any attribute from the list printed
in step 3, as `name=value` pairs separated by commas; the names are those of the web demo's sliders.

Attributes are entangled: making a face older can also change its hair, for instance.
**Precise editing** moves each edited attribute by exactly its value while the attributes named in
`HOLD` (comma-separated) stay where they are.
"""),
    code('''
# @title 7. Edit { display-mode: "form" }
SMILE = 5  # @param {type:"slider", min:-10, max:10, step:0.5}
AGE = 0  # @param {type:"slider", min:-10, max:10, step:0.5}
GLASSES = 0  # @param {type:"slider", min:-10, max:10, step:0.5}
BEARD = 0  # @param {type:"slider", min:-10, max:10, step:0.5}
LIPSTICK = 0  # @param {type:"slider", min:-10, max:10, step:0.5}
BLOND_HAIR = 0  # @param {type:"slider", min:-10, max:10, step:0.5}
# @markdown Other attributes, e.g. `wavy_hair=5, bangs=4`:
MORE_EDITS = ""  # @param {type:"string"}
PRECISE = False  # @param {type:"boolean"}
# @markdown Attributes to keep unchanged (implies a precise edit), e.g. `male, glasses`:
HOLD = ""  # @param {type:"string"}


def parse_edits(text):
    """'wavy_hair=5, bangs=4' -> {'wavy_hair': 5.0, 'bangs': 4.0}."""
    edits = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, value = item.partition("=")
        try:
            if not name.strip():
                raise ValueError
            edits[name.strip()] = float(value)
        except ValueError:
            raise ValueError(f"MORE_EDITS: write name=value pairs like wavy_hair=5, not {item!r}.") from None
    return edits


sliders = {"smile": SMILE, "age": AGE, "glasses": GLASSES, "beard": BEARD, "lipstick": LIPSTICK, "blond": BLOND_HAIR}
edits = {name: float(value) for name, value in sliders.items() if value} | parse_edits(MORE_EDITS)
hold = [name.strip() for name in HOLD.split(",") if name.strip()]

if edits:
    edited_ws = editor.edit(ws, edits, precise=PRECISE, hold=hold)
    print(editor.directions.report(edits, hold=hold))
else:
    print("No edit chosen: the edited head is the reconstruction.")
    edited_ws = ws.clone()
edited = editor.render(edited_ws, yaw, pitch)
edited.save(OUT / "edited.png")
editor.save_latent(edited_ws, OUT / "edited.npz", {"photo": photo_name, "edits": str(edits), "hold": ", ".join(hold)})

show([face.image, reconstruction, edited], ["aligned photo", "reconstruction", "edited"])
pasted = preim3d.paste_back(photo, edited, face)
pasted.save(OUT / "edited_photo.png")
show([photo, pasted], ["photo", "edit pasted back into the photo"], height=320)
''', "edit"),
    md("""
## 8. Look from any angle

The edited head is a 3D object: turn it with the sliders (angles in degrees from the frontal
view, as on the web demo; the model knows views within about ±46° yaw and ±34° pitch). On the
right, its depth map (near = bright).
"""),
    code('''
# @title 8. Look from any angle { display-mode: "form" }
YAW = 23  # @param {type:"slider", min:-46, max:46, step:1}
PITCH = 0  # @param {type:"slider", min:-34, max:34, step:1}

view = editor.render(edited_ws, math.radians(YAW), math.radians(PITCH))
depth = editor.depth(edited_ws, math.radians(YAW), math.radians(PITCH))
view.save(OUT / "view.png")
show([view, depth], [f"yaw {YAW:+}°, pitch {PITCH:+}°", "depth"])
''', "view"),
    md("""
## 9. Multi-view grid

The reconstruction (top row) and the edit (bottom row) from `VIEWS` cameras spread over
±`YAW_RANGE` degrees. Saved as `grid.png`.
"""),
    code('''
# @title 9. Multi-view grid { display-mode: "form" }
VIEWS = 5  # @param {type:"slider", min:2, max:9, step:1}
YAW_RANGE = 34  # @param {type:"slider", min:5, max:46, step:1}

yaws = np.radians(np.linspace(-YAW_RANGE, YAW_RANGE, int(VIEWS))).tolist()
rows = [editor.grid(latent, yaws=yaws, pitches=(0.0,)) for latent in (ws, edited_ws)]
grid = Image.new("RGB", (rows[0].width, rows[0].height * 2))
grid.paste(rows[0], (0, 0))
grid.paste(rows[1], (0, rows[0].height))
grid.save(OUT / "grid.png")
display(grid)
''', "grid"),
    md("""
## 10. Turntable video

The camera travels around the edited head. With `SIDE_BY_SIDE`, each frame shows the aligned
photo, the reconstruction and the edit; `DEPTH` adds the depth map. On a GPU, 120 frames take a
few tens of seconds. Saved as `turntable.mp4`.
"""),
    code('''
# @title 10. Turntable video { display-mode: "form" }
FRAMES = 120  # @param {type:"slider", min:24, max:240, step:12}
FPS = 30  # @param {type:"slider", min:10, max:60, step:5}
SIDE_BY_SIDE = True  # @param {type:"boolean"}
DEPTH = False  # @param {type:"boolean"}

video = editor.turntable(edited_ws, OUT / "turntable.mp4", frames=int(FRAMES), fps=FPS,
                         side_by_side=[face.image, ws] if SIDE_BY_SIDE else None, depth=DEPTH)
print(f"{video}: {video.stat().st_size / 1e6:.1f} MB")
display(Video(str(video), embed=True, width=768, html_attributes="controls autoplay loop muted playsinline"))
''', "turntable"),
    md("""
## 11. Export a 3D mesh

The surface of the edited head, with the colours of its raw render, as a GLB file (opens in
Blender, in online glTF viewers, and in most 3D tools), or PLY / OBJ. `MESH_RESOLUTION` is the
size of the sampling grid: 256 is detailed enough for most uses; 512 takes longer and makes a big
file. `PREVIEW` shows a coarser copy right here, which you can turn with the mouse.
"""),
    code('''
# @title 11. Export a 3D mesh { display-mode: "form" }
MESH_RESOLUTION = 256  # @param [64, 128, 256, 512] {type:"raw"}
MESH_FORMAT = "glb"  # @param ["glb", "ply", "obj"]
PREVIEW = True  # @param {type:"boolean"}
DOWNLOAD_MESH = True  # @param {type:"boolean"}

mesh_path = OUT / f"head.{MESH_FORMAT}"
mesh = editor.mesh(edited_ws, mesh_path, resolution=int(MESH_RESOLUTION))
print(f"{mesh_path}: {len(mesh.vertices):,} vertices, {len(mesh.faces):,} triangles, "
      f"{mesh_path.stat().st_size / 1e6:.1f} MB")

if PREVIEW:
    import trimesh
    from trimesh.viewer.notebook import scene_to_notebook

    display(scene_to_notebook(trimesh.Scene(editor.mesh(edited_ws, resolution=64)), height=400))
if IN_COLAB and DOWNLOAD_MESH:
    colab_files.download(str(mesh_path))
''', "mesh"),
    md("""
## 12. Download the results

Everything from the steps above (crop, reconstruction, edit, grid, video, mesh and the codes as
`.npz`) in one zip file.
"""),
    code('''
# @title 12. Download the results { display-mode: "form" }
import shutil

archive = Path(shutil.make_archive("preim3d_results", "zip", OUT))
print(f"{archive}: {archive.stat().st_size / 1e6:.1f} MB")
for path in sorted(OUT.iterdir()):
    print("  ", path.name)
if IN_COLAB:
    colab_files.download(str(archive))
''', "download"),
    md("""
## Going further

* Run step 4 with another photo, or step 7 with other edits: later steps reuse what came before.
* The same steps from Python: `editor.edit_photo("me.jpg", {"smile": 5})` does align, invert, edit
  and render in one call; `editor.load_latent("preim3d_results/edited.npz")` brings back a saved code.
* From a terminal: `preim3d --help` lists the commands (download, edit, convert, info, ...).
* Remember the licences of step 2: what you make with these weights is for non-commercial use.
"""),
]


# Editing a face in a video: a block of its own, placed before the download step.
VIDEO_CELLS = [
    md("""
## Edit a face in a video

Upload a short clip of a face (up to two minutes, up to 4K): the face is followed from frame to
frame, edited with the edits of step 7 and pasted back into every frame; the sound is kept. With
`VIDEO = "from the photo"` (or no upload), a clip is made from the aligned crop of step 5, moving
and turning. On a GPU this runs faster than real time; on a CPU it takes seconds per frame. Saved
as `edited_video.mp4`.
"""),
    code('''
# @title Edit a face in a video { display-mode: "form" }
VIDEO = "upload"  # @param ["upload", "from the photo"]
# @markdown Or the path of a video on this machine; it is used when set.
VIDEO_PATH = ""  # @param {type:"string"}
# @markdown Which face to follow, numbered from 1 (the largest) in the first frame with faces:
VIDEO_FACE = 1  # @param {type:"integer"}
VIDEO_SIDE_BY_SIDE = True  # @param {type:"boolean"}
# @markdown Length of the clip made from the photo, in seconds (at 15 frames per second):
VIDEO_SECONDS = 3  # @param {type:"slider", min:1, max:10, step:1}

from preim3d.testing import make_face_video

clip = None
if VIDEO_PATH.strip():
    clip = Path(VIDEO_PATH.strip())
elif VIDEO == "upload" and IN_COLAB:
    uploaded = colab_files.upload()
    if uploaded:
        clip_name, content = next(iter(uploaded.items()))
        clip = OUT / Path(clip_name).name
        clip.write_bytes(content)
    else:
        print("Nothing was uploaded: making a clip from the photo.")
elif VIDEO == "upload":
    print("Uploading works in Google Colab; here, set VIDEO_PATH to use your own video. Making one from the photo.")
if clip is None:
    clip = OUT / "clip.mp4"
    make_face_video(clip, face.image, size=(640, 480), frames=int(VIDEO_SECONDS) * 15, fps=15,
                    face_width=0.6, motion=0.3)

report = editor.edit_video(
    clip, OUT / "edited_video.mp4", edits, precise=PRECISE, hold=hold,
    face_index=face_index_from_number(VIDEO_FACE), side_by_side=VIDEO_SIDE_BY_SIDE,
    progress=lambda done, total: print(f"\\r{done}/{total} frames", end=""),
)
print(f"\\n{report.summary()}")
display(Video(str(report.path), embed=True, width=768, html_attributes="controls autoplay loop muted playsinline"))
''', "video"),
]
_DOWNLOAD_HEADING = next(i for i, c in enumerate(CELLS) if c.metadata.get("tags") == ["download"]) - 1
CELLS[_DOWNLOAD_HEADING:_DOWNLOAD_HEADING] = VIDEO_CELLS


def build(payload: str | None = None) -> nbformat.NotebookNode:
    """The notebook, carrying `payload` (default: the package's current source, see `archive`)."""
    payload = archive(package_files()) if payload is None else payload
    cells = [nbformat.from_dict(dict(cell)) for cell in CELLS]
    for cell in cells:
        cell.source = cell.source.replace(PAYLOAD, payload)
    nb = new_notebook(cells=cells)
    nb.metadata = {
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
        "language_info": {"name": "python"},
        "accelerator": "GPU",
        "colab": {"provenance": [], "gpuType": "T4", "name": "preim3d_colab.ipynb"},
    }
    # stable cell ids, so regenerating changes the file only where a cell changed
    for index, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{index:02d}"
    nbformat.validate(nb)
    return nb


def main() -> None:
    nbformat.write(build(), NOTEBOOK)
    print(f"wrote {NOTEBOOK}")


if __name__ == "__main__":
    main()
