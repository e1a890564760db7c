"""The Flask backend over real HTTP and real components: store, encoder, training worker."""

from __future__ import annotations

import base64
import json
import socket
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest
import requests
from werkzeug.serving import make_server

from clinie.core import read_documents
from clinie.extractors.relation_classifier import RELATIONS_DIR
from clinie.labelstudio import document_to_result, parse_label_config
from clinie.llm.hidden import HiddenStates
from clinie.model_version import MAIN_PART, MANIFEST, ModelVersion
from clinie.settings import Settings
from harness import DATA, ROOT
from harness.helpers import Files, assert_regions_match_tasks, assert_spans_match_text, webhook_event
from harness.labelstudio_server import free_port
from ml_backend.app import create_app
from ml_backend.metrics import Metrics
from ml_backend.service import Backend
from ml_backend.serving import NO_MODEL_VERSION, Serving
from ml_backend.store import ModelRecord
from ml_backend.training import Superseded, select_strategy, train_project

CONFIG = (ROOT / "label_configs" / "disease_ner.xml").read_text()
SCHEMA = parse_label_config(CONFIG)
NCBI_TRAIN = DATA / "ncbi_disease" / "fewshot" / "gutierrez_train100_seed42.jsonl"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", train_every=0, min_annotations=5, encoder_epochs=3,
                    strategy="encoder")


@pytest.fixture
def client(settings):
    app = create_app(settings)
    return app.test_client()


def gold_result(doc) -> list:
    result, _ = document_to_result(doc, SCHEMA.span_controls[0])
    return result


def test_health_setup_and_versions_before_any_training(client):
    assert client.get("/health").json["status"] == "UP"
    answer = client.post("/setup", json={"project": "3.1795480604", "schema": CONFIG, "hostname": "x"})
    assert answer.status_code == 200 and answer.json == {"model_version": NO_MODEL_VERSION}
    assert client.get("/versions").json == {"versions": []}


def test_predict_without_a_model_answers_one_empty_result_per_task(client):
    tasks = [{"id": i, "data": {"text": f"note {i}"}} for i in range(5)]
    answer = client.post("/predict", json={"tasks": tasks, "project": "3.17", "label_config": CONFIG})
    assert answer.status_code == 200
    assert answer.json["model_version"] == NO_MODEL_VERSION
    assert [r["result"] for r in answer.json["results"]] == [[]] * 5


@pytest.mark.parametrize("path, body, status", [
    ("/predict", b"{not json", 400),
    ("/predict", b"[1, 2]", 400),
    ("/predict", json.dumps({"tasks": "x", "project": "1", "label_config": CONFIG}).encode(), 400),
    ("/predict", json.dumps({"tasks": [], "project": None, "label_config": CONFIG}).encode(), 400),
    ("/predict", json.dumps({"tasks": [], "project": "1", "label_config": "<View>"}).encode(), 422),
    ("/predict", json.dumps({"tasks": [], "project": "77"}).encode(), 400),
    ("/setup", json.dumps({"project": "1", "schema": "<View><Text name='t' value='$t'/></View>"}).encode(), 422),
    ("/webhook", b"", 400),
    ("/webhook", json.dumps({"action": ""}).encode(), 400),
    ("/webhook", json.dumps({"action": "ANNOTATION_CREATED", "project": {"id": 1},
                             "annotation": {"id": "x"}, "task": {"id": 1, "data": {}}}).encode(), 400),
    ("/webhook", json.dumps({"action": "ANNOTATION_CREATED", "project": {"id": 1},
                             "annotation": {"id": 5, "result": [1]}, "task": {"id": 1, "data": {}}}).encode(), 400),
    ("/webhook", json.dumps({"action": "ANNOTATION_CREATED", "project": {"id": 1},
                             "annotation": {"id": 5, "result": []}, "task": {"id": 1}}).encode(), 400),
    ("/webhook", json.dumps({"action": "ANNOTATIONS_DELETED", "project": {"id": 1},
                             "annotations": [{"nope": 1}]}).encode(), 400),
    ("/webhook", json.dumps({"action": "TASKS_DELETED", "project": {"id": 1}, "tasks": [{"id": "x"}]}).encode(), 400),
    ("/webhook", json.dumps({"action": "TASKS_DELETED", "project": {"id": 1}}).encode(), 400),
    ("/webhook", json.dumps({"action": "PROJECT_DELETED", "project": {}}).encode(), 400),
])
def test_malformed_requests_get_a_clear_4xx_and_store_nothing(client, path, body, status):
    answer = client.post(path, data=body, content_type="application/json")
    assert answer.status_code == status
    assert answer.json["error"]  # says what is wrong
    backend = client.application.extensions["clinie"]
    assert backend.store.annotation_counts() == {}


def test_oversized_requests_are_refused(settings):
    client = create_app(replace(settings, max_request_mb=1)).test_client()
    answer = client.post("/predict", data=b"x" * (2 * 1024 * 1024), content_type="application/json")
    assert answer.status_code == 413 and "error" in answer.json


def test_basic_auth_when_configured(settings):
    client = create_app(replace(settings, basic_auth_user="ls", basic_auth_password="s3cret")).test_client()
    assert client.get("/health").status_code == 401
    wrong = base64.b64encode(b"ls:guess").decode()
    assert client.get("/health", headers={"Authorization": f"Basic {wrong}"}).status_code == 401
    right = base64.b64encode(b"ls:s3cret").decode()
    assert client.get("/health", headers={"Authorization": f"Basic {right}"}).status_code == 200
    assert client.post("/webhook", json={"action": "X"}).status_code == 401


def test_unknown_webhook_actions_are_acknowledged_and_deletions_counted(client):
    assert client.post("/webhook", json={"action": "PROJECT_UPDATED", "project": {"id": 1}}).status_code == 200
    event = webhook_event(9, 4, "a text", [])
    assert client.post("/webhook", json=event).json["stored"] is True
    assert client.post("/webhook", json=event).json["stored"] is False  # idempotent
    deleted = {"action": "ANNOTATIONS_DELETED", "project": {"id": 1}, "annotations": [{"id": 9}]}
    assert client.post("/webhook", json=deleted).status_code == 200
    backend = client.application.extensions["clinie"]
    assert backend.store.annotation_counts("1") == {"deleted": 1}


MARKER = "ZEBRA-PATIENT-7731"


def assert_marker_gone(data_dir: Path) -> None:
    """The marker is in no file of the data directory: the store, its WAL and shared memory."""
    files = [f for f in data_dir.rglob("*") if f.is_file()]
    assert any(f.name.startswith("clinie.sqlite3") for f in files)
    assert [f.name for f in files if MARKER.encode() in f.read_bytes()] == []


