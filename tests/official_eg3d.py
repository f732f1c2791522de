"""Running the official EG3D generator from a checkout the user points us at (nothing is vendored).

PREIM3D_OFFICIAL_EG3D=/path/to/eg3d/eg3d (the folder holding `training/` and `torch_utils/`).
"""

from __future__ import annotations

import copy
import pickle
from pathlib import Path

import torch
from eg3d_reference import seeded_weights

from preim3d.testing import official_eg3d_class, random_inputs


def build_official(config, seed: int, device="cpu", plugins=False, weight_scales=None):
    """Official generator with the configuration's kwargs and our seeded random weights
    (eg3d_reference.seeded_weights).

    Unless `plugins`, the official code runs its reference PyTorch ops instead of building its CUDA
    extensions (which need a compiler set-up and fail on many machines).
    """
    kwargs, resolution = config
    G = official_eg3d_class()(**copy.deepcopy(kwargs)).eval().requires_grad_(False)
    if not plugins:
        from torch_utils.ops import bias_act, upfirdn2d

        bias_act._init = upfirdn2d._init = lambda: False
    seeded_weights(G, seed, weight_scales)
    G.neural_rendering_resolution = resolution
    return G.to(device)


def run_generator(G, config, seed: int, batch: int, device="cpu", **synthesis_kwargs):
    """Seeded mapping + synthesis; the same call works for the official generator and ours."""
    z, c = random_inputs(batch, config[0]["z_dim"], seed, config[0]["rendering_kwargs"])
    z, c = z.to(device), c.to(device)
    with torch.no_grad():
        ws = G.mapping(z, c, truncation_psi=0.7, truncation_cutoff=14)
        torch.manual_seed(seed)
        out = G.synthesis(ws, c, noise_mode="const", **synthesis_kwargs)
    return {"ws": ws, **out}


def save_official_formats(G, folder: Path):
    """The generator as an NGC network pickle and as PREIM3D's torch.save'd module."""
    folder.mkdir(parents=True, exist_ok=True)
    G = copy.deepcopy(G).cpu()
    ngc = folder / "network-snapshot.pkl"
    with open(ngc, "wb") as f:
        pickle.dump(
            {"training_set_kwargs": {"resolution": 512}, "G": G, "D": None, "G_ema": G, "augment_pipe": None},
            f,
        )
    saved = folder / "eg3d_G_ema.pkl"
    torch.save(G, saved)
    return ngc, saved
