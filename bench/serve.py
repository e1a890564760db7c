"""The backend under load: gunicorn serving a trained encoder, as deployed, on loopback.

1. Trains a project's encoder from 30 NCBI-disease annotations (webhooks into a fresh store).
2. Raw model: the same saved model loaded in this process predicts each of the 200 Chen et al.
   sentences alone, one after another — the baseline.
3. The backend (``clinie serve``, one worker, 8 threads) answers the same 200 sentences, one
   /predict request each, one client at a time: the backend's overhead is the ratio of its
   latency to the raw model time (HTTP, JSON, validation, result conversion, metrics).
4. Load: ``--clients`` concurrent clients (default 8) send one-task /predict requests for
   ``--seconds`` (default 60): throughput, p50/p95/p99 latency, errors (must be 0), and the
   resident memory of the gunicorn worker.

    python -m bench.serve
    python -m bench.serve --clients 8 --seconds 60
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import requests

from clinie.core import read_documents
from clinie.extractors.encoder import EncoderTagger
from clinie.labelstudio import document_to_result, parse_label_config
from clinie.settings import Settings
from ml_backend.service import Backend
from tests.support import DATA, ROOT
from tests.support.backend_server import BackendServer

NCBI = DATA / "ncbi_disease" / "fewshot"
CONFIG = (ROOT / "label_configs" / "disease_ner.xml").read_text()


def train(data_dir: Path) -> Path:
    """A store with project 1 trained on 30 annotated sentences; returns the model directory."""
    settings = Settings(data_dir=data_dir, train_every=0, strategy="encoder", select_strategies="")
    backend = Backend(settings, start_worker=False)
    control = parse_label_config(CONFIG).span_controls[0]
    for i, doc in enumerate(list(read_documents(NCBI / "gutierrez_train100_seed42.jsonl"))[:30]):
        result, _ = document_to_result(doc, control)
        backend.store.record_annotation("1", {"id": i + 1, "result": result}, {"id": i + 1, "data": {"text": doc.text}})
    backend.store.set_label_config("1", CONFIG)
    record = backend.train("1")
    assert record is not None
    return Path(record.location)


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def worker_rss_mb(server: BackendServer) -> list[float]:
    """VmRSS of the gunicorn worker(s): the children of the master process."""
    master = server.pid
    rss = []
    for child in Path(f"/proc/{master}/task/{master}/children").read_text().split():
        for line in Path(f"/proc/{child}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss.append(int(line.split()[1]) / 1024)
    return rss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=60)
    args = parser.parse_args()

    docs = list(read_documents(NCBI / "chen2023_test_sample200.jsonl"))
    bodies = [{"tasks": [{"id": i, "data": {"text": d.text}}], "project": "1", "label_config": CONFIG}
              for i, d in enumerate(docs)]
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        model_dir = train(data_dir)

        tagger = EncoderTagger.load(model_dir)
        tagger.predict(docs[:8])  # warm-up
        started = time.perf_counter()
        for doc in docs:
            tagger.predict([doc])
        raw = (time.perf_counter() - started) / len(docs)
        del tagger

        env = {"CLINIE_STRATEGY": "encoder", "CLINIE_TRAIN_EVERY": "0", "CLINIE_LOG_LEVEL": "WARNING"}
        with BackendServer(data_dir, **env) as server, requests.Session() as session:
            url = server.url + "/predict"
            for body in bodies[:8]:  # warm-up: the model is loaded on the first request
                session.post(url, json=body, timeout=60).raise_for_status()
            sequential = []
            for body in bodies:
                t = time.perf_counter()
                session.post(url, json=body, timeout=60).raise_for_status()
                sequential.append(time.perf_counter() - t)

            latencies: list[float] = []
            errors = [0]
            lock = threading.Lock()
            deadline = time.perf_counter() + args.seconds

            def client(offset: int) -> None:
                with requests.Session() as own:
                    i = offset
                    while time.perf_counter() < deadline:
                        t = time.perf_counter()
                        try:
                            ok = own.post(url, json=bodies[i % len(bodies)], timeout=60).status_code == 200
                        except requests.RequestException:
                            ok = False
                        with lock:
                            latencies.append(time.perf_counter() - t)
                            errors[0] += not ok
                        i += args.clients

            threads = [threading.Thread(target=client, args=(c,)) for c in range(args.clients)]
            load_started = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            elapsed = time.perf_counter() - load_started
            rss = worker_rss_mb(server)

    mean_sequential = statistics.mean(sequential)
    print(f"machine: {os.cpu_count()} CPUs; model: MiniLM encoder fine-tuned on 30 NCBI-disease sentences; "
          f"sentences: the 200 Chen et al. test items\n")
    print("| | per sentence |")
    print("|---|---|")
    print(f"| raw model, in process, one sentence per call | {raw * 1000:.1f} ms |")
    print(f"| backend, one /predict per sentence, one client | {mean_sequential * 1000:.1f} ms "
          f"(p50 {quantile(sequential, 0.5) * 1000:.1f}) |")
    print(f"| backend overhead (ratio to raw model) | {mean_sequential / raw:.2f}x |\n")
    print(f"load: {args.clients} concurrent clients, {elapsed:.0f} s, one task per request")
    print("| requests | throughput | p50 | p95 | p99 | errors | worker RSS |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {len(latencies)} | {len(latencies) / elapsed:.1f} req/s | {quantile(latencies, 0.5) * 1000:.0f} ms | "
          f"{quantile(latencies, 0.95) * 1000:.0f} ms | {quantile(latencies, 0.99) * 1000:.0f} ms | {errors[0]} | "
          f"{', '.join(f'{r:.0f} MB' for r in rss)} |")


if __name__ == "__main__":
    main()
