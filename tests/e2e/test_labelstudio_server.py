"""Smoke test of the Label Studio harness (harness/labelstudio_server.py) against a real Label Studio.

The ML-backend calls are exercised with a tiny recording HTTP server defined here: it checks the
harness and Label Studio's side of the protocol only, it is not a stand-in for clinie.
"""

from __future__ import annotations

import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from harness.labelstudio_server import LabelStudioError

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.environ.get("CLINIE_SKIP_E2E") == "1", reason="CLINIE_SKIP_E2E=1"),
]

CONFIG = ('<View><Labels name="label" toName="text"><Label value="Disease"/></Labels>'
          '<Text name="text" value="$text"/></View>')
TEXTS = ["Patient has diabetes.", "History of asthma since 2001.", "Mother had breast cancer."]


def region(text: str, word: str, region_id: str = "r1") -> dict:
    start = text.index(word)
    return {"id": region_id, "from_name": "label", "to_name": "text", "type": "labels",
            "value": {"start": start, "end": start + len(word), "text": word, "labels": ["Disease"]}}


def predicted_region(text: str) -> dict:
    """What the recording backend predicts for a task: the last word, without the final period."""
    return {**region(text, text.rstrip(".").split()[-1], "p1"), "score": 0.5}


class Recorder(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), RecordingHandler)
        self.requests: list[tuple[str, str, object]] = []
        self.lock = threading.Lock()
        self.url = f"http://127.0.0.1:{self.server_address[1]}"

    def calls(self, path: str) -> list[object]:
        with self.lock:
            return [body for _, p, body in self.requests if p == path]

    def webhooks(self, action: str) -> list[dict]:
        return [body for body in self.calls("/webhook") if isinstance(body, dict) and body.get("action") == action]


class RecordingHandler(BaseHTTPRequestHandler):
    server: Recorder

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        path = self.path.split("?")[0].rstrip("/") or "/"
        with self.server.lock:
            self.server.requests.append((self.command, path, body))
        if path == "/health":
            answer: object = {"status": "UP", "model_class": "x"}
        elif path == "/setup":
            answer = {"model_version": "v1"}
        elif path == "/predict":
            answer = {"results": [{"result": [predicted_region(task["data"]["text"])], "score": 0.5,
                                   "model_version": "v1"} for task in body["tasks"]],
                      "model_version": "v1"}
        elif path == "/webhook":
            answer = {}
        else:
            self.send_error(404)
            return
        data = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _handle

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def recorder():
    server = Recorder()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_annotation_round_trip(label_studio):
    ls, api = label_studio, label_studio.client
    assert ls.url.startswith("http://127.0.0.1:") and ls.token and ls.username == "admin@example.com"
    assert (ls.data_dir / "label-studio.log").exists()
    project = api.create_project("harness", CONFIG)
    task_ids = api.import_tasks(project, [{"text": text} for text in TEXTS])
    assert len(task_ids) == 3 and task_ids == sorted(task_ids)
    assert [api.task(tid)["data"]["text"] for tid in task_ids] == TEXTS

    sent = [region(TEXTS[0], "diabetes")]
    annotation_id = api.create_annotation(task_ids[0], sent)
    task = api.task(task_ids[0])
    assert [a["id"] for a in task["annotations"]] == [annotation_id]
    (got,) = task["annotations"][0]["result"]
    assert {k: got[k] for k in sent[0]} == sent[0]
    assert TEXTS[0][got["value"]["start"]:got["value"]["end"]] == "diabetes"

    with pytest.raises(LabelStudioError) as error:
        api.task(10**9)
    assert error.value.status == 404


def test_ml_backend_calls(label_studio, recorder):
    ls, api = label_studio, label_studio.client
    project = api.create_project("harness-ml", CONFIG)
    task_ids = api.import_tasks(project, [{"text": text} for text in TEXTS])

    def traffic_since(n: int) -> list[tuple[str, str]]:
        return [(method, path) for method, path, _ in recorder.requests[n:]]

    ml_id = api.connect_ml_backend(project, recorder.url)
    assert traffic_since(0) == [("GET", "/health"), ("POST", "/setup")] * 2
    setup = recorder.calls("/setup")[-1]
    assert setup["project"].split(".")[0] == str(project) and setup["schema"] == CONFIG
    assert setup["access_token"] == ls.token and setup["hostname"] == f"http://localhost:{ls.port}"

    # Annotation lifecycle -> webhooks, delivered before the API call returns.
    annotation_id = api.create_annotation(task_ids[0], [region(TEXTS[0], "diabetes")])
    (created,) = recorder.webhooks("ANNOTATION_CREATED")
    assert created["annotation"]["id"] == annotation_id and created["task"]["id"] == task_ids[0]
    assert created["annotation"]["result"][0]["value"]["text"] == "diabetes"
    api.update_annotation(annotation_id, [region(TEXTS[0], "Patient")])
    (updated,) = recorder.webhooks("ANNOTATION_UPDATED")
    assert updated["annotation"]["result"][0]["value"]["text"] == "Patient"
    api.delete_annotation(annotation_id)
    (deleted,) = recorder.webhooks("ANNOTATIONS_DELETED")
    assert [a["id"] for a in deleted["annotations"]] == [annotation_id]

    # Retrieve predictions: one batched /predict, stored per task as sent.
    before, n = len(recorder.calls("/predict")), len(recorder.requests)
    answer = api.retrieve_predictions(project, task_ids)
    assert answer["processed_items"] == 3
    assert traffic_since(n) == [("GET", "/health"), ("POST", "/setup"), ("POST", "/predict")]
    predicts = recorder.calls("/predict")[before:]
    assert len(predicts) == 1, predicts
    assert sorted(t["id"] for t in predicts[0]["tasks"]) == task_ids
    assert predicts[0]["params"] == {"login": None, "password": None, "context": None}
    for tid, text in zip(task_ids, TEXTS):
        stored = api.predictions(tid)
        assert len(stored) == 1
        assert stored[0]["result"] == [predicted_region(text)]
        assert stored[0]["model_version"] == "v1" and stored[0]["score"] == 0.5
        assert [p["id"] for p in api.task(tid)["predictions"]] == [stored[0]["id"]]

    # Retrieving again asks nothing: every task has a prediction for model version v1.
    api.retrieve_predictions(project, task_ids)
    assert len(recorder.calls("/predict")) == before + 1

    # Interactive pre-annotation: /predict with params.context, nothing stored.
    answer = api.interactive_annotating(ml_id, task_ids[1], {"result": []})
    assert answer["data"]["result"] == [predicted_region(TEXTS[1])]
    last = recorder.calls("/predict")[-1]
    assert [t["id"] for t in last["tasks"]] == [task_ids[1]] and last["params"]["context"] == {"result": []}
    assert len(api.predictions(task_ids[1])) == 1

    # Training is a START_TRAINING webhook.
    api.train(ml_id)
    (training,) = recorder.webhooks("START_TRAINING")
    assert training["project"]["id"] == project
    assert not [p for _, p, _ in recorder.requests if p in ("/train", "/metrics", "/validate", "/job_status")]
