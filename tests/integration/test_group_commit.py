"""Group commit (ml_backend.group_commit) on a real SQLite file: concurrent webhooks are committed
together, each answered only once committed, and one that fails sinks none of the others."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import hypothesis
import pytest
from hypothesis import HealthCheck, given, strategies as st

from clinie.settings import Settings
from harness import ROOT
from harness.helpers import webhook_event
from ml_backend.app import create_app
from ml_backend.group_commit import GroupCommit
from ml_backend.service import Backend
from ml_backend.store import AnnotationStore


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", train_every=0, strategy="encoder")


def stored_ids(path: Path) -> set[int]:
    """What another connection reads from the file: only what was committed."""
    with sqlite3.connect(path) as db:
        return {r[0] for r in db.execute("SELECT annotation_id FROM annotations")}


def annotation_step(store: AnnotationStore, annotation_id: int):
    return lambda db: store.record_annotation_in(db, "1", {"id": annotation_id, "result": []},
                                                 {"id": annotation_id, "data": {"text": f"note {annotation_id}"}})


class Gate:
    """A step that holds the writer until released, so that the steps sent meanwhile wait
    together and go into its next transaction; records the size of each transaction."""

    def __init__(self, store: AnnotationStore, monkeypatch: pytest.MonkeyPatch) -> None:
        self.entered, self.release = threading.Event(), threading.Event()
        self.batches: list[int] = []
        write_together = store.write_together

        def recording(steps):
            self.batches.append(len(steps))
            return write_together(steps)

        monkeypatch.setattr(store, "write_together", recording)

    @staticmethod
    def until_queued(commits: GroupCommit, n: int) -> None:
        """Until ``n`` steps wait behind the gate, for the writer's next transaction."""
        while commits._queue.qsize() < n:
            threading.Event().wait(0.01)

    def step(self, db: sqlite3.Connection) -> str:
        self.entered.set()
        assert self.release.wait(30)
        return "gate"


def test_steps_waiting_together_are_committed_in_one_transaction_and_answered_only_once_committed(
        tmp_path, monkeypatch):
    store = AnnotationStore(tmp_path / "s.sqlite3")
    gate = Gate(store, monkeypatch)
    commits = GroupCommit(store)
    with ThreadPoolExecutor(max_workers=21) as pool:
        held = pool.submit(commits.run, gate.step)
        assert gate.entered.wait(30)
        waiting = [pool.submit(commits.run, annotation_step(store, i)) for i in range(1, 21)]
        gate.until_queued(commits, 20)  # all of them queued behind the gate
        assert not any(f.done() for f in waiting) and stored_ids(store._path) == set()
        gate.release.set()
        assert held.result(30) == "gate" and [f.result(30) for f in waiting] == [True] * 20
    assert gate.batches == [1, 20]
    assert stored_ids(store._path) == set(range(1, 21))
    commits.close()


def test_a_failing_step_is_undone_alone_and_its_error_goes_to_its_caller(tmp_path, monkeypatch):
    store = AnnotationStore(tmp_path / "s.sqlite3")
    gate = Gate(store, monkeypatch)
    commits = GroupCommit(store)

    def half_written_then_fails(db: sqlite3.Connection) -> None:
        annotation_step(store, 99)(db)
        raise KeyError("a bad event")

    with ThreadPoolExecutor(max_workers=12) as pool:
        pool.submit(commits.run, gate.step)
        assert gate.entered.wait(30)
        good = [pool.submit(commits.run, annotation_step(store, i)) for i in range(1, 6)]
        bad = pool.submit(commits.run, half_written_then_fails)
        good += [pool.submit(commits.run, annotation_step(store, i)) for i in range(6, 11)]
        gate.until_queued(commits, 11)
        gate.release.set()
        with pytest.raises(KeyError, match="a bad event"):
            bad.result(30)
        assert [f.result(30) for f in good] == [True] * 10
    assert gate.batches == [1, 11]  # one transaction held the bad step and the good ones
    assert stored_ids(store._path) == set(range(1, 11))  # 99, half written, was undone
    assert store.changes_since_training("1") == 10
    commits.close()


