"""Counters, latency summaries, and the progress of batches and trainings of one backend process,
served by GET /metrics.

``/metrics`` answers in the Prometheus text format (what a scraper expects); ``/metrics?format=json``
gives the same figures as one JSON object for people and scripts.

Example:
    >>> m = Metrics()
    >>> m.count("predicted_tasks", 3)
    >>> m.observe("predict_request", 0.25)
    >>> print(render_prometheus(m.snapshot()).splitlines()[:3])  # doctest: +NORMALIZE_WHITESPACE
    ['# HELP clinie_predicted_tasks_total predicted tasks', '# TYPE clinie_predicted_tasks_total counter',
     'clinie_predicted_tasks_total 3.0']
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Metric, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

PREFIX = "clinie_"


class Metrics:
    """Thread-safe counters, the last ``window`` latencies of each timed operation, and the
    progress of the /predict batches in flight (Label Studio waits for a whole batch, so how far
    a long one has got is only visible here)."""

    def __init__(self, window: int = 1000) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._counts_by: dict[str, tuple[str, Counter[str]]] = {}  # name -> (its label, value -> count)
        self._observed: Counter[str] = Counter()  # lifetime count and sum of each timed operation
        self._sums: dict[str, float] = {}
        self._latencies: dict[str, deque[float]] = {}
        self._window = window
        self._batches: dict[int, dict[str, float]] = {}
        self._batch_ids = itertools.count(1)
        self._trainings: dict[str, dict[str, Any]] = {}

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n

    def count_by(self, name: str, label: str, value: str, n: int = 1) -> None:
        """A counter split by one label (``annotations_unusable`` by ``reason``): Prometheus sums
        or filters the series; a name keeps the label it was first counted with."""
        with self._lock:
            self._counts_by.setdefault(name, (label, Counter()))[1][value] += n

    def observe(self, name: str, seconds: float) -> None:
        with self._lock:
            self._latencies.setdefault(name, deque(maxlen=self._window)).append(seconds)
            self._observed[name] += 1
            self._sums[name] = self._sums.get(name, 0) + seconds

    def start_batch(self, tasks: int) -> int:
        with self._lock:
            batch = next(self._batch_ids)
            self._batches[batch] = {"tasks": tasks, "done": 0, "started": time.time()}
            return batch

    def batch_progress(self, batch: int, done: int) -> None:
        with self._lock:
            self._batches[batch]["done"] = done

    def end_batch(self, batch: int) -> None:
        with self._lock:
            self._batches.pop(batch, None)

    def training_stage(self, project: str, stage: str) -> None:
        """A project's training entered ``stage`` (``encoder``, ``relations``, ``teacher``, ``selection``, …)."""
        with self._lock:
            started = self._trainings.get(project, {}).get("started", time.time())
            self._trainings[project] = {"stage": stage, "done": 0, "total": 0, "started": started}

    def training_step(self, project: str, done: int, total: int) -> None:
        with self._lock:
            self._trainings[project].update(done=done, total=total)

    def training_ended(self, project: str) -> None:
        with self._lock:
            self._trainings.pop(project, None)

    def trainings(self) -> dict[str, dict[str, Any]]:
        """The trainings in flight in this process: project -> stage, done, total, started."""
        with self._lock:
            return {project: dict(info) for project, info in self._trainings.items()}

    def snapshot(self, shared_trainings: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
        """``shared_trainings``: those of other processes (``clinie worker``), as the store has them."""
        with self._lock:
            trainings = [{"project": p, **info} for p, info in self._trainings.items()]
            trainings += [t for t in shared_trainings if t["project"] not in self._trainings]
            counts = dict(self._counts)
            counts_by = {name: {label: dict(sorted(values.items()))}
                         for name, (label, values) in self._counts_by.items()}
            totals = {name: (self._observed[name], self._sums[name]) for name in self._latencies}
            latencies = {name: sorted(values) for name, values in self._latencies.items()}
            batches = [{"id": b, **info} for b, info in self._batches.items()]
        return {
            "counts": counts,
            "counts_by": counts_by,  # name -> its label -> value -> count
            "latency_seconds": {
                name: {"n": len(v), "mean": round(sum(v) / len(v), 4), "p50": _quantile(v, 0.5),
                       "p95": _quantile(v, 0.95), "p99": _quantile(v, 0.99), "max": round(v[-1], 4),
                       "count": totals[name][0], "sum": round(totals[name][1], 4)}
                for name, v in latencies.items() if v},
            "predict_batches": [{"id": b["id"], "tasks": int(b["tasks"]), "done": int(b["done"]),
                                 "seconds": round(time.time() - b["started"], 3)} for b in batches],
            # per project training: its stage, how far that stage has got (selection: fits done of
            # folds × strategies; teacher: unannotated sentences read), and the seconds since the
            # training started
            "trainings_in_flight": [{"project": t["project"], "stage": t["stage"], "done": t["done"],
                                     "total": t["total"], "seconds": round(time.time() - t["started"], 1)}
                                    for t in trainings],
        }


def _quantile(ordered: list[float], q: float) -> float:
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 4)