@pytest.fixture
def marked(settings):
    """A backend whose store holds task 4 of project 1 with the marker in its text (two
    versions of annotation 9) beside task 5, and a model version of the project."""
    backend = Backend(settings, start_worker=False)
    client = create_app(settings, backend).test_client()
    text = f"Patient {MARKER} was seen for asthma."
    assert client.post("/webhook", json=webhook_event(9, 4, text, [])).json["stored"]
    updated = webhook_event(9, 4, text, [{"id": "r", "from_name": "label", "to_name": "text", "type": "labels",
                                          "value": {"start": 8, "end": 26, "labels": ["Disease"], "text": MARKER}}],
                            action="ANNOTATION_UPDATED")
    assert client.post("/webhook", json=updated).json["stored"]
    assert client.post("/webhook", json=webhook_event(10, 5, "Another note.", [])).json["stored"]
    version = backend.models.write("1", "clinie-encoder-p1-t1-n1", {MAIN_PART: Files({"weights.bin": b"weights"})}, {})
    training = backend.store.begin_training("1")
    backend.store.finish_training(training, ModelRecord("clinie-encoder-p1-t1-n1", "1", "encoder", version.location,
                                                        1, {}, "2026-01-01"))
    # a cached call: the mechanism a deletion clears (a real one holds a hash of a prompt quoting
    # the note and the answer's tags; this one quotes the note, so that its bytes can be looked for)
    backend.serving.llm_cache.put("a call that read the note", {"text": f"Patient {MARKER}/B-Disease"})
    for name in ("clinie.sqlite3", "llm_cache.sqlite3"):
        assert MARKER.encode() in b"".join(f.read_bytes() for f in settings.data_dir.glob(name + "*"))
    return backend, client


def test_annotations_deleted_purges_the_annotation_and_a_late_re_delivery_is_a_no_op(marked, settings):
    backend, client = marked
    deleted = {"action": "ANNOTATIONS_DELETED", "project": {"id": 1, "label_config": CONFIG},
               "annotations": [{"id": 9}]}
    assert client.post("/webhook", json=deleted).json["stored"] is True
    assert_marker_gone(settings.data_dir)
    late = webhook_event(9, 4, f"Patient {MARKER} was seen for asthma.", [])
    assert client.post("/webhook", json=late).json["stored"] is False
    assert_marker_gone(settings.data_dir)
    assert backend.store.annotation_counts("1") == {"submitted": 1, "deleted": 1}


def test_tasks_deleted_purges_the_tasks_and_all_their_annotations(marked, settings):
    backend, client = marked
    deleted = {"action": "TASKS_DELETED", "tasks": [{"id": 4}], "project": {"id": 1, "label_config": CONFIG}}
    assert client.post("/webhook", json=deleted).json["stored"] is True
    assert_marker_gone(settings.data_dir)
    assert [e.task_id for e in backend.store.training_examples("1")] == [5]
    assert client.post("/webhook", json=webhook_event(11, 4, MARKER, [])).json["stored"] is False  # a late one


def test_tasks_deleted_naming_no_project_purges_the_tasks_where_they_are(marked, settings):
    """What Label Studio sends organization webhooks when all a project's tasks are deleted."""
    backend, client = marked
    answer = client.post("/webhook", json={"action": "TASKS_DELETED", "tasks": [{"id": 4}, {"id": 77}]})
    assert answer.status_code == 200 and answer.json["stored"] is True
    assert_marker_gone(settings.data_dir)
    assert backend.store.annotation_ids("1") == {10}


def test_project_deleted_purges_everything_of_the_project(marked, settings):
    backend, client = marked
    other = webhook_event(20, 30, "A note of project 2.", [], project=2)
    assert client.post("/webhook", json=other).json["stored"]
    assert client.post("/webhook", json={"action": "PROJECT_DELETED", "project": {"id": 1}}).json["stored"] is True
    assert_marker_gone(settings.data_dir)
    store = backend.store
    assert (store.annotation_ids("1"), store.label_config("1"), store.serving_model("1"), store.models("1")) == \
        (set(), None, None, [])
    assert store.projects() == ["2"] and store.annotation_ids("2") == {20}
    assert not (settings.models_dir / "1").exists()
    assert client.post("/predict", json={"tasks": [{"id": 4, "data": {"text": "x"}}], "project": "1.17",
                                         "label_config": CONFIG}).json["model_version"] == NO_MODEL_VERSION


def test_an_event_naming_another_projects_annotation_is_refused_and_counted(marked):
    backend, client = marked
    moved = webhook_event(9, 4, "moved", [], project=2)
    answer = client.post("/webhook", json=moved).json
    assert answer["stored"] is False and "belongs to project 1" in answer["refused"]
    deleted = {"action": "ANNOTATIONS_DELETED", "project": {"id": 2}, "annotations": [{"id": 9}]}
    assert "9" in client.post("/webhook", json=deleted).json["refused"]
    assert backend.store.annotation_ids("1") == {9, 10} and backend.store.annotation_ids("2") == set()
    assert backend.metrics.snapshot()["counts"]["events_refused"] == 2


def test_an_invalid_label_config_in_a_webhook_is_not_stored(settings):
    backend = Backend(settings, start_worker=False)
    client = create_app(settings, backend).test_client()
    assert client.post("/setup", json={"project": "1.17", "schema": CONFIG}).status_code == 200
    answer = client.post("/webhook", json={"action": "PROJECT_UPDATED",
                                           "project": {"id": 1, "label_config": "<not xml"}})
    assert answer.status_code == 200 and "label_config_refused" in answer.json
    event = webhook_event(12, 6, "A new note.", [], label_config="<View><Text name='text' value='$text'/></View>")
    answer = client.post("/webhook", json=event).json
    assert answer["stored"] is True and "no <Labels>" in answer["label_config_refused"]  # the annotation is kept
    assert backend.store.label_config("1") == CONFIG
    assert client.post("/predict", json={"tasks": [{"id": 6, "data": {"text": "x"}}],
                                         "project": "1.17"}).status_code == 200
    assert backend.metrics.snapshot()["counts"]["label_configs_refused"] == 2


class _NotFound(Exception):
    status_code = 404


class _FakeLabelStudio:
    """What ``LabelStudioSync`` reads of label-studio-sdk's client: a project, its tasks (a
    listing that may miss some) and each task and annotation by id (404 once deleted)."""

    def __init__(self, listed: list[dict], existing: list[dict]) -> None:
        def get(ids: set):
            def fetch(_, id):
                if int(id) not in ids:
                    raise _NotFound()
            return fetch

        annotation_ids = {a["id"] for t in existing for a in t["annotations"]}
        self.projects = type("Projects", (), {"get": lambda _, id: type("P", (), {"label_config": CONFIG})()})()
        self.tasks = type("Tasks", (), {"list": lambda _, **kwargs: listed,
                                        "get": get({t["id"] for t in existing})})()
        self.annotations = type("Annotations", (), {"get": get(annotation_ids)})()


