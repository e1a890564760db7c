"""clinie's tests: a package, so that ``tests.support`` (the harness) imports the same way from
the tests, from ``conftest.py`` and from the bench scripts (``python -m bench.<name>``)."""
