from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import pytest

from clinie.settings import Settings
from harness import ROOT


def test_defaults_need_no_environment():
    s = Settings.load({})
    assert s.port == 9090 and s.store_path == Path("clinie-data/clinie.sqlite3")


def test_environment_overrides_the_config_file(tmp_path):
    config = tmp_path / "clinie.toml"
    config.write_text('data_dir = "/from/file"\ntrain_every = 3\nlog_level = "DEBUG"\n')
    s = Settings.load({"CLINIE_CONFIG": str(config), "CLINIE_TRAIN_EVERY": "7"})
    assert (s.data_dir, s.train_every, s.log_level) == (Path("/from/file"), 7, "DEBUG")


@pytest.mark.parametrize("env, message", [
    ({"CLINIE_PORT": "http"}, "CLINIE_PORT"),
    ({"CLINIE_TRAIN_EVERY": "-1"}, "CLINIE_TRAIN_EVERY"),
    ({"CLINIE_LLM_PROVIDER": "torch"}, "CLINIE_LLM_PROVIDER"),
    ({"CLINIE_LLM_GUIDED": "1"}, "CLINIE_LLM_GUIDED"),
    ({"CLINIE_BASIC_AUTH_USER": "ls"}, "CLINIE_BASIC_AUTH_PASSWORD is not set"),
    ({"CLINIE_BASIC_AUTH_PASSWORD": "s3cret"}, "CLINIE_BASIC_AUTH_USER is not set"),
    ({"CLINIE_ALLOW_UNAUTHENTICATED": "maybe"}, "CLINIE_ALLOW_UNAUTHENTICATED"),
])
def test_bad_values_name_the_variable(env, message):
    with pytest.raises(ValueError, match=message):
        Settings.load(env)


def test_unknown_keys_in_the_config_file_are_refused(tmp_path):
    config = tmp_path / "clinie.toml"
    config.write_text("data_dri = 'typo'\n")
    with pytest.raises(ValueError, match="data_dri"):
        Settings.load({"CLINIE_CONFIG": str(config)})


def test_the_readme_names_real_settings_and_links_them_all():
    """The README's settings table keeps the few a first user needs (a row's first cell holds
    one, possibly beside a sibling): each must be a setting, and the README must link the page
    that documents every one (docs/configuration.md, checked by test_configuration_doc.py)."""
    readme = (ROOT / "README.md").read_text()
    rows = [line.split("|")[1] for line in readme.splitlines() if line.startswith("| `CLINIE_")]
    named = {name for cell in rows for name in re.findall(r"`CLINIE_([A-Z_]+)`", cell)}
    assert 6 <= len(named) and named <= {f.name.upper() for f in fields(Settings)}
    assert "(docs/configuration.md)" in readme and (ROOT / "docs" / "configuration.md").exists()
