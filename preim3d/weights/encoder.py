"""Loading and saving the PREIM3D encoder and the latent average, never unpickling arbitrary objects.

Two sources are read:

* PREIM3D's checkpoint (`preim3d_ffhq.pt`): a torch zip file holding
  `{'state_dict': {'encoder.*': ..., 'decoder.*': ...}, 'opts': {...}, 'latent_avg': [1,14,512], ...}`.
  It is opened with `torch.load(weights_only=True)`, which only rebuilds tensors and plain
  containers; a file that needs any other Python object is refused. Only the `encoder.*` entries
  are used (a bare encoder state dict without the prefix is accepted too); the architecture is
  read from the tensor shapes and checked key by key.
* Our bundle folder (`preim3d.weights.bundle`). The encoder is the component "encoder": its
  tensors are the `WPlusEncoder` state dict, its config section holds `config` (the constructor
  arguments, `WPlusEncoder.config`), `provenance` and `licence`. The latent average is a separate component
  "latent_avg" (one tensor `latent_avg` [1, n_styles, w_dim] plus the recipe that produced it),
  because it belongs to the generator as much as to the encoder; it is computed once, when the
  bundle is written, and only read afterwards.
"""

from __future__ import annotations

import math
import re
import zipfile
from pathlib import Path

import torch

from ..errors import WeightsError
from ..networks.encoder import WPlusEncoder
from .bundle import is_bundle, network_config, read_bundle_component, write_bundle_component
from .checks import check_latent_avg, check_latent_avg_shape, load_state_strict, preview
from .checksum import file_sha256

ENCODER_COMPONENT = "encoder"
LATENT_AVG_COMPONENT = "latent_avg"
OFFICIAL_LICENCE = (
    "PREIM3D encoder weights from the MIT-licensed PREIM3D repository (mybabyyh/Preim3D); trained on FFHQ "
    "(CC BY-NC-SA 4.0) against the EG3D generator (NVIDIA Source Code License, non-commercial)."
)
LATENT_AVG_RECIPE = dict(
    seed=123,
    samples=10000,
    camera="frontal (yaw = pitch = 3.14/2, radius 2.7, pivot (0, 0, 0.2), focal 4.2647)",
    truncation_psi=0.7,
    truncation_cutoff=14,
    reduction="mean over samples, keepdim",
)
_GENERATOR_PREFIXES = ("backbone.", "superresolution.", "decoder.", "renderer.")
# torch's legacy (pre-zip) files start with a pickled magic number: PROTO 2, LONG1 of 10 bytes.
_LEGACY_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"
ENCODER_WHAT = "the encoder architecture"
ENCODER_ARCHITECTURE = "PREIM3D WPlusEncoder (IR-SE)"
_WHAT_TO_GIVE = (
    "load_encoder takes PREIM3D's encoder checkpoint (preim3d_ffhq.pt) or a preim3d bundle folder."
)


def load_encoder(source, device="cpu") -> WPlusEncoder:
    """A `WPlusEncoder` in eval mode on `device`, from an official checkpoint file or a bundle folder."""
    path = Path(source)
    if path.is_dir():
        if not is_bundle(path):
            raise WeightsError(
                f"{path} is a folder but not a preim3d bundle (no preim3d config.json). {_WHAT_TO_GIVE}"
            )
        tensors, section = read_bundle_component(path, ENCODER_COMPONENT)
        config = network_config(section)
        if config is None:
            raise WeightsError(
                f"The encoder section of {path}/config.json has no 'config' (constructor arguments); "
                "rewrite the bundle."
            )
        try:
            encoder = WPlusEncoder.from_config(config)
        except (TypeError, ValueError) as exc:
            raise WeightsError(
                f"{path}/config.json describes an encoder preim3d cannot build ({exc})."
            ) from exc
        load_state_strict(encoder, tensors, path / f"{ENCODER_COMPONENT}.safetensors", ENCODER_WHAT)
        return encoder.eval().requires_grad_(False).to(device)
    return encoder_from_official(path, device)[0]


