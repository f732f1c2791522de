"""Getting the weights from the page: what would be downloaded (files, sources, sizes, licences), the
licence tick, the download with its progress, then the editor loads and the page enables, without a
restart. The same runs as the named endpoint `/download_weights` while the app has no weights.

Files come from the official sources, or from the mirrors set with PREIM3D_NGC_URL, PREIM3D_DRIVE_URL
and PREIM3D_GITHUB_URL (see `preim3d.weights.sources`).
"""

from __future__ import annotations

import gradio as gr

from preim3d import Editor, Preim3DError
from preim3d.weights.download import download_official
from preim3d.weights.sources import LICENCES, OfficialFile, official_files

from .handlers import Handlers, handled

TRACKED = gr.Progress(track_tqdm=True)  # the downloads' tqdm bars show on the page
_HOSTS = {"ngc": "NVIDIA NGC", "drive": "Google Drive", "github": "GitHub mybabyyh/Preim3D"}
_LICENCE_NAMES = {
    "eg3d": "NVIDIA Source Code License: **non-commercial**",
    "preim3d": "PREIM3D (MIT code, FFHQ/EG3D-derived weights): **non-commercial**",
    "mit": "MIT",
}


def load_editor(source) -> tuple[Editor | None, str | None]:
    """(editor, None), or (None, why) when the weights cannot be found or loaded."""
    if isinstance(source, Editor):
        return source, None
    try:
        # deterministic depth samples: the view does not shimmer when only the camera moves
        return Editor.from_pretrained(source, precision="fast", deterministic=True), None
    except Preim3DError as exc:
        return None, str(exc)


def files_table(files: list[OfficialFile]) -> str:
    """A Markdown table of what the download fetches: one row per file, the directions as one row."""
    rows = ["| what | file | from | size | licence |", "|---|---|---|---|---|"]
    directions = [f for f in files if f.role == "direction"]
    if directions:
        size = sum(f.size or f.min_size for f in directions) / 1e6
        folder = directions[0].page.rsplit("/", 1)[0]
        rows.append(
            f"| {len(directions)} editing directions | `<Attribute>.pt` | [{_HOSTS['github']}]({folder}) | "
            f"{size:.1f} MB | {_LICENCE_NAMES[directions[0].licence]} |"
        )
    for file in files:
        if file.role != "direction":
            size = f"{file.size / 1e6:.0f} MB" if file.size else f"over {file.min_size / 1e6:.0f} MB"
            rows.append(
                f"| {file.role} | `{file.filename}` | [{_HOSTS[file.host]}]({file.page}) | {size} | "
                f"{_LICENCE_NAMES[file.licence]} |"
            )
    rows.append(
        "| face landmarks (dlib, 68 points) | installed with preim3d | `face-recognition-models` | 100 MB | "
        "trained on iBUG 300-W: **non-commercial** |"
    )
    return "\n".join(rows)


def licence_text(files: list[OfficialFile]) -> str:
    keys = dict.fromkeys(f.licence for f in files)
    return "\n".join(f"* {LICENCES[key]}" for key in keys)


class WeightsDownload:
    """The download from the page (and `/download_weights`), into the default weights folder.

    files: the official table by default; tests give one for small stand-in files.
    """

    def __init__(self, handlers: Handlers, files: list[OfficialFile] | None = None):
        self.handlers = handlers
        self.files = list(files) if files is not None else official_files()

    @handled
    def download(self, accept_licences=False, progress=TRACKED) -> str:
        """Fetch, check and convert the weights, load them, and serve them from now on."""
        if self.handlers.editor is not None:
            raise gr.Error("The weights are already loaded: nothing to download.", print_exception=False)
        if accept_licences is not True:
            raise gr.Error(
                "Tick the box to accept the licences first: nothing is downloaded without it.\n"
                + licence_text(self.files),
                print_exception=False,
            )
        out = download_official(
            accept_licences=True,
            files=self.files,
            log=lambda message: progress(None, desc=message),  # tqdm's byte counts show as well
        )
        progress(None, desc="loading the weights")
        editor, why = load_editor(out)
        if editor is None:
            raise gr.Error(
                f"The weights were downloaded to {out} but do not load: {why}", print_exception=False
            )
        self.handlers.set_editor(editor)
        self.handlers.unavailable = None
        return f"Downloaded and loaded: {editor}. Upload a photo to start."
