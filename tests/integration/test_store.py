"""ml_backend.store: every annotation kept, idempotent, versioned; registry swaps atomically."""

from __future__ import annotations

import json
import sqlite3
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from clinie.labelstudio import LabelConfigError
from harness.helpers import DISEASE_CONFIG
from ml_backend.model_store import ModelStore
from ml_backend.store import AnnotationStore, ModelRecord, ProjectMismatch, Purged


def annotation(aid: int, result: list | None = None, cancelled: bool = False) -> dict:
    return {"id": aid, "result": result or [], "was_cancelled": cancelled, "completed_by": 1}


def task(tid: int, text: str = "some text") -> dict:
    return {"id": tid, "data": {"text": text}}


@pytest.fixture
def store(store_location: str) -> AnnotationStore:
    """A store on each engine: SQLite and PostgreSQL (``store_location``)."""
    return AnnotationStore(store_location)


def rows(store: AnnotationStore, sql: str) -> list[tuple]:
    """What the store holds, read with its own engine."""
    return [tuple(r) for r in store._read(sql)]


def test_created_updated_cancelled_are_kept_and_deleted_leaves_only_a_tombstone(store):
    r1 = [{"id": "a", "type": "labels", "value": {"start": 0, "end": 4, "labels": ["X"]}}]
    assert store.record_annotation("1", annotation(10, r1), task(5))
    assert not store.record_annotation("1", annotation(10, r1), task(5))  # re-delivery: no change
    assert store.record_annotation("1", annotation(10, []), task(5), "ANNOTATION_UPDATED")
    assert store.record_annotation("1", annotation(11, cancelled=True), task(6))
    history = rows(store, "SELECT version, action, state, result FROM annotation_versions "  # every version
                          "WHERE annotation_id = 10 ORDER BY version")
    assert [h[:3] for h in history] == [(1, "ANNOTATION_CREATED", "submitted"), (2, "ANNOTATION_UPDATED", "submitted")]
    assert json.loads(history[0][3]) == r1  # the first version is still there

    assert store.purge("1", annotations=[10, 999]) == Purged(1)
    assert store.annotation_counts("1") == {"deleted": 2, "cancelled": 1}  # 999: deleted before it arrived
    assert rows(store, "SELECT COUNT(*) FROM annotation_versions WHERE annotation_id = 10") == [(0,)]
    assert rows(store, "SELECT COUNT(*) FROM annotations WHERE annotation_id = 10") == [(0,)]
    assert store.training_examples("1") == []
    assert not store.record_annotation("1", annotation(10, r1), task(5))  # a late re-delivery: no-op
    assert not store.record_annotation("1", annotation(999, r1), task(8))
    assert store.training_examples("1") == []

def test_training_set_is_the_latest_submitted_annotation_per_task(store):
    store.record_annotation("1", annotation(1, [{"v": 1}]), task(7))
    store.record_annotation("1", annotation(2, [{"v": 2}]), task(7))
    store.record_annotation("1", annotation(3, [{"v": 3}]), task(8))
    store.record_annotation("2", annotation(4, [{"v": 4}]), task(9))
    examples = store.training_examples("1")
    assert [(e.task_id, e.annotation_id, e.result) for e in examples] == [(7, 2, [{"v": 2}]), (8, 3, [{"v": 3}])]
    assert examples[0].task == task(7)


def test_changes_since_training_counts_changes_and_resets_when_training_starts(store):
    for i in range(3):
        store.record_annotation("1", annotation(i), task(i))
    store.record_annotation("1", annotation(0), task(0))  # unchanged: not counted
    assert store.changes_since_training("1") == 3
    training = store.begin_training("1")
    assert training is not None and store.begin_training("1") is None  # one at a time
    assert store.changes_since_training("1") == 0
    store.fail_training(training, "boom")
    assert store.training_counts() == {"failed": 1}


def test_registry_swaps_the_serving_version_and_survives_reopening(tmp_path, store_location):
    path = store_location
    store = AnnotationStore(path)
    assert store.serving_model("1") is None
    for n in (1, 2):
        training = store.begin_training("1")
        store.finish_training(training, ModelRecord(f"v{n}", "1", "encoder", str(tmp_path / f"v{n}"), 10 * n,
                                                    {"labels": ["X"]}, f"2026-01-0{n}"))
    reopened = AnnotationStore(path)
    assert reopened.serving_model("1").version == "v2"
    assert [m.version for m in reopened.models("1")] == ["v1", "v2"]
    assert reopened.serving_model("1").info == {"labels": ["X"]}


