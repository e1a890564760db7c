"""Benchmarks: run each from the repository's root as a module (``python -m bench.<name>``), so
that they import the tests' harness and the corpora's location (``tests.support``) as a package."""