def test_when_the_transaction_itself_fails_each_step_is_committed_alone(tmp_path):
    store = AnnotationStore(tmp_path / "s.sqlite3")

    def ends_the_transaction(db: sqlite3.Connection) -> None:
        db.execute("ROLLBACK")  # as SQLite does by itself on a full disk or an I/O error
        raise sqlite3.OperationalError("disk I/O error")

    steps = [annotation_step(store, 1), ends_the_transaction, annotation_step(store, 2)]
    outcomes = store.write_together(steps)
    assert [o.result for o in outcomes] == [True, None, True]
    assert outcomes[0].error is None and isinstance(outcomes[1].error, sqlite3.OperationalError)
    assert stored_ids(store._path) == {1, 2}


def test_after_close_a_step_commits_alone(tmp_path):
    store = AnnotationStore(tmp_path / "s.sqlite3")
    commits = GroupCommit(store)
    assert commits.run(annotation_step(store, 1)) is True
    commits.close()
    assert commits.run(annotation_step(store, 2)) is True
    assert stored_ids(store._path) == {1, 2}


@pytest.mark.parametrize("group_commit", [True, False])
def test_concurrent_annotators_all_get_200_and_every_event_is_stored(settings, group_commit):
    settings = replace(settings, webhook_group_commit=group_commit)
    backend = Backend(settings, start_worker=False)
    client = create_app(settings, backend).test_client()
    events = [webhook_event(1000 + i, i, f"note {i}: fever, café", []) for i in range(160)]
    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(lambda e: client.post("/webhook", json=e), events))
    assert [a.status_code for a in answers] == [200] * 160
    assert all(a.json["stored"] is True for a in answers)
    assert stored_ids(settings.store_path) == {e["annotation"]["id"] for e in events}
    assert backend.store.annotation_counts("1") == {"submitted": 160}
    assert backend.store.changes_since_training("1") == 160
    # delivered again, concurrently: nothing changes, nothing doubles
    with ThreadPoolExecutor(max_workers=16) as pool:
        again = list(pool.map(lambda e: client.post("/webhook", json=e).json["stored"], events))
    assert again == [False] * 160 and backend.store.changes_since_training("1") == 160
    backend.close()


def test_a_failing_event_among_concurrent_ones_gets_its_error_and_the_others_are_stored(settings, monkeypatch):
    backend = Backend(settings, start_worker=False)
    client = create_app(settings, backend).test_client()
    record = backend.store.record_annotation_in

    def failing_for_13(db, project, annotation, task, action="ANNOTATION_CREATED"):
        if annotation["id"] == 13:
            raise sqlite3.IntegrityError("a constraint failed")
        return record(db, project, annotation, task, action)

    monkeypatch.setattr(backend.store, "record_annotation_in", failing_for_13)
    gate = Gate(backend.store, monkeypatch)
    events = [webhook_event(i, i, f"note {i}", []) for i in range(1, 31)]
    with ThreadPoolExecutor(max_workers=31) as pool:
        pool.submit(backend.commits.run, gate.step)
        assert gate.entered.wait(30)
        answers = [pool.submit(client.post, "/webhook", json=e) for e in events]
        gate.until_queued(backend.commits, 30)
        gate.release.set()
        codes = {e["annotation"]["id"]: a.result(30).status_code for e, a in zip(events, answers)}
    assert gate.batches == [1, 30]
    assert codes == {i: 500 if i == 13 else 200 for i in range(1, 31)}
    assert stored_ids(settings.store_path) == set(range(1, 31)) - {13}
    assert backend.metrics.snapshot()["counts"]["server_errors"] == 1
    backend.close()


