"""The web demo as a Hugging Face Space, in one command.

`build_space(folder)` (`preim3d space build FOLDER`) writes a folder that runs as a Gradio Space:

    README.md          the Space's front matter (SDK, Python, app file, licence) and a short description
    app.py             builds and launches the demo; the weights source is written into it
    requirements.txt   the runtime dependencies (the Space's SDK brings gradio itself)
    preim3d/ demo/     a copy of the package and of the demo, so the Space runs this very version
    examples/          the example photos and their licences
    LICENSE

`push_space(repo_id)` (`preim3d space push USER/NAME`) uploads a local weights bundle as a model repo
when asked, creates the Space (or reuses it), uploads the built folder and sets the Space variable
PREIM3D_WEIGHTS to the weights repo, with huggingface_hub (token: HF_TOKEN or `hf auth login`;
HF_ENDPOINT chooses the Hub).

Both need a checkout of the preim3d repository (the demo and the examples are not part of the
installed package).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from importlib import metadata
from pathlib import Path

from .errors import Preim3DError
from .weights.resolve import WEIGHTS_ENV

ROOT = Path(__file__).resolve().parent.parent  # the checkout holding this package
PYTHON_VERSION = "3.11"
DEFAULT_GRADIO = "6.31.0"  # the SDK version written when gradio is not installed here

APP = '''\
"""preim3d's web demo on a Hugging Face Space (written by `preim3d space build`)."""

import os

# The weights: the Space variable {env} when set, else {weights}
from demo import build_demo, launch

demo = build_demo()

if __name__ == "__main__":
    launch(demo)
'''

README = """\
---
title: {title}
emoji: 🧑‍🎨
colorFrom: indigo
colorTo: pink
sdk: gradio
sdk_version: {gradio}
python_version: "{python}"
app_file: app.py
pinned: false
license: other
short_description: Edit a face photo in 3D (PREIM3D encoder + EG3D generator)
{models}---

# preim3d: edit a face in 3D from one photo

Upload a portrait: the face is aligned, encoded by the PREIM3D encoder into the latent space of the
EG3D 3D generator, edited (smile, age, glasses, … 39 attributes) and rendered from any angle, as
images, a turntable video or a mesh. The preim3d code is under the MIT licence.

`license: other`: the weights are not MIT. EG3D's generator comes under the NVIDIA Source Code
License (non-commercial), the PREIM3D encoder was trained on FFHQ (CC BY-NC-SA 4.0) against it, and
dlib's 68-point landmark model was trained on iBUG 300-W, whose terms exclude commercial use. What
this Space makes is for non-commercial use.

Weights: {weights_note}
"""


def _checkout() -> Path:
    missing = [name for name in ("app.py", "demo", "examples") if not (ROOT / name).exists()]
    if missing:
        raise Preim3DError(
            f"preim3d space needs a checkout of the preim3d repository ({', '.join(missing)} not found "
            f"beside the package in {ROOT}): clone it and install it with `pip install -e .`."
        )
    return ROOT


def space_requirements(root: Path) -> list[str]:
    """The checkout's requirements.txt, less the editable install of itself and gradio (the SDK's)."""
    lines = []
    for line in (root / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-e") and not line.lower().startswith("gradio"):
            lines.append(line)
    return lines


def build_space(folder, *, weights: str | None = None, title: str = "preim3d") -> Path:
    """Write a runnable Space into `folder` (created; must be empty if it exists); returns it.

    weights: the source the Space loads (a Hub model repo id holding a bundle); the Space variable
    PREIM3D_WEIGHTS overrides it. Without either, the Space starts with the page's Download button.
    """
    root = _checkout()
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise Preim3DError(f"{folder} is not empty: give a new or empty folder for the Space.")
    folder.mkdir(parents=True, exist_ok=True)
    code = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(root / "preim3d", folder / "preim3d", ignore=code)
    shutil.copytree(
        root / "demo", folder / "demo", ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.md")
    )
    shutil.copytree(root / "examples", folder / "examples", ignore=shutil.ignore_patterns("*.py"))
    shutil.copy2(root / "LICENSE", folder / "LICENSE")
    setting = (
        f"the repo chosen when the Space was built.\nos.environ.setdefault({json.dumps(WEIGHTS_ENV)}, "
        f"{json.dumps(weights)})\n"
        if weights
        else "the page's Download button.\n"
    )
    (folder / "app.py").write_text(APP.format(env=WEIGHTS_ENV, weights=setting))
    (folder / "requirements.txt").write_text("\n".join(space_requirements(root)) + "\n")
    try:
        gradio = metadata.version("gradio")
    except metadata.PackageNotFoundError:
        gradio = DEFAULT_GRADIO
    note = (
        f"the bundle in the model repo [{weights}](https://huggingface.co/{weights}) (Space variable "
        f"`{WEIGHTS_ENV}`)."
        if weights
        else f"none chosen yet: set the Space variable `{WEIGHTS_ENV}` to a model repo holding a preim3d "
        "bundle, or use the page's Download button (the weights then last until the Space restarts)."
    )
    (folder / "README.md").write_text(
        README.format(
            title=title,
            gradio=gradio,
            python=PYTHON_VERSION,
            models=f"models:\n- {weights}\n" if weights else "",
            weights_note=note,
        )
    )
    return folder


def push_space(
    repo_id: str,
    *,
    weights_repo: str | None = None,
    bundle=None,
    private: bool = False,
    token: str | None = None,
    endpoint: str | None = None,
    log=print,
) -> str:
    """Upload `bundle` to the model repo `weights_repo` (if given), build the Space, create `repo_id`
    as a Gradio Space (kept if it exists), upload it and set PREIM3D_WEIGHTS; returns the Space's URL."""
    from huggingface_hub import HfApi

    if bundle is not None and weights_repo is None:
        raise Preim3DError("--bundle needs --weights-repo: the model repo to upload the bundle to.")
    api = HfApi(endpoint=endpoint or os.environ.get("HF_ENDPOINT"), token=token)
    if bundle is not None:
        from .weights.bundle import read_bundle_config

        read_bundle_config(bundle)  # a bundle, not any folder
        api.create_repo(weights_repo, repo_type="model", private=private, exist_ok=True)
        api.upload_folder(
            repo_id=weights_repo, folder_path=str(bundle), commit_message="preim3d weights bundle"
        )
        log(f"uploaded the bundle {bundle} to the model repo {weights_repo}")
    with tempfile.TemporaryDirectory(prefix="preim3d-space-") as tmp:
        folder = build_space(Path(tmp) / "space", weights=weights_repo)
        url = api.create_repo(repo_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True)
        api.upload_folder(
            repo_id=repo_id, repo_type="space", folder_path=str(folder), commit_message="preim3d demo"
        )
    log(f"uploaded the demo to the Space {repo_id}")
    if weights_repo:
        api.add_space_variable(repo_id, WEIGHTS_ENV, weights_repo)
        log(f"set the Space variable {WEIGHTS_ENV}={weights_repo}")
        if private:
            log(
                "The weights repo is private: add a secret HF_TOKEN that can read it in the Space's "
                "settings, or the Space cannot load the weights."
            )
    return str(url)
