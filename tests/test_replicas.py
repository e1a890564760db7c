"""Beyond one machine: the store in PostgreSQL, two web replicas and training jobs run by
``clinie worker`` processes. A worker SIGKILLed in the middle of a training: another finishes the
job, a model serves, and both replicas answer with it; every replica's /metrics shows the
training's progress and the queue."""

from __future__ import annotations

import time

import pytest
import requests

from clinie.core import read_documents
from clinie.labelstudio import document_to_result, parse_label_config
from tests.support import DATA
from tests.support.backend_server import BackendServer, WorkerProcess
from tests.support.helpers import DISEASE_CONFIG, webhook_event

DOCS = list(read_documents(DATA / "ncbi_disease" / "fewshot" / "gutierrez_train100_seed42.jsonl"))[:21]
CONTROL = parse_label_config(DISEASE_CONFIG).span_controls[0]
#: The encoder alone, a few epochs: long enough to be killed in the middle of.
SETTINGS = {"CLINIE_TRAIN_EVERY": "0", "CLINIE_MIN_ANNOTATIONS": "5", "CLINIE_SELECT_STRATEGIES": "",
            "CLINIE_STRATEGY": "encoder", "CLINIE_ENCODER_EPOCHS": "3", "CLINIE_FIRST_MODEL_STEPS": "0"}


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"no {what} after {timeout:.0f} s"
        time.sleep(0.5)
    return value


@pytest.mark.slow
def test_a_worker_killed_mid_training_leaves_the_job_to_another_and_both_replicas_serve_the_model(
        tmp_path, postgres_server):
    data_dir = tmp_path / "data"
    settings = {**SETTINGS, "CLINIE_DATABASE_URL": postgres_server.database("replicas")}
    with BackendServer(data_dir, **settings) as one, BackendServer(data_dir, **settings) as two:
        replicas = [one, two]
        for i, doc in enumerate(DOCS[:20]):  # annotations, to either replica
            result, _ = document_to_result(doc, CONTROL)
            answer = requests.post(replicas[i % 2].url + "/webhook", json=webhook_event(i + 1, i + 1, doc.text, result),
                                   timeout=10)
            assert answer.status_code == 200 and answer.json()["stored"]
        start = {"action": "START_TRAINING", "project": {"id": 1}}
        assert requests.post(one.url + "/webhook", json=start, timeout=10).status_code == 200
        assert requests.post(two.url + "/webhook", json=start, timeout=10).status_code == 200  # one waits, once

        def metrics(replica: BackendServer) -> dict:
            return requests.get(replica.url + "/metrics?format=json", timeout=10).json()

        assert metrics(two)["store"]["queue"] == {"todo": 1}
        with WorkerProcess(data_dir, tmp_path / "worker-1.log", **settings) as first:
            training = wait_for(lambda: metrics(two)["trainings_in_flight"], 300, "training in flight")
            assert training[0]["project"] == "1" and metrics(one)["store"]["queue"] == {"doing": 1}
            first.kill()  # SIGKILL, mid-training
        with WorkerProcess(data_dir, tmp_path / "worker-2.log", **settings):
            versions = wait_for(lambda: requests.get(one.url + "/versions", timeout=10).json()["versions"], 600,
                                "model version")
        task = {"tasks": [{"id": 999, "data": {"text": DOCS[20].text}}], "project": "1", "label_config": DISEASE_CONFIG}
        answers = [requests.post(r.url + "/predict", json=task, timeout=120).json() for r in replicas]
        assert answers[0] == answers[1] and answers[0]["model_version"] == versions[0]
        status = metrics(one)["store"]
        assert status["trainings"] == {"failed": 1, "succeeded": 1}  # the killed one, marked when retried
        assert status["queue"] == {"succeeded": 1} and status["annotations"] == {"submitted": 20}