def encoder_from_official(path, device="cpu") -> tuple[WPlusEncoder, torch.Tensor | None]:
    """(encoder in eval mode on `device`, the latent average the checkpoint stores or None) from one
    read of PREIM3D's checkpoint: it is large, and `Editor.from_official` needs both."""
    path = Path(path)
    encoder, tensors, stored = _encoder_from_checkpoint(path)
    load_state_strict(encoder, tensors, path, ENCODER_WHAT)
    return encoder.eval().requires_grad_(False).to(device), stored


def save_encoder(encoder: WPlusEncoder, folder, latent_avg=None, provenance=None, licence=None) -> Path:
    """Write `encoder` (and, if given, `latent_avg` [1, n_styles, w_dim]) as components of a bundle.

    `provenance` is a JSON-able dict (source file, sha256, ...), `licence` a short text; both are
    stored beside the architecture. Other components of the bundle are kept. Returns the folder.
    """
    section = dict(
        architecture=ENCODER_ARCHITECTURE,
        config=encoder.config,
        provenance=provenance or {},
        licence=licence or "unspecified",
    )
    if latent_avg is not None:
        check_latent_avg_shape(latent_avg, encoder)
    write_bundle_component(folder, ENCODER_COMPONENT, encoder.state_dict(), section)
    if latent_avg is not None:
        save_latent_avg(latent_avg, folder)
    return Path(folder)


def save_latent_avg(latent_avg: torch.Tensor, folder, provenance=None) -> None:
    """Store the latent average [1, n_styles, w_dim] as the bundle component "latent_avg"."""
    latent_avg = torch.as_tensor(latent_avg).detach().float()
    if latent_avg.ndim != 3 or latent_avg.shape[0] != 1:
        raise ValueError(f"latent_avg must have shape [1, n_styles, w_dim], got {list(latent_avg.shape)}.")
    config = dict(recipe=LATENT_AVG_RECIPE, provenance=provenance or {})
    write_bundle_component(folder, LATENT_AVG_COMPONENT, {"latent_avg": latent_avg}, config)


def load_latent_avg(source, device="cpu") -> torch.Tensor:
    """The latent average [1, n_styles, w_dim] stored in a bundle or carried by an official checkpoint."""
    path = Path(source)
    if path.is_dir():
        tensors, _ = read_bundle_component(path, LATENT_AVG_COMPONENT)
        value = tensors.get("latent_avg")
        where = path / f"{LATENT_AVG_COMPONENT}.safetensors"
    else:
        _, _, value = read_official_checkpoint(path)
        where = path
    if not isinstance(value, torch.Tensor) or value.ndim != 3 or value.shape[0] != 1:
        raise WeightsError(
            f"{where} holds no latent average of shape [1, n_styles, w_dim]. Compute it from the generator "
            "with preim3d.compute_latent_avg(G) and store it with save_encoder(..., latent_avg=...)."
        )
    return value.detach().float().to(device)


def convert_encoder(checkpoint, folder, generator, device=None) -> Path:
    """Official checkpoint + generator -> bundle with the encoder and its latent average.

    The latent average is computed here, once, with the official recipe
    (`preim3d.inversion.compute_latent_avg`). When the checkpoint carries its own, both must agree
    (`preim3d.weights.checks.check_latent_avg`), otherwise the generator is not the one the encoder
    was trained with and a WeightsError says so.
    """
    from ..inversion import compute_latent_avg  # the maths lives there; import on use keeps I/O light

    path = Path(checkpoint)
    encoder, stored = encoder_from_official(path)
    latent_avg = compute_latent_avg(generator, device=device).cpu()
    check_latent_avg_shape(latent_avg, encoder)
    latent_provenance = dict(computed_from="the generator given to convert_encoder", checkpoint=path.name)
    if stored is not None:
        diff = check_latent_avg(latent_avg, stored, "the generator", path)
        latent_provenance["checkpoint_latent_avg_max_abs_diff"] = diff
    provenance = dict(source=path.name, sha256=file_sha256(path), format="PREIM3D training checkpoint")
    save_encoder(encoder, folder, provenance=provenance, licence=OFFICIAL_LICENCE)
    save_latent_avg(latent_avg, folder, provenance=latent_provenance)
    return Path(folder)


