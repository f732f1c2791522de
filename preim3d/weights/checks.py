"""Checks made on weights as they load: state dicts that fit their network exactly, and latent averages
that belong to the encoder and generator they are used with.

Every failure is a WeightsError that names the file and says what did not fit.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import WeightsError

# Largest max-abs difference allowed between a latent average computed from a generator and the one an
# encoder checkpoint stores: PREIM3D's own pair agrees to about 1e-5 (float rounding of 10,000 samples).
LATENT_AVG_TOLERANCE = 1e-3
DAMAGED = "The file is damaged or holds another network; re-download it or re-create the bundle."


def state_dict_mismatch(expected: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor]) -> str | None:
    """None when `tensors` has exactly the keys of `expected` with the same shapes, else what differs:
    'missing: a, b; unexpected: c; wrong shape: d [3] (expected [4])'."""
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    wrong = [
        f"{k} {list(tensors[k].shape)} (expected {list(v.shape)})"
        for k, v in expected.items()
        if k in tensors and tensors[k].shape != v.shape
    ]
    problems = [
        f"{label}: {preview(items)}"
        for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
        if items
    ]
    return "; ".join(problems) or None


def load_state_strict(module: nn.Module, tensors: dict[str, torch.Tensor], origin, what: str) -> None:
    """module.load_state_dict(tensors, strict=True) after checking keys, shapes and finiteness, so that
    a mismatch is one readable WeightsError naming `origin` (the file) and `what` (the network)."""
    mismatch = state_dict_mismatch(module.state_dict(), tensors)
    if mismatch:
        raise WeightsError(f"The weights in {origin} do not fit {what} ({mismatch}). {DAMAGED}")
    for key, value in tensors.items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise WeightsError(f"{origin}: tensor {key} holds NaN or infinite values. {DAMAGED}")
    module.load_state_dict(tensors, strict=True)


def check_latent_avg(computed: torch.Tensor, stored: torch.Tensor, generator, checkpoint) -> float:
    """The max abs difference between the latent average computed from `generator` and the one stored
    in the encoder `checkpoint`; a WeightsError when it exceeds LATENT_AVG_TOLERANCE (or the shapes
    differ): then the generator is not the one the encoder was trained with."""
    stored = stored.detach().to(computed.device, torch.float32)
    same = stored.shape == computed.shape
    diff = (stored - computed.float()).abs().max().item() if same else math.inf
    if not diff <= LATENT_AVG_TOLERANCE:
        raise WeightsError(
            f"The latent average computed from {generator} differs from the one stored in {checkpoint} "
            f"(max abs difference {diff:.3g}, tolerance {LATENT_AVG_TOLERANCE:g}): use the generator the "
            "encoder was trained with (PREIM3D's eg3d_G_ema.pkl)."
        )
    return diff


def check_latent_avg_shape(latent_avg: torch.Tensor, encoder) -> None:
    """The latent average must be [1, n_styles, w_dim] of the encoder it is added to."""
    if tuple(latent_avg.shape) != (1, encoder.n_styles, encoder.w_dim):
        raise WeightsError(
            f"The latent average has shape {list(latent_avg.shape)} but the encoder predicts "
            f"[1, {encoder.n_styles}, {encoder.w_dim}]: the generator and the encoder do not belong together."
        )


def preview(items, limit: int = 5) -> str:
    """'a, b, c and 7 more' (or 'nothing')."""
    items = list(items)
    if not items:
        return "nothing"
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(str(i) for i in items[:limit]) + more
