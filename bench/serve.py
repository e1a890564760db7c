"""The backend under load: gunicorn serving a trained encoder, as deployed, on loopback; and the
probe's reading speed, batched against one sentence at a time.

Part ``encoder``:

1. Trains a project's encoder from 30 NCBI-disease annotations (webhooks into a fresh store).
2. Raw model: the same saved model loaded in this process predicts each of the 200 Chen et al.
   sentences alone, one after another — the baseline.
3. The backend (``clinie serve``, one worker, 8 threads) answers the same 200 sentences, one
   /predict request each, one client at a time: the backend's overhead is the ratio of its
   latency to the raw model time (HTTP, JSON, validation, result conversion, metrics).
4. Load: ``--clients`` concurrent clients (default 8) send one-task /predict requests for
   ``--seconds`` (default 60): throughput, p50/p95/p99 latency, errors (must be 0), and the
   resident memory of the gunicorn worker.

Part ``probe``: a probe trained briefly (20 epochs on 40 NCBI-disease sentences of seed 42: what
is measured is its speed, which training does not change) tags the first ``--sentences`` of the
Chen et al. items, in ``--rounds`` rounds, each path on an empty feature cache, the paths in turn
(reversed every other round, so that all see the same background load):

- ``one-by-one``: ``ProbeTagger.predict`` on one sentence at a time, a forward pass each (how the
  probe read before batching; a ``/predict`` of one task still does);
- ``batched``: ``ProbeTagger.predict`` on all of them at once (a ``/predict`` of many tasks, a
  selection's reading), the LLM reading them in passes of ``clinie.llm.hidden.BATCH_SIZE``;
- ``reading, batches of N`` for each N of ``--batch-sizes``: the LLM's reading alone
  (``HiddenStates.many``; the head's tagging costs milliseconds), to choose the batch size.

Sentences per second per path and round, and each path's ratio to one-by-one in the same round
(the median over rounds is the figure to compare: on a shared machine the absolute rates move with
the load, the ratios much less); whether batched and one-by-one predict the same spans. Writes
``bench/results/serve/probe.json`` (kept in git; a run replaces the one of the same sentences,
rounds and batch sizes, each with the command that made it).

    python -m bench.serve                                  # both parts
    python -m bench.serve --parts encoder --clients 8 --seconds 60
    python -m bench.serve --parts probe --sentences 64 --rounds 3 --batch-sizes 8,32
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import requests
import torch

from bench import command_line
from clinie.core import Document, read_documents, tokenize
from clinie.extractors.encoder import EncoderTagger
from clinie.extractors.probe import ProbeTagger
from clinie.labelstudio import document_to_result, parse_label_config
from clinie.llm.hidden import BATCH_SIZE, HiddenStates
from clinie.settings import Settings
from harness import DATA, ROOT
from harness.backend_server import BackendServer
from ml_backend.service import Backend

NCBI = DATA / "ncbi_disease" / "fewshot"
CONFIG = (ROOT / "label_configs" / "disease_ner.xml").read_text()
OUT = ROOT / "bench" / "results" / "serve"


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


def spans(docs: list[Document]) -> list[list[tuple[int, int, str]]]:
    """What two paths must agree on: each document's spans, scores aside (float rounding)."""
    return [[(s.start, s.end, s.label) for s in d.entities] for d in docs]


def probe_paths(probe: ProbeTagger, docs: list[Document],
                batch_sizes: list[int]) -> dict[str, Callable[[], list[Document] | None]]:
    """What each path runs: its predictions (``None`` for the reading alone)."""
    items = [(d.text, tokenize(d.text)) for d in docs]

    def reading(size: int) -> Callable[[], None]:
        def read() -> None:
            probe.states.many(items, batch_size=size)

        return read

    return {"one-by-one": lambda: [probe.predict([doc])[0] for doc in docs], "batched": lambda: probe.predict(docs),
            **{f"reading, batches of {size}": reading(size) for size in batch_sizes}}