def _encoder_from_checkpoint(path: Path) -> tuple[WPlusEncoder, dict[str, torch.Tensor], torch.Tensor | None]:
    """(unloaded encoder of the right architecture, its tensors, the stored latent average or None)."""
    state, opts, stored = read_official_checkpoint(path)
    tensors = encoder_state_from_checkpoint(state, opts, path)
    return WPlusEncoder(**infer_architecture(tensors, path)), tensors, stored


def read_official_checkpoint(path) -> tuple[dict, dict, torch.Tensor | None]:
    """(state dict, opts, latent_avg or None) of a torch.save'd checkpoint, loaded with weights_only=True."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"Encoder weights not found: {path} does not exist. {_WHAT_TO_GIVE}")
    if path.suffix == ".safetensors":
        raise WeightsError(
            f"{path} is a single safetensors file; pass the bundle folder that holds it and its config.json "
            "instead."
        )
    kind = _file_kind(path)
    if kind == "pickle":
        hint = (
            " It looks like an EG3D network pickle: load it with preim3d.load_generator."
            if _mentions_eg3d(path)
            else ""
        )
        raise WeightsError(
            f"{path} is a plain Python pickle, not a torch checkpoint; preim3d never unpickles arbitrary "
            f"objects, so it refuses this file.{hint} {_WHAT_TO_GIVE}"
        )
    if kind == "other":
        raise WeightsError(
            f"{path} is not a PyTorch checkpoint (neither a torch zip archive nor a pickle). {_WHAT_TO_GIVE}"
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (
        Exception
    ) as exc:  # torch raises many types (UnpicklingError, RuntimeError, EOFError, KeyError, ...)
        raise WeightsError(_explain_load_failure(path, exc)) from exc
    if not isinstance(checkpoint, dict):
        raise WeightsError(
            f"{path} holds a {type(checkpoint).__name__}, not a checkpoint dict. {_WHAT_TO_GIVE}"
        )
    state = checkpoint.get("state_dict", checkpoint)
    if not isinstance(state, dict):
        raise WeightsError(
            f"The 'state_dict' entry of {path} is a {type(state).__name__}, not a dict of tensors."
        )
    opts = checkpoint.get("opts") if isinstance(checkpoint.get("opts"), dict) else {}
    latent_avg = checkpoint.get("latent_avg")
    return state, opts, latent_avg if isinstance(latent_avg, torch.Tensor) else None


def encoder_state_from_checkpoint(state: dict, opts: dict, path) -> dict[str, torch.Tensor]:
    """The encoder's tensors: `encoder.*` entries with the prefix removed, or a bare encoder state dict."""
    encoder_type = opts.get("encoder_type", "WPlusEncoder")
    if encoder_type != "WPlusEncoder":
        raise WeightsError(
            f"{path} holds a {encoder_type!r} encoder; preim3d implements PREIM3D's 'WPlusEncoder' only."
        )
    tensors = {
        k[len("encoder.") :]: v for k, v in state.items() if isinstance(k, str) and k.startswith("encoder.")
    }
    if not tensors and "input_layer.0.weight" in state:
        tensors = dict(state)
    if not tensors:
        keys = [k for k in state if isinstance(k, str)]
        if keys and all(k.startswith(_GENERATOR_PREFIXES) for k in keys):
            raise WeightsError(
                f"{path} holds generator weights ({len(keys)} tensors such as {keys[0]!r}), not an encoder: "
                f"load it with preim3d.load_generator. {_WHAT_TO_GIVE}"
            )
        raise WeightsError(f"{path} has no 'encoder.*' weights (it holds {preview(keys)}). {_WHAT_TO_GIVE}")
    for key, value in tensors.items():
        if not isinstance(value, torch.Tensor):
            raise WeightsError(f"{path}: encoder entry {key!r} is a {type(value).__name__}, not a tensor.")
    return tensors


