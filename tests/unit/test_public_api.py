"""The small public API of ``clinie`` (the README's quickstart): every name it lists resolves, and
``import clinie`` stays cheap — the command line imports it first and must not pull in torch."""

from __future__ import annotations

import subprocess
import sys

import clinie


def test_importing_clinie_loads_no_model_library():
    code = ("import sys, clinie; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'clinie')))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "['clinie']"


def test_every_public_name_resolves():
    assert clinie.__version__ and "__version__" in clinie.__all__
    for name in clinie.__all__:
        assert getattr(clinie, name) is not None, name
    assert set(clinie.__all__) == {"__version__", *clinie._EXPORTS}
    assert set(clinie.__all__) <= set(dir(clinie))


def test_an_unknown_name_is_an_attribute_error():
    try:
        clinie.no_such_name  # noqa: B018
    except AttributeError as e:
        assert "no_such_name" in str(e)
    else:
        raise AssertionError("clinie.no_such_name resolved")
