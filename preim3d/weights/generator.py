"""Loading and saving the EG3D generator: official files (read safely) and our bundle format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import WeightsError
from ..networks.triplane import TriPlaneGenerator
from .bundle import is_bundle, network_config, read_bundle_component, write_bundle_component
from .checks import load_state_strict
from .official_pickle import PickledModule, find_module, module_tensors, read_official_pickle

EG3D_LICENCE = (
    "NVIDIA Source Code License for EG3D: non-commercial use only "
    "(https://github.com/NVlabs/eg3d/blob/main/LICENSE.txt)"
)
GENERATOR_CLASS = "TriPlaneGenerator"  # persistent objects record the bare class name
GENERATOR_WHAT = "the EG3D generator its config describes"


def load_generator(source, device="cpu") -> TriPlaneGenerator:
    """The EG3D generator from an NGC network pickle (its `G_ema`), PREIM3D's `torch.save`d generator
    (`eg3d_G_ema.pkl`) or a preim3d bundle folder, in eval mode on `device`.

    Official files are read with an allow-listed unpickler: the code embedded in them never runs.
    Architecture, rendering settings and the neural rendering resolution come from the file.
    """
    path = Path(source)
    if path.is_dir():
        if not is_bundle(path):
            raise WeightsError(f"{path} is a folder but not a preim3d bundle (no preim3d config.json).")
        tensors, section = read_bundle_component(path, "generator")
        G = _build(
            network_config(section), section["rendering_kwargs"], section["neural_rendering_resolution"], path
        )
        load_state_strict(G, tensors, path, GENERATOR_WHAT)
        G.source_info = section.get("provenance", {})
    else:
        G = generator_from_official(path)
    return G.eval().requires_grad_(False).to(device)


def generator_from_official(path) -> TriPlaneGenerator:
    """Build and fill our generator from an official file (see `load_generator`)."""
    path = Path(path)
    record = _generator_record(read_official_pickle(path), path)
    state = record.state
    init_kwargs = _plain(state.get("_init_kwargs"))
    if not isinstance(init_kwargs, dict) or state.get("_init_args"):
        raise WeightsError(f"{path}: the generator carries no usable constructor arguments (_init_kwargs).")
    rendering_kwargs = _plain(state.get("rendering_kwargs", init_kwargs.get("rendering_kwargs")))
    resolution = int(state.get("neural_rendering_resolution", 64))
    G = _build(init_kwargs, rendering_kwargs, resolution, path)
    _check_plane_axes(record, path)
    load_state_strict(G, module_tensors(record), path, GENERATOR_WHAT)
    G.source_info = {
        "file": path.name,
        "class_name": record.class_name,
        "embedded_source_sha256": record.source_sha256,
    }
    return G


def save_generator(
    G: TriPlaneGenerator, folder, provenance: dict | None = None, licence: str = EG3D_LICENCE
) -> Path:
    """Write G into the bundle at `folder` (generator.safetensors + its config.json section).

    provenance defaults to `G.source_info` (where G was loaded from); licence to EG3D's.
    """
    section = {
        "architecture": "EG3D TriPlaneGenerator",
        "config": _plain(G.config),
        "rendering_kwargs": _plain(G.rendering_kwargs),
        "neural_rendering_resolution": int(G.neural_rendering_resolution),
        "provenance": provenance or getattr(G, "source_info", {}),
        "licence": licence,
    }
    return write_bundle_component(folder, "generator", G.state_dict(), section)


def _generator_record(obj, path) -> PickledModule:
    """The TriPlaneGenerator inside an official file: G_ema of a network pickle, or the module itself."""
    if isinstance(obj, dict):
        if "G_ema" not in obj:
            keys = ", ".join(map(str, list(obj)[:8]))
            hint = (
                " It looks like a PREIM3D encoder checkpoint: use load_encoder."
                if "state_dict" in obj
                else ""
            )
            raise WeightsError(f"{path} holds a dict without 'G_ema' (keys: {keys}).{hint}")
        obj = obj["G_ema"]
    if not isinstance(obj, PickledModule):
        raise WeightsError(f"{path} does not hold a pickled EG3D generator (found {type(obj).__name__}).")
    if obj.class_name != GENERATOR_CLASS:
        raise WeightsError(f"{path} holds a {obj.class_name}, not an EG3D {GENERATOR_CLASS}.")
    return obj


def _build(config, rendering_kwargs, resolution, path) -> TriPlaneGenerator:
    if not isinstance(config, dict):
        raise WeightsError(f"{path}: the generator section has no 'config' (constructor arguments).")
    try:
        G = TriPlaneGenerator.from_config(config)
    except (TypeError, ValueError, KeyError) as exc:
        raise WeightsError(f"{path}: unsupported generator configuration ({exc}).") from exc
    G.rendering_kwargs = dict(rendering_kwargs)
    G.neural_rendering_resolution = int(resolution)
    return G


def _check_plane_axes(record: PickledModule, path) -> None:
    """The pickled renderer's plane axes must be the ones our sampler hard-codes."""
    renderer = find_module(record, "renderer")
    axes = None if renderer is None else renderer.state.get("plane_axes")
    if axes is None:
        return
    # What networks.renderer.sample_triplanes reads for a point (x, y, z): (x, y), (x, z), (z, x).
    points = torch.tensor([[[0.1, 0.2, 0.3]]])
    expected = torch.stack([points[0, 0] @ torch.linalg.inv(a.float()) for a in axes])[:, :2]
    ours = torch.tensor([[0.1, 0.2], [0.1, 0.3], [0.3, 0.1]])
    if not torch.allclose(expected, ours):
        raise WeightsError(f"{path}: its renderer uses tri-plane axes this implementation does not support.")


def _plain(value):
    """JSON-able copy: EasyDicts → dicts, tuples → lists, numpy scalars → Python numbers."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
