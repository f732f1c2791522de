"""Training the PREIM3D encoder against a frozen EG3D generator (`preim3d train`).

    from preim3d.training import TrainConfig, make_config, train
    trainer = train(make_config("run.toml", batch_size=4))

Modules: `config` (settings), `data` (labelled crops), `losses`, `identity` (ArcFace),
`discriminator` (latent D and pools), `ranger` (optimiser), `trainer` (the loop), `checkpoint`
(the training checkpoint format), `export`.
Multi-GPU: `torchrun --nproc_per_node=N -m preim3d.training --config run.toml`.
"""

from importlib import import_module

from .config import TrainConfig, make_config

# Imported on first use: the config is light, the rest pulls in torch.
_LAZY = {
    "Trainer": "preim3d.training.trainer",
    "train": "preim3d.training.trainer",
    "export_bundle": "preim3d.training.export",
    "export_official": "preim3d.training.export",
}

__all__ = ["TrainConfig", "make_config", *_LAZY]


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'preim3d.training' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value
