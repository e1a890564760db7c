"""The package's layers: the library never depends on the backend that serves it."""

import ast
import subprocess
import sys
from pathlib import Path

import clinie

LIBRARY = Path(clinie.__file__).parent


def test_importing_the_command_line_loads_no_backend_module():
    code = "import sys, clinie.cli; print(sorted(m for m in sys.modules if m.split('.')[0] == 'ml_backend'))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


def test_no_library_module_imports_the_backend():
    offenders = []
    for path in LIBRARY.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            offenders += [f"{path.relative_to(LIBRARY)}: {n}" for n in names if n.split(".")[0] == "ml_backend"]
    assert offenders == []


#: The packages whose imports are checked; clinie's subpackages (and its top modules) each count
#: as one of their own, since a cycle among them is what makes one unusable without the others.
PACKAGES = ("clinie", "ml_backend", "bench", "harness", "tests")


def _unit(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] not in PACKAGES:
        return None
    return ".".join(parts[:2]) if parts[0] == "clinie" and len(parts) > 1 else parts[0]


def _module_level_imports(body: list[ast.stmt]) -> list[str]:
    """What a module imports when it is imported: its top-level statements (inside ``if`` and
    ``try`` too, ``TYPE_CHECKING`` blocks aside), not what functions import when called."""
    found: list[str] = []
    for node in body:
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            found += [node.module] if node.module != "clinie" else [f"clinie.{a.name}" for a in node.names]
        elif isinstance(node, ast.If) and "TYPE_CHECKING" not in ast.unparse(node.test):
            found += _module_level_imports(node.body) + _module_level_imports(node.orelse)
        elif isinstance(node, ast.Try):
            found += _module_level_imports(node.body + [s for h in node.handlers for s in h.body] + node.orelse)
        elif isinstance(node, ast.ClassDef):
            found += _module_level_imports(node.body)
    return found


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while (top := stack.pop()) != node:
                component.append(top)
            if component:
                out.append(sorted([node, *component]))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return out


def test_no_import_cycle_between_packages_at_module_level():
    """The library's subpackages, the backend, the benches, the harness and the tests import one
    another one way only: the benches never import the tests (the harness is what both share)."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]  # what it would find
    root = LIBRARY.parent
    edges: dict[str, set[str]] = {}
    for package in PACKAGES:
        for path in (root / package).rglob("*.py"):
            module = ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
            source = _unit(module)
            for imported in _module_level_imports(ast.parse(path.read_text(), str(path)).body):
                target = _unit(imported)
                if target is not None and target != source:
                    edges.setdefault(source, set()).add(target)
    assert _cycles(edges) == []
    assert "tests" not in edges.get("bench", set()) and "tests" not in edges.get("harness", set())
