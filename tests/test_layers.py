"""Nothing in fedmoe imports upward: every import (module- or function-level) goes to its own layer or below."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "fedmoe"

# Top-down. A module may import modules of its own layer and of any layer below, never above.
LAYERS = [
    {"cli", "studies", "engines", "report", "bench"},
    {"experiment"},
    {"methods"},
    {"fl"},
    {"train"},
    {"moe", "eval", "data", "config", "results", "stats", "plots", "device", "environment", "errors"},
]


def layer_of(module: str) -> int:
    """Layer index of a ``fedmoe...`` module name (by its first component below ``fedmoe``)."""
    parts = module.split(".")
    if parts[0] != "fedmoe":
        raise ValueError(f"{module} is not a fedmoe module")
    if len(parts) == 1:  # the root package: a docstring and a version, below everything
        return len(LAYERS) - 1
    for index, names in enumerate(LAYERS):
        if parts[1] in names:
            return index
    raise KeyError(f"fedmoe.{parts[1]} is in no layer; add it to LAYERS in tests/test_layers.py")


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` of every fedmoe import in a file, at any depth (functions included)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import: resolve against the package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((node.lineno, target))
    return [(line, mod) for line, mod in found if mod == "fedmoe" or mod.startswith("fedmoe.")]


def test_layer_map_covers_every_module():
    for path in PACKAGE.rglob("*.py"):
        layer_of(module_name(path))  # raises for a module in no layer


def test_no_module_imports_upward():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = module_name(path)
        own = layer_of(name)
        for line, target in imports(path):
            if layer_of(target) < own:
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {name} (layer {own}) imports {target} "
                              f"(layer {layer_of(target)})")
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_methods_never_import_engines():
    for path in (PACKAGE / "methods").rglob("*.py"):
        assert not any(t.startswith("fedmoe.engines") for _, t in imports(path)), path


@pytest.mark.parametrize("module, layer", [("fedmoe.cli", 0), ("fedmoe.engines.flower", 0), ("fedmoe.experiment", 1),
                                           ("fedmoe.methods.flame.method", 2), ("fedmoe.fl.cost", 3),
                                           ("fedmoe.train", 4), ("fedmoe.results", 5)])
def test_layer_of(module, layer):
    assert layer_of(module) == layer


def test_an_upward_import_is_caught(tmp_path, monkeypatch):
    fake = tmp_path / "fedmoe" / "fl"
    fake.mkdir(parents=True)
    (fake / "bad.py").write_text("def f():\n    from fedmoe.experiment import run\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", tmp_path / "fedmoe")
    with pytest.raises(AssertionError, match="fedmoe.fl.bad .layer 3. imports fedmoe.experiment"):
        test_no_module_imports_upward()
