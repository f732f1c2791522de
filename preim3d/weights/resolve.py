"""Where the weights are found: an explicit source, then $PREIM3D_WEIGHTS, then the default folder.

A source is

* a local bundle folder (config.json + *.safetensors, see `preim3d.weights.bundle`);
* a local folder of the official files, as `preim3d download` leaves them in its downloads folder
  or as a PREIM3D checkout keeps them (`pretrained/`, `editings/interfacegan_directions/inversion/`);
* a Hugging Face Hub model repo id ("owner/name") holding a bundle. It is fetched with
  `huggingface_hub.snapshot_download` into the Hugging Face cache; with HF_HUB_OFFLINE=1 only the
  cache is looked at, so nothing waits for a network that is not there.

The default folder is `$PREIM3D_HOME/weights`, with PREIM3D_HOME defaulting to
`$XDG_CACHE_HOME/preim3d` (usually `~/.cache/preim3d`); `preim3d download` converts the official
files into it and keeps the originals in `$PREIM3D_HOME/downloads`.

This module imports neither torch nor huggingface_hub until a Hub id is used, so a missing-weights
message comes at once.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import WeightsError, WeightsNotFoundError
from .bundle import is_bundle
from .sources import DIRECTIONS_FOLDER, DIRECTIONS_PATH, ENCODER, GENERATORS

WEIGHTS_ENV = "PREIM3D_WEIGHTS"
HOME_ENV = "PREIM3D_HOME"
DOWNLOAD_COMMAND = "preim3d download"

# Generator files in order of preference: PREIM3D's copy is the one its encoder was trained with.
_GENERATOR_NAMES = tuple(f.filename for f in GENERATORS.values())
_DIRECTION_FOLDERS = (DIRECTIONS_FOLDER, DIRECTIONS_PATH)
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")


@dataclass(frozen=True)
class WeightsLocation:
    """Weights found on disk. `kind` is "bundle" or "official"; `origin` says how they were found.

    For official files, `files` maps "generator", "encoder" and (when present) "directions" to paths.
    """

    path: Path
    kind: str
    origin: str
    files: dict[str, Path] = field(default_factory=dict)


def preim3d_home() -> Path:
    """$PREIM3D_HOME, else $XDG_CACHE_HOME/preim3d, else ~/.cache/preim3d."""
    if os.environ.get(HOME_ENV):
        return Path(os.environ[HOME_ENV]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "preim3d"


def default_weights_dir() -> Path:
    """The bundle folder `preim3d download` writes and `Editor.from_pretrained()` reads by default."""
    return preim3d_home() / "weights"


def default_downloads_dir() -> Path:
    """Where `preim3d download` keeps the official files it fetched."""
    return preim3d_home() / "downloads"


def resolve_weights(source=None, *, revision: str | None = None) -> WeightsLocation:
    """Find the weights: `source` if given, else $PREIM3D_WEIGHTS, else the default folder.

    An explicit source or environment variable that points nowhere is an error (preim3d does not
    fall back silently to other weights). `revision`: branch, tag or commit of a Hub repo.
    Raises WeightsNotFoundError, naming the command that fetches the official weights, when
    nothing is found.
    """
    if source is not None and str(source).strip():
        return locate(source, "given as the weights source", revision)
    from_env = os.environ.get(WEIGHTS_ENV, "").strip()
    if from_env:
        return locate(from_env, f"from the {WEIGHTS_ENV} environment variable", revision)
    folder = default_weights_dir()
    if is_bundle(folder):
        return WeightsLocation(folder, "bundle", "the default weights folder")
    raise WeightsNotFoundError(
        f"No preim3d weights found: no source was given, {WEIGHTS_ENV} is not set, and the default folder "
        f"{folder} holds no bundle. Run `{DOWNLOAD_COMMAND}` to fetch the official weights (EG3D's are for "
        "non-commercial use only) into that folder, or point to weights you have: a bundle folder or a "
        f"Hugging Face Hub repo id (the --weights option, the source argument, or {WEIGHTS_ENV})."
    )


def locate(source, origin: str, revision: str | None = None) -> WeightsLocation:
    """One source (local folder or Hub repo id) -> WeightsLocation; `origin` words the error messages."""
    text = os.fspath(source)
    path = Path(text).expanduser()
    if path.exists():
        return _local(path, origin)
    if _REPO_ID.match(text) and not text.startswith("."):
        return WeightsLocation(
            _hub_snapshot(text, revision, origin), "bundle", f"Hugging Face Hub repo {text}"
        )
    raise WeightsNotFoundError(
        f"The weights source {text!r} ({origin}) does not exist: give a bundle folder, a folder of the "
        f"official files, or a Hugging Face Hub repo id (owner/name). Run `{DOWNLOAD_COMMAND}` to fetch the "
        "official weights."
    )


def find_official_files(folder) -> dict[str, Path] | None:
    """{"generator", "encoder"[, "directions"]} paths in a folder of official files, or None.

    Looked for in the folder and its `pretrained/` subfolder (a PREIM3D checkout's layout):
    eg3d_G_ema.pkl, ffhq512-128.pkl or ffhqrebalanced512-128.pkl (first found), preim3d_ffhq.pt;
    directions in `directions/` or `editings/interfacegan_directions/inversion/`.
    """
    folder = Path(folder)
    places = (folder, folder / "pretrained")
    generator = next((p / n for n in _GENERATOR_NAMES for p in places if (p / n).is_file()), None)
    encoder = next((p / ENCODER.filename for p in places if (p / ENCODER.filename).is_file()), None)
    if generator is None or encoder is None:
        return None
    files = {"generator": generator, "encoder": encoder}
    directions = next((folder / d for d in _DIRECTION_FOLDERS if any((folder / d).glob("*.pt"))), None)
    if directions is not None:
        files["directions"] = directions
    return files


def _local(path: Path, origin: str) -> WeightsLocation:
    if is_bundle(path):
        return WeightsLocation(path, "bundle", origin)
    files = find_official_files(path) if path.is_dir() else None
    if files:
        return WeightsLocation(path, "official", origin, files)
    what = "folder" if path.is_dir() else "file"
    raise WeightsError(
        f"{path} ({origin}) is a {what} but neither a preim3d bundle (config.json + *.safetensors) nor a "
        f"folder holding the official files (a generator {' / '.join(_GENERATOR_NAMES)} and the encoder "
        f"{ENCODER.filename}). Convert single official files with `preim3d convert`, or run "
        f"`{DOWNLOAD_COMMAND}`."
    )


def _hub_offline() -> bool:
    """HF_HUB_OFFLINE as huggingface_hub reads it, also when it was set after huggingface_hub was imported."""
    from huggingface_hub import constants

    return constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in {
        "1",
        "ON",
        "YES",
        "TRUE",
    }


def _hub_snapshot(repo_id: str, revision: str | None, origin: str) -> Path:
    """Local snapshot folder of a Hub repo's bundle files (cached; the cache only, when offline)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    offline = _hub_offline()
    try:
        folder = Path(
            snapshot_download(
                repo_id,
                revision=revision,
                allow_patterns=["config.json", "*.safetensors"],
                local_files_only=offline,
            )
        )
    except LocalEntryNotFoundError as exc:
        why = (
            "HF_HUB_OFFLINE is set and it is not in the local Hugging Face cache"
            if offline
            else "the Hub could not be reached and it is not in the local Hugging Face cache"
        )
        raise WeightsNotFoundError(
            f"{repo_id!r} ({origin}) is not a local folder, and as a Hugging Face Hub repo it cannot be "
            f"used: {why}. Connect to the internet once (without HF_HUB_OFFLINE), give a local bundle "
            f"folder, or run `{DOWNLOAD_COMMAND}`."
        ) from exc
    except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
        raise WeightsNotFoundError(
            f"{repo_id!r} ({origin}) is neither a local folder nor a Hugging Face Hub repo you can access"
            f"{f' at revision {revision!r}' if revision else ''} ({type(exc).__name__}). Check the name, log "
            f"in with `hf auth login` for a private repo, or run `{DOWNLOAD_COMMAND}`."
        ) from exc
    except (HfHubHTTPError, OSError) as exc:
        raise WeightsError(
            f"Could not fetch the Hugging Face Hub repo {repo_id!r} ({origin}): {exc}"
        ) from exc
    if not is_bundle(folder):
        raise WeightsError(
            f"The Hugging Face Hub repo {repo_id!r} holds no preim3d bundle (no config.json of format "
            f"'preim3d-bundle' at its root)."
        )
    return folder
