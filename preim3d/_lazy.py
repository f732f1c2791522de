"""Packages whose public names are imported on first use: `import preim3d` stays fast and loads
neither dlib, gradio nor the networks until a name that needs them is used."""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from importlib import import_module


def lazy_attributes(package: str, public: Mapping[str, str]) -> tuple[Callable, Callable]:
    """`__getattr__` and `__dir__` for the package named `package`, where `public` maps each lazily
    imported name to the module that defines it. A name is imported once, then kept in the package."""

    def __getattr__(name: str):
        module = public.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(import_module(module), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted({*sys.modules[package].__all__, *public})

    return __getattr__, __dir__
