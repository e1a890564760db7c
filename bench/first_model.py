"""How long a project waits after *Start training*, and how good each version it is served is.

A backend (``ml_backend.service.Backend``, a fresh store, the embedded models, the default
settings unless named) receives ``--sizes`` NCBI-disease annotations by webhook (the first
sentences of ``fewshot/gutierrez_train100_seed42.jsonl``) and loads what it loads at start and
while its tasks are opened (``Serving.warm_up``, ``warm_up_trainings``: the LLMs of the cold-start
policy and of the probe), then trains as *Start training* asks. What serves is watched
throughout (every half second): each model version that served, from when, and as which
strategy, and each stage of the training. Afterwards each is scored on the first ``--items`` of
the Chen et al. 2023 test sample, as /predict shows it (its precision-first thresholds applied):
precision, recall, F1 and wrong regions per 100 sentences. A cold-start policy that prompts the
LLM serves before the first model; it is not scored here (seconds a sentence: ``bench.cold_start``
does).

``--busy``: a busy project instead — one annotation every ``--every`` seconds up to ``--busy``,
a training every ``CLINIE_TRAIN_EVERY`` (10) of them, as annotators working and the background
trainings keep up: the versions served over time, and each one's F1.

``--relations N``: a relation project instead — ``N`` notes of about ``--note-chars`` characters
made of DDI training sentences (``bench.relations.long_notes``: the corpus's exhaustive annotation
at a case report's length), imported with their drugs and interactions (region ids) under the
drug-interaction config (``CLINIE_MIN_ANNOTATIONS`` set to ``N``), then *Start training*: seconds
to the entities served and to the relations served, and what the version served last finds on
``--test-notes`` notes of DDI's test sentences (entity and relation F1; writes ``relations.json``).
The selection's later stages are not waited for once the relations serve.

Run alone: llama.cpp and torch on 2 cores slow each other many-fold.

    python -m bench.first_model                       # 20 and 100 annotations, the default settings
    python -m bench.first_model --sizes 20 --strategies encoder --first-model-steps 0
    python -m bench.first_model --busy 100 --every 20
    python -m bench.first_model --relations 4

Writes ``bench/results/first_model/ncbi_disease.json`` (kept in git; a run replaces the rows it
measured again and keeps the others, each row with the command that made it);
``python -m bench.results_doc`` puts it into docs/results.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench import command_line
from bench.relations import long_notes
from clinie.core import read_documents
from clinie.evaluation.metrics import evaluate_relations, evaluate_spans
from clinie.labelstudio import document_to_result, parse_label_config
from clinie.settings import Settings
from harness import DATA, ROOT
from harness.helpers import webhook_event
from ml_backend.app import create_app
from ml_backend.service import Backend

OUT = ROOT / "bench" / "results" / "first_model"
CONFIG = (ROOT / "label_configs" / "disease_ner.xml").read_text()
DDI_CONFIG = (ROOT / "label_configs" / "drug_interactions.xml").read_text()


class Watch:
    """Which version serves the project, and which stage its training is in, polled in a thread:
    (seconds since the watch started, version or stage) at each change."""

    def __init__(self, backend: Backend, project: str) -> None:
        self.backend, self.project = backend, project
        self.started = time.perf_counter()
        self.served: list[tuple[float, str]] = []
        self.stages: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            now = round(time.perf_counter() - self.started, 1)
            version = self.backend.model_version(self.project)
            if not self.served or self.served[-1][1] != version:
                self.served.append((now, version))
            stage = self.backend.metrics.trainings().get(self.project, {}).get("stage", "idle")
            if not self.stages or self.stages[-1][1] != stage:
                self.stages.append((now, stage))

    def stop(self) -> list[tuple[float, str]]:
        self._stop.set()
        self._thread.join()
        return self.served


def scored(backend: Backend, version: str, test: list) -> dict[str, Any] | None:
    """How the trained ``version`` (a model version's name as Label Studio sees it) pre-annotates
    ``test`` as /predict shows it; None for what answers as no trained version (the LLM)."""
    record = next((m for m in backend.store.models("1") if m.version == version), None)
    if record is None:
        return None
    predictor = backend.serving.predictor_of(record, parse_label_config(CONFIG))
    predicted = predictor.model.predict([d.with_annotations(()) for d in test])
    if predictor.thresholds is not None:
        predicted = predictor.thresholds.apply(predicted)
    micro = evaluate_spans(test, predicted)["strict"].micro
    selection = record.info.get("selection") or {}
    return {"version": version, "strategy": selection.get("strategy") or "encoder",
            "precision": round(micro.precision, 4), "recall": round(micro.recall, 4), "f1": round(micro.f1, 4),
            "wrong_per_100": round(100 * micro.fp / len(test), 1)}


def timeline(backend: Backend, served: list[tuple[float, str]], test: list) -> list[dict[str, Any]]:
    """Each version that served, from when, and its scores (``scored``)."""
    return [{"seconds": seconds, **(scored(backend, version, test) or {"version": version, "strategy": "cold start"})}
            for seconds, version in served]


def after_start_training(settings: Settings, docs: list, size: int, test: list) -> dict[str, Any]:
    """``size`` annotations, then *Start training*: the versions served until it ended."""
    control = parse_label_config(CONFIG).span_controls[0]
    backend = Backend(settings, start_worker=False)
    client = create_app(settings, backend).test_client()
    for i, doc in enumerate(docs[:size]):
        result = document_to_result(doc, control)[0]
        assert client.post("/webhook", json=webhook_event(i + 1, i + 1, doc.text, result,
                                                          label_config=CONFIG)).status_code == 200
    backend.serving.warm_up()  # what a backend loads at start, and the tasks opened while annotating would
    backend.serving.warm_up_trainings()
    watch = Watch(backend, "1")
    assert backend.train("1") is not None, "the training failed: see the log"
    served = watch.stop()
    versions = timeline(backend, served, test)
    trained = [v for v in versions if "f1" in v]
    return {"annotations": size, "versions": versions, "stages": watch.stages,
            "first_model_seconds": trained[0]["seconds"] if trained else None,
            "selected_seconds": next(v["seconds"] for v in trained if v["strategy"] == trained[-1]["strategy"])
            if trained else None,
            "selected": trained[-1]["strategy"] if trained else None,
            "training_seconds": round(time.perf_counter() - watch.started, 1)}


def busy(settings: Settings, docs: list, total: int, every: float, test: list) -> dict[str, Any]:
    """One annotation every ``every`` seconds up to ``total``, trainings in the background thread."""
    control = parse_label_config(CONFIG).span_controls[0]
    backend = Backend(settings)
    client = create_app(settings, backend).test_client()
    watch = Watch(backend, "1")
    for i, doc in enumerate(docs[:total]):
        result = document_to_result(doc, control)[0]
        assert client.post("/webhook", json=webhook_event(i + 1, i + 1, doc.text, result,
                                                          label_config=CONFIG)).status_code == 200
        time.sleep(max(0.0, watch.started + (i + 1) * every - time.perf_counter()))
    backend.trainings.jobs.wait_idle()
    served = watch.stop()
    return {"annotations": total, "every_seconds": every, "train_every": settings.train_every,
            "versions": timeline(backend, served, test), "stages": watch.stages,
            "trainings": backend.metrics.snapshot()["counts"].get("trainings_started", 0),
            "selections_superseded": backend.metrics.snapshot()["counts"].get("selections_superseded", 0)}


def relation_project(settings: Settings, notes: int, chars: int, test_notes: int) -> dict[str, Any]:
    """``notes`` long DDI notes imported with their regions and arrows, then *Start training*:
    when the entities served, when the relations did, and how the last version reads unseen notes."""
    schema = parse_label_config(DDI_CONFIG)
    docs = long_notes(list(read_documents(DATA / "ddi" / "train.jsonl")), notes, chars, seed=42)
    test = long_notes(list(read_documents(DATA / "ddi" / "test.jsonl")), test_notes, chars, seed=42)
    backend = Backend(settings, start_worker=False)
    client = create_app(settings, backend).test_client()
    for i, doc in enumerate(docs):
        result, _ = document_to_result(doc, schema.span_controls[0], schema.relation_label_names)
        assert client.post("/webhook", json=webhook_event(i + 1, i + 1, doc.text, result,
                                                          label_config=DDI_CONFIG)).status_code == 200
    backend.serving.warm_up()
    backend.serving.warm_up_trainings()
    watch = Watch(backend, "1")
    # what the issue asks is when entities and relations serve: the rest of the selection (the
    # LLM strategies on long notes) goes on in its thread, unwaited; the caller exits past it
    training = threading.Thread(target=backend.train, args=("1",), daemon=True)
    training.start()
    while training.is_alive() and not any(_has_relations(backend, v) for _, v in watch.served):
        time.sleep(1.0)
    served = watch.stop()
    training_ended = not training.is_alive()
    records = {m.version: m for m in backend.store.models("1")}
    versions = [{"seconds": seconds, "version": version, "relations": _has_relations(backend, version)}
                for seconds, version in served]
    last = records[served[-1][1]]
    predictor = backend.serving.predictor_of(last, schema)
    predicted = predictor.model.predict([d.with_annotations((), ()) for d in test])
    if predictor.thresholds is not None:
        predicted = predictor.thresholds.apply(predicted)
    entities, relations = evaluate_spans(test, predicted)["strict"].micro, evaluate_relations(test, predicted)
    trained = [v for v in versions if v["version"] in records]
    return {"notes": len(docs), "characters": [len(d.text) for d in docs],
            "regions": sum(len(d.entities) for d in docs), "arrows": sum(len(d.relations) for d in docs),
            "versions": versions, "stages": watch.stages,
            "entities_seconds": trained[0]["seconds"] if trained else None,
            "relations_seconds": next((v["seconds"] for v in trained if v["relations"]), None),
            "watched_seconds": round(time.perf_counter() - watch.started, 1), "training_ended": training_ended,
            "test_notes": len(test), "served_last": last.version,
            "entity_f1": round(entities.f1, 4), "entity_precision": round(entities.precision, 4),
            "relation_f1": round(relations["strict"].micro.f1, 4), "relation_pairs": last.info.get("relation_pairs"),
            "relations_cut_short": last.info.get("relations_cut_short")}


def _has_relations(backend: Backend, version: str) -> bool:
    """Whether the trained ``version`` of project 1 carries a relation classifier."""
    return any(m.version == version and m.info.get("relations") for m in backend.store.models("1"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="20,100")
    parser.add_argument("--strategies", default="auto", help="CLINIE_SELECT_STRATEGIES; empty: no selection")
    parser.add_argument("--first-model-steps", type=int, default=Settings().first_model_steps,
                        help="CLINIE_FIRST_MODEL_STEPS (0: the tagger's budget)")
    parser.add_argument("--items", type=int, default=100, help="test items each version is scored on")
    parser.add_argument("--busy", type=int, default=0, help="a busy project of this many annotations instead")
    parser.add_argument("--every", type=float, default=20.0, help="seconds between a busy project's annotations")
    parser.add_argument("--relations", type=int, default=0, help="a relation project of this many long notes instead")
    parser.add_argument("--note-chars", type=int, default=17000, help="characters of a --relations note")
    parser.add_argument("--test-notes", type=int, default=2, help="--relations: unseen notes the last version reads")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")  # the training's own log

    command = command_line("bench.first_model")
    out = args.out / "ncbi_disease.json"
    docs = list(read_documents(DATA / "ncbi_disease" / "fewshot" / "gutierrez_train100_seed42.jsonl"))
    test = list(read_documents(DATA / "ncbi_disease" / "fewshot" / "chen2023_test_sample200.jsonl"))[:args.items]
    saved = json.loads(out.read_text()) if out.exists() else {}
    with tempfile.TemporaryDirectory() as data_dir:
        settings = replace(Settings.load(), data_dir=Path(data_dir), select_strategies=args.strategies,
                           first_model_steps=args.first_model_steps, keep_models=0)  # every version scored after
        if args.relations:
            # a few long notes are a project's whole training set: CLINIE_MIN_ANNOTATIONS set to their number
            run = {**relation_project(replace(settings, train_every=0, min_annotations=args.relations), args.relations,
                                      args.note_chars, args.test_notes), "command": command}
            print(json.dumps(run, indent=1), flush=True)
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "relations.json").write_text(json.dumps(run, indent=2) + "\n")
            shutil.rmtree(data_dir, ignore_errors=True)
            os._exit(0)  # the selection's later stages still run in their thread: not waited for
        if args.busy:
            run = {**busy(settings, docs, args.busy, args.every, test), "command": command}
            print(json.dumps(run, indent=1), flush=True)
            saved["busy"] = run
        else:
            rows = []
            for size in (int(s) for s in args.sizes.split(",")):
                with tempfile.TemporaryDirectory(dir=data_dir) as one:
                    rows.append({**after_start_training(replace(settings, data_dir=Path(one), train_every=0), docs,
                                                        size, test), "strategies": args.strategies,
                                 "first_model_steps": args.first_model_steps, "command": command})
                print(json.dumps(rows[-1], indent=1), flush=True)
            measured = {key(r) for r in rows}
            saved["runs"] = sorted([r for r in saved.get("runs", []) if "versions" in r and key(r) not in measured]
                                   + rows, key=key)
    args.out.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**saved, "corpus": "ncbi_disease", "test_items": len(test)}, indent=2) + "\n")


def key(row: dict) -> tuple[int, int, str]:
    """What a row measured: a later run of the same replaces it."""
    return row["annotations"], row["first_model_steps"], row["strategies"]


if __name__ == "__main__":
    main()
