"""clinie.store: every annotation kept, idempotent, versioned; registry swaps atomically."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

import pytest

from clinie.store import AnnotationStore, ModelRecord, Purged


def annotation(aid: int, result: list | None = None, cancelled: bool = False) -> dict:
    return {"id": aid, "result": result or [], "was_cancelled": cancelled, "completed_by": 1}


def task(tid: int, text: str = "some text") -> dict:
    return {"id": tid, "data": {"text": text}}


@pytest.fixture
def store(tmp_path: Path) -> AnnotationStore:
    return AnnotationStore(tmp_path / "store.sqlite3")


def test_created_updated_cancelled_are_kept_and_deleted_leaves_only_a_tombstone(store, tmp_path):
    r1 = [{"id": "a", "type": "labels", "value": {"start": 0, "end": 4, "labels": ["X"]}}]
    assert store.record_annotation("1", annotation(10, r1), task(5))
    assert not store.record_annotation("1", annotation(10, r1), task(5))  # re-delivery: no change
    assert store.record_annotation("1", annotation(10, []), task(5), "ANNOTATION_UPDATED")
    assert store.record_annotation("1", annotation(11, cancelled=True), task(6))
    with sqlite3.connect(tmp_path / "store.sqlite3") as db:  # every version, as stored
        history = db.execute("SELECT version, action, state, result FROM annotation_versions "
                             "WHERE annotation_id = 10 ORDER BY version").fetchall()
    assert [h[:3] for h in history] == [(1, "ANNOTATION_CREATED", "submitted"), (2, "ANNOTATION_UPDATED", "submitted")]
    assert json.loads(history[0][3]) == r1  # the first version is still there

    assert store.purge("1", annotations=[10, 999]) == Purged(1)
    assert store.annotation_counts("1") == {"deleted": 2, "cancelled": 1}  # 999: deleted before it arrived
    with sqlite3.connect(tmp_path / "store.sqlite3") as db:
        assert db.execute("SELECT COUNT(*) FROM annotation_versions WHERE annotation_id = 10").fetchone() == (0,)
        assert db.execute("SELECT COUNT(*) FROM annotations WHERE annotation_id = 10").fetchone() == (0,)
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


def test_registry_swaps_the_serving_version_and_survives_reopening(tmp_path):
    path = tmp_path / "s.sqlite3"
    store = AnnotationStore(path)
    assert store.serving_model("1") is None
    for n in (1, 2):
        training = store.begin_training("1")
        store.finish_training(training, ModelRecord(f"v{n}", "1", "encoder", tmp_path / f"v{n}", 10 * n,
                                                    {"labels": ["X"]}, f"2026-01-0{n}"))
    reopened = AnnotationStore(path)
    assert reopened.serving_model("1").version == "v2"
    assert [m.version for m in reopened.models("1")] == ["v1", "v2"]
    assert reopened.serving_model("1").info == {"labels": ["X"]}


def test_interrupted_training_is_marked_failed_at_start_up(tmp_path):
    path = tmp_path / "s.sqlite3"
    AnnotationStore(path).begin_training("1")
    store = AnnotationStore(path)
    assert store.abandon_running_trainings() == 1
    assert store.begin_training("1") is not None


def test_200_concurrent_writers_lose_nothing(tmp_path):
    path = tmp_path / "s.sqlite3"
    stores = [AnnotationStore(path) for _ in range(4)]  # as if several processes shared the file
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


def test_counting_training_examples_agrees_with_reading_them(tmp_path):
    store = AnnotationStore(tmp_path / "s.sqlite3")
    task = {"id": 1, "data": {"text": "x"}}
    store.record_annotation("p", {"id": 1, "result": []}, task)
    store.record_annotation("p", {"id": 2, "result": [{"x": 1}]}, task)  # a second annotation of task 1
    store.record_annotation("p", {"id": 3, "result": [], "was_cancelled": True}, {"id": 2, "data": {"text": "y"}})
    store.record_annotation("p", {"id": 4, "result": []}, {"id": 3, "data": {"text": "z"}})
    store.purge("p", annotations=[4])
    store.record_annotation("q", {"id": 5, "result": []}, {"id": 9, "data": {"text": "w"}})
    assert store.count_training_examples("p") == len(store.training_examples("p")) == 1
    assert store.count_training_examples("none") == 0
