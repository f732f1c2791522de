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
