"""What a bundle or an official file holds: architecture, provenance and licence, as readable text.

`describe(source)` takes a bundle folder, a Hugging Face Hub repo id, a folder of official files,
one official file (generator pickle, encoder checkpoint, direction tensor) or a folder of direction
files. A bundle is described from its config.json alone; official files are read (safely) in full,
since that is the only way to know what they hold.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import WeightsError
from .bundle import network_config, read_bundle_config
from .resolve import find_official_files, locate
from .sources import DIRECTIONS, LICENCES

_OFFICIAL_DIGESTS = {f.sha256: Path(f.filename).name for f in DIRECTIONS}


def describe(source) -> str:
    """A multi-line description of `source` (see the module docstring);
    WeightsError if it is none of those."""
    path = Path(os.fspath(source)).expanduser()
    if path.is_file():
        return _describe_file(path)
    if path.is_dir() and not (path / "config.json").exists() and find_official_files(path) is None:
        if any(path.glob("*.pt")):
            return _describe_direction_folder(path)
    location = locate(source, "given to info")
    if location.kind == "official":
        lines = [f"folder of official files: {location.path}"]
        for role, file in location.files.items():
            text = _describe_direction_folder(file) if role == "directions" else _describe_file(file)
            lines += ["", text]
        return "\n".join(lines)
    return _describe_bundle(location.path, location.origin)


# ---------------------------------------------------------------------------- bundles


def _describe_bundle(folder: Path, origin: str) -> str:
    config = read_bundle_config(folder)
    lines = [f"preim3d bundle {folder} ({origin}), format version {config.get('format_version')}"]
    order = ("generator", "encoder", "latent_avg", "directions")
    sections = {name: value for name, value in config.items() if isinstance(value, dict)}
    sections = dict(
        sorted(sections.items(), key=lambda item: order.index(item[0]) if item[0] in order else 4)
    )
    for name, section in sections.items():
        file = folder / f"{name}.safetensors"
        size = f"{file.stat().st_size / 1e6:.1f} MB" if file.is_file() else "file missing"
        lines.append(f"{name} [{file.name}, {size}]")
        lines.append(f"    {_summary(name, section)}")
        for key in ("provenance", "licence"):
            if section.get(key):
                lines.append(f"    {key}: {_flat(section[key])}")
    missing = [name for name in order if name not in sections]
    if missing:
        lines.append(
            f"missing components: {', '.join(missing)}"
            + (" (editing needs directions)" if missing == ["directions"] else "")
        )
    return "\n".join(lines)


def _summary(name: str, section: dict) -> str:
    if name == "generator":
        kwargs = network_config(section) or {}
        return _generator_summary(
            kwargs,
            section.get("rendering_kwargs", kwargs.get("rendering_kwargs", {})),
            section.get("neural_rendering_resolution"),
        )
    if name == "encoder":
        return _encoder_summary(network_config(section) or {})
    if name == "latent_avg":
        recipe = section.get("recipe", {})
        return (
            f"mean W+ code of the generator: {recipe.get('samples')} samples of seed {recipe.get('seed')}, "
            f"truncation psi {recipe.get('truncation_psi')}"
        )
    if name == "directions":
        names = section.get("names", [])
        return f"{len(names)} editing directions: {', '.join(names)}"
    return "unknown component"


def _generator_summary(kwargs: dict, rendering: dict, neural_resolution) -> str:
    sr = str(rendering.get("superresolution_module", "?")).rsplit(".", 1)[-1]
    return (
        f"EG3D tri-plane generator: {kwargs.get('img_resolution')} px images from {neural_resolution} px "
        f"neural rendering ({rendering.get('depth_resolution')} + "
        f"{rendering.get('depth_resolution_importance')} depth samples), {sr}; "
        f"z {kwargs.get('z_dim')}, w {kwargs.get('w_dim')}, "
        f"channel_base {kwargs.get('channel_base')}, channel_max {kwargs.get('channel_max')}"
    )


def _encoder_summary(arch: dict) -> str:
    units = "-".join(str(u) for u in arch.get("stage_units", []))
    channels = "-".join(str(c) for c in arch.get("stage_channels", []))
    return (
        f"PREIM3D W+ encoder (IR-SE): stages of {units} units with {channels} channels, "
        f"codes {arch.get('n_styles')} x {arch.get('w_dim')}"
    )


def _flat(value) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={_flat(v)}" for k, v in value.items())
    return str(value)


# ---------------------------------------------------------------------------- official files


def _describe_file(path: Path) -> str:
    import torch

    from .checksum import file_sha256

    header = f"{path} ({path.stat().st_size / 1e6:.1f} MB, sha256 {file_sha256(path)})"
    try:  # encoder checkpoints and direction tensors load with weights_only; generators do not
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # whatever the reason, it is not a plain tensor file: try the generator reader
        content = None
    if isinstance(content, torch.Tensor):
        return _describe_direction(path, content, header)
    if isinstance(content, dict):
        return _describe_encoder(path, header)
    return _describe_generator(path, header)


def _describe_generator(path: Path, header: str) -> str:
    from .generator import EG3D_LICENCE, load_generator

    try:
        G = load_generator(path)
    except WeightsError as exc:
        raise WeightsError(f"{path} is not an official generator, encoder or direction file: {exc}") from exc
    info = G.source_info
    params = sum(p.numel() for p in G.parameters()) / 1e6
    return "\n".join(
        [
            f"official EG3D generator {header}",
            f"    {_generator_summary(G.config, G.rendering_kwargs, G.neural_rendering_resolution)}; "
            f"{params:.1f} M parameters",
            f"    pickled class {info['class_name']}, embedded source sha256 "
            f"{info['embedded_source_sha256']} (never executed)",
            f"    licence: {EG3D_LICENCE}",
        ]
    )


def _describe_encoder(path: Path, header: str) -> str:
    from .encoder import (
        OFFICIAL_LICENCE,
        encoder_state_from_checkpoint,
        infer_architecture,
        read_official_checkpoint,
    )

    state, opts, latent_avg = read_official_checkpoint(path)
    arch = infer_architecture(encoder_state_from_checkpoint(state, opts, path), path)
    others = sorted(
        {k.split(".", 1)[0] for k in state if isinstance(k, str) and not k.startswith("encoder.")}
    )
    stored = "stores" if latent_avg is not None else "does not store"
    training_options = ", ".join(
        f"{k}={opts[k]}" for k in ("encoder_type", "dataset_type", "stylegan_size") if k in opts
    )
    return "\n".join(
        [
            f"official PREIM3D encoder checkpoint {header}",
            f"    {_encoder_summary(arch)}",
            f"    {stored} a latent average; other weights: {', '.join(others) or 'none'}; training options: "
            f"{training_options}",
            f"    licence: {OFFICIAL_LICENCE}",
        ]
    )


def _describe_direction(path: Path, tensor, header: str) -> str:
    from .checksum import file_sha256

    official = _OFFICIAL_DIGESTS.get(file_sha256(path))
    origin = f"the official PREIM3D {official}" if official else "not one of the official PREIM3D files"
    return "\n".join(
        [
            f"editing direction {header}",
            f"    tensor {list(tensor.shape)} {str(tensor.dtype).replace('torch.', '')}, norm "
            f"{float(tensor.norm()):.4f}; {origin}",
            f"    licence: {LICENCES['mit'] if official else 'unknown'}",
        ]
    )


def _describe_direction_folder(folder: Path) -> str:
    from .checksum import file_sha256

    files = sorted(folder.glob("*.pt"))
    official = [f for f in files if file_sha256(f) in _OFFICIAL_DIGESTS]
    return "\n".join(
        [
            f"folder of {len(files)} editing directions {folder}: {', '.join(f.stem for f in files)}",
            f"    {len(official)} of them are official PREIM3D files (by SHA-256)"
            + (f"; licence: {LICENCES['mit']}" if official else ""),
        ]
    )
