"""The backend process (gunicorn, as deployed) killed with SIGKILL mid-work, then restarted on the
same data directory: no acknowledged annotation is lost, the store is consistent, the serving
model is the one that served before."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from clinie.core import read_documents
from clinie.labelstudio import document_to_result, parse_label_config
from harness import DATA
from harness.backend_server import BackendServer
from harness.helpers import DISEASE_CONFIG, webhook_event
from ml_backend.store import AnnotationStore

NCBI_TRAIN = DATA / "ncbi_disease" / "fewshot" / "gutierrez_train100_seed42.jsonl"
CONTROL = parse_label_config(DISEASE_CONFIG).span_controls[0]
#: Nothing here needs the LLM: training fits the encoder alone.
ENCODER_ONLY = {"CLINIE_TRAIN_EVERY": "0", "CLINIE_MIN_ANNOTATIONS": "5", "CLINIE_SELECT_STRATEGIES": "",
                "CLINIE_STRATEGY": "encoder"}


def assert_store_consistent(data_dir: Path) -> None:
    with sqlite3.connect(data_dir / "clinie.sqlite3") as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        # every annotation's latest state is its last recorded version
        assert db.execute("SELECT COUNT(*) FROM annotations a WHERE version != (SELECT MAX(version) "
                          "FROM annotation_versions v WHERE v.annotation_id = a.annotation_id)").fetchone() == (0,)
        # the serving model of each project is a registered one whose files exist
        for (path,) in db.execute("SELECT m.path FROM serving s JOIN models m USING (version)"):
            assert Path(path).is_dir() and not path.endswith(".partial")


def metrics(server: BackendServer) -> dict:
    return requests.get(server.url + "/metrics?format=json", timeout=10).json()


def assert_log_structured_and_free_of(log: Path, text: str) -> None:
    """Every line the backend wrote (gunicorn's too) is one JSON record, and none quotes ``text``."""
    lines = log.read_text().splitlines()
    assert lines and all(json.loads(line)["level"] for line in lines), log.read_text()[-2000:]
    assert text not in log.read_text()


def test_sigkill_during_a_webhook_burst_loses_no_acknowledged_annotation(tmp_path):
    """Also: with ``CLINIE_LOG_FORMAT=json`` the whole log is JSON lines, and no note text is in it."""
    data_dir = tmp_path / "data"
    acknowledged: list[int] = []
    lock = threading.Lock()
    events = [webhook_event(5000 + i, i, f"note {i}: fever, café\r\n\tcough", []) for i in range(600)]
    logging = {"CLINIE_LOG_FORMAT": "json", **ENCODER_ONLY}

    with BackendServer(data_dir, **logging) as server:
        def send(event: dict) -> None:
            try:
                if requests.post(server.url + "/webhook", json=event, timeout=10).status_code == 200:
                    with lock:
                        acknowledged.append(event["annotation"]["id"])
            except requests.RequestException:
                pass  # sent while the process died: not acknowledged, Label Studio would log it

        with ThreadPoolExecutor(max_workers=16) as pool:
            for event in events:
                pool.submit(send, event)
            while len(acknowledged) < 150:
                time.sleep(0.01)
            server.kill()
    assert 150 <= len(acknowledged) < len(events), "the kill landed mid-burst"

    assert_store_consistent(data_dir)
    with BackendServer(data_dir, **logging) as server:
        submitted = metrics(server)["store"]["annotations"]["submitted"]
        assert submitted >= len(acknowledged)
        # Label Studio (or a re-sync) delivers everything again: stored once each, nothing doubled
        for event in events:
            assert requests.post(server.url + "/webhook", json=event, timeout=10).status_code == 200
        assert metrics(server)["store"]["annotations"] == {"submitted": len(events)}
    with sqlite3.connect(data_dir / "clinie.sqlite3") as db:
        assert set(acknowledged) <= {r[0] for r in db.execute("SELECT annotation_id FROM annotations")}
        assert db.execute("SELECT MAX(version) FROM annotations").fetchone() == (1,)
    assert_store_consistent(data_dir)
    assert_log_structured_and_free_of(server.log_path, "fever, café")


@pytest.mark.heavy
@pytest.mark.slow
def test_sigkill_during_training_leaves_the_serving_model_and_the_store_intact(tmp_path):
    data_dir = tmp_path / "data"
    docs = list(read_documents(NCBI_TRAIN))[:40]
    task = {"tasks": [{"id": 999, "data": {"text": docs[-1].text}}], "project": "1", "label_config": DISEASE_CONFIG}

    def annotate(server: BackendServer, first: int, last: int) -> None:
        for i in range(first, last):
            result, _ = document_to_result(docs[i], CONTROL)
            event = webhook_event(i + 1, i + 1, docs[i].text, result)
            assert requests.post(server.url + "/webhook", json=event, timeout=10).status_code == 200

    def start_training(server: BackendServer) -> None:
        answer = requests.post(server.url + "/webhook", json={"action": "START_TRAINING", "project": {"id": 1}},
                               timeout=10)
        assert answer.status_code == 200

    with BackendServer(data_dir, CLINIE_ENCODER_EPOCHS="2", **ENCODER_ONLY) as server:
        annotate(server, 0, 20)
        start_training(server)
        deadline = time.monotonic() + 300
        while not requests.get(server.url + "/versions", timeout=10).json()["versions"]:
            assert time.monotonic() < deadline, server.log_tail()
            time.sleep(1)
        [first] = requests.get(server.url + "/versions", timeout=10).json()["versions"]
        before = requests.post(server.url + "/predict", json=task, timeout=60).json()

    # A long training (many epochs), killed while it runs.
    with BackendServer(data_dir, CLINIE_ENCODER_EPOCHS="200", **ENCODER_ONLY) as server:
        annotate(server, 20, 30)
        start_training(server)
        while metrics(server)["store"]["trainings"].get("running", 0) == 0:
            time.sleep(0.2)
        time.sleep(3)
        server.kill()
    assert_store_consistent(data_dir)

    with BackendServer(data_dir, CLINIE_ENCODER_EPOCHS="2", **ENCODER_ONLY) as server:
        deadline = time.monotonic() + 60  # the serving model is loaded at start, before any request
        while "model_load" not in metrics(server)["latency_seconds"]:
            assert time.monotonic() < deadline, server.log_tail()
            time.sleep(0.2)
        status = metrics(server)
        assert status["store"]["annotations"] == {"submitted": 30}
        assert status["store"]["trainings"] == {"succeeded": 1, "failed": 1}, "the killed one is marked failed"
        assert requests.get(server.url + "/versions", timeout=10).json()["versions"] == [first]
        assert requests.post(server.url + "/predict", json=task, timeout=60).json() == before
        # and the next training goes through, over the killed one's leftovers
        start_training(server)
        deadline = time.monotonic() + 300
        while len(requests.get(server.url + "/versions", timeout=10).json()["versions"]) < 2:
            assert time.monotonic() < deadline, server.log_tail()
            time.sleep(1)
        assert requests.post(server.url + "/predict", json=task, timeout=60).json()["model_version"].endswith("-n30")
    assert_store_consistent(data_dir)


def test_sigterm_lets_the_predictions_in_flight_finish(tmp_path):
    """``docker stop``: the request being served (the LLM pre-annotating a batch, seconds of work,
    a minute on a busy machine) is answered in full before the process exits, cleanly."""
    texts = [d.text for d in list(read_documents(NCBI_TRAIN))[:4]]
    body = {"tasks": [{"id": i, "data": {"text": t}} for i, t in enumerate(texts[1:])], "project": "1",
            "label_config": DISEASE_CONFIG}
    # No predict budget: on a busy machine the whole batch is answered however long it takes, and
    # SIGTERM then leaves it up to 600 s.
    with BackendServer(tmp_path / "data", CLINIE_SELECT_STRATEGIES="", CLINIE_PREDICT_BUDGET_SECONDS="0",
                       CLINIE_COLD_START="llm") as server:
        warm_up = {**body, "tasks": [{"id": 9, "data": {"text": texts[0]}}]}  # loads the LLM
        assert requests.post(server.url + "/predict", json=warm_up, timeout=300).status_code == 200
        answers: list[requests.Response | Exception] = []

        def predict() -> None:
            try:
                answers.append(requests.post(server.url + "/predict", json=body, timeout=300))
            except requests.RequestException as error:  # shown by the assertion below
                answers.append(error)

        request = threading.Thread(target=predict)
        request.start()
        while not (batches := metrics(server)["predict_batches"]):  # the batch is being predicted
            time.sleep(0.05)
        assert batches[0]["done"] < 3, "SIGTERM must come while the batch is in flight"
        assert server.terminate(timeout=300) == 0
        request.join()
    [answer] = answers
    assert isinstance(answer, requests.Response), answer
    assert answer.status_code == 200 and len(answer.json()["results"]) == 3
    assert answer.json()["model_version"].startswith("clinie-llm-")


def test_a_purge_and_a_report_beside_a_live_backend_lose_nothing_and_bring_nothing_back(tmp_path, store_location):
    """``clinie purge`` of one project and ``clinie report`` of another, each a process of its own
    on the live backend's store while annotators of a third send webhooks; then SIGKILL and a
    restart. On SQLite, in the data directory; on PostgreSQL, in a database they all share."""
    data_dir = tmp_path / "data"
    acknowledged: list[int] = []
    lock, stop = threading.Lock(), threading.Event()
    settings = {**ENCODER_ONLY, **({"CLINIE_DATABASE_URL": store_location} if "://" in store_location else {})}
    env = {**os.environ, "CLINIE_DATA_DIR": str(data_dir), **settings}

    def clinie(*args: str) -> int:
        return subprocess.run([sys.executable, "-m", "clinie.cli", *args, "--data-dir", str(data_dir)], env=env,
                              capture_output=True, timeout=300).returncode

    with BackendServer(data_dir, **settings) as server:
        def post(event: dict) -> bool:
            try:
                return requests.post(server.url + "/webhook", json=event, timeout=10).status_code == 200
            except requests.RequestException:
                return False  # sent while the process died: not acknowledged

        for i in range(20):
            assert post(webhook_event(3000 + i, 3000 + i, f"ZEBRA-PURGED {i}", [], project=2))
        assert post(webhook_event(4000, 4000, "A note of project 3.", [], project=3))

        def annotate(sender: int) -> None:
            for n in range(10_000):
                if stop.is_set():
                    return
                annotation_id = 10_000 + sender * 10_000 + n
                if post(webhook_event(annotation_id, annotation_id, f"note {annotation_id}: fever", [])):
                    with lock:
                        acknowledged.append(annotation_id)

        with ThreadPoolExecutor(max_workers=16) as pool:
            for sender in range(16):
                pool.submit(annotate, sender)
            assert clinie("purge", "--project", "2") == 0
            # too few annotations for a report: it fails, once it has opened and closed the store
            assert clinie("report", "--project", "3", "--out", str(tmp_path / "report")) != 0
            after_purge = len(acknowledged)
            while len(acknowledged) < after_purge + 100:
                time.sleep(0.01)
            server.kill()
            stop.set()

    with BackendServer(data_dir, **settings) as server:
        assert metrics(server)["store"]["annotations"]["submitted"] >= len(acknowledged) + 1
    store = AnnotationStore(settings.get("CLINIE_DATABASE_URL") or data_dir / "clinie.sqlite3")
    held = {r[0] for r in store._read("SELECT annotation_id FROM annotations")}
    assert store._read("SELECT COUNT(*) FROM annotations WHERE project = '2'")[0][0] == 0
    assert store._read("SELECT COUNT(*) FROM tombstones WHERE project = '2'")[0][0] >= 20
    assert set(acknowledged) <= held, f"{len(set(acknowledged) - held)} acknowledged events lost"
    if "://" not in store_location:
        assert_store_consistent(data_dir)
