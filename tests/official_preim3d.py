"""Running the official PREIM3D code (encoder, latent average) from checkouts the user points us at.

PREIM3D_OFFICIAL_PREIM3D=/path/to/Preim3D (GitHub mybabyyh/Preim3D); the latent average also needs
PREIM3D_OFFICIAL_EG3D=/path/to/eg3d/eg3d. Nothing of theirs is vendored: their modules are imported
from the given folders, with the few imports that need CUDA extensions or absent packages replaced by
empty stand-ins, and removed from sys.modules afterwards.
"""

from __future__ import annotations

import contextlib
import os
import sys
import types
from pathlib import Path

import torch

PREIM3D = os.environ.get("PREIM3D_OFFICIAL_PREIM3D")
EG3D = os.environ.get("PREIM3D_OFFICIAL_EG3D")

_OFFICIAL_TOP_LEVEL = {
    "models",
    "configs",
    "camera_utils",
    "training",
    "torch_utils",
    "dnnlib",
    "matplotlib",
    "requests",
}


def _stub(name, **attrs):
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    return module


def _unavailable(*args, **kwargs):
    raise RuntimeError("stand-in for a CUDA extension: not used by the W+ encoder")


@contextlib.contextmanager
def official_code(*folders):
    """Import from official checkouts: folders first on sys.path,
    stand-ins for CUDA ops and absent packages."""
    saved_path, before = list(sys.path), set(sys.modules)
    sys.path[:0] = [str(Path(f).resolve()) for f in folders]
    stubs = {
        # the StyleGAN2 ops compile CUDA code at import; EqualLinear without activation never calls them
        "models.stylegan2.op": _stub(
            "models.stylegan2.op",
            FusedLeakyReLU=_unavailable,
            fused_leaky_relu=_unavailable,
            upfirdn2d=_unavailable,
        ),
        "matplotlib": _stub("matplotlib", use=lambda backend: None),
        "requests": _stub("requests"),  # dnnlib.util imports it for downloads only
    }
    for name, module in stubs.items():
        sys.modules.setdefault(name, module)
    try:
        yield
    finally:
        sys.path[:] = saved_path
        for name in set(sys.modules) - before:
            if name.split(".")[0] in _OFFICIAL_TOP_LEVEL:
                del sys.modules[name]


def official_encoder(stage_units=None):
    """The official W+ encoder class (IR-SE50, 14 styles) and its `get_keys`.

    `stage_units` (four unit counts) narrows it as the tests' small encoders are: the official stages
    keep their widths (64, 128, 256, 512) but get these numbers of units instead of (3, 4, 14, 3).
    """
    with official_code(PREIM3D):
        from models.encoders import psp_encoders
        from models.encoders.helpers import get_block
        from models.psp import get_keys

        if stage_units is not None:
            widths = [64, 64, 128, 256, 512]
            psp_encoders.get_blocks = lambda num_layers: [
                get_block(widths[i], widths[i + 1], units) for i, units in enumerate(stage_units)
            ]
        opts = types.SimpleNamespace(n_styles=14, stylegan_size=256)
        encoder = psp_encoders.BackboneEncoderUsingLastLayerIntoWPlus(50, "ir_se", opts)
    return encoder.eval(), get_keys


def official_latent_avg(G):
    """PREIM3D's own routine (pSp.__load_latent_avg), run on a stand-in holding only what it reads."""
    holder = types.SimpleNamespace(decoder=G, opts=types.SimpleNamespace(device="cpu"))
    with official_code(EG3D, PREIM3D), torch.no_grad():
        from models.psp import pSp

        pSp._pSp__load_latent_avg(holder)
    return holder.latent_avg