def test_interrupted_training_is_marked_failed_at_start_up(store_location):
    path = store_location
    AnnotationStore(path).begin_training("1")
    store = AnnotationStore(path)
    assert store.abandon_running_trainings() == 1
    assert store.begin_training("1") is not None


def test_200_concurrent_writers_lose_nothing(store_location):
    path = store_location
    stores = [AnnotationStore(path) for _ in range(4)]  # as if several processes shared the store
    barrier = threading.Barrier(50)
    errors = []

    def write(worker: int) -> None:
        barrier.wait()
        for i in range(4):
            aid = worker * 4 + i
            try:
                stores[worker % 4].record_annotation("1", annotation(aid, [{"n": aid}]), task(aid))
            except Exception as e:  # pragma: no cover - reported below
                errors.append(e)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    examples = AnnotationStore(path).training_examples("1")
    assert sorted(e.annotation_id for e in examples) == list(range(200))


def test_counting_training_examples_agrees_with_reading_them(store):
    task = {"id": 1, "data": {"text": "x"}}
    store.record_annotation("p", {"id": 1, "result": []}, task)
    store.record_annotation("p", {"id": 2, "result": [{"x": 1}]}, task)  # a second annotation of task 1
    store.record_annotation("p", {"id": 3, "result": [], "was_cancelled": True}, {"id": 2, "data": {"text": "y"}})
    store.record_annotation("p", {"id": 4, "result": []}, {"id": 3, "data": {"text": "z"}})
    store.purge("p", annotations=[4])
    store.record_annotation("q", {"id": 5, "result": []}, {"id": 9, "data": {"text": "w"}})
    assert store.count_training_examples("p") == len(store.training_examples("p")) == 1
    assert store.count_training_examples("none") == 0


def test_an_event_older_than_the_state_held_changes_nothing(store):
    def at(aid: int, result: list, updated_at: str) -> dict:
        return {**annotation(aid, result), "updated_at": updated_at}

    assert store.record_annotation("1", at(1, [{"v": 2}], "2026-05-01T10:00:02.000000Z"), task(1))
    assert not store.record_annotation("1", at(1, [{"v": 1}], "2026-05-01T10:00:01Z"), task(1))  # late
    assert store.training_examples("1")[0].result == [{"v": 2}]
    # the same state delivered again, newer: an event between the two is late too
    assert not store.record_annotation("1", at(1, [{"v": 2}], "2026-05-01T12:00:05+02:00"), task(1))
    assert not store.record_annotation("1", at(1, [{"v": 3}], "2026-05-01T10:00:03Z"), task(1))
    assert store.record_annotation("1", at(1, [{"v": 4}], "2026-05-01T10:00:06Z"), task(1))
    assert store.training_examples("1")[0].result == [{"v": 4}]


def test_an_id_another_project_holds_is_refused_not_moved(store):
    store.record_annotation("1", annotation(1, [{"v": 1}]), task(1))
    with pytest.raises(ProjectMismatch, match="annotation 1 belongs to project 1, not 2"):
        store.record_annotation("2", annotation(1, [{"v": 2}]), task(2))
    assert store.purge("2", annotations=[1], tasks=[1]) == Purged(0, (1, 1))
    assert [e.result for e in store.training_examples("1")] == [[{"v": 1}]]
    assert store.annotation_counts("2") == {}
    store.purge("1", annotations=[1])
    with pytest.raises(ProjectMismatch):  # its tombstone is project 1's too
        store.record_annotation("2", annotation(1, [{"v": 2}]), task(2))


def test_deleting_a_task_purges_all_its_annotations_and_a_late_one_stays_out(store):
    store.record_annotation("1", annotation(1), task(7))
    store.record_annotation("1", annotation(2), task(7))
    store.record_annotation("1", annotation(3), task(8))
    assert store.purge("1", tasks=[7]).annotations == 2
    assert [e.task_id for e in store.training_examples("1")] == [8]
    assert not store.record_annotation("1", annotation(4), task(7))  # created before, delivered after
    assert store.task_ids("1") == {8} and store.annotation_ids("1") == {3}


def _age_versions(store: AnnotationStore, days: float) -> None:
    received = (datetime.now(UTC) - timedelta(days=days)).isoformat(timespec="milliseconds")
    with store._write() as db:
        db.execute("UPDATE annotation_versions SET received_at = ?", (received,))