def infer_architecture(tensors: dict[str, torch.Tensor], path) -> dict:
    """WPlusEncoder arguments read from tensor shapes: stages are runs of units with equal width."""

    def shape(key):
        if key not in tensors:
            raise WeightsError(f"{path} is not a complete PREIM3D encoder: the weight {key!r} is missing.")
        return tuple(tensors[key].shape)

    stem = shape("input_layer.0.weight")[0]
    widths = []
    while f"body.{len(widths)}.res_layer.1.weight" in tensors:
        widths.append(shape(f"body.{len(widths)}.res_layer.1.weight")[0])
    if not widths:
        raise WeightsError(
            f"{path} is not a complete PREIM3D encoder: the weight 'body.0.res_layer.1.weight' is missing."
        )
    stage_units, stage_channels = [], []
    for width in widths:
        if stage_channels and stage_channels[-1] == width:
            stage_units[-1] += 1
        else:
            stage_units.append(1)
            stage_channels.append(width)
    out_features, w_dim = shape("linear.weight")
    head_in = shape("output_layer_2.3.weight")[1]
    pool_size = math.isqrt(head_in // widths[-1])
    se_hidden = shape("body.0.res_layer.5.fc1.weight")[0]
    if out_features % w_dim or pool_size**2 * widths[-1] != head_in or widths[0] % se_hidden:
        raise WeightsError(
            f"{path} has inconsistent encoder shapes (linear.weight {list(shape('linear.weight'))}, "
            f"output_layer_2.3.weight {list(shape('output_layer_2.3.weight'))}): it is not a PREIM3D W+ "
            "encoder."
        )
    return dict(
        n_styles=out_features // w_dim,
        w_dim=w_dim,
        stage_units=stage_units,
        stage_channels=stage_channels,
        stem_channels=stem,
        pool_size=pool_size,
        se_reduction=widths[0] // se_hidden,
    )


def _file_kind(path: Path) -> str:
    """'zip' (torch >= 1.6 format), 'legacy' (older torch.save), 'pickle' (plain pickle) or 'other'."""
    if zipfile.is_zipfile(path):
        return "zip"
    with open(path, "rb") as f:
        head = f.read(len(_LEGACY_MAGIC))
    if head == _LEGACY_MAGIC:
        return "legacy"
    return "pickle" if head[:1] == b"\x80" else "other"


def _mentions_eg3d(path: Path) -> bool:
    """Whether the first 1 MiB of a pickle names EG3D's modules (read as bytes, never unpickled)."""
    with open(path, "rb") as f:
        head = f.read(1 << 20)
    return any(name in head for name in (b"torch_utils", b"dnnlib", b"training.triplane"))


def _explain_load_failure(path: Path, exc: Exception) -> str:
    """A user-facing reason why torch.load(weights_only=True) refused or failed on `path`."""
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
    if found:
        name = found.group(1)
        hint = (
            " It looks like an EG3D generator saved as a Python object: load it with preim3d.load_generator."
            if name.split(".")[0] in ("dnnlib", "torch_utils", "training")
            else ""
        )
        return (
            f"{path} needs the Python object {name} to load, and preim3d never unpickles arbitrary objects, "
            f"so it refuses this file.{hint} {_WHAT_TO_GIVE}"
        )
    return (
        f"{path} could not be read as a PyTorch checkpoint ({type(exc).__name__}: {str(exc)[:300]}). "
        f"{_WHAT_TO_GIVE}"
    )