@pytest.mark.usefixtures("marked")
def test_re_sync_purges_what_label_studio_no_longer_holds(settings):
    backend = Backend(replace(settings, label_studio_url="http://127.0.0.1:9", label_studio_api_key="k"),
                      start_worker=False)
    kept = {"id": 5, "data": {"text": "Another note."},
            "annotations": [{"id": 10, "result": [], "was_cancelled": False, "completed_by": 1}]}
    still = {"id": 4, "annotations": [{"id": 9}]}
    backend.sync._client = _FakeLabelStudio([kept], [still, kept])  # a listing that missed task 4: kept
    assert backend.resync("1")
    assert backend.store.annotation_ids("1") == {9, 10}
    backend.sync._client = _FakeLabelStudio([kept], [kept])  # task 4 and its annotation 9 were deleted
    assert backend.resync("1")
    assert_marker_gone(settings.data_dir)
    assert backend.store.annotation_ids("1") == {10}
    assert backend.metrics.snapshot()["counts"]["annotations_deleted_by_sync"] == 1


def predict_marked_note(client, more: str = "") -> dict:
    """/predict of task 4 of project 1, never annotated, whose text holds the marker, and of task 5."""
    tasks = [{"id": 4, "data": {"text": f"Patient {MARKER} was seen for asthma.{more}"}, "annotations": []},
             {"id": 5, "data": {"text": "Another note."}, "annotations": []}]
    answer = client.post("/predict", json={"tasks": tasks, "project": "1.17", "label_config": CONFIG})
    assert answer.status_code == 200 and len(answer.json["results"]) == 2
    return answer.json


@pytest.mark.parametrize("group_commit", [True, False])
def test_predicted_tasks_are_kept_as_the_projects_unannotated_text_until_label_studio_deletes_them(settings,
                                                                                                   group_commit):
    backend = Backend(replace(settings, webhook_group_commit=group_commit), start_worker=False)
    client = create_app(settings, backend).test_client()
    predict_marked_note(client)
    assert [t["id"] for t in backend.store.unannotated_tasks("1")] == [4, 5]
    assert MARKER.encode() in b"".join(f.read_bytes() for f in settings.data_dir.glob("clinie.sqlite3*"))
    assert 'clinie_unannotated_tasks{project="1"} 2.0' in client.get("/metrics").text.splitlines()
    assert client.post("/webhook", json=webhook_event(10, 5, "Another note.", [])).json["stored"]  # 5 is annotated
    assert backend.metrics_snapshot()["store"]["unannotated_tasks"] == {"1": 1}

    deleted = {"action": "TASKS_DELETED", "tasks": [{"id": 4}], "project": {"id": 1, "label_config": CONFIG}}
    assert client.post("/webhook", json=deleted).json["stored"] is True
    assert_marker_gone(settings.data_dir)
    predict_marked_note(client)  # a /predict Label Studio sent before the deletion, arriving after it
    assert_marker_gone(settings.data_dir)
    assert backend.store.unannotated_tasks("1") == []


def test_a_predicted_task_deleted_with_all_tasks_of_its_project_is_purged(settings):
    """"Delete all tasks" names no project: the task is purged from the project that stored it."""
    backend = Backend(settings, start_worker=False)
    client = create_app(settings, backend).test_client()
    predict_marked_note(client)
    assert backend.store.unannotated_counts() == {"1": 2}
    answer = client.post("/webhook", json={"action": "TASKS_DELETED", "tasks": [{"id": 4}, {"id": 5}]})
    assert answer.json["stored"] is True
    assert_marker_gone(settings.data_dir)


def test_a_failure_to_store_predicted_tasks_is_counted_and_fails_no_prediction(settings, caplog):
    backend = Backend(replace(settings, webhook_group_commit=False), start_worker=False)
    client = create_app(settings, backend).test_client()
    backend.store._db().execute("PRAGMA max_page_count=1")  # this thread's connection: the disk is full
    answer = predict_marked_note(client, more=" Stable." * 20_000)
    assert [r["result"] for r in answer["results"]] == [[], []] and answer["model_version"] == NO_MODEL_VERSION
    assert backend.metrics.snapshot()["counts"]["task_store_failures"] == 1
    assert "clinie_task_store_failures_total 1.0" in client.get("/metrics").text.splitlines()
    backend.store._db().execute("PRAGMA max_page_count=1073741823")
    assert backend.store.unannotated_tasks("1") == []
    assert "not stored: OperationalError" in caplog.text and MARKER not in caplog.text


def test_no_task_data_is_stored_when_storing_is_turned_off(settings):
    backend = Backend(replace(settings, unannotated_tasks=0), start_worker=False)
    predict_marked_note(create_app(settings, backend).test_client())
    assert backend.store.unannotated_counts() == {}
    assert_marker_gone(settings.data_dir)


def test_re_sync_keeps_the_newest_unannotated_tasks_and_purges_those_label_studio_deleted(settings):
    backend = Backend(replace(settings, label_studio_url="http://127.0.0.1:9", label_studio_api_key="k",
                              unannotated_tasks=2), start_worker=False)
    annotated = {"id": 5, "data": {"text": "Another note."},
                 "annotations": [{"id": 10, "result": [], "was_cancelled": False, "completed_by": 1}]}
    older = {"id": 20, "data": {"text": "An older note."}, "annotations": []}
    newer = {"id": 21, "data": {"text": "A newer note."}, "annotations": []}
    marked = {"id": 22, "data": {"text": f"Patient {MARKER} was seen for asthma."}, "annotations": []}
    tasks = [annotated, older, newer, marked]
    backend.sync._client = _FakeLabelStudio(tasks, tasks)
    assert backend.resync("1")
    assert backend.store.annotation_ids("1") == {10}
    assert [t["id"] for t in backend.store.unannotated_tasks("1")] == [21, 22]  # the newest two
    backend.sync._client = _FakeLabelStudio(tasks[:3], tasks[:3])  # task 22 was deleted in Label Studio
    assert backend.resync("1")
    assert_marker_gone(settings.data_dir)
    assert [t["id"] for t in backend.store.unannotated_tasks("1")] == [20, 21]