def measure_probe(n_sentences: int, n_rounds: int, batch_sizes: list[int]) -> dict:
    """The probe part: sentences per second of each path, round by round, on an empty cache each."""
    states = HiddenStates.shared()
    train = list(read_documents(NCBI / "gutierrez_train100_seed42.jsonl"))[:40]
    probe = ProbeTagger(["Disease"], states, epochs=20).fit(train)
    docs = [d.with_annotations(()) for d in read_documents(NCBI / "chen2023_test_sample200.jsonl")][:n_sentences]
    paths = probe_paths(probe, docs, batch_sizes)
    names = list(paths)
    probe.predict(docs[:4])  # warm-up: the first passes of a process allocate
    load_before = os.getloadavg()
    rates: dict[str, list[float]] = {name: [] for name in names}
    predicted: dict[str, list[Document]] = {}
    for r in range(n_rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            states.forget()
            started = time.perf_counter()
            out = paths[name]()
            rates[name].append(len(docs) / (time.perf_counter() - started))
            if out is not None:
                predicted[name] = out
            print(f"round {r + 1} {name}: {rates[name][-1]:.2f} sentences/s", flush=True)
    cost = [d.meta["llm"] for d in predicted["batched"]]
    ratios = {name: [x / base for x, base in zip(rates[name], rates["one-by-one"])] for name in names}
    return {
        "sentences": len(docs), "rounds": n_rounds, "batch_size": BATCH_SIZE, "batch_sizes": batch_sizes,
        "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "prompt_tokens_per_sentence": round(sum(c["prompt_tokens"] for c in cost) / len(docs), 1),
        "forward_passes": {"one-by-one": sum(d.meta["llm"]["calls"] for d in predicted["one-by-one"]),
                           "batched": sum(c["calls"] for c in cost)},
        "same_spans": spans(predicted["batched"]) == spans(predicted["one-by-one"]),
        "paths": {name: {"sentences_per_second": [round(x, 2) for x in rates[name]],
                         "median": round(statistics.median(rates[name]), 2),
                         "ratio_to_one_by_one": [round(x, 2) for x in ratios[name]],
                         "median_ratio": round(statistics.median(ratios[name]), 2)}
                  for name in names},
    }


def write_probe_run(run: dict, out: Path) -> Path:
    """Add ``run`` to ``out/probe.json``, replacing the one of the same sentences, rounds and batch sizes."""
    path = out / "probe.json"

    def key(r: dict) -> tuple:
        return r["sentences"], r["rounds"], r["batch_size"], r["batch_sizes"]

    kept = json.loads(path.read_text())["runs"] if path.exists() else []
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"runs": sorted([r for r in kept if key(r) != key(run)] + [run], key=key)},
                               indent=2) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="encoder,probe", help="comma-separated: encoder, probe")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--sentences", type=int, default=64, help="probe: the first N Chen et al. items")
    parser.add_argument("--rounds", type=int, default=3, help="probe: rounds of every path")
    parser.add_argument("--batch-sizes", default="8,32", help="probe: reading alone at these batch sizes too")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    parts = args.parts.split(",")
    if "encoder" in parts:
        encoder_part(args.clients, args.seconds)
    if "probe" in parts:
        run = {**measure_probe(args.sentences, args.rounds, [int(b) for b in args.batch_sizes.split(",") if b]),
               "command": command_line("bench.serve")}
        print(json.dumps(run["paths"], indent=1))
        print(f"batched: {run['paths']['batched']['median']:.2f} sentences/s, "
              f"{run['paths']['batched']['median_ratio']:.2f}x one-by-one (median over {args.rounds} rounds; "
              f"{run['cpus']} CPUs, load average before {run['load_average_before'][0]}); same spans: "
              f"{run['same_spans']}")
        path = write_probe_run(run, args.out)
        print(f"\nwritten: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")


def encoder_part(clients: int, seconds: float) -> None:
    """The encoder part: raw model, the backend one request at a time, the backend under load."""
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
            deadline = time.perf_counter() + seconds

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
                        i += clients

            threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
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
    print(f"load: {clients} concurrent clients, {elapsed:.0f} s, one task per request")
    print("| requests | throughput | p50 | p95 | p99 | errors | worker RSS |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {len(latencies)} | {len(latencies) / elapsed:.1f} req/s | {quantile(latencies, 0.5) * 1000:.0f} ms | "
          f"{quantile(latencies, 0.95) * 1000:.0f} ms | {quantile(latencies, 0.99) * 1000:.0f} ms | {errors[0]} | "
          f"{', '.join(f'{r:.0f} MB' for r in rss)} |")


if __name__ == "__main__":
    main()