def render_prometheus(snapshot: dict[str, Any]) -> str:
    """The snapshot in the Prometheus text exposition format (``prometheus_client`` writes it).

    Counters end in ``_total``; latencies are summaries over the last window (quantiles) with
    lifetime ``_count`` and ``_sum``; the store's figures and the batches in flight are gauges.
    The figures are kept by ``Metrics`` (and the store), which the JSON view shares: the registry
    is made for one answer, from one snapshot.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(snapshot))
    return generate_latest(registry).decode()


class _Snapshot(Collector):
    def __init__(self, snapshot: dict[str, Any]) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        snapshot = self.snapshot
        for name, value in sorted(snapshot["counts"].items()):
            yield CounterMetricFamily(PREFIX + name, name.replace("_", " "), value=value)
        for name, by in sorted(snapshot.get("counts_by", {}).items()):
            for label, values in by.items():
                yield _family(CounterMetricFamily, name, f"{name.replace('_', ' ')}, by {label}", [label],
                              [([value], n) for value, n in values.items()])
        for name, s in sorted(snapshot["latency_seconds"].items()):
            summary = Metric(f"{PREFIX}{name}_seconds", f"seconds of {name.replace('_', ' ')}: quantiles over the "
                             "last window, lifetime count and sum", "summary")
            for q, key in (("0.5", "p50"), ("0.95", "p95"), ("0.99", "p99")):
                summary.add_sample(summary.name, {"quantile": q}, s[key])
            summary.add_sample(summary.name + "_sum", {}, s["sum"])
            summary.add_sample(summary.name + "_count", {}, s["count"])
            yield summary
        batches = snapshot.get("predict_batches", [])
        yield GaugeMetricFamily(PREFIX + "predict_batches_in_flight", "/predict batches being answered",
                                value=len(batches))
        if batches:
            yield _family(GaugeMetricFamily, "predict_batch_tasks", "tasks of a batch in flight", ["batch"],
                          [([str(b["id"])], b["tasks"]) for b in batches])
            yield _family(GaugeMetricFamily, "predict_batch_tasks_done", "tasks of a batch in flight answered",
                          ["batch"], [([str(b["id"])], b["done"]) for b in batches])
        trainings = snapshot.get("trainings_in_flight", [])
        yield GaugeMetricFamily(PREFIX + "trainings_in_flight", "trainings running", value=len(trainings))
        if trainings:
            labels = ["project", "stage"]
            stage = [([str(t["project"]), t["stage"]], t) for t in trainings]
            yield _family(GaugeMetricFamily, "training_seconds", "seconds since the training started", labels,
                          [(values, t["seconds"]) for values, t in stage])
            yield _family(GaugeMetricFamily, "training_fits_done", "steps of the stage done", labels,
                          [(values, t["done"]) for values, t in stage])
            yield _family(GaugeMetricFamily, "training_fits", "steps of the stage", labels,
                          [(values, t["total"]) for values, t in stage])
        if store := snapshot.get("store"):
            yield from _store(store)


def _store(store: dict[str, Any]) -> Iterator[Metric]:
    """The store's figures, as gauges."""
    yield _family(GaugeMetricFamily, "annotations", "stored annotations, by state", ["state"],
                  [([k], v) for k, v in sorted(store["annotations"].items())])
    yield _family(GaugeMetricFamily, "trainings", "trainings, by status", ["status"],
                  [([k], v) for k, v in sorted(store["trainings"].items())])
    yield GaugeMetricFamily(PREFIX + "model_versions", "registered model versions", value=store["model_versions"])
    if "queue" in store:  # training jobs on PostgreSQL, by status
        yield _family(GaugeMetricFamily, "training_jobs", "training jobs on the queue, by status", ["status"],
                      [([k], v) for k, v in sorted(store["queue"].items())])
    yield _family(GaugeMetricFamily, "unannotated_tasks", "unannotated tasks whose data is kept", ["project"],
                  [([str(p)], n) for p, n in sorted(store.get("unannotated_tasks", {}).items())])
    yield _family(GaugeMetricFamily, "unusable_annotations", "annotations that cannot be learned, by reason",
                  ["project", "reason"], [([str(p), reason], n)
                                          for p, reasons in sorted(store.get("unusable_annotations", {}).items())
                                          for reason, n in sorted(reasons.items())])


def _family(kind: type[CounterMetricFamily] | type[GaugeMetricFamily], name: str, documentation: str,
            labels: list[str], samples: list[tuple[list[str], float]]) -> Metric:
    family = kind(PREFIX + name, documentation, labels=labels)
    for values, value in samples:
        family.add_metric(values, value)
    return family