def test_a_webhook_flood_of_200_concurrent_events_loses_none(settings):
    backend = Backend(settings, start_worker=False)
    server = make_server("127.0.0.1", 0, create_app(settings, backend), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}/webhook"
    try:
        def send(i: int) -> int:
            return requests.post(url, json=webhook_event(1000 + i, i, f"note {i} — café\r\n", []),
                                 timeout=30).status_code

        with ThreadPoolExecutor(max_workers=200) as pool:
            codes = list(pool.map(send, range(200)))
    finally:
        server.shutdown()
    assert codes == [200] * 200
    assert backend.store.annotation_counts("1") == {"submitted": 200}
    assert backend.metrics.snapshot()["counts"]["annotations_received"] == 200


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A backend whose project 1 was trained from 30 real NCBI-disease annotations by webhook."""
    settings = Settings(data_dir=tmp_path_factory.mktemp("trained"), train_every=0, min_annotations=5,
                        encoder_epochs=15, strategy="encoder")
    backend = Backend(settings)
    client = create_app(settings, backend).test_client()
    docs = list(read_documents(NCBI_TRAIN))
    for i, doc in enumerate(docs[:30]):
        assert client.post("/webhook", json=webhook_event(i + 1, i + 1, doc.text, gold_result(doc))).status_code == 200
    assert client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 1}}).status_code == 200
    assert backend.jobs.wait_idle(timeout=600)
    return settings, backend, client, docs


@pytest.mark.slow
def test_training_by_webhook_swaps_in_a_model_that_predicts_valid_spans(trained):
    settings, backend, client, docs = trained
    versions = client.get("/versions").json["versions"]
    assert len(versions) == 1 and versions[0].endswith("-n30")
    tasks = [{"id": 100 + i, "data": {"text": d.text}} for i, d in enumerate(docs[30:60])]
    answer = client.post("/predict", json={"tasks": tasks, "project": "1.99", "label_config": CONFIG}).json
    assert answer["model_version"] == versions[0]
    assert len(answer["results"]) == len(tasks)
    regions = [r for res in answer["results"] for r in res["result"]]
    assert regions, "a model trained on 30 NCBI sentences predicts some Disease spans on 30 others"
    for task, res in zip(tasks, answer["results"]):
        ids = [r["id"] for r in res["result"]]
        assert len(ids) == len(set(ids))
        for r in res["result"]:
            assert (r["from_name"], r["to_name"], r["type"]) == ("label", "text", "labels")
            assert r["value"]["labels"] == ["Disease"] and 0 <= r["score"] <= 1
            assert task["data"]["text"][r["value"]["start"]:r["value"]["end"]] == r["value"]["text"]
    metrics = client.get("/metrics?format=json").json
    assert metrics["counts"]["trainings_succeeded"] == 1 and metrics["store"]["model_versions"] == 1


@pytest.mark.slow
def test_one_bad_task_never_sinks_the_batch(trained):
    _, backend, client, docs = trained
    long_note = ((docs[0].text + "\r\n\t") * 400)[:50_000]
    tasks = [{"id": 1, "data": {"text": docs[40].text}}, {"id": 2, "data": {"other": "x"}}, "not a task",
             {"id": 3, "data": {"text": ""}}, {"id": 4, "data": {"text": long_note}}]
    errors_before = backend.metrics.snapshot()["counts"].get("prediction_errors", 0)
    answer = client.post("/predict", json={"tasks": tasks, "project": "1", "label_config": CONFIG})
    assert answer.status_code == 200
    results = answer.json["results"]
    assert len(results) == 5 and results[1]["result"] == [] and results[2]["result"] == []
    assert results[3]["result"] == []
    long_spans = results[4]["result"]
    assert long_spans and all(long_note[r["value"]["start"]:r["value"]["end"]] == r["value"]["text"]
                              for r in long_spans)
    assert backend.metrics.snapshot()["counts"]["prediction_errors"] == errors_before + 2


@pytest.mark.slow
def test_a_failed_training_leaves_the_old_model_serving(trained):
    settings, backend, client, _ = trained
    serving = backend.store.serving_model("1").version
    broken = Backend(replace(settings, encoder_model=str(settings.data_dir / "no-such-model")), start_worker=False)
    assert broken.train("1") is None
    assert broken.store.serving_model("1").version == serving
    assert broken.store.training_counts()["failed"] == 1
    assert broken.metrics.snapshot()["counts"]["trainings_failed"] == 1
    spans = client.post("/predict", json={"tasks": [{"id": 1, "data": {"text": "breast cancer"}}],
                                          "project": "1", "label_config": CONFIG}).json
    assert spans["model_version"] == serving


@pytest.mark.slow
def test_predicted_spans_come_back_as_annotations_without_drift(trained):
    """What Label Studio receives can be read back as a Document with the same offsets."""
    from clinie.labelstudio import annotation_to_document

    _, _, client, docs = trained
    task = {"id": 7, "data": {"text": docs[50].text}}
    result = client.post("/predict", json={"tasks": [task], "project": "1", "label_config": CONFIG}).json
    doc = annotation_to_document(task, result["results"][0]["result"], SCHEMA)
    assert_spans_match_text(doc.text, doc.entities)
    assert len(doc.entities) == len(result["results"][0]["result"])


@pytest.mark.parametrize("llm_model", ["", "/app/models/gemma-3-270m-q4_k_m.gguf"])  # as the image names it
def test_a_fresh_project_on_the_embedded_llm_shows_no_regions_until_it_has_a_few_annotations(tmp_path, llm_model):
    # zero-shot, the embedded 270M model's spans are noise; with five demonstrations the spans it
    # confirms are mostly right (docs/results.md, cold start)
    settings = Settings(data_dir=tmp_path / "cold", train_every=0, min_annotations=5,
                        llm_model=llm_model)  # strategy, cold start: auto
    backend = Backend(settings, start_worker=False)
    client = create_app(settings, backend).test_client()
    task = {"id": 1, "data": {"text": "Familial breast cancer and ataxia telangiectasia."}}
    docs = list(read_documents(NCBI_TRAIN))
    for i, doc in enumerate(docs[:4]):
        client.post("/webhook", json=webhook_event(i + 1, i + 1, doc.text, gold_result(doc)))
    answer = client.post("/predict", json={"tasks": [task], "project": "1", "label_config": CONFIG}).json
    assert answer == {"results": [{"result": [], "model_version": NO_MODEL_VERSION}], "model_version": NO_MODEL_VERSION}
    client.post("/webhook", json=webhook_event(5, 5, docs[4].text, gold_result(docs[4])))
    assert backend.model_version("1") == "clinie-llm-llama.cpp-gemma-3-270m-q4_k_m-verified-k5-pool5"


@pytest.mark.slow
def test_a_verified_cold_start_shows_only_the_spans_the_llm_confirms_scored_by_its_answer(tmp_path):
    settings = Settings(data_dir=tmp_path / "verified", train_every=0, cold_start="verified")
    backend = Backend(settings, start_worker=False)
    client = create_app(settings, backend).test_client()
    task = {"id": 1, "data": {"text": "Familial breast cancer and ataxia telangiectasia."}}
    answer = client.post("/predict", json={"tasks": [task], "project": "1", "label_config": CONFIG}).json
    assert answer["model_version"] == "clinie-llm-llama.cpp-gemma-3-270m-q4_k_m-verified-k0-pool0"
    assert_regions_match_tasks([task], answer)
    verified = backend.serving._assembled["1"][1]
    questions = verified.questions.usage.calls + verified.questions.usage.cache_hits
    regions = answer["results"][0]["result"]
    assert questions >= len(regions)  # one question per proposed span; only the confirmed are shown
    assert all(0 < r["score"] <= 1 for r in regions)


@pytest.mark.slow
def test_a_fresh_project_is_pre_annotated_by_the_llm_and_new_annotations_join_its_demos(tmp_path):
    settings = Settings(data_dir=tmp_path / "llm", train_every=0, llm_k=2, cold_start="llm")  # strategy "auto"
    client = create_app(settings).test_client()
    docs = list(read_documents(NCBI_TRAIN))
    task = {"id": 500, "data": {"text": docs[90].text}}
    first = client.post("/predict", json={"tasks": [task], "project": "4", "label_config": CONFIG}).json
    assert first["model_version"] == "clinie-llm-llama.cpp-gemma-3-270m-q4_k_m-k0-pool0"  # zero-shot
    for i, doc in enumerate(docs[:3]):
        client.post("/webhook", json=webhook_event(i + 1, i + 1, doc.text, gold_result(doc), project=4))
    answer = client.post("/predict", json={"tasks": [task], "project": "4", "label_config": CONFIG}).json
    assert answer["model_version"] == "clinie-llm-llama.cpp-gemma-3-270m-q4_k_m-k2-pool3"
    assert client.post("/setup", json={"project": "4.1", "schema": CONFIG}).json["model_version"] == \
        answer["model_version"]
    for r in answer["results"][0]["result"]:
        assert task["data"]["text"][r["value"]["start"]:r["value"]["end"]] == r["value"]["text"]
        assert r["value"]["labels"] == ["Disease"] and 0 < r["score"] <= 1
    assert client.get("/health").json["remote_endpoints"] == []  # nothing leaves the machine
    backend = client.application.extensions["clinie"]
    restarted = Serving(settings, backend.store, backend.models, backend.metrics)
    restarted.warm_up()  # at a restart: the LLM the cold start prompts
    restarted.warm_up_trainings()  # and, in the training thread, the one the selection's probe reads
    assert restarted._llm_access is not None and restarted._states is not None


@pytest.mark.heavy
@pytest.mark.slow
def test_a_project_with_relations_trains_both_models_and_predicts_arrows_between_its_regions(tmp_path):
    """DDI sentences annotated with drugs and interactions, by webhook; predictions carry
    relations whose from_id/to_id are regions of the same result."""
    config = (ROOT / "label_configs" / "drug_interactions.xml").read_text()
    schema = parse_label_config(config)
    settings = Settings(data_dir=tmp_path / "ddi", train_every=0, min_annotations=5, encoder_epochs=10,
                        strategy="encoder", min_precision=0.0)  # every arrow shown (thresholds: below)
    backend = Backend(settings)
    client = create_app(settings, backend).test_client()
    docs = [d for d in read_documents(DATA / "ddi" / "train.jsonl") if d.relations and len(d.text) < 160][:25]
    for i, doc in enumerate(docs):
        result, _ = document_to_result(doc, schema.span_controls[0], schema.relation_label_names)
        event = webhook_event(i + 1, i + 1, doc.text, result, project=9, label_config=config)
        assert client.post("/webhook", json=event).json["stored"]
    stored = backend.store.training_examples("9")
    assert sum(sum(r["type"] == "relation" for r in e.result) for e in stored) == sum(len(d.relations) for d in docs)
    record = backend.train("9")
    assert record is not None and record.info["relations"] == list(schema.relation_label_names)
    # the entities served first, on their own; the relation classifier came after, in a version of its own
    first, with_relations, *_ = backend.store.models("9")
    assert not ModelVersion.open(first.location).has("relations") and first.info["relations"] == []
    assert with_relations.version == first.version + "-relations"
    assert ModelVersion.open(record.location).has("relations")
    assert record.info["relation_thresholds"] == {}  # CLINIE_MIN_PRECISION=0: none chosen
    tasks = [{"id": 100 + i, "data": {"text": d.text}} for i, d in enumerate(docs[:10])]
    answer = client.post("/predict", json={"tasks": tasks, "project": "9", "label_config": config}).json
    arrows = 0
    for task, res in zip(tasks, answer["results"]):
        regions = {r["id"]: r for r in res["result"] if r["type"] == "labels"}
        for r in res["result"]:
            if r["type"] == "relation":
                arrows += 1
                assert r["from_id"] in regions and r["to_id"] in regions and r["from_id"] != r["to_id"]
                assert r["labels"][0] in schema.relation_label_names and r["direction"] == "right"
                assert 0 < r["score"] <= 1
        for r in regions.values():
            assert task["data"]["text"][r["value"]["start"]:r["value"]["end"]] == r["value"]["text"]
    assert arrows > 0, "trained on these very sentences, the classifier finds some of their interactions"
    restarted = Serving(settings, backend.store, backend.models, backend.metrics)
    restarted.warm_up()  # what a restart loads before the first /predict: the relation classifier too
    assert {part for project, part in restarted._loaded if project == "9"} == {"encoder", RELATIONS_DIR}


@pytest.mark.slow
def test_before_training_the_llm_asks_about_the_pairs_of_a_relation_project(tmp_path):
    config = (ROOT / "label_configs" / "drug_interactions.xml").read_text()
    schema = parse_label_config(config)
    settings = Settings(data_dir=tmp_path / "llm-ddi", train_every=0, llm_k=1, strategy="llm")
    backend = Backend(settings, start_worker=False)
    client = create_app(settings, backend).test_client()
    docs = [d for d in read_documents(DATA / "ddi" / "train.jsonl") if len(d.relations) == 1 and len(d.text) < 90][:2]
    for i, doc in enumerate(docs):
        result, _ = document_to_result(doc, schema.span_controls[0], schema.relation_label_names)
        event = webhook_event(i + 1, i + 1, doc.text, result, project=5)
        event["project"]["label_config"] = config
        client.post("/webhook", json=event)
    # the very sentence of a demonstration: the model copies its drug tags, then meets the pair
    task = {"id": 9, "data": {"text": docs[1].text}}
    answer = client.post("/predict", json={"tasks": [task], "project": "5", "label_config": config}).json
    [result] = answer["results"]
    regions = {r["id"] for r in result["result"] if r["type"] == "labels"}
    assert len(regions) >= 2, result
    for arrow in (r for r in result["result"] if r["type"] == "relation"):
        assert arrow["from_id"] in regions and arrow["to_id"] in regions
        assert arrow["labels"][0] in schema.relation_label_names
    relations = backend.serving._assembled["5"][1].relations
    assert relations.usage.calls + relations.usage.cache_hits >= 1  # one question per candidate pair


def train_by_webhook(settings: Settings, docs: list, project: int = 1):
    backend = Backend(settings)
    client = create_app(settings, backend).test_client()
    for i, doc in enumerate(docs):
        event = webhook_event(i + 1, i + 1, doc.text, gold_result(doc), project=project)
        assert client.post("/webhook", json=event).status_code == 200
    assert client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": project}}).status_code == 200
    assert backend.jobs.wait_idle(timeout=900)
    return backend, client


@pytest.mark.heavy
@pytest.mark.slow
def test_training_selects_a_strategy_by_cross_validation_and_the_backend_serves_it(tmp_path):
    settings = Settings(data_dir=tmp_path / "select", train_every=0, min_annotations=5, encoder_epochs=10, llm_k=2,
                        select_strategies="encoder,probe,gated-0.8,llm", cold_start="none", select_folds=3,
                        select_prefer="")  # strategy "auto"; the best mean F1 wins (the rule: test_fewshot)
    # (filter-then-rerank in cross-validation: test_fewshot; served: the LLM-endpoint tests below)
    docs = list(read_documents(NCBI_TRAIN))
    backend, client = train_by_webhook(settings, docs[:15])
    record = backend.store.serving_model("1")
    selection = record.info["selection"]
    assert set(selection["strategies"]) == {"encoder", "probe", "gated-0.80", "llm-k2"}
    assert selection["n_documents"] == 15 and selection["scheme"] == "3-fold" and selection["created_at"]
    best = max(selection["strategies"].values(), key=lambda s: s["mean_f1"])["mean_f1"]
    assert selection["strategies"][selection["strategy"]]["mean_f1"] == best
    assert all(len(s["fold_f1"]) == 3 for s in selection["strategies"].values())
    # a strategy that reads more than the encoder serves from a version of its own, named for it
    expected = {"encoder": record.version, "probe": record.version, "gated-0.80": record.version,
                "llm-k2": "clinie-llm-llama.cpp-gemma-3-270m-q4_k_m-k2-pool15"}[selection["strategy"]]
    if selection["strategy"] in ("probe", "gated-0.80"):
        assert record.version.endswith("-" + selection["strategy"]) and record.info["first_model"]
    tasks = [{"id": 100 + i, "data": {"text": d.text}} for i, d in enumerate(docs[40:44])]
    answer = client.post("/predict", json={"tasks": tasks, "project": "1", "label_config": CONFIG}).json
    assert answer["model_version"] == expected == backend.model_version("1")
    assert_regions_match_tasks(tasks, answer)


class RecordedMetrics(Metrics):
    """The real metrics, with what /metrics showed of the training at each fit."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[dict] = []

    def training_step(self, project: str, done: int, total: int) -> None:
        super().training_step(project, done, total)
        self.seen.append(self.snapshot()["trainings_in_flight"][0])


