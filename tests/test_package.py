"""The package's shape: its lazy public API, seen the same way by Python and by type checkers."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import preim3d

PACKAGE_DIR = Path(preim3d.__file__).parent


def type_checking_imports(package: str) -> dict[str, str]:
    """{name: defining module} of the `if TYPE_CHECKING:` imports in a package's __init__.py."""
    path = PACKAGE_DIR.joinpath(*package.split(".")[1:], "__init__.py")
    tree = ast.parse(path.read_text())
    block = next(n for n in tree.body if isinstance(n, ast.If) and ast.unparse(n.test) == "TYPE_CHECKING")
    names = {}
    for node in block.body:
        assert isinstance(node, ast.ImportFrom) and node.level == 1, ast.unparse(node)
        for alias in node.names:
            assert alias.asname == alias.name, f"{alias.name} needs `as {alias.name}` to count as public"
            names[alias.name] = f"{package}.{node.module}"
    return names


@pytest.mark.parametrize(("package", "table"), [("preim3d", "_PUBLIC"), ("preim3d.training", "_LAZY")])
def test_lazy_names_are_the_ones_type_checkers_see(package, table):
    module = importlib.import_module(package)
    lazy = getattr(module, table)
    assert type_checking_imports(package) == lazy
    assert set(lazy) <= set(module.__all__) <= set(dir(module))
    for name, defining in lazy.items():
        assert getattr(module, name) is getattr(importlib.import_module(defining), name)
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        module.nothing_here  # noqa: B018


def test_the_package_says_it_is_typed():
    assert (PACKAGE_DIR / "py.typed").is_file()
    pyproject = (PACKAGE_DIR.parent / "pyproject.toml").read_text()
    assert 'preim3d = ["py.typed"]' in pyproject  # shipped in the wheel as package data


def test_networks_print_their_shapes():
    from preim3d.testing import tiny_encoder, tiny_generator

    G, E = tiny_generator(), tiny_encoder()
    printed = " ".join(repr(G).split())  # a module with children prints its settings on a line of their own
    assert "SynthesisLayer( in_channels=16, out_channels=16, resolution=8, up=True" in printed
    assert "ToRGBLayer( in_channels=16, out_channels=96, conv_clamp=None" in printed
    assert "SuperResolution( variant=SuperresolutionHybrid2X, input_resolution=64" in printed
    assert "MappingNetwork( z_dim=32, c_dim=25, w_dim=512, num_ws=14, num_layers=2" in printed
    assert "neural_rendering_resolution=32, precision=fp32" in printed
    assert "EqualLinear(in_features=512, out_features=7168, lr_mul=1)" in repr(E)
    assert "_FastUnit(in_channels=8, depth=8, stride=2)" in repr(E.fast())