def test_superseded_versions_are_kept_keep_history_days_then_pruned(store_location):
    path = store_location
    store = AnnotationStore(path, keep_history_days=30)
    for n in range(3):
        store.record_annotation("1", annotation(1, [{"v": n}]), task(1), "ANNOTATION_UPDATED")
    store.record_annotation("1", annotation(2, [{"v": 0}]), task(2))

    def versions() -> list[tuple[int, int]]:
        return rows(store, "SELECT annotation_id, version FROM annotation_versions ORDER BY 1, 2")

    assert versions() == [(1, 1), (1, 2), (1, 3), (2, 1)]
    store.begin_training("1")
    assert versions() == [(1, 1), (1, 2), (1, 3), (2, 1)]  # superseded under 30 days ago
    _age_versions(store, 31)
    store.begin_training("2")
    assert versions() == [(1, 3), (2, 1)]  # the current version of each stays
    assert store.training_examples("1")[0].result == [{"v": 2}]

    none_kept = AnnotationStore(path, keep_history_days=0)
    none_kept.record_annotation("1", annotation(2, [{"v": 1}]), task(2), "ANNOTATION_UPDATED")
    assert versions() == [(1, 3), (2, 2)]


def test_a_full_disk_says_so(tmp_path):
    store = AnnotationStore(tmp_path / "s.sqlite3")
    store.record_annotation("1", annotation(1), task(1))
    store._db().execute("PRAGMA max_page_count=1")  # this connection may not grow the file
    with pytest.raises(sqlite3.OperationalError, match="database or disk is full"):
        store.record_annotation("1", annotation(2), task(2, "x" * 100_000))
    store._db().execute("PRAGMA max_page_count=1073741823")
    assert store.record_annotation("1", annotation(3), task(3))  # the connection is usable again
    assert store.annotation_ids("1") == {1, 3}


def test_an_invalid_label_config_is_refused_and_the_valid_one_kept(store):
    store.set_label_config("1", DISEASE_CONFIG)
    with pytest.raises(LabelConfigError):
        store.set_label_config("1", "<not xml")
    assert store.label_config("1") == DISEASE_CONFIG


def test_a_store_that_only_marked_deletions_is_purged_when_opened(tmp_path):
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as db:  # the schema and rows an earlier clinie wrote
        db.executescript(OLD_SCHEMA)
        for aid, state in ((1, "submitted"), (2, "deleted")):
            data = json.dumps({"id": aid, "data": {"text": f"ZEBRA-OLD-{aid}"}})
            db.execute("INSERT INTO annotations VALUES (?, '1', ?, ?, '[]', ?, 1, 1, 't', 't')",
                       (aid, aid, data, state))
            db.execute("INSERT INTO annotation_versions VALUES (?, 1, 'X', ?, ?, '[]', 't')", (aid, state, data))
    store = AnnotationStore(path)
    assert store.annotation_counts("1") == {"submitted": 1, "deleted": 1}
    assert store.record_annotation("1", {**annotation(1, [{"v": 1}]), "updated_at": "2026-01-01T00:00:00Z"}, task(1))
    assert not store.record_annotation("1", annotation(2), task(2))
    assert_absent(tmp_path, b"ZEBRA-OLD-2")


OLD_SCHEMA = """
CREATE TABLE annotations (annotation_id INTEGER PRIMARY KEY, project TEXT NOT NULL, task_id INTEGER NOT NULL,
    task_data TEXT NOT NULL, result TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('submitted', 'cancelled', 'deleted')), version INTEGER NOT NULL,
    completed_by INTEGER, received_at TEXT NOT NULL, updated_at TEXT NOT NULL);
CREATE TABLE annotation_versions (annotation_id INTEGER NOT NULL, version INTEGER NOT NULL, action TEXT NOT NULL,
    state TEXT NOT NULL, task_data TEXT NOT NULL, result TEXT NOT NULL, received_at TEXT NOT NULL,
    PRIMARY KEY (annotation_id, version));
"""


def assert_absent(directory: Path, marker: bytes) -> None:
    """No file under ``directory`` (the database, its WAL and shared memory) holds ``marker``."""
    files = [f for f in directory.rglob("*") if f.is_file()]
    assert files
    holding = [f.name for f in files if marker in f.read_bytes()]
    assert holding == [], f"{marker!r} is still in {holding}"


