"""Our own weights format: a folder with `config.json` and one `<component>.safetensors` per component.

A bundle never needs unpickling. `config.json` holds one section per component (architecture,
settings, provenance, licence) beside a few top-level fields; each component's tensors live in
`<component>.safetensors`. Components are written one at a time, so a bundle can be assembled
from several official files.

A network's section stores its constructor arguments under `config` (the network's `.config`,
rebuilt with its class's `from_config`); format 1 stored them under `init_kwargs` (generator) or
`architecture` (encoder), which are still read.

Finding a bundle (`is_bundle`, `read_bundle_config`) needs neither torch nor safetensors, so that
`preim3d.weights.resolve` answers at once; reading and writing tensors imports them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import WeightsError

if TYPE_CHECKING:
    import torch

CONFIG_NAME = "config.json"
FORMAT_NAME = "preim3d-bundle"
FORMAT_VERSION = 2  # 2: network constructor arguments under 'config'


def is_bundle(path) -> bool:
    """True when `path` is a folder holding a preim3d `config.json`."""
    try:
        config = json.loads((Path(path) / CONFIG_NAME).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and config.get("format") == FORMAT_NAME


def read_bundle_config(folder) -> dict:
    """The whole `config.json` of a bundle, checked for format and version."""
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        raise WeightsError(f"{folder} is not a preim3d bundle: it has no {CONFIG_NAME}.")
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise WeightsError(f"{path} is not valid JSON ({exc}).") from exc
    if not isinstance(config, dict) or config.get("format") != FORMAT_NAME:
        raise WeightsError(f"{path} is not a preim3d bundle config (its 'format' is not {FORMAT_NAME!r}).")
    if config.get("format_version", 0) > FORMAT_VERSION:
        raise WeightsError(
            f"{path} was written by a newer preim3d (bundle format {config['format_version']}, this "
            f"version reads {FORMAT_VERSION}): upgrade preim3d."
        )
    return config


def network_config(section: dict) -> dict | None:
    """The constructor arguments a network's section stores: `config`, or format 1's `init_kwargs`
    (generator) or `architecture` (encoder); None when there are none."""
    for key in ("config", "init_kwargs", "architecture"):
        if isinstance(section.get(key), dict):
            return section[key]
    return None


def write_bundle_component(folder, name: str, tensors: dict[str, torch.Tensor], config: dict) -> Path:
    """Write `<name>.safetensors` and the `name` section of `config.json` (other sections are kept)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config_path = folder / CONFIG_NAME
    whole = read_bundle_config(folder) if config_path.exists() else {}
    whole.update(format=FORMAT_NAME, format_version=FORMAT_VERSION)
    whole[name] = config
    tensors = {key: value.detach().to("cpu").contiguous() for key, value in tensors.items()}
    tensor_path = folder / f"{name}.safetensors"
    _atomic_write(tensor_path, lambda tmp: save_file(tensors, str(tmp), metadata={"component": name}))
    _atomic_write(config_path, lambda tmp: Path(tmp).write_text(json.dumps(whole, indent=2, sort_keys=True)))
    return tensor_path


def read_bundle_component(folder, name: str) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors and config section of one component; a clear error when it is absent or damaged."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    config = read_bundle_config(folder)
    if name not in config:
        present = sorted(k for k, v in config.items() if isinstance(v, dict))
        raise WeightsError(
            f"The bundle {folder} has no {name!r} component (it holds: {', '.join(present) or 'nothing'})."
        )
    path = Path(folder) / f"{name}.safetensors"
    if not path.is_file():
        raise WeightsError(f"The bundle {folder} lists {name!r} but {path.name} is missing.")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise WeightsError(f"{path} is not a readable safetensors file ({exc}).") from exc
    return tensors, config[name]


def _atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same folder, so a crash never leaves half a file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