@pytest.mark.slow
def test_a_quick_encoder_serves_before_selection_then_the_fully_trained_one_and_a_newer_training_supersedes(tmp_path):
    settings = Settings(data_dir=tmp_path / "first", train_every=0, min_annotations=2, encoder_epochs=2,
                        first_model_steps=1, select_strategies="encoder", select_folds=2)
    backend = Backend(settings, start_worker=False)
    client = create_app(settings, backend).test_client()
    for i, doc in enumerate(list(read_documents(NCBI_TRAIN))[:10]):
        assert client.post("/webhook", json=webhook_event(i + 1, i + 1, doc.text, gold_result(doc))).json["stored"]
    # the project's unannotated text, as /predict stores it: what a student strategy would learn from
    backend.store.record_tasks("1", [(50, {"text": "Cancer ."}), (51, {"body": "no $text"}), (1, {"text": "x"})])
    metrics = RecordedMetrics()

    record, annotations = train_project(backend.store, settings, backend.models, "1",
                                        backend.store.begin_training("1"), metrics)
    assert record.info["selection"] is None and backend.model_version("1") == record.version  # serving already
    assert record.info["cut_short"]  # 1 step of the 2 epochs' 4
    # a newer training is waiting throughout: the first stage (the encoder) ends and serves all the
    # same, else trainings that come faster than it ends would none serve; the second never starts
    two_stages = replace(settings, select_strategies="encoder,probe", select_prefer="encoder")
    with pytest.raises(Superseded):
        select_strategy(backend.store, two_stages, backend.models, record, annotations, metrics,
                        superseded=lambda: True)
    full = backend.store.serving_model("1")  # the encoder selection reads, trained again to its full budget
    selection = full.info["selection"]
    assert full.version == record.version + "-full" and full.info["first_model"] == record.version
    assert full.info["selection"] == selection and selection["strategy"] == "encoder" and not full.info["cut_short"]
    assert selection["unannotated"] == {"documents": 1, "skipped": 1}  # task 1 is annotated
    assert backend.model_version("1") == full.version
    assert Path(record.location, MANIFEST).is_file() and Path(full.location, MANIFEST).is_file()
    # how many fits there will be is shown at once; a superseded stage stops before its first
    assert [(s["stage"], s["done"], s["total"]) for s in metrics.seen] == [
        ("selection", 0, 2), ("selection", 1, 2), ("selection", 2, 2), ("selection, the other strategies", 0, 2)]


