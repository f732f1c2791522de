"""Reading NVIDIA's network pickles and `torch.save`d official modules without running their code.

The official files pickle their modules as "persistent objects": the full Python source of the
defining module travels inside the pickle, and the official loader executes it. We never do. An
allow-listed unpickler turns each persistent object into an inert `PickledModule` holding the class
name, a hash of the embedded source and the object's attribute dict (`_parameters`, `_buffers`,
`_modules`, `_init_kwargs`, …). Ordinary classes the files name (EG3D's renderer parts, torch
containers) become inert placeholders too. Anything else — `os.system`, `builtins.eval`, an
unknown class — is refused before it can be called.
"""

from __future__ import annotations

import codecs
import collections
import hashlib
import io
import pickle
import types
import zipfile
from pathlib import Path

import numpy as np
import torch

from ..errors import WeightsError

PERSISTENT_VERSION = 6  # the version of NVIDIA's persistence format these files use


class EasyDict(dict):
    """Stand-in for dnnlib.util.EasyDict: a plain dict (attribute access is not needed here)."""


class PickledModule:
    """An inert record of one pickled object: its class name and attribute dict."""

    def __init__(self, class_name: str, state: dict, source_sha256: str | None = None):
        self.class_name = class_name
        self.state = state
        self.source_sha256 = source_sha256

    def __repr__(self):
        return f"PickledModule({self.class_name})"


class _InertObject:
    """Base of placeholder types for ordinary (non-persistent) classes named by a pickle."""

    class_name = "?"

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __setstate__(self, state):
        self.state = state if isinstance(state, dict) else {"_state": state}

    def as_record(self) -> PickledModule:
        return PickledModule(self.class_name, getattr(self, "state", {}))


_inert_types: dict[str, type] = {}


def _inert_type(qualified_name: str) -> type:
    if qualified_name not in _inert_types:
        _inert_types[qualified_name] = type(
            qualified_name.rsplit(".", 1)[-1], (_InertObject,), {"class_name": qualified_name}
        )
    return _inert_types[qualified_name]


def _reconstruct_persistent(meta):
    if not isinstance(meta, dict) or meta.get("type") != "class":
        raise WeightsError("unsupported persistent object in the pickle (expected a pickled class instance)")
    if meta.get("version") != PERSISTENT_VERSION:
        raise WeightsError(
            f"unsupported persistence format version {meta.get('version')!r} "
            f"(this reader knows version {PERSISTENT_VERSION})"
        )
    source = meta.get("module_src", "")
    digest = hashlib.sha256(source.encode("utf-8")).hexdigest() if isinstance(source, str) else None
    state = meta.get("state")
    if not isinstance(state, dict):
        raise WeightsError(f"persistent object {meta.get('class_name')!r} has no attribute dict")
    return PickledModule(str(meta.get("class_name")), state, digest)


def _load_storage_bytes(data: bytes):
    """A storage pickled as a legacy `torch.save` blob: decode it with the weights-only loader."""
    return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")


def _reconstructor(cls, base, state=None):
    """copyreg._reconstructor restricted to our placeholder types (protocol 0/1 pickles)."""
    if not (isinstance(cls, type) and issubclass(cls, _InertObject)):
        raise pickle.UnpicklingError("copyreg._reconstructor is only allowed for module placeholders")
    return cls.__new__(cls)


# Exact globals a generator file may name.
_ALLOWED = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): torch._utils._rebuild_parameter_with_state,
    ("torch.storage", "_load_from_bytes"): _load_storage_bytes,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("__builtin__", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("copyreg", "_reconstructor"): _reconstructor,
    ("copy_reg", "_reconstructor"): _reconstructor,
    ("dnnlib.util", "EasyDict"): EasyDict,
    ("torch", "Size"): torch.Size,
    ("torch", "device"): torch.device,
}
# numpy scalars (the files store gains as numpy.float64), under numpy 1 and numpy 2 module names.
_np_core = getattr(np, "_core", None) or np.core
_ALLOWED.update(
    {
        ("numpy.core.multiarray", "scalar"): _np_core.multiarray.scalar,
        ("numpy._core.multiarray", "scalar"): _np_core.multiarray.scalar,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,
    }
)

