"""Beyond one machine, end to end: a real Label Studio in front of two web replicas connected to
one project, the store in PostgreSQL, trainings run by ``clinie worker`` processes. A worker
SIGKILLed in the middle of the training: another finishes the job, a model serves, and both
replicas answer with it; every replica's /metrics shows the training's progress and the queue."""

from __future__ import annotations

import os
import time

import pytest
import requests
from label_studio_sdk.client import LabelStudio

from clinie.core import read_documents
from clinie.labelstudio import document_to_result, parse_label_config
from harness import DATA
from harness.backend_server import BackendServer, WorkerProcess
from harness.helpers import DISEASE_CONFIG

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.environ.get("CLINIE_SKIP_E2E") == "1", reason="CLINIE_SKIP_E2E=1"),
]

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
        tmp_path, postgres_server, label_studio):
    data_dir = tmp_path / "data"
    settings = {**SETTINGS, "CLINIE_DATABASE_URL": postgres_server.database("replicas")}
    api = label_studio.client
    with BackendServer(data_dir, **settings) as one, BackendServer(data_dir, **settings) as two:
        project = api.create_project("Two replicas (clinie e2e)", DISEASE_CONFIG)
        task_ids = api.import_tasks(project, [{"text": d.text} for d in DOCS])
        # two connected backends: Label Studio sends each annotation to both (stored once)
        ml_ids = [api.connect_ml_backend(project, replica.url, title=f"clinie {n}")
                  for n, replica in enumerate((one, two))]

        def metrics(replica: BackendServer) -> dict:
            return requests.get(replica.url + "/metrics?format=json", timeout=10).json()

        sdk = LabelStudio(base_url=label_studio.url, api_key=api.personal_access_token())
        for task_id, doc in zip(task_ids[:20], DOCS[:20]):
            result, _ = document_to_result(doc, CONTROL)
            sdk.annotations.create(id=task_id, result=[{k: v for k, v in r.items() if k != "id"} for r in result])
        assert metrics(one)["store"]["annotations"] == metrics(two)["store"]["annotations"] == {"submitted": 20}
        api.train(ml_ids[0])  # "Start training" on one replica, then on the other: one job waits, once
        api.train(ml_ids[1])
        assert metrics(two)["store"]["queue"] == {"todo": 1}

        with WorkerProcess(data_dir, tmp_path / "worker-1.log", **settings) as first:
            training = wait_for(lambda: metrics(two)["trainings_in_flight"], 300, "training in flight")
            assert training[0]["project"] == str(project) and metrics(one)["store"]["queue"] == {"doing": 1}
            first.kill()  # SIGKILL, mid-training
        with WorkerProcess(data_dir, tmp_path / "worker-2.log", **settings):
            [version] = wait_for(lambda: requests.get(one.url + "/versions", timeout=10).json()["versions"], 600,
                                 "model version")
        api.retrieve_predictions(project, task_ids[20:])  # "Retrieve predictions" in Label Studio
        assert [p["model_version"] for p in api.predictions(task_ids[20])] == [version]
        task = {"tasks": [{"id": task_ids[20], "data": {"text": DOCS[20].text}}], "project": str(project),
                "label_config": DISEASE_CONFIG}
        answers = [requests.post(r.url + "/predict", json=task, timeout=120).json() for r in (one, two)]
        assert answers[0] == answers[1] and answers[0]["model_version"] == version
        status = metrics(one)["store"]
        assert status["trainings"] == {"failed": 1, "succeeded": 1}  # the killed one, marked when retried
        assert status["queue"] == {"succeeded": 1} and status["annotations"] == {"submitted": 20}