@pytest.mark.slow
def test_the_likeliest_winner_serves_before_the_other_strategies_are_compared_and_keeps_serving_if_best(tmp_path):
    """Selection in stages: the probe (``CLINIE_SELECT_PREFER``) is compared with what serves (the
    first encoder, one optimiser step: it predicts nothing) and serves at once; filter-then-probe
    is cross-validated after, on the same folds, and replaces it only if it beats it. What is
    shown is cut at the thresholds chosen on the probe's cross-validated predictions."""
    settings = Settings(data_dir=tmp_path / "staged", train_every=0, min_annotations=5, encoder_epochs=1,
                        first_model_steps=1, select_strategies="encoder,gated-0.90,probe", cold_start="none",
                        select_folds=2)
    serving_at: dict[str, str] = {}
    backend = Backend(settings)
    stage = backend.metrics.training_stage
    backend.metrics.training_stage = lambda project, name: (
        serving_at.setdefault(name, getattr(backend.store.serving_model(project), "version", None)),
        stage(project, name))[-1]
    client = create_app(settings, backend).test_client()
    docs = list(read_documents(NCBI_TRAIN))[:10]
    for i, doc in enumerate(docs):
        assert client.post("/webhook", json=webhook_event(i + 1, i + 1, doc.text, gold_result(doc))).status_code == 200
    assert client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 1}}).status_code == 200
    assert backend.jobs.wait_idle(timeout=900)

    first = serving_at["selection"]
    assert serving_at["selection, the other strategies"] == first + "-probe"  # served before gated was compared
    final = backend.store.serving_model("1")
    selection = final.info["selection"]
    assert set(selection["strategies"]) == {"probe", "encoder", "gated-0.90"} and selection["incumbent"] in (
        "probe", "gated-0.90")
    figures = {name: f["mean_f1"] for name, f in selection["strategies"].items()}
    assert figures["encoder"] < figures["probe"] <= figures[selection["strategy"]]
    thresholds = selection["thresholds"]
    assert thresholds["min_precision"] == settings.min_precision and "" in thresholds["spans"]
    answer = client.post("/predict", json={"tasks": [{"id": 100 + i, "data": {"text": d.text}}
                                                    for i, d in enumerate(docs)], "project": "1",
                                          "label_config": CONFIG}).json
    least = {label: t for label, t in thresholds["spans"].items()}
    for result in answer["results"]:
        for region in result["result"]:
            label = region["value"]["labels"][0]
            assert least.get(label, least[""]) is not None  # a label none of whose scores reached it is not shown


