"""The layout is the architecture: packages by stage, each importing only packages below it, no cycles
(imports inside functions count), and only `training/` and `engine/torch/` touching torch and its kin."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import enclip_qdrant

PKG = Path(enclip_qdrant.__file__).parent
# The one dependency rule: a unit imports only units of a lower layer. Layer 0 is the foundation
# (top-level modules that may import each other, acyclically); packages of one layer are siblings.
LAYERS = {
    "errors": 0, "files": 0, "progress": 0, "workspace": 0, "system": 0,
    "catalog": 1, "store": 1, "bundle": 1,
    "engine": 2, "collection": 2,
    "search": 3, "indexing": 3, "training": 3,
    "evaluation": 4,
    "api": 5,
    "service": 6,
    "__main__": 7,
}
HEAVY = ("torch", "torchvision", "open_clip", "transformers", "sklearn")
MAY_BE_HEAVY = ("enclip_qdrant.training", "enclip_qdrant.engine.torch")


def _modules() -> dict[str, Path]:
    found = {}
    for path in PKG.rglob("*.py"):
        parts = path.relative_to(PKG.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = _modules()


def _imports(name: str) -> list[str]:
    """Every module `name` imports, anywhere in the file (function bodies and TYPE_CHECKING blocks too)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            mod = ".".join(x for x in (base, node.module or "") if x)
            out += [f"{mod}.{a.name}" if f"{mod}.{a.name}" in MODULES else mod for a in node.names]
        elif isinstance(node, ast.Import):
            out += [a.name for a in node.names]
    return out


def _unit(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "enclip_qdrant" or len(parts) == 1:
        return None
    return parts[1]


def test_every_unit_has_a_layer() -> None:
    units = {_unit(m) for m in MODULES} - {None}
    assert units <= set(LAYERS), f"no layer for {sorted(units - set(LAYERS))}: add it to LAYERS with a reason"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_follow_the_layers(module: str) -> None:
    me = _unit(module)
    for dep in _imports(module):
        other = _unit(dep)
        if other is None or other == me or dep == "enclip_qdrant.cli.app":
            continue
        if LAYERS[me] == 0 and LAYERS[other] == 0:
            continue  # the foundation's modules; cycles among them are caught below
        assert LAYERS[other] < LAYERS[me], (
            f"{module} imports {dep}: {me} (layer {LAYERS[me]}) may import only layers below it, "
            f"not {other} (layer {LAYERS[other]})")


@pytest.mark.parametrize("module", sorted(m for m in MODULES if not m.startswith(MAY_BE_HEAVY)))
def test_only_training_and_the_torch_engine_import_torch(module: str) -> None:
    heavy = sorted({d for d in _imports(module) if d.split(".")[0] in HEAVY})
    assert not heavy, f"{module} imports {heavy}: only training/ and engine/torch/ may"


def test_no_import_cycles_counting_lazy_imports() -> None:
    graph = {m: {d for d in _imports(m) if d in MODULES and d != m} for m in MODULES}
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        assert module not in path, "import cycle: " + " -> ".join([*path[path.index(module):], module])
        if module not in done:
            for dep in sorted(graph[module]):
                visit(dep, [*path, module])
            done.add(module)

    for module in sorted(graph):
        visit(module, [])


def test_package_doors_say_what_they_own_and_load_nothing() -> None:
    for name, path in MODULES.items():
        if path.name != "__init__.py" or name in ("enclip_qdrant", "enclip_qdrant.store", "enclip_qdrant.service"):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        assert ast.get_docstring(tree), f"{name} needs a docstring saying what it owns"
        assert not [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))], f"{name} imports at load"
