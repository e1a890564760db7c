"""Patient text at rest is readable by clinie's own user only: every file clinie creates is 0600
and every directory 0700, whatever umask the process was started with (real files, real SQLite,
the real app and command line)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from clinie.cli import main
from clinie.core import read_documents, write_documents
from clinie.llm.cache import CallCache
from clinie.settings import Settings
from harness import DATA
from harness.helpers import DISEASE_CONFIG, webhook_event
from ml_backend.app import create_app
from ml_backend.store import AnnotationStore


@pytest.fixture(autouse=True)
def permissive_umask():
    """The usual default (files 0644, directories 0755); the process's own umask afterwards."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def modes(root: Path) -> dict[str, str]:
    """Every path under ``root`` (itself included) whose group or others have any permission."""
    return {str(p.relative_to(root)): oct(stat.S_IMODE(p.stat().st_mode))
            for p in (root, *root.rglob("*")) if p.stat().st_mode & 0o077}


def test_the_store_and_its_wal_files_are_private_under_a_permissive_umask(tmp_path):
    store = AnnotationStore(tmp_path / "new" / "data" / "clinie.sqlite3")
    store.set_label_config("1", DISEASE_CONFIG)
    files = {p.name for p in (tmp_path / "new").rglob("*")}
    assert {"clinie.sqlite3", "clinie.sqlite3-wal", "clinie.sqlite3-shm"} <= files
    assert modes(tmp_path / "new") == {}


def test_the_llm_call_cache_is_private_and_an_old_readable_store_is_tightened(tmp_path):
    cache = CallCache(tmp_path / "cache" / "calls.sqlite3")
    cache.put(cache.key("p", "m", "a note", {}), {"tags": ["O"]})
    assert modes(tmp_path / "cache") == {}
    old = tmp_path / "old" / "clinie.sqlite3"
    AnnotationStore(old).set_label_config("1", DISEASE_CONFIG)
    for path in (old.parent, *old.parent.iterdir()):  # as an older clinie left them
        path.chmod(0o755 if path.is_dir() else 0o644)
    AnnotationStore(old).set_label_config("2", DISEASE_CONFIG)
    assert set(modes(old.parent)) == {"."}, "the operator's directory is left as it is; the files are not"


def test_what_the_backend_writes_is_private(tmp_path):
    data = tmp_path / "data"
    client = create_app(Settings(data_dir=data, train_every=0)).test_client()
    assert client.post("/setup", json={"project": "1", "schema": DISEASE_CONFIG}).status_code == 200
    assert client.post("/webhook", json=webhook_event(1, 1, "breast cancer", [])).json["stored"] is True
    assert modes(data) == {}
    probe = tmp_path / "written-later"  # a model version saved by a library, a report
    probe.write_text("x")
    assert oct(stat.S_IMODE(probe.stat().st_mode)) == "0o600"


def test_what_the_command_line_writes_is_private(tmp_path):
    gold = tmp_path / "in" / "gold.jsonl"
    gold.parent.mkdir()
    write_documents(list(read_documents(DATA / "ncbi_disease" / "fewshot" / "chen2023_test_sample200.jsonl"))[:5],
                    gold)
    assert main(["evaluate", "--gold", str(gold), "--pred", str(gold), "--out", str(tmp_path / "out" / "report")]) == 0
    assert {p.name for p in (tmp_path / "out" / "report").iterdir()} >= {"report.json", "report.html"}
    assert modes(tmp_path / "out") == {}
