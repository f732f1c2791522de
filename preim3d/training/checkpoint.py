"""Training checkpoints of `preim3d train`: their format tag and version, and reading one back safely.

The trainer writes them (`Trainer.save_checkpoint`) and resumes from them; `preim3d export` reads
the encoder out of them (`export.encoder_from_checkpoint`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import Preim3DError

CHECKPOINT_FORMAT = "preim3d-training-checkpoint"
CHECKPOINT_VERSION = 1


def read_training_checkpoint(path) -> dict:
    """A training checkpoint's dict, loaded with torch.load(weights_only=True) and checked."""
    path = Path(path)
    if not path.is_file():
        raise Preim3DError(f"Training checkpoint {path} does not exist.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # damaged file, or one that needs arbitrary objects
        raise Preim3DError(
            f"{path} could not be read as a training checkpoint ({type(exc).__name__}: {exc})."
        ) from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise Preim3DError(f"{path} is not a preim3d training checkpoint (written by `preim3d train`).")
    if state.get("version", 0) > CHECKPOINT_VERSION:
        raise Preim3DError(f"{path} was written by a newer preim3d; upgrade to continue from it.")
    return state