@pytest.mark.slow
def test_while_the_cold_start_serves_the_first_stage_comes_first_then_the_encoder_and_relations_join(tmp_path):
    """The LLM serves a drug-interaction project (its cold start); *Start training*: no encoder is
    trained before the selection's first stage (one cut short would not beat the LLM), which
    compares the probe with the LLM at once; the encoder and the relation classifier are added
    to what it served after it, the relations first, each in a version that takes its place. The
    next training, the probe serving, goes the same way."""
    config = (ROOT / "label_configs" / "drug_interactions.xml").read_text()
    schema = parse_label_config(config)
    settings = Settings(data_dir=tmp_path / "cold", train_every=0, min_annotations=5, encoder_epochs=1, llm_k=1,
                        cold_start="llm", select_strategies="probe", select_folds=2, keep_models=0)
    backend = Backend(settings, start_worker=False)
    client = create_app(settings, backend).test_client()
    docs = [d for d in read_documents(DATA / "ddi" / "train.jsonl") if d.relations and len(d.text) < 120][:7]

    def annotate(i: int) -> None:
        result, _ = document_to_result(docs[i], schema.span_controls[0], schema.relation_label_names)
        assert client.post("/webhook", json=webhook_event(i + 1, i + 1, docs[i].text, result, project=2,
                                                          label_config=config)).json["stored"]

    for i in range(6):
        annotate(i)
    serving_at: dict[str, str | None] = {}
    stage = backend.metrics.training_stage
    backend.metrics.training_stage = lambda project, name: (
        serving_at.setdefault(name, getattr(backend.store.serving_model(project), "version", None)),
        stage(project, name))[-1]
    final = backend.train("2")
    first = min(backend.store.models("2"), key=lambda m: len(m.version))  # each later one is named after it
    assert not ModelVersion.open(first.location).parts and first.kind == "annotations"  # no encoder trained first
    assert list(serving_at)[:2] == ["annotations", "selection"] and serving_at["selection"] is None
    stage_one = serving_at["relations"]  # what the first stage served: the relations came after it, then the encoder
    assert stage_one is not None and stage_one.startswith(first.version)
    assert serving_at["encoder, full budget"] == stage_one + "-relations"  # they serve before the encoder is trained
    assert final.version == stage_one + "-relations-encoder"
    assert ModelVersion.open(final.location).has(MAIN_PART) and ModelVersion.open(final.location).has(RELATIONS_DIR)
    assert final.info["selection"]["incumbent"] == "llm-k1" and final.info["relations"]
    # the probe serves: an encoder alone would not replace it either
    annotate(6)
    serving_at.clear()
    again = backend.train("2")
    assert list(serving_at)[:2] == ["annotations", "selection"] and serving_at["selection"] == final.version
    assert again.version.endswith("-n7-probe-relations-encoder") and again.info["selection"]["incumbent"] == "probe"


@pytest.mark.slow
def test_with_no_selection_the_fully_trained_encoder_follows_a_cut_short_first_model(tmp_path):
    settings = Settings(data_dir=tmp_path / "nosel", train_every=0, min_annotations=2, encoder_epochs=2,
                        first_model_steps=1, strategy="encoder")
    backend, client = train_by_webhook(settings, list(read_documents(NCBI_TRAIN))[:10])
    versions = {m.version: m for m in backend.store.models("1")}
    [first] = [m for version, m in versions.items() if not version.endswith("-full")]
    full = versions[first.version + "-full"]
    assert first.info["cut_short"] and len(versions) == 2
    assert backend.store.serving_model("1").version == full.version
    assert client.post("/predict", json={"tasks": [{"id": 1, "data": {"text": "Cancer."}}], "project": "1",
                                         "label_config": CONFIG}).json["model_version"] == full.version


@pytest.mark.heavy
@pytest.mark.slow
def test_a_student_learns_from_the_projects_predicted_tasks_serves_when_selected_and_forgets_a_deleted_one(tmp_path):
    """The project's unannotated tasks, stored as /predict saw them, are what the student's teacher
    labels in the background training; the selected student serves from its version directory;
    a deleted unannotated task leaves no byte of its text in the data directory."""
    settings = Settings(data_dir=tmp_path / "student", train_every=0, min_annotations=5, encoder_epochs=2,
                        select_strategies="student-0.00", cold_start="none", select_folds=2)
    docs = list(read_documents(NCBI_TRAIN))
    backend = Backend(settings)
    client = create_app(settings, backend).test_client()
    texts = [d.text for d in docs[40:52]] + [f"Patient {MARKER} was seen for asthma."]
    tasks = [{"id": 500 + i, "data": {"text": text}} for i, text in enumerate(texts)]
    assert client.post("/predict", json={"tasks": tasks, "project": "1", "label_config": CONFIG}).status_code == 200
    for i, doc in enumerate(docs[:8]):
        assert client.post("/webhook", json=webhook_event(i + 1, i + 1, doc.text, gold_result(doc))).status_code == 200
    stages: list[tuple[str, int, int]] = []  # what /metrics showed, in order
    stage, step = backend.metrics.training_stage, backend.metrics.training_step
    backend.metrics.training_stage = lambda project, name: stages.append((name, 0, 0)) or stage(project, name)
    backend.metrics.training_step = lambda project, done, total: (stages.append((stages[-1][0], done, total))
                                                                  or step(project, done, total))
    assert client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 1}}).status_code == 200
    assert backend.jobs.wait_idle(timeout=900)

    teacher = [(done, total) for name, done, total in stages if name == "teacher"]
    assert teacher[-1][0] == teacher[-1][1] >= len(texts)  # every unannotated sentence read, counted
    assert [name for name, _, _ in stages].index("teacher") < [name for name, _, _ in stages].index("selection")
    record = backend.store.serving_model("1")
    assert record.info["selection"]["strategy"] == "student-0.00"
    assert record.info["selection"]["unannotated"] == {"documents": len(texts), "skipped": 0}
    student = json.loads(Path(record.location, "student", "clinie.json").read_text())
    assert (student["n_train_docs"], student["n_taught_docs"]) == (8, len(texts))  # every sentence, at 0.00
    answer = client.post("/predict", json={"tasks": tasks[:3], "project": "1", "label_config": CONFIG}).json
    assert answer["model_version"] == record.version == backend.model_version("1")
    assert record.version.endswith("-student-0.00")
    for task, result in zip(tasks[:3], answer["results"]):
        for region in result["result"]:
            value = region["value"]
            assert task["data"]["text"][value["start"]:value["end"]] == value["text"]

    deleted = {"action": "TASKS_DELETED", "tasks": [{"id": tasks[-1]["id"]}], "project": {"id": 1}}
    assert client.post("/webhook", json=deleted).json["stored"] is True
    assert_marker_gone(settings.data_dir)
    assert len(backend.store.unannotated_tasks("1")) == len(texts) - 1
    # the teacher read the note: its hidden states, cached in memory, go with it
    assert not any(MARKER in text for states in HiddenStates._instances.values() for text, _ in states._cache)


