"""/metrics: the Prometheus text format (prometheus_client's), the batches in flight, and the JSON view."""

from __future__ import annotations

import re

from ml_backend.metrics import Metrics, render_prometheus

SAMPLE = re.compile(r'^clinie_[a-z_]+(\{[a-z]+="[^"]*"\})? -?[0-9.e+-]+$')


def test_every_line_is_a_comment_or_a_sample_and_counters_are_totals():
    m = Metrics()
    m.count("predict_requests", 2)
    m.count("prediction_errors")
    for seconds in (0.1, 0.2, 0.3, 4.0):
        m.observe("predict_request", seconds)
    text = render_prometheus({**m.snapshot(), "store": {"annotations": {"submitted": 7, "deleted": 1},
                                                        "trainings": {"succeeded": 2}, "model_versions": 2}})
    lines = text.splitlines()
    assert all(line.startswith(("# TYPE clinie_", "# HELP clinie_")) or SAMPLE.match(line) for line in lines), text
    assert "clinie_predict_requests_total 2.0" in lines and "clinie_prediction_errors_total 1.0" in lines
    assert 'clinie_predict_request_seconds{quantile="0.99"} 4.0' in lines
    assert "clinie_predict_request_seconds_count 4.0" in lines and "clinie_predict_request_seconds_sum 4.6" in lines
    assert 'clinie_annotations{state="submitted"} 7.0' in lines and "clinie_model_versions 2.0" in lines
    names = [line.split()[2] for line in lines if line.startswith("# TYPE")]
    assert len(names) == len(set(names)), "each metric is declared once"


def test_a_batch_in_flight_shows_its_progress_until_it_ends():
    m = Metrics()
    batch = m.start_batch(40)
    m.batch_progress(batch, 16)
    lines = render_prometheus(m.snapshot()).splitlines()
    assert "clinie_predict_batches_in_flight 1.0" in lines
    assert f'clinie_predict_batch_tasks{{batch="{batch}"}} 40.0' in lines
    assert f'clinie_predict_batch_tasks_done{{batch="{batch}"}} 16.0' in lines
    m.end_batch(batch)
    assert m.snapshot()["predict_batches"] == []
    assert "clinie_predict_batches_in_flight 0.0" in render_prometheus(m.snapshot()).splitlines()


def test_the_lifetime_count_outlives_the_latency_window():
    m = Metrics(window=3)
    for _ in range(10):
        m.observe("webhook", 0.01)
    latency = m.snapshot()["latency_seconds"]["webhook"]
    assert latency["n"] == 3 and latency["count"] == 10
