"""Beyond one machine: what PostgreSQL, web replicas and ``clinie worker`` processes buy, measured
against the embedded default (SQLite, one process) in the same run.

Parts (``--parts``, each on fresh stores; PostgreSQL is a throwaway cluster of Debian's server):

- ``webhooks``: ``--rounds`` rounds of ``--events`` ``ANNOTATION_CREATED`` events from 16 senders
  to SQLite in one process, PostgreSQL behind one replica, and PostgreSQL behind two (events
  alternate between them, as a load balancer would send them); latency p50/p99/max. Then a flood
  to two replicas of which one is SIGKILLed midway: events answered 200 and not in the database
  after it (must be 0).
- ``predict``: a project trained once (the encoder), then ``/predict`` requests of 8 tasks from 4
  concurrent clients for ``--predict-seconds``, to one replica and to two: tasks per second.
- ``trainings``: ``--projects`` projects of 20 annotations each (NCBI-disease's few-shot file),
  *Start training* for all at once, selection on (``--strategies``): seconds until every project
  serves its selected strategy, with one worker and with two, each given its share of the cores
  (``OMP_NUM_THREADS``; the makespan ratio); and seconds
  from *Start training* to the selected strategy serving for one project, the embedded thread
  (SQLite) against a worker on PostgreSQL.

    python -m bench.scale                                   # every part
    python -m bench.scale --parts webhooks,predict --rounds 3

On one machine of 2 cores, replicas and workers share the same CPUs: the figures say what the
processes cost and whether anything is lost, not what more machines would add. Writes
``bench/results/scale/loopback.json`` (kept in git; a run replaces the one of the same parts and
sizes); ``python -m bench.results_doc`` puts it into docs/results.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import requests

from bench import command_line
from bench.webhooks import quantile
from clinie.core import read_documents
from clinie.labelstudio import document_to_result, parse_label_config
from harness import DATA, ROOT
from harness.backend_server import BackendServer, WorkerProcess
from harness.helpers import DISEASE_CONFIG, webhook_event
from harness.postgres_server import PostgresServer
from ml_backend.store import AnnotationStore

OUT = ROOT / "bench" / "results" / "scale"
DOCS = list(read_documents(DATA / "ncbi_disease" / "fewshot" / "gutierrez_train100_seed42.jsonl"))
CONTROL = parse_label_config(DISEASE_CONFIG).span_controls[0]
#: No training unless asked; the encoder serves until a selection is recorded.
BASE = {"CLINIE_TRAIN_EVERY": "0", "CLINIE_MIN_ANNOTATIONS": "5", "CLINIE_LOG_LEVEL": "WARNING",
        "CLINIE_COLD_START": "none"}
SENDERS = 16


def ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def flood(urls: list[str], events: list[dict], senders: int = SENDERS) -> tuple[list[float], list[int]]:
    """``events`` sent from ``senders`` threads, event ``i`` to ``urls[i % len(urls)]``: each one's
    latency, and the ids of those answered 200."""
    latencies: list[float] = []
    acknowledged: list[int] = []
    lock = threading.Lock()

    def send(i: int) -> None:
        started = time.perf_counter()
        try:
            ok = requests.post(urls[i % len(urls)] + "/webhook", json=events[i], timeout=30).status_code == 200
        except requests.RequestException:
            ok = False
        with lock:
            latencies.append(time.perf_counter() - started)
            if ok:
                acknowledged.append(events[i]["annotation"]["id"])

    with ThreadPoolExecutor(max_workers=senders) as pool:
        list(pool.map(send, range(len(events))))
    return latencies, acknowledged


def note_events(first: int, n: int, project: int = 1) -> list[dict]:
    return [webhook_event(first + i, first + i, f"note {first + i}: fever and cough", [], project=project)
            for i in range(n)]


def annotated_events(project: int, docs: list, first_id: int) -> list[dict]:
    """The documents' gold spans as annotations of ``project``, ids from ``first_id``."""
    return [webhook_event(first_id + i, first_id + i, doc.text, document_to_result(doc, CONTROL)[0], project=project)
            for i, doc in enumerate(docs)]


