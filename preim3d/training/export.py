"""Exporting a trained encoder: to a preim3d bundle, and to PREIM3D's own checkpoint layout.

    bundle     encoder.safetensors + latent_avg.safetensors (+ generator.safetensors) + config.json,
               loadable with preim3d.load_encoder / load_latent_avg / Editor.from_bundle
    official   torch.save({'state_dict': {'encoder.<name>': tensor, ...},
                           'opts': {'encoder_type': 'WPlusEncoder', 'stylegan_size': ..., ...},
                           'latent_avg': [1, n_styles, w_dim]})
               which PREIM3D's inference code loads (it keeps the `encoder.*` entries), as does
               preim3d.load_encoder. Only tensors, strings and numbers: it opens with weights_only=True.

PREIM3D derives the number of W+ rows from `stylegan_size` (n_styles = 2 log2(size) - 2), so the
exported `stylegan_size` is 2^((n_styles + 2) / 2): 256 for the 14 rows of EG3D-512.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..networks.encoder import WPlusEncoder
from ..weights.encoder import save_encoder, save_latent_avg
from ..weights.generator import save_generator
from .checkpoint import read_training_checkpoint

TRAINED_LICENCE = (
    "Encoder trained with preim3d. The weights inherit the terms of the training images, of the ArcFace "
    "weights used for initialisation and for the identity loss, and of the generator (EG3D: NVIDIA Source "
    "Code License, non-commercial)."
)


def export_bundle(
    encoder,
    latent_avg: torch.Tensor,
    folder,
    provenance: dict | None = None,
    generator=None,
    licence: str = TRAINED_LICENCE,
) -> Path:
    """Write the encoder and its latent average (and the generator, when given) into the bundle `folder`."""
    provenance = dict(provenance or {})
    save_encoder(encoder, folder, provenance=provenance, licence=licence)
    save_latent_avg(latent_avg.detach().cpu(), folder, provenance={"computed_from": "the training generator"})
    if generator is not None:
        save_generator(generator, folder)
    return Path(folder)


def official_opts(n_styles: int) -> dict:
    """The PREIM3D options its inference reads, for an encoder with n_styles rows."""
    return {
        "encoder_type": "WPlusEncoder",
        "stylegan_size": 2 ** ((n_styles + 2) // 2),
        "start_from_latent_avg": True,
        "train_decoder": False,
        "dataset_type": "ffhq_encode",
        "n_styles": n_styles,
    }


def export_official(encoder, latent_avg: torch.Tensor, path, extra_opts: dict | None = None) -> Path:
    """torch.save PREIM3D's checkpoint layout (see the module docstring) to `path`.

    `extra_opts` (e.g. the training settings) are stored under `opts` beside the required entries,
    which they cannot override.
    """
    opts = {**(extra_opts or {}), **official_opts(encoder.n_styles)}
    state = {f"encoder.{k}": v.detach().cpu() for k, v in encoder.state_dict().items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save({"state_dict": state, "opts": opts, "latent_avg": latent_avg.detach().float().cpu()}, tmp)
    os.replace(tmp, path)
    return path


def encoder_from_checkpoint(path):
    """(encoder, latent_avg, step) from a training checkpoint of `preim3d train`."""
    state = read_training_checkpoint(path)
    encoder = WPlusEncoder(**state["encoder_architecture"])
    encoder.load_state_dict(state["encoder"])
    return encoder.eval(), state["latent_avg"], state["step"]
