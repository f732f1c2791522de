"""The package's shape: modules that import alone and without cycles, heavy libraries loaded only
where they are used, and a lazy public API seen the same way by Python and by type checkers."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import preim3d

PACKAGE_DIR = Path(preim3d.__file__).parent
# `python -m` entry points: importing them runs the command line.
ENTRY_POINTS = {"preim3d.__main__", "preim3d.training.__main__"}
# Deferred imports allowed to close a cycle, and why. None at present: the fused kernels are
# declared beside the PyTorch code they replace (networks/fused.py's gate imports the Triton
# launchers of networks/fast_kernels.py, which import nothing of the package, when first used).
DEFERRED_CYCLE_EDGES: set[tuple[str, str]] = set()


def package_modules() -> dict[str, Path]:
    """{dotted name: file} of every module of the package (packages under their own name)."""
    modules = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        parts = ["preim3d", *path.relative_to(PACKAGE_DIR).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def import_edges(modules: dict[str, Path]) -> dict[tuple[str, str], str]:
    """{(importer, imported): "module" or "function"} for every import of one of the package's modules,
    at module level or in a function (blocks under `if TYPE_CHECKING:` never run, so they do not count)."""
    edges = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]

        def visit(node, level, name=name, package=package):
            if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
                return
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                level = "function"
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([node.module] if node.module else [])])
                targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
            for target in targets:
                if target in modules and target != name:
                    # a module-level import anywhere makes the edge a module-level one
                    if edges.get((name, target)) != "module":
                        edges[name, target] = level
            for child in ast.iter_child_nodes(node):
                visit(child, level)

        visit(ast.parse(path.read_text()), "module")
    return edges


def find_cycle(nodes, edges) -> list[str] | None:
    """One cycle of the directed graph, as a list of nodes, or None."""
    graph = {node: [b for a, b in edges if a == node] for node in nodes}
    state = {}  # node -> "open" while on the current path, "done" after

    def walk(node, path):
        state[node] = "open"
        for nxt in graph[node]:
            if state.get(nxt) == "open":
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := walk(nxt, [*path, nxt])):
                return cycle
        state[node] = "done"
        return None

    for node in nodes:
        if node not in state and (cycle := walk(node, [node])):
            return cycle
    return None


def test_the_package_has_no_import_cycle():
    modules = package_modules()
    edges = import_edges(modules)
    assert ("preim3d.pipeline", "preim3d.rendering") in edges  # the walk sees imports
    assert edges["preim3d.pipeline", "preim3d.mesh"] == "function"  # ... and deferred ones
    top_level = [edge for edge, level in edges.items() if level == "module"]
    assert find_cycle(modules, top_level) is None
    for edge in DEFERRED_CYCLE_EDGES:
        assert edges.get(edge) == "function", f"{edge} is no longer a deferred import: update the list"
    cycle = find_cycle(modules, [edge for edge in edges if edge not in DEFERRED_CYCLE_EDGES])
    assert cycle is None, "import cycle (deferred imports included): " + " -> ".join(cycle)


def run_python(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result.stdout


def test_every_module_imports_on_its_own():
    """Each module imported first, into a fresh preim3d (third-party libraries stay loaded)."""
    names = sorted(set(package_modules()) - ENTRY_POINTS)
    assert {"preim3d", "preim3d.pipeline", "preim3d.networks.fast_kernels"} <= set(names)
    failures = run_python(
        f"""
        import importlib, sys, traceback
        failures = []
        for name in {names!r}:
            for loaded in [m for m in sys.modules if m == "preim3d" or m.startswith("preim3d.")]:
                del sys.modules[loaded]
            try:
                importlib.import_module(name)
            except Exception:
                failures.append(name + ": " + traceback.format_exc(limit=-3))
        print("\\n".join(failures))
        """
    )
    assert not failures.strip(), failures


def test_heavy_libraries_load_only_where_they_are_used():
    loaded = run_python(
        """
        import sys
        heavy = ("imageio_ffmpeg", "trimesh", "skimage", "triton")
        import preim3d.rendering
        print("rendering", *[m for m in heavy if m in sys.modules])
        import preim3d.pipeline, preim3d.training.trainer
        print("pipeline", *[m for m in heavy if m in sys.modules])
        import torch
        from preim3d.testing import tiny_generator
        from preim3d.cameras import camera_vector
        G = tiny_generator()
        with torch.no_grad():  # an fp32 render on the CPU
            G.synthesis(G.mapping(torch.zeros(1, G.z_dim), camera_vector()), camera_vector())
        print("render", *[m for m in heavy if m in sys.modules])
        """
    )
    assert loaded.split("\n")[:3] == ["rendering", "pipeline", "render"], loaded


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
