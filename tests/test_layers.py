"""Nothing in fedmoe imports upward: every import (module- or function-level) goes to its own layer or below; and
no chain of imports leads back to where it started (see :func:`import_graph` for how an import is counted)."""

import ast
from itertools import pairwise
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


def is_module(name: str) -> bool:
    """Whether ``fedmoe...`` name ``name`` is a module or a package of the (possibly faked) package tree."""
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imports(path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` of every fedmoe import in a file, at any depth (functions included); ``from a import b``
    gives ``a.b`` where ``b`` is a submodule of package ``a``, else ``a``."""
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
            names = {f"{target}.{a.name}" if is_module(f"{target}.{a.name}") else target for a in node.names}
            found += [(node.lineno, t) for t in sorted(names)]
    return [(line, mod) for line, mod in found if mod == "fedmoe" or mod.startswith("fedmoe.")]


def function_level_lines(path: Path) -> set[int]:
    """Lines of the imports that sit inside a function (they run when it is called, not when the module loads)."""
    functions = [n for n in ast.walk(ast.parse(path.read_text(), str(path)))
                 if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
    return {n.lineno for f in functions for n in ast.walk(f) if isinstance(n, ast.Import | ast.ImportFrom)}


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


#: The one import allowed to close a cycle: the registry's lookup (``get_method``, ``available_methods``) imports
#: ``fedmoe.methods``, whose ``__init__`` imports every method so that it registers, and every method imports the
#: registry. It is allowed only inside those functions: it then runs when a method is looked up, after every module
#: has loaded, and it is what lets engines find methods without methods importing engines (docs/design.md).
REGISTRY_EDGE = ("fedmoe.methods.base", "fedmoe.methods")


def import_graph() -> dict[str, dict[str, str]]:
    """``{module: {imported module: "file:line"}}`` over every fedmoe module, imports at any depth included.

    An import counts as Python runs it: importing ``a.b.c`` runs ``a/__init__.py`` and ``a/b/__init__.py`` first,
    so it is an edge to ``a.b.c`` and to each package above it, except the packages the importing module is itself
    in (they are already loading when it runs); importing a package is an edge to its ``__init__.py``."""
    modules = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}
    graph: dict[str, dict[str, str]] = {}
    for name, path in modules.items():
        own = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 2)}  # its packages and itself
        edges = graph.setdefault(name, {})
        for line, target in imports(path):
            parts = target.split(".")
            for above in (".".join(parts[:i]) for i in range(1, len(parts) + 1)):
                if above in modules and (above == target or above not in own) and above != name:
                    edges.setdefault(above, f"{path.relative_to(PACKAGE.parent)}:{line}")
    return graph


def find_cycle(graph: dict[str, dict[str, str]]) -> list[str] | None:
    """One cycle of ``graph`` as ``[m0, m1, ..., m0]`` (depth-first, in sorted order), or ``None``."""
    state: dict[str, str] = {}  # "open" while on the current path, "done" once fully explored
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph.get(node, {})):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_no_import_cycles():
    """Every chain of fedmoe imports ends: each module reads top-down, the modules it imports below it.

    Rule: :func:`import_graph`'s edges (an import at any depth, a package standing for its ``__init__.py`` and
    importing a submodule running the packages above it), less :data:`REGISTRY_EDGE`, which must stay inside
    functions. A failure names the cycle, each edge with the file and line of its import."""
    graph = import_graph()
    source, target = REGISTRY_EDGE
    if target in graph.get(source, {}):
        path = PACKAGE.parent.joinpath(*source.split(".")).with_suffix(".py")
        top_level = {line for line, t in imports(path) if t == target} - function_level_lines(path)
        assert not top_level, f"{source} imports {target} at module level (lines {sorted(top_level)}): it must stay " \
                              "inside the registry's functions, or importing any method deadlocks on the registry"
        del graph[source][target]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + cycle[0] + "".join(
        f" -> {b} ({graph[a][b]})" for a, b in pairwise(cycle))


@pytest.mark.parametrize("files, cycle", [
    ({"fl/a.py": "from fedmoe.fl.b import x\n", "fl/b.py": "def f():\n    from fedmoe.fl import a\n"},
     r"fedmoe\.fl\.a -> fedmoe\.fl\.b \(fedmoe/fl/a\.py:1\) -> fedmoe\.fl\.a \(fedmoe/fl/b\.py:2\)"),
    # b imports a submodule of package p, which runs p's __init__, which imports m, which imports b
    ({"fl/p/__init__.py": "from fedmoe.fl.p.m import y\n", "fl/p/m.py": "import fedmoe.fl.b\n",
      "fl/p/leaf.py": "", "fl/b.py": "from fedmoe.fl.p import leaf\n"},
     r"fedmoe\.fl\.b -> fedmoe\.fl\.p \(fedmoe/fl/b\.py:1\) -> fedmoe\.fl\.p\.m .* -> fedmoe\.fl\.b "),
])
def test_an_import_cycle_is_caught(tmp_path, monkeypatch, files, cycle):
    for rel, text in files.items():
        (tmp_path / "fedmoe" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "fedmoe" / rel).write_text(text)
    monkeypatch.setattr(__import__(__name__), "PACKAGE", tmp_path / "fedmoe")
    with pytest.raises(AssertionError, match=cycle):
        test_no_import_cycles()


def test_a_package_import_is_no_cycle_with_its_own_submodules(tmp_path, monkeypatch):
    """A package's ``__init__`` re-exporting a submodule that imports a sibling is no cycle."""
    for rel, text in {"fl/p/__init__.py": "from fedmoe.fl.p.m import y\n", "fl/p/m.py": "from fedmoe.fl.p import n\n",
                      "fl/p/n.py": ""}.items():
        (tmp_path / "fedmoe" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "fedmoe" / rel).write_text(text)
    monkeypatch.setattr(__import__(__name__), "PACKAGE", tmp_path / "fedmoe")
    assert find_cycle(import_graph()) is None