@pytest.mark.parametrize("deletion", ["annotation", "task", "project"])
def test_deleted_note_text_is_gone_from_every_file(tmp_path, deletion):
    store = AnnotationStore(tmp_path / "data" / "s.sqlite3", keep_history_days=30)
    marker = "ZEBRA-PATIENT-7731"
    store.set_label_config("1", DISEASE_CONFIG)
    store.record_annotation("1", annotation(1, [{"note": marker}]), task(1, f"Patient {marker} has asthma."))
    store.record_annotation("1", annotation(1, []), task(1, f"Patient {marker} has asthma."), "ANNOTATION_UPDATED")
    store.record_annotation("1", annotation(2), task(2, "Another note, kept."))
    assert marker.encode() in b"".join(f.read_bytes() for f in (tmp_path / "data").iterdir())
    if deletion == "annotation":
        store.purge("1", annotations=[1])
    elif deletion == "task":
        store.purge("1", tasks=[1])
    else:
        store.purge_project("1", ModelStore(tmp_path / "models", tmp_path))
    assert_absent(tmp_path / "data", marker.encode())
    assert store.annotation_ids("1") == (set() if deletion == "project" else {2})


@pytest.mark.parametrize("deletion", ["task", "project", "storing turned off"])
def test_a_deleted_unannotated_tasks_text_is_gone_from_every_file(tmp_path, deletion):
    data = tmp_path / "data"
    store = AnnotationStore(data / "s.sqlite3")
    marker = "ZEBRA-UNANNOTATED-5120"
    store.record_tasks("1", [(3, {"text": f"Patient {marker} was seen."}), (4, {"text": "Another note."})])
    assert marker.encode() in b"".join(f.read_bytes() for f in data.iterdir())
    if deletion == "task":
        store.purge("1", tasks=[3])
    elif deletion == "project":
        store.purge_project("1", ModelStore(tmp_path / "models", tmp_path))
    else:
        store = AnnotationStore(data / "s.sqlite3", keep_tasks=0)  # CLINIE_UNANNOTATED_TASKS=0 at a restart
    assert_absent(data, marker.encode())
    assert [t["id"] for t in store.unannotated_tasks("1")] == ([4] if deletion == "task" else [])


def test_a_training_of_a_project_purged_meanwhile_registers_nothing(store, tmp_path):
    store.record_annotation("1", annotation(1), task(1))
    training = store.begin_training("1")
    models = ModelStore(tmp_path / "models", tmp_path)
    store.purge_project("1", models)
    with pytest.raises(LookupError, match="purged"):
        store.finish_training(training, ModelRecord("v1", "1", "encoder", models.location("1", "v1"), 1, {}, "t"))
    assert store.models("1") == [] and store.serving_model("1") is None


def test_the_data_of_tasks_is_kept_newest_first_within_its_bound_and_annotated_ones_are_not_unannotated(
        store_location):
    path = store_location
    store = AnnotationStore(path, keep_tasks=3)
    store.record_annotation("1", annotation(1), task(2))
    # task 2 is annotated (its data is held already); tasks 1..6 arrive as /predict sends them
    assert store.record_tasks("1", [(i, {"text": f"note {i}"}) for i in range(1, 7)]) == 5
    assert [t["id"] for t in store.unannotated_tasks("1")] == [4, 5, 6]  # the newest 3 by task id
    assert store.record_tasks("1", [(5, {"text": "note 5"})]) == 0  # unchanged: not rewritten
    assert store.record_tasks("1", [(5, {"text": "note 5, edited"})]) == 1
    store.record_annotation("1", annotation(2), task(6))  # annotated after it was stored: no longer unannotated
    assert store.unannotated_tasks("1") == [{"id": 4, "data": {"text": "note 4"}},
                                            {"id": 5, "data": {"text": "note 5, edited"}}]
    assert [t["id"] for t in store.unannotated_tasks("1", limit=1)] == [5]
    assert store.record_tasks("2", [(5, {"text": "moved"}), (20, {"text": "project 2"})]) == 1  # 5 is project 1's
    assert store.unannotated_counts() == {"1": 2, "2": 1}
    assert store.task_ids("1") == {2, 4, 5, 6} and store.task_projects([5, 20]) == {"1": {5}, "2": {20}}

    lowered = AnnotationStore(path, keep_tasks=1)  # a lower bound applies when the store opens
    assert [t["id"] for t in lowered.unannotated_tasks("1")] == [5]
    assert lowered.task_ids("1") == {2, 5, 6}  # 6's data is its annotation's now
    off = AnnotationStore(path, keep_tasks=0)  # none kept, none stored
    assert off.unannotated_counts() == {} and off.record_tasks("1", [(30, {"text": "x"})]) == 0
    assert off.task_ids("1") == {2, 6}  # the annotated tasks, through their annotations


