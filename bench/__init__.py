"""Benchmarks: run each from the repository's root as a module (``python -m bench.<name>``), so
that they import the tests' harness and the corpora's location (``tests.support``) as a package."""

import shlex
import sys


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