def test_group_commit_keeps_refusals_tombstones_ordering_and_the_label_config(settings):
    backend = Backend(settings, start_worker=False)
    client = create_app(settings, backend).test_client()
    first = webhook_event(9, 4, "A note.", [])
    first["annotation"]["updated_at"] = "2026-01-02T10:00:00Z"
    assert client.post("/webhook", json=first).json["stored"] is True
    assert backend.store.label_config("1") == first["project"]["label_config"]
    # another project naming the annotation: refused, counted; nothing of it is stored, its config
    # neither: the event had no right to the project it names
    moved = webhook_event(9, 4, "moved", [], project=2)
    answer = client.post("/webhook", json=moved).json
    assert answer["stored"] is False and "belongs to project 1" in answer["refused"]
    assert backend.store.label_config("2") is None
    # an older state than the one held changes nothing
    stale = webhook_event(9, 4, "An older note.", [{"x": 1}])
    stale["annotation"]["updated_at"] = "2026-01-02T09:00:00Z"
    assert client.post("/webhook", json=stale).json["stored"] is False
    # a config clinie cannot use is refused while the annotation is stored
    odd = webhook_event(10, 5, "Another note.", [], label_config="<View><Text name='text' value='$text'/></View>")
    answer = client.post("/webhook", json=odd).json
    assert answer["stored"] is True and "no <Labels>" in answer["label_config_refused"]
    assert backend.store.label_config("1") == first["project"]["label_config"]
    # deleted: a late re-delivery is a no-op
    deleted = {"action": "ANNOTATIONS_DELETED", "project": {"id": 1}, "annotations": [{"id": 9}]}
    assert client.post("/webhook", json=deleted).json["stored"] is True
    assert client.post("/webhook", json=first).json["stored"] is False
    assert backend.store.annotation_ids("1") == {10}
    assert backend.metrics.snapshot()["counts"]["events_refused"] == 1
    backend.close()


def test_every_train_every_changes_a_training_is_requested(settings):
    backend = Backend(replace(settings, train_every=3), start_worker=False)
    requested: list[str] = []
    backend.webhooks.request_training = requested.append  # what the webhooks call to request one
    client = create_app(backend.settings, backend).test_client()
    for i in range(1, 5):
        assert client.post("/webhook", json=webhook_event(i, i, f"note {i}", [])).status_code == 200
    assert requested == ["1", "1"]  # at 3 changes, and at 4: the counter is reset by the training itself
    backend.close()


# --- under injected failures: one answer per event, given only once its own commit is durable ----

def fails_to_commit(db: sqlite3.Connection) -> None:
    """Leaves the transaction unable to commit, as a full disk at COMMIT does: a foreign key
    checked only then (``defer_foreign_keys``) names a model version that does not exist."""
    db.execute("PRAGMA defer_foreign_keys=ON")
    db.execute("INSERT INTO serving VALUES ('9', 'no such version', 'now')")


def ends_the_transaction(db: sqlite3.Connection) -> None:
    db.execute("ROLLBACK")  # as SQLite does by itself on some I/O errors
    raise sqlite3.OperationalError("disk I/O error")


def raises(db: sqlite3.Connection) -> None:
    raise KeyError("a bad event")


FAILURES = {"fails to commit": fails_to_commit, "ends the transaction": ends_the_transaction, "raises": raises}


def faulty_step(store: AnnotationStore, annotation_id: int, failure: str | None):
    """Stores annotation ``annotation_id``, then fails as ``failure`` says (None: succeeds)."""
    def step(db: sqlite3.Connection) -> int:
        annotation_step(store, annotation_id)(db)
        if failure is not None:
            FAILURES[failure](db)
        return annotation_id
    return step


@hypothesis.settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from([None, None, *FAILURES]), min_size=1, max_size=12))
def test_each_step_gets_exactly_its_own_outcome_and_only_what_succeeded_is_stored(tmp_path_factory, failures):
    store = AnnotationStore(tmp_path_factory.mktemp("store") / "s.sqlite3")
    outcomes = store.write_together([faulty_step(store, i, f) for i, f in enumerate(failures, start=1)])
    assert len(outcomes) == len(failures)
    for i, (failure, outcome) in enumerate(zip(failures, outcomes), start=1):
        assert (outcome.result, outcome.error is None) == ((i, True) if failure is None else (None, False))
    assert stored_ids(store._path) == {i for i, f in enumerate(failures, start=1) if f is None}


@pytest.mark.parametrize("failure", list(FAILURES))
def test_concurrent_events_beside_a_failing_one_are_answered_their_own_outcome(tmp_path, monkeypatch, failure):
    """Through the writer thread: 20 events in one batch, one of which fails as ``failure`` says."""
    store = AnnotationStore(tmp_path / "s.sqlite3")
    gate = Gate(store, monkeypatch)
    commits = GroupCommit(store)
    with ThreadPoolExecutor(max_workers=21) as pool:
        pool.submit(commits.run, gate.step)
        assert gate.entered.wait(30)
        futures = {i: pool.submit(commits.run, faulty_step(store, i, failure if i == 7 else None))
                   for i in range(1, 21)}
        gate.until_queued(commits, 20)
        gate.release.set()
        answered = {i: f.exception(30) is None for i, f in futures.items()}
        assert {i: f.result(30) for i, f in futures.items() if answered[i]} == {i: i for i in answered if answered[i]}
    assert answered == {i: i != 7 for i in range(1, 21)}
    assert stored_ids(store._path) == set(range(1, 21)) - {7}
    commits.close()


