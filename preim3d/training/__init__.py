"""Training the PREIM3D encoder against a frozen EG3D generator (`preim3d train`).

    from preim3d.training import TrainConfig, make_config, train
    trainer = train(make_config("run.toml", batch_size=4))

Modules: `config` (settings), `data` (labelled crops), `losses`, `identity` (ArcFace),
`discriminator` (latent D and pools), `ranger` (optimiser), `trainer` (the loop), `checkpoint`
(the training checkpoint format), `export`.
Multi-GPU: `torchrun --nproc_per_node=N -m preim3d.training --config run.toml`.
"""

from typing import TYPE_CHECKING

from .._lazy import lazy_attributes
from .config import TrainConfig, make_config

# Imported on first use: the config is light, the rest pulls in torch.
_LAZY = {
    "Trainer": "preim3d.training.trainer",
    "train": "preim3d.training.trainer",
    "export_bundle": "preim3d.training.export",
    "export_official": "preim3d.training.export",
}

__all__ = ["TrainConfig", "make_config", *_LAZY]

__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)

if TYPE_CHECKING:  # the same names, for IDEs and type checkers (`X as X` marks a re-export)
    from .export import export_bundle as export_bundle
    from .export import export_official as export_official
    from .trainer import Trainer as Trainer
    from .trainer import train as train
