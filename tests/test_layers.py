"""The tree shows the architecture: each folder is one layer, and imports only go down.

Every module's imports are read with `ast` (those inside functions and TYPE_CHECKING blocks too),
resolved to modules of this repository, and checked against the layers below. A new module outside
every layer, an import of a higher or a sibling layer, and two modules that import each other (or any
longer loop) fail the suite.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).parent.parent

# Each layer, lowest first, with the layers it may import (the `peerix` package itself, which holds
# only the version, may be imported by all). README's "Layout" section draws the same picture.
_BELOW_SWARM = {"peerix.nix", "peerix.common", "peerix.telemetry", "peerix.store", "peerix.net"}
LAYERS: dict[str, set[str]] = {
    "peerix.nix": set(),
    "peerix.common": {"peerix.nix"},
    "peerix.telemetry": {"peerix.common"},
    "peerix.store": {"peerix.nix", "peerix.common"},
    "peerix.net": {"peerix.nix", "peerix.common"},
    "peerix.swarm": _BELOW_SWARM,
    "peerix.http": _BELOW_SWARM | {"peerix.swarm"},
    "peerix.daemon": _BELOW_SWARM | {"peerix.swarm", "peerix.http"},
    "peerix.cli": _BELOW_SWARM | {"peerix.swarm", "peerix.http", "peerix.daemon"},
    "tracker": {"peerix.nix", "peerix.common", "peerix.net"},
}


def modules(root: Path, packages: tuple[str, ...] = ("peerix", "tracker")) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the given packages."""
    found = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The repository modules that module `name` imports, wherever in the file the import is."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            base = base[: len(base) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            # `from ..net import wire` imports the module peerix.net.wire
            targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in known else module for a in node.names]
        else:
            continue
        found.update(t for t in targets if t in known)
    return found - {name}


def layer_of(module: str) -> str | None:
    return next((layer for layer in LAYERS if module == layer or module.startswith(layer + ".")), None)


def violations(graph: dict[str, set[str]]) -> list[str]:
    problems = []
    for module, targets in sorted(graph.items()):
        layer = layer_of(module)
        if layer is None:
            if module not in ("peerix", "tracker"):
                problems.append(f"{module} lies in no layer: put it in the folder of its layer")
            continue
        for target in sorted(targets):
            other = layer_of(target)
            if other is not None and other != layer and other not in LAYERS[layer]:
                problems.append(f"{module} ({layer}) imports {target} ({other}), which is not below it")
    return problems + [f"import loop: {' -> '.join(loop)}" for loop in loops(graph)]


def loops(graph: dict[str, set[str]]) -> list[list[str]]:
    """One loop per strongly connected group of modules (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group) + [sorted(group)[0]])

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def graph_of(root: Path, packages: tuple[str, ...] = ("peerix", "tracker")) -> dict[str, set[str]]:
    known = modules(root, packages)
    return {name: imports(name, path, known) for name, path in known.items()}


def test_the_tree_keeps_its_layers() -> None:
    graph = graph_of(ROOT)
    assert "peerix.swarm.transfer" in graph and "peerix.store.substituter" in graph["peerix.swarm.transfer"]
    assert violations(graph) == []


def test_every_layer_is_a_folder_and_nothing_lies_beside_them() -> None:
    layers = {p.name for p in (ROOT / "peerix").iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert {f"peerix.{name}" for name in layers} == {layer for layer in LAYERS if layer.startswith("peerix.")}
    assert sorted(p.name for p in (ROOT / "peerix").glob("*.py")) == ["__init__.py"]


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_the_check_catches_an_upward_import_and_a_loop(tmp_path: Path) -> None:
    root = _tree(tmp_path, {
        "peerix/__init__.py": "",
        "peerix/store/__init__.py": "",
        "peerix/store/local.py": "from ..http.app import create_app\n",  # upward
        "peerix/http/__init__.py": "",
        "peerix/http/app.py": "def f():\n    from . import dashboard\n",
        "peerix/http/dashboard.py": "from .app import f\n",  # a loop, one side inside a function
        "peerix/net/__init__.py": "",
        "peerix/net/lan.py": "from ..store import local\n",  # a sibling layer
        "peerix/stray.py": "",
    })
    problems = violations(graph_of(root, ("peerix",)))
    assert "peerix.store.local (peerix.store) imports peerix.http.app (peerix.http), which is not below it" in problems
    assert "peerix.net.lan (peerix.net) imports peerix.store.local (peerix.store), which is not below it" in problems
    assert "import loop: peerix.http.app -> peerix.http.dashboard -> peerix.http.app" in problems
    assert "peerix.stray lies in no layer: put it in the folder of its layer" in problems
    assert len(problems) == 4