def webhooks_part(postgres: PostgresServer, tmp: Path, rounds: int, events: int) -> dict:
    settings = {**BASE, "CLINIE_STRATEGY": "encoder"}
    configs = {"SQLite, 1 process": 1, "PostgreSQL, 1 replica": 1, "PostgreSQL, 2 replicas": 2}
    results: dict[str, dict] = {}
    with ExitStack() as stack:
        servers: dict[str, list[BackendServer]] = {}
        for n, (name, replicas) in enumerate(configs.items()):
            store = {} if name.startswith("SQLite") else {"CLINIE_DATABASE_URL": postgres.database(f"webhooks{n}")}
            servers[name] = [stack.enter_context(BackendServer(tmp / f"webhooks{n}", **settings, **store))
                             for _ in range(replicas)]
        latencies: dict[str, list[float]] = {name: [] for name in configs}
        for r in range(rounds):
            batch = note_events(1 + r * events, events)
            for name in (list(configs) if r % 2 == 0 else list(configs)[::-1]):  # none always first
                got, acknowledged = flood([s.url for s in servers[name]], batch)
                latencies[name] += got
                results.setdefault(name, {"errors": 0})["errors"] += len(batch) - len(acknowledged)
        for name, values in latencies.items():
            results[name].update(p50_ms=ms(quantile(values, 0.5)), p99_ms=ms(quantile(values, 0.99)),
                                 max_ms=ms(max(values)), events=len(values))
    return {"configs": results, "kill": replica_killed(postgres, tmp / "kill", settings, events)}


def replica_killed(postgres: PostgresServer, data_dir: Path, settings: dict, events: int) -> dict:
    """Two replicas, one SIGKILLed once half the flood is acknowledged: what was acknowledged is
    in the database (read after the flood, through the live replica's store)."""
    url = postgres.database("kill")
    batch = note_events(1, events * 2)
    with BackendServer(data_dir, **settings, CLINIE_DATABASE_URL=url) as one, \
            BackendServer(data_dir, **settings, CLINIE_DATABASE_URL=url) as two:
        result: dict = {}
        flooding = threading.Thread(target=lambda: result.update(zip(("latencies", "acknowledged"),
                                                                      flood([one.url, two.url], batch))))
        flooding.start()
        while AnnotationStore(url).annotation_counts().get("submitted", 0) < events:
            time.sleep(0.01)
        two.kill()
        flooding.join()
        held = {r[0] for r in AnnotationStore(url)._read("SELECT annotation_id FROM annotations")}
    return {"sent": len(batch), "acknowledged": len(result["acknowledged"]),
            "lost": len(set(result["acknowledged"]) - held)}


def trained_project(postgres: PostgresServer, data_dir: Path, settings: dict) -> str:
    """A database with project 1 trained (the encoder, on 20 annotations) by a worker: its URL."""
    url = postgres.database("predict")
    with BackendServer(data_dir, **settings, CLINIE_DATABASE_URL=url) as web:
        flood([web.url], annotated_events(1, DOCS[:20], 1))
        requests.post(web.url + "/webhook", json={"action": "START_TRAINING", "project": {"id": 1}}, timeout=30)
        with WorkerProcess(data_dir, data_dir.parent / "predict-worker.log", **settings, CLINIE_DATABASE_URL=url):
            while not AnnotationStore(url).serving_model("1"):
                time.sleep(1)
    return url


def predict_part(postgres: PostgresServer, tmp: Path, seconds: float) -> dict:
    settings = {**BASE, "CLINIE_STRATEGY": "encoder", "CLINIE_SELECT_STRATEGIES": ""}
    url = trained_project(postgres, tmp / "predict", settings)
    texts = [doc.text for doc in DOCS[20:100]]
    results = {}
    for replicas in (1, 2):
        with ExitStack() as stack:
            servers = [stack.enter_context(BackendServer(tmp / "predict", **settings, CLINIE_DATABASE_URL=url))
                       for _ in range(replicas)]
            for server in servers:  # each loads the model once before the clock starts
                predict(server.url, texts[:8])
            answered = itertools.count()  # next() is atomic: the tasks answered, 8 at a time
            deadline = time.monotonic() + seconds
            turn = itertools.count()

            def client(servers: list[BackendServer], replicas: int, deadline: float, turn: itertools.count,
                       answered: itertools.count) -> None:
                while time.monotonic() < deadline:
                    i = next(turn)
                    predict(servers[i % replicas].url, [texts[(i * 8 + k) % len(texts)] for k in range(8)])
                    next(answered)

            started = time.monotonic()
            with ThreadPoolExecutor(max_workers=4) as pool:
                for _ in range(4):
                    pool.submit(client, servers, replicas, deadline, turn, answered)
            tasks = 8 * next(answered)
            results[f"{replicas} replica{'s' * (replicas > 1)}"] = {
                "tasks": tasks, "tasks_per_second": round(tasks / (time.monotonic() - started), 2)}
    return results


def predict(url: str, texts: list[str]) -> None:
    body = {"tasks": [{"id": i, "data": {"text": t}} for i, t in enumerate(texts)], "project": "1",
            "label_config": DISEASE_CONFIG}
    requests.post(url + "/predict", json=body, timeout=300).raise_for_status()


def selected(location: str, project: str) -> bool:
    record = AnnotationStore(location).serving_model(project)
    return record is not None and bool((record.info.get("selection") or {}).get("strategy"))


