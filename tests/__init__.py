"""clinie's tests: a package, run from the repository's root, where the harness (``harness``)
imports the same way from the tests, ``conftest.py`` and the bench scripts."""
