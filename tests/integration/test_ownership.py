"""A task and an annotation belong to the project that sent them first: checked when an event is
stored, and a deletion that meets another project's id says so (the webhook's answer, /metrics,
``clinie purge``'s exit status) instead of reporting it purged."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from clinie.cli import main
from clinie.settings import Settings
from harness.helpers import DISEASE_CONFIG, webhook_event
from ml_backend.app import create_app
from ml_backend.service import Backend
from ml_backend.store import AnnotationStore


@pytest.fixture
def backend(tmp_path: Path):
    settings = Settings(data_dir=tmp_path / "data", train_every=0, strategy="encoder")
    backend = Backend(settings, start_worker=False)
    yield backend
    backend.close()


def test_an_annotation_of_a_task_predicted_under_another_project_is_refused_and_its_project_deletes_cleanly(backend):
    client = create_app(backend.settings, backend).test_client()
    predicted = {"tasks": [{"id": 201, "data": {"text": "Project 2's note."}}], "project": "2.1700000000",
                 "label_config": DISEASE_CONFIG}
    assert client.post("/predict", json=predicted).status_code == 200
    answer = client.post("/webhook", json=webhook_event(7, 201, "ZEBRA-ELSEWHERE", [], project=1)).json
    assert answer["stored"] is False and "task 201 belongs to project 2" in answer["refused"]
    assert backend.store.label_config("1") is None  # nothing of the refused event, its config neither
    deleted = client.post("/webhook", json={"action": "PROJECT_DELETED", "project": {"id": 1}}).json
    assert "refused" not in deleted
    assert b"ZEBRA-ELSEWHERE" not in backend.settings.store_path.read_bytes()
    assert backend.metrics.snapshot()["counts"]["events_refused"] == 1


def legacy_store(data: Path) -> AnnotationStore:
    """A store written before ownership was checked on arrival: project 1 annotated task 201,
    whose data project 2 holds."""
    store = AnnotationStore(data / "clinie.sqlite3")
    store.record_tasks("2", [(201, {"text": "Project 2's note."})])
    with sqlite3.connect(data / "clinie.sqlite3") as db:
        db.execute("INSERT INTO annotations VALUES (7, '1', 201, ?, '[]', 'submitted', 1, 1, 't', 't', NULL)",
                   (json.dumps({"id": 201, "data": {"text": "ZEBRA-PROJECT-1"}}),))
    return store


def test_a_project_deletion_that_meets_another_projects_task_says_so(backend):
    legacy_store(backend.settings.data_dir)
    client = create_app(backend.settings, backend).test_client()
    answer = client.post("/webhook", json={"action": "PROJECT_DELETED", "project": {"id": 1}}).json
    assert answer["stored"] is True and "201" in answer["refused"]
    assert backend.metrics.snapshot()["counts"]["events_refused"] == 1
    assert backend.store.annotation_ids("1") == set()


def test_clinie_purge_exits_1_when_it_refused_something(tmp_path, capsys):
    data = tmp_path / "data"
    legacy_store(data)
    assert main(["purge", "--project", "1", "--data-dir", str(data)]) == 1
    assert "not purged: tasks 201" in capsys.readouterr().err
    assert main(["purge", "--project", "1", "--data-dir", str(data)]) == 0  # nothing of project 1 left to meet