# Ordinary classes pickled by reference inside G (EG3D's renderer pieces, torch containers and
# activations): they become inert placeholders, never imported.
_PLACEHOLDER_PREFIXES = ("training.", "torch.nn.modules.")


def _allowed_global(module: str, name: str):
    value = _ALLOWED.get((module, name))
    if value is not None:
        return value
    attr = getattr(torch, name, None) if module == "torch" else None
    if (isinstance(attr, type) and name.endswith("Storage")) or isinstance(attr, torch.dtype):
        return attr
    if module.startswith(_PLACEHOLDER_PREFIXES) and name.isidentifier() and name[:1].isupper():
        return _inert_type(f"{module}.{name}")
    return None


class RefusedGlobal(pickle.UnpicklingError):
    """A pickle asked for a global outside the allow-list."""


class RestrictedUnpickler(pickle.Unpickler):
    """pickle.Unpickler that resolves only allow-listed globals (see the module docstring)."""

    def find_class(self, module, name):
        value = _allowed_global(module, name)
        if value is None:
            raise RefusedGlobal(
                f"refused to load the global {module}.{name}: a model file never needs it, so the file "
                f"may be malicious or is not an EG3D/PREIM3D file"
            )
        return value


# A module object with the interface torch.load expects from `pickle_module`.
restricted_pickle = types.ModuleType("preim3d_restricted_pickle")
restricted_pickle.Unpickler = RestrictedUnpickler
restricted_pickle.load = lambda f, **kw: RestrictedUnpickler(f, **kw).load()
restricted_pickle.__name__ = "preim3d_restricted_pickle"


def read_official_pickle(path):
    """Unpickle an official file safely: an NGC network pickle (dict) or a torch.save'd module.

    Returns the top object with every persistent module as a `PickledModule`. Errors name the file.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path} does not exist or is not a file.")
    try:
        if zipfile.is_zipfile(path):
            obj = torch.load(path, pickle_module=restricted_pickle, weights_only=False, map_location="cpu")
        else:
            with open(path, "rb") as f:
                obj = RestrictedUnpickler(f).load()
    except WeightsError as exc:
        raise WeightsError(f"{path}: {exc}") from exc
    except RefusedGlobal as exc:
        raise WeightsError(f"Could not load {path}: {exc}.") from exc
    except Exception as exc:  # any failure to parse untrusted bytes is the file's fault, not a crash
        raise WeightsError(
            f"Could not read {path}: the file is truncated, corrupt or not a model file "
            f"({type(exc).__name__}: {exc}). Download it again."
        ) from exc
    return _records(obj)


def _records(obj):
    """Replace placeholder objects by PickledModule records, recursively through containers."""
    if isinstance(obj, _InertObject):
        obj = obj.as_record()
    if isinstance(obj, PickledModule):
        obj.state = {k: _records(v) for k, v in obj.state.items()}
    elif isinstance(obj, dict):
        for key, value in obj.items():
            obj[key] = _records(value)
    elif isinstance(obj, list):
        obj[:] = [_records(v) for v in obj]
    elif isinstance(obj, tuple) and not isinstance(obj, torch.Size):
        obj = type(obj)(_records(v) for v in obj) if type(obj) is tuple else obj
    return obj


def module_tensors(record: PickledModule, prefix: str = "") -> dict[str, torch.Tensor]:
    """The state dict (parameters and persistent buffers, dotted names) of a pickled module tree."""
    state = record.state
    out = {}
    for name, value in (state.get("_parameters") or {}).items():
        if value is not None:
            out[prefix + name] = value.detach()
    skip = set(state.get("_non_persistent_buffers_set") or ())
    for name, value in (state.get("_buffers") or {}).items():
        if value is not None and name not in skip:
            out[prefix + name] = value
    for name, child in (state.get("_modules") or {}).items():
        if isinstance(child, PickledModule):
            out.update(module_tensors(child, f"{prefix}{name}."))
    return out


def find_module(record: PickledModule, dotted: str) -> PickledModule | None:
    """The sub-module at a dotted path ('renderer', 'backbone.mapping', …), or None."""
    for part in dotted.split("."):
        record = (record.state.get("_modules") or {}).get(part)
        if not isinstance(record, PickledModule):
            return None
    return record
