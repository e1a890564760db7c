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
