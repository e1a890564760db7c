"""Webhook latency under concurrent annotators: what Label Studio waits for on each event.

Label Studio sends each webhook once and gives up after 1.0 s (an event lost unless re-sync is
configured), so what matters is the tail. ``clinie serve`` (gunicorn, one worker, 8 threads, as
deployed) runs on loopback, one server per configuration compared, each on a fresh store, all
started before the first event; then ``--rounds`` rounds, each sending ``--events``
``ANNOTATION_CREATED`` events (``harness.helpers.webhook_event``, every one a new
annotation) to each server in turn from ``--senders`` concurrent senders, one new connection per
event as Label Studio does. Alternating the servers round by round exposes both to the same
background load, so the comparison holds on a busy machine; the figures alone do not.

Recorded per configuration: mean and p50/p95/p99/max latency over all rounds (and p50, p99 and
max of each round), the events answered after more than 1.0 s, errors (not a 200: must be 0) and
whether the store holds every event sent.

    python -m bench.webhooks                                   # per-event commits against group commit
    python -m bench.webhooks --events 200 --senders 16 --rounds 3 --configs group
    python -m bench.webhooks --rounds 5 --configs group --before 6db28a2   # a change against its base

Configurations: ``per-event`` (``CLINIE_WEBHOOK_GROUP_COMMIT=0``: each event its own transaction,
committed by the thread answering it, as before) and ``group`` (the default: concurrent events
committed together by one writer thread, each answered once its batch is committed).
``--before REV`` adds, for each configuration, a server running the code of git revision ``REV``
(exported with ``git archive``, imported first through ``PYTHONPATH``): a change's cost measured
against its base in the same run, under the same load. Writes
``bench/results/webhooks/loopback.json`` (kept in git; a run replaces the one of the same events,
senders and rounds, each with the command that made it); ``python -m bench.results_doc`` puts it
into docs/results.md.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from bench import command_line, revision_env
from harness import ROOT
from harness.backend_server import BackendServer
from harness.helpers import webhook_event

OUT = ROOT / "bench" / "results" / "webhooks"
CONFIGS = {"per-event": {"CLINIE_WEBHOOK_GROUP_COMMIT": "0"}, "group": {"CLINIE_WEBHOOK_GROUP_COMMIT": "1"}}
#: What Label Studio waits for a webhook's answer before it gives up on the event.
LABEL_STUDIO_TIMEOUT_S = 1.0
#: Nothing but the store: no training, no model loaded.
ENV = {"CLINIE_TRAIN_EVERY": "0", "CLINIE_STRATEGY": "encoder", "CLINIE_LOG_LEVEL": "WARNING"}


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def burst(url: str, events: list[dict], senders: int) -> tuple[list[float], int]:
    """Send ``events`` from ``senders`` threads at once; each event's latency, and the errors."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()

    def send(event: dict) -> None:
        started = time.perf_counter()
        try:
            ok = requests.post(url, json=event, timeout=30).status_code == 200
        except requests.RequestException:
            ok = False
        with lock:
            latencies.append(time.perf_counter() - started)
            errors[0] += not ok

    with ThreadPoolExecutor(max_workers=senders) as pool:
        list(pool.map(send, events))
    return latencies, errors[0]


def summary(latencies: list[float], errors: int, stored: int, sent: int) -> dict:
    ms = lambda s: round(s * 1000, 1)  # noqa: E731
    return {"events": len(latencies), "mean_ms": ms(sum(latencies) / len(latencies)),
            "p50_ms": ms(quantile(latencies, 0.50)), "p95_ms": ms(quantile(latencies, 0.95)),
            "p99_ms": ms(quantile(latencies, 0.99)), "max_ms": ms(max(latencies)),
            "over_1s": sum(t > LABEL_STUDIO_TIMEOUT_S for t in latencies), "errors": errors,
            "stored": stored, "all_stored": stored == sent}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200, help="events per round and configuration")
    parser.add_argument("--senders", type=int, default=16, help="concurrent senders")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--configs", default="per-event,group", help=f"comma-separated, of {', '.join(CONFIGS)}")
    parser.add_argument("--before", metavar="REV", help="also run each configuration on git revision REV")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    out = args.out / "loopback.json"
    names = args.configs.split(",")
    if unknown := set(names) - set(CONFIGS):
        parser.error(f"unknown configurations: {', '.join(sorted(unknown))}")
    command = command_line("bench.webhooks")
    configs = {name: CONFIGS[name] for name in names}

    with tempfile.TemporaryDirectory() as tmp:
        if args.before:
            before = revision_env(args.before, Path(tmp) / "before")
            configs |= {f"{name} @ {args.before}": {**settings, **before}
                        for name, settings in configs.items()}
        run = measure(configs, args.events, args.senders, args.rounds, Path(tmp))
    run["command"] = command
    print(json.dumps(run["configs"], indent=1))

    kept = json.loads(out.read_text())["runs"] if out.exists() else []
    args.out.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"runs": sorted([r for r in kept if key(r) != key(run)] + [run], key=key)},
                              indent=2) + "\n")
    print(f"\nwritten: {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")


def measure(configs: dict[str, dict[str, str]], events_per_round: int, senders: int, n_rounds: int,
            tmp: Path) -> dict:
    """One server per configuration, all started before the first event; rounds in turn."""
    names = list(configs)
    latencies: dict[str, list[float]] = {name: [] for name in names}
    errors = dict.fromkeys(names, 0)
    rounds: dict[str, list[dict]] = {name: [] for name in names}
    stored: dict[str, int] = {}
    load_before = os.getloadavg()
    servers = {name: BackendServer(tmp / f"server{i}", **ENV, **configs[name]) for i, name in enumerate(names)}
    for server in servers.values():
        server.__enter__()
    try:
        for server in servers.values():  # warm-up: connections, the first transaction
            for i in range(5):
                event = webhook_event(10**9 + i, 10**9 + i, f"warm-up {i}", [])
                requests.post(server.url + "/webhook", json=event, timeout=30).raise_for_status()
        for r in range(n_rounds):
            events = [webhook_event(1 + r * events_per_round + i, 1 + r * events_per_round + i,
                                    f"note {i}: fever and cough, round {r}", []) for i in range(events_per_round)]
            for name in (names if r % 2 == 0 else names[::-1]):  # neither always first
                got, failed = burst(servers[name].url + "/webhook", events, senders)
                latencies[name] += got
                errors[name] += failed
                rounds[name].append({"p50_ms": round(quantile(got, 0.5) * 1000, 1),
                                     "p99_ms": round(quantile(got, 0.99) * 1000, 1),
                                     "max_ms": round(max(got) * 1000, 1), "errors": failed})
                print(f"round {r + 1} {name}: {rounds[name][-1]}", flush=True)
        for name, server in servers.items():
            counts = requests.get(server.url + "/metrics?format=json", timeout=30).json()["store"]["annotations"]
            stored[name] = counts.get("submitted", 0) - 5  # less the warm-up
    finally:
        for server in servers.values():
            server.__exit__(None, None, None)
    results = {name: {**summary(latencies[name], errors[name], stored[name], n_rounds * events_per_round),
                      "rounds": rounds[name]} for name in names}
    return {"events": events_per_round, "senders": senders, "rounds": n_rounds, "cpus": os.cpu_count(),
            "load_average_before": [round(x, 2) for x in load_before], "configs": results}


def key(run: dict) -> tuple[int, int, int, tuple[str, ...]]:
    """What a run measured: a later run of the same replaces it."""
    return run["events"], run["senders"], run["rounds"], tuple(run["configs"])


if __name__ == "__main__":
    main()
