"""Counters and latency summaries of one backend process, served by GET /metrics."""

from __future__ import annotations

import threading
from collections import Counter, deque


class Metrics:
    """Thread-safe counters plus the last ``window`` latencies of each timed operation."""

    def __init__(self, window: int = 1000) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._latencies: dict[str, deque[float]] = {}
        self._window = window

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n

    def observe(self, name: str, seconds: float) -> None:
        with self._lock:
            self._latencies.setdefault(name, deque(maxlen=self._window)).append(seconds)

    def snapshot(self) -> dict:
        with self._lock:
            counts = dict(self._counts)
            latencies = {name: sorted(values) for name, values in self._latencies.items()}
        return {"counts": counts, "latency_seconds": {
            name: {"n": len(v), "mean": round(sum(v) / len(v), 4), "p50": _quantile(v, 0.5),
                   "p95": _quantile(v, 0.95), "max": round(v[-1], 4)}
            for name, v in latencies.items() if v}}


def _quantile(ordered: list[float], q: float) -> float:
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 4)
