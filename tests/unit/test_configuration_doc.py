"""docs/configuration.md is what ``python -m clinie.settings`` writes from the ``Settings`` class:
each setting's text is the ``#:`` comment above its field, so the page cannot drift from the code,
and a setting added without a comment fails here."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, fields

import pytest

from clinie import settings
from clinie.settings import PREFIX, REFERENCE_COMMAND, Settings
from harness import ROOT

DOC = ROOT / "docs" / "configuration.md"
FIX = f"run `{REFERENCE_COMMAND}` from the repository's root to regenerate it"


def test_the_configuration_page_is_generated_from_the_settings():
    have = DOC.read_text(encoding="utf-8")
    want = settings.reference()
    diff = "\n".join(list(difflib.unified_diff(have.splitlines(), want.splitlines(), "docs/configuration.md",
                                               "from clinie/settings.py", lineterm="", n=0))[:40])
    assert have == want, f"docs/configuration.md differs from the settings' own documentation; {FIX}:\n{diff}"


def test_every_setting_is_on_the_page_once_with_its_documentation():
    page = DOC.read_text(encoding="utf-8")
    rows = [line for line in page.splitlines() if line.startswith(f"| `{PREFIX}")]
    named = [re.match(rf"\| `{PREFIX}([A-Z0-9_]+)`", row)[1] for row in rows]
    assert sorted(named) == sorted(f.name.upper() for f in fields(Settings))  # each exactly once
    docs = settings.field_docs()
    assert all(docs.values()), [name for name, doc in docs.items() if not doc]
    grouped = [name for _, names in settings.sections() for name in names]
    assert sorted(grouped) == sorted(docs) and len(grouped) == len(set(grouped))
    assert "Other settings" not in page, "a setting no section of clinie.settings.SECTIONS claims: add it to one"


def test_the_page_says_how_settings_are_given():
    page = DOC.read_text(encoding="utf-8")
    assert f"{PREFIX}CONFIG" in page and REFERENCE_COMMAND in page


def test_a_setting_without_documentation_is_refused():
    @dataclass(frozen=True)
    class Documented:
        #: Said once.
        said: int = 1
        # a plain comment is not documentation
        unsaid: str = ""

    assert settings.field_docs(Documented) == {"said": "Said once.", "unsaid": ""}
    with pytest.raises(ValueError, match="unsaid"):
        settings.reference(Documented)
