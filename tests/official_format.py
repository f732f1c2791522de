"""Writers of files laid out like the official ones, for testing the loader without official code.

NVIDIA's persistence pickles each module as `torch_utils.persistence._reconstruct_persistent_obj(meta)`
with meta = {type, version, module_src, class_name, state=the module's __dict__}; helper objects
(decoder, renderer, torch containers) are pickled by class reference. We reproduce that layout from
one of our generators, registering stand-in modules under the official names while pickling.
"""

from __future__ import annotations

import collections
import contextlib
import pickle
import sys
import types

import torch

# Our class → (official module, official class, pickled as a persistent object?)
OFFICIAL_CLASSES = {
    "TriPlaneGenerator": ("training.triplane", "TriPlaneGenerator", True),
    "StyleGAN2Backbone": ("training.networks_stylegan2", "Generator", True),
    "MappingNetwork": ("training.networks_stylegan2", "MappingNetwork", True),
    "SynthesisNetwork": ("training.networks_stylegan2", "SynthesisNetwork", True),
    "SynthesisBlock": ("training.networks_stylegan2", "SynthesisBlock", True),
    "SynthesisLayer": ("training.networks_stylegan2", "SynthesisLayer", True),
    "ToRGBLayer": ("training.networks_stylegan2", "ToRGBLayer", True),
    "FullyConnectedLayer": ("training.networks_stylegan2", "FullyConnectedLayer", True),
    "SuperResolution": ("training.superresolution", None, True),  # class name = the variant
    "OSGDecoder": ("training.triplane", "OSGDecoder", False),
    "ImportanceRenderer": ("training.volumetric_rendering.renderer", "ImportanceRenderer", False),
    "Sequential": ("torch.nn.modules.container", "Sequential", False),
    "Softplus": ("torch.nn.modules.activation", "Softplus", False),
}
PLANE_AXES = torch.tensor(
    [[[1, 0, 0], [0, 1, 0], [0, 0, 1]], [[1, 0, 0], [0, 0, 1], [0, 1, 0]], [[0, 0, 1], [1, 0, 0], [0, 1, 0]]],
    dtype=torch.float32,
)


def _reconstruct_persistent_obj(meta):  # only its name matters: pickle stores a reference to it
    raise AssertionError("not called when writing")


class _Persistent:
    def __init__(self, meta):
        self.meta = meta

    def __reduce__(self):
        return _reconstruct_persistent_obj, (self.meta,)


def _stand_in_class(module: str, name: str) -> type:
    mod = sys.modules[module]
    if not hasattr(mod, name):
        setattr(mod, name, type(name, (), {"__module__": module}))
    return getattr(mod, name)


@contextlib.contextmanager
def _stand_in_modules():
    """Register empty modules under the official names (restored afterwards)."""
    names = {
        "torch_utils",
        "torch_utils.persistence",
        "training",
        "training.triplane",
        "training.networks_stylegan2",
        "training.superresolution",
        "training.volumetric_rendering",
        "training.volumetric_rendering.renderer",
    }
    saved = {n: sys.modules.get(n) for n in names}
    for name in names:
        sys.modules[name] = types.ModuleType(name)
    sys.modules["torch_utils.persistence"]._reconstruct_persistent_obj = _reconstruct_persistent_obj
    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    try:
        yield
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def _as_official(
    module: torch.nn.Module, top_extra: dict | None = None, module_src: str = "# stand-in source\n"
):
    """The object tree the official pickles hold for `module` (call inside _stand_in_modules)."""
    ours = type(module).__name__
    official_module, official_name, persistent = OFFICIAL_CLASSES[ours]
    if official_name is None:
        official_name = module.variant
    state = {
        "training": False,
        "_parameters": collections.OrderedDict(module._parameters),
        "_buffers": collections.OrderedDict(module._buffers),
        "_non_persistent_buffers_set": set(),
        "_modules": collections.OrderedDict(
            (k, _as_official(v, module_src=module_src)) for k, v in module._modules.items()
        ),
        "_forward_hooks": collections.OrderedDict(),
    }
    if ours == "ImportanceRenderer":
        state["plane_axes"] = PLANE_AXES.clone()
    if ours == "FullyConnectedLayer":
        state["weight_gain"] = module.weight_gain  # a Python float here; numpy in real files
    state.update(top_extra or {})
    if persistent:
        return _Persistent(
            {
                "type": "class",
                "version": 6,
                "module_src": module_src,
                "class_name": official_name,
                "state": state,
            }
        )
    obj = _stand_in_class(official_module, official_name).__new__(
        _stand_in_class(official_module, official_name)
    )
    obj.__dict__.update(state)
    return obj


def official_tree(G, init_kwargs: dict | None = None, module_src: str = "# stand-in source\n"):
    """`init_kwargs` overrides the recorded constructor arguments (to fake a mismatched file)."""
    extra = {
        "_init_args": (),
        "_init_kwargs": init_kwargs or G.config,
        "rendering_kwargs": G.rendering_kwargs,
        "neural_rendering_resolution": G.neural_rendering_resolution,
    }
    return _as_official(G, extra, module_src)


def write_network_pickle(G, path, extra_entries: dict | None = None, **tree_kwargs) -> None:
    """An NGC-style snapshot: {'training_set_kwargs', 'G', 'D', 'G_ema', 'augment_pipe'}."""
    with _stand_in_modules():
        tree = official_tree(G, **tree_kwargs)
        data = {
            "training_set_kwargs": {"resolution": G.img_resolution},
            "G": tree,
            "D": None,
            "G_ema": tree,
            "augment_pipe": None,
            **(extra_entries or {}),
        }
        with open(path, "wb") as f:
            pickle.dump(data, f)


def write_torch_save(G, path) -> None:
    """PREIM3D's format: torch.save of the generator module object."""
    with _stand_in_modules():
        torch.save(official_tree(G), path)