def until_selected(location: str, projects: list[str], started: float, timeout: float = 3600) -> dict[str, float]:
    """Seconds from ``started`` to each project's selected strategy serving."""
    at: dict[str, float] = {}
    while len(at) < len(projects) and time.monotonic() - started < timeout:
        for project in projects:
            if project not in at and selected(location, project):
                at[project] = round(time.monotonic() - started, 1)
        time.sleep(1)
    return at


def start_trainings(url: str, projects: list[int]) -> float:
    for project in projects:
        events = annotated_events(project, DOCS[(project - 1) * 20:project * 20], project * 1000)
        assert len(flood([url], events)[1]) == len(events)
    started = time.monotonic()
    for project in projects:
        requests.post(url + "/webhook", json={"action": "START_TRAINING", "project": {"id": project}},
                      timeout=30).raise_for_status()
    return started


def trainings_part(postgres: PostgresServer, tmp: Path, projects: int, strategies: str) -> dict:
    settings = {**BASE, "CLINIE_STRATEGY": "auto", "CLINIE_SELECT_STRATEGIES": strategies}
    names = [str(p) for p in range(1, projects + 1)]
    makespan = {}
    for workers in (1, 2):
        url = postgres.database(f"trainings{workers}")
        data_dir = tmp / f"trainings{workers}"
        with BackendServer(data_dir, **settings, CLINIE_DATABASE_URL=url) as web, ExitStack() as stack:
            started = start_trainings(web.url, list(range(1, projects + 1)))
            # each worker its share of the cores: two torch processes each spinning on all of them
            # slow each other many-fold (two selections at once took over 18 min where one alone took 3.5)
            threads = str(max(1, (os.cpu_count() or 1) // workers))
            for w in range(workers):
                stack.enter_context(WorkerProcess(data_dir, tmp / f"trainings{workers}-{w}.log", **settings,
                                                  CLINIE_DATABASE_URL=url, OMP_NUM_THREADS=threads))
            at = until_selected(url, names, started)
        makespan[f"{workers} worker{'s' * (workers > 1)}"] = {"seconds": max(at.values()), "per_project": at}
    one = {}
    with BackendServer(tmp / "thread", **settings) as web:  # the embedded default: SQLite, a thread
        started = start_trainings(web.url, [1])
        one["SQLite, in-process thread"] = until_selected(str(tmp / "thread" / "clinie.sqlite3"), ["1"], started)["1"]
    url = postgres.database("oneworker")
    with BackendServer(tmp / "worker", **settings, CLINIE_DATABASE_URL=url) as web, \
            WorkerProcess(tmp / "worker", tmp / "oneworker.log", **settings, CLINIE_DATABASE_URL=url):
        started = start_trainings(web.url, [1])
        one["PostgreSQL, clinie worker"] = until_selected(url, ["1"], started)["1"]
    return {"projects": projects, "strategies": strategies, "makespan": makespan,
            "ratio": round(makespan["1 worker"]["seconds"] / makespan["2 workers"]["seconds"], 2),
            "one_project": one}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="webhooks,predict,trainings")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--events", type=int, default=200, help="webhooks per round and configuration")
    parser.add_argument("--predict-seconds", type=float, default=60)
    parser.add_argument("--projects", type=int, default=4)
    parser.add_argument("--strategies", default="encoder", help="CLINIE_SELECT_STRATEGIES of the trainings part")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    parts = args.parts.split(",")
    run: dict = {"parts": parts, "cpus": os.cpu_count(), "load_average_before": [round(x, 2) for x in os.getloadavg()],
                 "command": command_line("bench.scale")}
    with tempfile.TemporaryDirectory() as tmp, PostgresServer() as postgres:
        if "webhooks" in parts:
            run["webhooks"] = webhooks_part(postgres, Path(tmp), args.rounds, args.events)
            run["webhooks"].update(rounds=args.rounds, events=args.events, senders=SENDERS)
            print(json.dumps(run["webhooks"]), flush=True)
        if "predict" in parts:
            rates = predict_part(postgres, Path(tmp), args.predict_seconds)
            run["predict"] = {"seconds": args.predict_seconds, **rates}
            print(json.dumps(run["predict"]), flush=True)
        if "trainings" in parts:
            run["trainings"] = trainings_part(postgres, Path(tmp), args.projects, args.strategies)
            print(json.dumps(run["trainings"]), flush=True)
    out = args.out / "loopback.json"
    kept = json.loads(out.read_text())["runs"] if out.exists() else []
    args.out.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"runs": sorted([r for r in kept if key(r) != key(run)] + [run], key=key)},
                              indent=2) + "\n")
    print(f"\nwritten: {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")


def key(run: dict) -> tuple[str, ...]:
    """What a run measured: a later run of the same parts replaces it."""
    return tuple(run["parts"])


if __name__ == "__main__":
    main()
