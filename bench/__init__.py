"""Benchmarks: run each from the repository's root as a module (``python -m bench.<name>``), so
that they import the harness (the real servers they run against) and the corpora's location
(``harness``) as a package. The benches never import the tests."""

import shlex
import subprocess
import sys
from pathlib import Path


def command_line(module: str, argv: list[str] | None = None) -> str:
    """The command that made a run file, as a user types it from the repository's root: where the
    file was written (``--out``) is not what it measured, and a run made from another checkout
    would otherwise record that checkout's path.

    >>> command_line("bench.adapt", ["--seeds", "42", "--out", "/tmp/x", "--corpora=ncbi disease", "--out=/y"])
    "python -m bench.adapt --seeds 42 '--corpora=ncbi disease'"
    """
    args, kept = list(sys.argv[1:] if argv is None else argv), []
    while args:
        arg = args.pop(0)
        if arg == "--out":
            args.pop(0)
        elif not arg.startswith("--out="):
            kept.append(arg)
    return " ".join(["python", "-m", module, *map(shlex.quote, kept)])


def revision_env(revision: str, directory: Path) -> dict[str, str]:
    """The environment under which a ``python -m clinie.cli`` process runs the code of git
    ``revision``, exported to ``directory``: so that a bench measures a change against its base in
    one run, under the same load. ``PYTHONSAFEPATH``: ``-m`` would otherwise put the working
    directory, this checkout, before ``PYTHONPATH``."""
    root = Path(__file__).resolve().parents[1]
    directory.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", revision], cwd=root, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(directory)], input=archive, check=True)
    return {"PYTHONPATH": str(directory), "PYTHONSAFEPATH": "1"}