def test_a_deleted_tasks_data_is_purged_and_a_late_predict_never_stores_it_again(store):
    store.record_tasks("1", [(7, {"text": "seven"}), (8, {"text": "eight"})])
    assert store.purge("2", tasks=[7]) == Purged(0, (7,))  # another project's: refused
    assert store.purge("1", tasks=[7]) == Purged(0, (), 1)
    assert store.record_tasks("1", [(7, {"text": "seven"})]) == 0  # a /predict sent before the deletion
    assert store.record_tasks("2", [(7, {"text": "seven"})]) == 0
    assert [t["id"] for t in store.unannotated_tasks("1")] == [8]
    assert store.purge_project("1", ModelStore("/nonexistent/models", Path("/nonexistent"))) == Purged(0, (), 1)
    assert store.unannotated_counts() == {} and store.task_ids("1") == set()


def test_an_annotation_on_a_task_another_project_holds_is_refused_before_anything_is_stored(store):
    store.record_tasks("2", [(201, {"text": "Project 2's note."})])  # /predict of task 201 under project 2
    with pytest.raises(ProjectMismatch, match="task 201 belongs to project 2, not 1"):
        store.record_annotation("1", annotation(7), task(201, "Project 2's note."))
    assert store.annotation_counts("1") == {} and store.projects() == []
    store.record_annotation("2", annotation(8), task(202))  # a task held by an annotation counts too
    with pytest.raises(ProjectMismatch, match="task 202 belongs to project 2"):
        store.record_annotation("1", annotation(9), task(202))


def test_a_project_purge_that_meets_another_projects_task_purges_its_own_text_and_says_what_it_refused(tmp_path):
    """A store written before ownership was checked on arrival: project 1 annotated a task whose
    data project 2 holds. Project 1's annotation goes; the task, project 2's, is refused, and said so."""
    path = tmp_path / "data" / "s.sqlite3"
    store = AnnotationStore(path)
    store.record_tasks("2", [(201, {"text": "Project 2's note."})])
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO annotations VALUES (7, '1', 201, ?, '[]', 'submitted', 1, 1, 't', 't', NULL)",
                   (json.dumps(task(201, "ZEBRA-PROJECT-1-TEXT")),))
    purged = store.purge_project("1", ModelStore(tmp_path / "models", tmp_path))
    assert (purged.annotations, purged.refused) == (1, (201,))
    assert_absent(tmp_path / "data", b"ZEBRA-PROJECT-1-TEXT")
    assert [t["id"] for t in store.unannotated_tasks("2")] == [201]


def test_deleting_an_annotation_removes_the_text_predict_stored_of_its_task(tmp_path):
    data = tmp_path / "data"
    store = AnnotationStore(data / "s.sqlite3")
    marker = "ZEBRA-PREDICTED-4410"
    store.record_tasks("1", [(5, {"text": f"Patient {marker} was seen."})])  # /predict, then annotated
    store.record_annotation("1", annotation(1), task(5, f"Patient {marker} was seen."))
    assert store.purge("1", annotations=[1]).removed
    assert_absent(data, marker.encode())


def test_a_purge_a_reader_keeps_in_the_wal_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr("clinie.sqlite_wal.BUSY_S", 0.3)  # how long the checkpoint waits for the reader
    path = tmp_path / "s.sqlite3"
    store = AnnotationStore(path)
    store.record_annotation("1", annotation(1), task(1, "ZEBRA-READ"))
    store.record_annotation("1", annotation(2), task(2))
    reader = sqlite3.connect(path, isolation_level=None)
    reader.execute("BEGIN")
    assert reader.execute("SELECT COUNT(*) FROM annotations").fetchone() == (2,)  # a snapshot, held
    assert store.purge("1", annotations=[1]).left_in_wal
    reader.execute("COMMIT")
    assert not store.purge("1", annotations=[2]).left_in_wal
    assert_absent(tmp_path, b"ZEBRA-READ")


def test_the_schema_migrates_forward_once_and_a_newer_one_is_refused(store_location):
    from ml_backend.store import MIGRATIONS

    store = AnnotationStore(store_location)
    assert rows(store, "SELECT version FROM schema_version ORDER BY version") == [(n,) for n in
                                                                                  range(1, len(MIGRATIONS) + 1)]
    AnnotationStore(store_location)  # opened again: nothing applied twice
    assert len(rows(store, "SELECT version FROM schema_version")) == len(MIGRATIONS)
    with store._write() as db:  # as a later clinie would leave it
        db.execute("INSERT INTO schema_version VALUES (?, 't')", (len(MIGRATIONS) + 1,))
    with pytest.raises(RuntimeError, match="newer than this clinie"):
        AnnotationStore(store_location)