FULL_DISK_WRITER = """
import json, os, resource, sys, threading
from ml_backend.group_commit import GroupCommit
from ml_backend.store import AnnotationStore
store = AnnotationStore(sys.argv[1])
store.record_annotation("1", {"id": 1, "result": []}, {"id": 1, "data": {"text": "first"}})
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), int(sys.argv[2])))  # the disk fills up from here
commits, acknowledged, lock = GroupCommit(store), [], threading.Lock()
def send(sender):
    for n in range(12):
        i = 100 + sender * 100 + n
        try:
            commits.run(lambda db: store.record_annotation_in(db, "1", {"id": i, "result": []},
                                                               {"id": i, "data": {"text": "fever " * 17_000}}))
        except Exception:
            continue
        with lock:
            acknowledged.append(i)
threads = [threading.Thread(target=send, args=(s,)) for s in range(16)]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps(acknowledged), flush=True)
os._exit(0)  # no close, no checkpoint: as a crash leaves the files
"""


def test_under_a_full_disk_every_event_acknowledged_is_in_the_store_after_a_crash(tmp_path):
    """16 writers of 100 KB notes against a file-size limit (how a full disk behaves for SQLite):
    some are refused, and each one acknowledged is in the store when it is opened again."""
    path = tmp_path / "s.sqlite3"
    ran = subprocess.run([sys.executable, "-c", FULL_DISK_WRITER, str(path), str(3_000_000)], capture_output=True,
                         text=True, timeout=300, cwd=ROOT)
    assert ran.returncode == 0, ran.stderr[-3000:]
    acknowledged = set(json.loads(ran.stdout))
    assert 0 < len(acknowledged) < 16 * 12, "the limit refused some events and let others through"
    store = AnnotationStore(path)
    assert acknowledged <= store.annotation_ids("1")
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the writer's death
def test_a_writer_that_dies_answers_every_waiting_event_and_later_ones_commit_alone(tmp_path, monkeypatch):
    store = AnnotationStore(tmp_path / "s.sqlite3")
    gate = Gate(store, monkeypatch)
    commits = GroupCommit(store)

    def kills_the_writer(db: sqlite3.Connection) -> None:
        raise SystemExit("a BaseException no step should raise")

    with ThreadPoolExecutor(max_workers=12) as pool:
        pool.submit(commits.run, gate.step)
        assert gate.entered.wait(30)
        waiting = [pool.submit(commits.run, annotation_step(store, i)) for i in range(1, 6)]
        waiting.append(pool.submit(commits.run, kills_the_writer))
        waiting += [pool.submit(commits.run, annotation_step(store, i)) for i in range(6, 11)]
        gate.until_queued(commits, 11)
        gate.release.set()
        for future in waiting:  # every one answered (none hangs), none as stored
            assert isinstance(future.exception(30), RuntimeError)
    assert stored_ids(store._path) == set()
    assert commits.run(annotation_step(store, 11)) is True  # committed alone, in this thread
    assert stored_ids(store._path) == {11}
    commits.close()


def test_closing_with_events_queued_commits_them_all_before_the_writer_stops(tmp_path, monkeypatch):
    store = AnnotationStore(tmp_path / "s.sqlite3")
    gate = Gate(store, monkeypatch)
    commits = GroupCommit(store)
    with ThreadPoolExecutor(max_workers=22) as pool:
        pool.submit(commits.run, gate.step)
        assert gate.entered.wait(30)
        waiting = [pool.submit(commits.run, annotation_step(store, i)) for i in range(1, 21)]
        gate.until_queued(commits, 20)
        closing = pool.submit(commits.close)
        gate.release.set()
        assert [f.result(30) for f in waiting] == [True] * 20
        closing.result(60)
    assert stored_ids(store._path) == set(range(1, 21))
