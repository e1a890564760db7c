"""Limits on what one /predict may ask: tasks per request, characters per task (the Flask app
and a real ``Backend``)."""

from __future__ import annotations

from clinie.settings import Settings
from harness.helpers import DISEASE_CONFIG
from ml_backend.app import create_app
from ml_backend.service import Backend


def test_a_predict_of_more_tasks_than_allowed_is_refused_with_a_clear_413_and_predicts_nothing(tmp_path):
    settings = Settings(data_dir=tmp_path / "data", max_tasks_per_request=3)
    backend = Backend(settings, start_worker=False)
    client = create_app(settings, backend).test_client()
    tasks = [{"id": i, "data": {"text": "fever"}} for i in range(4)]

    refused = client.post("/predict", json={"tasks": tasks, "project": "1", "label_config": DISEASE_CONFIG})
    assert refused.status_code == 413
    assert refused.json["error"] == ("4 tasks in one /predict; at most 3 are accepted "
                                     "(CLINIE_MAX_TASKS_PER_REQUEST): send fewer at a time")
    assert "predict_requests" not in backend.metrics.snapshot()["counts"]
    answer = client.post("/predict", json={"tasks": tasks[:3], "project": "1", "label_config": DISEASE_CONFIG})
    assert answer.status_code == 200 and len(answer.json["results"]) == 3


def test_a_task_longer_than_allowed_gets_an_empty_result_and_an_error_counted_the_batch_goes_on(tmp_path, caplog):
    settings = Settings(data_dir=tmp_path / "data", max_task_chars=100)
    backend = Backend(settings, start_worker=False)
    client = create_app(settings, backend).test_client()
    tasks = [{"id": 1, "data": {"text": "fever " * 16}}, {"id": 2, "data": {"text": "fever " * 17}},
             {"id": 3, "data": {"text": "cough"}}]

    answer = client.post("/predict", json={"tasks": tasks, "project": "1", "label_config": DISEASE_CONFIG})
    assert answer.status_code == 200 and [r["result"] for r in answer.json["results"]] == [[], [], []]
    counts = backend.metrics.snapshot()["counts"]
    assert counts["prediction_errors"] == 1 and counts["predicted_tasks"] == 3
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == ["task 2: read failed: TaskTooLong"]