@pytest.mark.slow
def test_a_selected_probe_is_saved_with_its_model_version_and_serves_after_a_restart(tmp_path):
    """Filter-then-probe is selected and trained; after a restart it serves the same answer from
    disk, and so does the probe alone from the same saved version (as if it had been selected)."""
    settings = Settings(data_dir=tmp_path / "probe", train_every=0, min_annotations=5, encoder_epochs=10,
                        select_strategies="gated-0.90", cold_start="none", select_folds=3,
                        min_precision=0.0)  # every region shown: what is compared is what the version predicts
    docs = list(read_documents(NCBI_TRAIN))
    backend, client = train_by_webhook(settings, docs[:15])
    record = backend.store.serving_model("1")
    assert record.info["selection"]["strategy"] == "gated-0.90" and ModelVersion.open(record.location).has("probe")
    tasks = [{"id": 100 + i, "data": {"text": d.text}} for i, d in enumerate(docs[40:46])]
    body = {"tasks": tasks, "project": "1", "label_config": CONFIG}
    answer = client.post("/predict", json=body).json
    assert answer["model_version"] == record.version == backend.model_version("1")
    assert record.version.endswith("-gated-0.90")
    restarted = Backend(settings, start_worker=False)
    assert create_app(settings, restarted).test_client().post("/predict", json=body).json == answer

    probe = replace(record, version=record.version + "-p", info={**record.info, "selection": {"strategy": "probe"}})
    restarted.store.finish_training(restarted.store.begin_training("1"), probe)
    answered_by_probe = create_app(settings, restarted).test_client().post("/predict", json=body).json
    assert answered_by_probe["model_version"] == probe.version
    for result in (answer, answered_by_probe):
        assert any(r["result"] for r in result["results"])
        assert_regions_match_tasks(tasks, result)


@pytest.mark.heavy
@pytest.mark.slow
def test_region_scores_are_calibrated_and_the_task_score_is_the_least_sure_word(tmp_path):
    from clinie.evaluation.calibration import calibrator_from_dict
    from clinie.extractors.encoder import EncoderTagger

    settings = Settings(data_dir=tmp_path / "calibrated", train_every=0, min_annotations=5, encoder_epochs=40,
                        select_strategies="encoder", cold_start="none",
                        select_folds=3)  # 40 epochs: 80 steps, enough to find spans
    docs = list(read_documents(NCBI_TRAIN))
    backend, client = train_by_webhook(settings, docs[:15])
    record = backend.store.serving_model("1")
    selection = record.info["selection"]
    assert selection["strategy"] == "encoder" and selection["calibration_spans"] > 0
    assert 0 <= selection["ece_calibrated"] <= 1 and 0 <= selection["ece_raw"] <= 1
    calibrator = calibrator_from_dict(selection["calibrator"])
    tasks = [{"id": 100 + i, "data": {"text": d.text}} for i, d in enumerate(docs[40:60])]
    answer = client.post("/predict", json={"tasks": tasks, "project": "1", "label_config": CONFIG}).json
    raw = EncoderTagger.load(record.location).predict([d.with_annotations(()) for d in docs[40:60]])
    compared = 0
    for doc, result in zip(raw, answer["results"]):
        regions = sorted((r for r in result["result"] if r["type"] == "labels"), key=lambda r: r["value"]["start"])
        assert len(regions) == len(doc.entities)
        for region, span in zip(regions, doc.entities):
            assert region["score"] == pytest.approx(calibrator([span.score])[0], abs=1e-3)
            compared += 1
        # the task score ranks, it is not a span's chance: the encoder's least sure word, regions or none
        assert result["score"] == pytest.approx(doc.meta["confidence"], abs=1e-4)
        assert result["score"] <= min((span.score for span in doc.entities), default=1.0) + 1e-4
    assert compared > 0


@pytest.mark.slow
def test_a_batch_over_its_time_budget_answers_the_first_task_so_label_studio_asks_one_by_one(trained):
    settings, backend, client, docs = trained
    tasks = [{"id": 200 + i, "data": {"text": d.text}} for i, d in enumerate(docs[30:50])]
    body = {"tasks": tasks, "project": "1", "label_config": CONFIG}
    whole = client.post("/predict", json=body).json["results"]
    hurried = Backend(replace(settings, predict_budget_seconds=1e-6), start_worker=False)
    answer = create_app(hurried.settings, hurried).test_client().post("/predict", json=body).json
    assert len(whole) == 20 and answer["results"] == whole[:1]
    # each task alone is answered in full, whatever the budget
    assert create_app(hurried.settings, hurried).test_client().post(
        "/predict", json={**body, "tasks": tasks[5:6]}).json["results"] == whole[5:6]
    snapshot = hurried.metrics_snapshot()
    assert snapshot["counts"]["predict_budget_exceeded"] == 1 and snapshot["predict_batches"] == []


@pytest.fixture
def silent_server():
    """A TCP server that accepts connections and never answers: an LLM endpoint that hangs."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
    stop.set()
    thread.join()
    for connection in held:
        connection.close()
    listener.close()


@pytest.mark.slow
@pytest.mark.parametrize("endpoint", ["down", "hanging"])
def test_an_llm_endpoint_down_or_hanging_leaves_the_trained_encoder_serving(trained, endpoint, silent_server,
                                                                            tmp_path):
    """The project's selection chose filter-then-rerank (the LLM decides the encoder's hard
    cases); its OpenAI-compatible endpoint is down or never answers. Every task still gets the
    encoder's spans — from the first task that needed the LLM on, labelled with the encoder's
    version (so Label Studio asks again later), and the endpoint is not tried again within the
    batch — and the failure is counted: not one empty result."""
    settings, backend, client, docs = trained
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    with sqlite3.connect(settings.store_path) as source, sqlite3.connect(data_dir / "clinie.sqlite3") as copy:
        source.backup(copy)
    base_url = silent_server if endpoint == "hanging" else f"http://127.0.0.1:{free_port()}/v1"
    remote = Backend(replace(settings, data_dir=data_dir, strategy="auto", llm_provider="openai",
                             llm_base_url=base_url, llm_model="any", llm_timeout_seconds=1), start_worker=False)
    record = remote.store.serving_model("1")
    selected = replace(record, version=record.version + "-s",
                       info={**record.info, "selection": {"strategy": "rerank-0.90"}})
    remote.store.finish_training(remote.store.begin_training("1"), selected)
    assert remote.health()["remote_endpoints"] == [base_url]

    tasks = [{"id": 300 + i, "data": {"text": d.text}} for i, d in enumerate(docs[60:68])]
    body = {"tasks": tasks, "project": "1", "label_config": CONFIG}
    answer = create_app(remote.settings, remote).test_client().post("/predict", json=body).json
    encoder_answer = client.post("/predict", json=body).json
    assert "rerank-0.90" in answer["model_version"]
    versions = [r["model_version"] for r in answer["results"]]
    first = versions.index(selected.version)  # the first task with a hard case, asked in vain
    assert versions == [answer["model_version"]] * first + [selected.version] * (len(tasks) - first)
    assert [r["result"] for r in answer["results"]] == [r["result"] for r in encoder_answer["results"]]
    assert any(r["result"] for r in answer["results"])
    counts = remote.metrics_snapshot()["counts"]
    assert counts["llm_failures"] == 1 and "prediction_errors" not in counts
