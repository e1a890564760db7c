"""End to end against a real Label Studio 1.23.2 and the real backend (gunicorn) over HTTP.

Before any annotation the LLM pre-annotates (zero-shot); annotators' submissions reach clinie by
webhook and are stored; "Start training" trains the encoder in the background; "Retrieve
predictions" stores clinie's spans in Label Studio.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from dataclasses import replace
from pathlib import Path

import pytest
import requests
from label_studio_sdk.client import LabelStudio

from clinie.cli import main
from clinie.core import read_documents, write_documents
from clinie.labelstudio import document_to_result, parse_label_config
from harness import DATA, ROOT
from harness.backend_server import BackendServer
from ml_backend.annotations import project_documents
from ml_backend.store import AnnotationStore

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.environ.get("CLINIE_SKIP_E2E") == "1", reason="CLINIE_SKIP_E2E=1"),
]

DISEASE_CONFIG = (ROOT / "label_configs" / "disease_ner.xml").read_text()


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(1)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def assert_regions_valid(result: list[dict], text: str) -> None:
    region_ids = [r["id"] for r in result]
    assert len(region_ids) == len(set(region_ids)) and all(region_ids)
    for region in result:
        assert (region["from_name"], region["to_name"], region["type"]) == ("label", "text", "labels")
        assert region["value"]["labels"] == ["Disease"]
        assert text[region["value"]["start"]:region["value"]["end"]] == region["value"]["text"]
        assert 0.0 <= region["score"] <= 1.0


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    # Selection is tested in test_backend.py. A /predict budget no batch can meet: every batch
    # past its first chunk is answered with its first task only, and Label Studio must then ask
    # for each task on its own — the fallback the budget relies on, checked against the real thing.
    # The LLM pre-annotates at cold start (CLINIE_COLD_START=llm; by default, with the embedded
    # model, a fresh project shows no regions: test_backend.py), through the real Label Studio.
    settings = {"CLINIE_TRAIN_EVERY": "0", "CLINIE_MIN_ANNOTATIONS": "5", "CLINIE_ENCODER_EPOCHS": "15",
                "CLINIE_SELECT_STRATEGIES": "", "CLINIE_PREDICT_BUDGET_SECONDS": "0.000001",
                "CLINIE_COLD_START": "llm"}
    with BackendServer(tmp_path_factory.mktemp("backend"), **settings) as server:
        yield server


def test_annotations_train_the_encoder_and_predictions_land_in_label_studio(label_studio, backend, tmp_path, capsys):
    api = label_studio.client
    control = parse_label_config(DISEASE_CONFIG).span_controls[0]
    docs = list(read_documents(DATA / "ncbi_disease" / "fewshot" / "gutierrez_train100_seed42.jsonl"))[:45]
    project = api.create_project("NCBI disease (clinie e2e)", DISEASE_CONFIG)
    task_ids = api.import_tasks(project, [{"text": d.text} for d in docs])
    ml_id = api.connect_ml_backend(project, backend.url)

    # Cold start: no annotation, no trained model: the LLM pre-annotates zero-shot.
    texts = dict(zip(task_ids, (d.text for d in docs)))
    cold = task_ids[40:42]
    api.retrieve_predictions(project, cold)
    for task_id in cold:
        [prediction] = api.predictions(task_id)
        assert prediction["model_version"].startswith("clinie-llm-llama.cpp-"), backend.log_tail()
        assert prediction["model_version"].endswith("-k0-pool0")
        assert_regions_valid(prediction["result"], texts[task_id])

    # 30 tasks are annotated through Label Studio's SDK, as scripts and imports do it: regions
    # without ids. Each submission reaches clinie by webhook and is stored.
    sdk = LabelStudio(base_url=label_studio.url, api_key=api.personal_access_token())
    for task_id, doc in zip(task_ids[:30], docs[:30]):
        result, _ = document_to_result(doc, control)
        sdk.annotations.create(id=task_id, result=[{k: v for k, v in r.items() if k != "id"} for r in result])
    counts = requests.get(backend.url + "/metrics?format=json", timeout=10).json()["store"]["annotations"]
    assert counts == {"submitted": 30}, backend.log_tail()

    # Label Studio's own JSON export is gold for `clinie evaluate`: the annotations come back
    # with their offsets exactly, so scoring the original spans against it gives F1 = 1.
    export = tmp_path / "export.json"
    export.write_text(json.dumps(api.request("GET", f"/api/projects/{project}/export?exportType=JSON")))
    originals = tmp_path / "originals.jsonl"
    write_documents([replace(d, id=str(t)) for t, d in zip(task_ids[:30], docs[:30])], originals)
    assert main(["evaluate", "--gold", str(export), "--pred", str(originals), "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)["entities"]["strict"]["micro"]
    assert scores["f1"] == 1.0 and scores["support"] == sum(len(d.entities) for d in docs[:30])

    # "Start training": Label Studio sends START_TRAINING; the new version appears in /versions.
    api.train(ml_id)
    versions = wait_for(lambda: requests.get(backend.url + "/versions", timeout=10).json()["versions"],
                        600, "a trained model version")
    assert versions[0].endswith("-n30")
    # ...trained on every annotated entity: regions without ids are not "no entity"
    stored = project_documents(AnnotationStore(backend.data_dir / "clinie.sqlite3"), str(project))
    assert sum(len(d.entities) for d in stored.docs) == sum(len(d.entities) for d in docs[:30])
    assert not stored.unusable

    # "Retrieve predictions" for the 15 unannotated tasks: one batch, over its time budget after
    # 8 tasks; Label Studio then asks task by task and stores a prediction for every one.
    targets = task_ids[30:]
    before = requests.get(backend.url + "/metrics?format=json", timeout=10).json()["counts"]
    api.retrieve_predictions(project, targets)
    n_regions = 0
    for task_id in targets:
        [prediction] = [p for p in api.predictions(task_id) if p["model_version"] == versions[0]]
        assert_regions_valid(prediction["result"], texts[task_id])
        n_regions += len(prediction["result"])
    assert n_regions > 0, "the trained encoder predicted no Disease span in 15 NCBI sentences"

    metrics = requests.get(backend.url + "/metrics?format=json", timeout=10).json()
    assert metrics["counts"]["predict_budget_exceeded"] == before.get("predict_budget_exceeded", 0) + 1
    assert metrics["counts"]["predict_requests"] == before["predict_requests"] + 1 + len(targets)
    assert metrics["counts"]["trainings_succeeded"] == 1
    assert metrics["counts"].get("prediction_errors", 0) == 0


def test_a_task_deleted_in_label_studio_is_gone_from_every_file_of_the_backend(label_studio, backend):
    """Two notes: one annotated, in the store as its annotation's task, the other only predicted,
    in the store as the project's unannotated text; the LLM's calls that pre-annotated them are
    in the call cache. Label Studio's "Delete tasks" purges both notes from every file, down to
    the bytes, and clears the cache (a call is kept as a hash of its prompt, which quotes the note)."""
    api = label_studio.client
    annotated, predicted = "ZEBRAPATIENT4417", "ZEBRAPATIENT5120"  # one word each: the LLM's answer copies it whole
    text = f"Patient {annotated} has cystic fibrosis."
    project = api.create_project("Deletion (clinie e2e)", DISEASE_CONFIG)
    tasks = api.import_tasks(project, [{"text": text}, {"text": f"Patient {predicted} has asthma."}])
    api.connect_ml_backend(project, backend.url)
    api.retrieve_predictions(project, tasks)  # the LLM, at cold start: its answers quote the notes
    start = text.index("cystic")
    api.create_annotation(tasks[0], [{"id": "d1", "from_name": "label", "to_name": "text", "type": "labels", "value": {
        "start": start, "end": len(text) - 1, "text": text[start:-1], "labels": ["Disease"]}}])

    def holding(marker: str) -> list[str]:
        return sorted(f.name for f in backend.data_dir.rglob("*") if f.is_file() and marker.encode() in f.read_bytes())

    def calls() -> int:
        with sqlite3.connect(backend.data_dir / "llm_cache.sqlite3") as db:
            return db.execute("SELECT COUNT(*) FROM calls").fetchone()[0]

    for marker in (annotated, predicted):
        assert "clinie.sqlite3" in {name.split("-")[0] for name in wait_for(lambda marker=marker: holding(marker), 30,
                                                                           f"{marker} stored")}, backend.log_tail()
    store = AnnotationStore(backend.data_dir / "clinie.sqlite3")
    assert [t["id"] for t in store.unannotated_tasks(str(project))] == tasks[1:]
    assert calls() > 0
    api.delete_tasks(project, tasks)
    for marker in (annotated, predicted):
        wait_for(lambda marker=marker: not holding(marker), 30,
                 f"{marker} gone from every file (still in {holding(marker)})")
    assert calls() == 0
    assert store.annotation_ids(str(project)) == set() and store.task_projects(tasks) == {}
    assert store.unannotated_tasks(str(project)) == []


DDI_CONFIG = (ROOT / "label_configs" / "drug_interactions.xml").read_text()


def test_a_version_worse_in_cross_validation_than_what_serves_is_trained_and_not_served(label_studio, tmp_path):
    """The LLM with the annotations as demonstrations serves (the cold start); *Start training*
    trains an encoder given one epoch, which predicts nothing on 10 sentences. The selection
    cross-validates it against the LLM on the same folds (the LLM, seconds a sentence, on a sample
    of them: the two are compared there): the encoder's version is registered, yet what Label
    Studio keeps getting is the LLM's, and the store says why."""
    api = label_studio.client
    control = parse_label_config(DISEASE_CONFIG).span_controls[0]
    docs = list(read_documents(DATA / "ncbi_disease" / "fewshot" / "gutierrez_train100_seed42.jsonl"))[:12]
    project = api.create_project("worse version (clinie e2e)", DISEASE_CONFIG)
    task_ids = api.import_tasks(project, [{"text": d.text} for d in docs])
    settings = {"CLINIE_TRAIN_EVERY": "0", "CLINIE_MIN_ANNOTATIONS": "5", "CLINIE_COLD_START": "llm",
                "CLINIE_SELECT_STRATEGIES": "encoder", "CLINIE_ENCODER_EPOCHS": "1", "CLINIE_FIRST_MODEL_STEPS": "0"}
    with BackendServer(tmp_path / "backend", **settings) as server:
        ml_id = api.connect_ml_backend(project, server.url)
        for task_id, doc in zip(task_ids[:10], docs[:10]):
            api.create_annotation(task_id, document_to_result(doc, control)[0])
        store = AnnotationStore(server.data_dir / "clinie.sqlite3")
        api.train(ml_id)
        model, *_ = wait_for(lambda: [m for m in store.models(str(project)) if m.info.get("selection")], 900,
                             "the selection after the training")
        selection = model.info["selection"]
        assert "strategies" in selection
        assert selection["incumbent"] == selection["strategy"] == "llm-k5", server.log_tail()
        assert selection["incumbent_documents"] == 6
        assert selection["versus_incumbent"]["encoder"] < selection["versus_incumbent"]["llm-k5"]
        api.retrieve_predictions(project, task_ids[10:])
        for task_id in task_ids[10:]:
            [prediction] = api.predictions(task_id)
            assert prediction["model_version"] == "clinie-llm-llama.cpp-gemma-3-270m-q4_k_m-k5-pool10"


@pytest.mark.heavy
def test_relations_train_and_come_back_as_arrows_between_predicted_regions(label_studio, backend, tmp_path):
    """A drug-interaction project: annotations with relations are stored by webhook, training
    fits the tagger and the relation classifier, and the predictions Label Studio stores hold
    relations whose ``from_id``/``to_id`` are regions of the same prediction. The labeling view
    of such a task is rendered in headless Chromium and saved as a screenshot."""
    api = label_studio.client
    schema = parse_label_config(DDI_CONFIG)
    # short sentences with two or more interactions keep the training quick
    docs = [d for d in read_documents(DATA / "ddi" / "train.jsonl") if len(d.relations) >= 2 and len(d.text) < 200][:20]
    project = api.create_project("DDI interactions (clinie e2e)", DDI_CONFIG)
    task_ids = api.import_tasks(project, [{"text": d.text} for d in docs])
    ml_id = api.connect_ml_backend(project, backend.url)

    def submitted() -> int:
        metrics = requests.get(backend.url + "/metrics?format=json", timeout=10).json()
        return metrics["store"]["annotations"].get("submitted", 0)

    before = submitted()
    for task_id, doc in zip(task_ids[:15], docs[:15]):
        result, _ = document_to_result(doc, schema.span_controls[0], schema.relation_label_names)
        api.create_annotation(task_id, result)
    assert submitted() == before + 15, backend.log_tail()

    api.train(ml_id)
    version = wait_for(lambda: next((v for v in requests.get(backend.url + "/versions", timeout=10).json()["versions"]
                                     if "-p" + str(project) + "-" in v), None), 600, "a DDI model version")
    # the annotated sentences themselves, where the model must find some interactions, and five new ones
    api.retrieve_predictions(project, task_ids)
    texts = dict(zip(task_ids, (d.text for d in docs)))
    with_arrows = []
    for task_id in task_ids:
        [prediction] = [p for p in api.predictions(task_id) if p["model_version"] == version]
        regions = {r["id"]: r for r in prediction["result"] if r["type"] == "labels"}
        for r in regions.values():
            assert r["value"]["labels"][0] in schema.span_labels
            assert texts[task_id][r["value"]["start"]:r["value"]["end"]] == r["value"]["text"]
        arrows = [r for r in prediction["result"] if r["type"] == "relation"]
        for arrow in arrows:
            assert arrow["from_id"] in regions and arrow["to_id"] in regions
            assert arrow["labels"][0] in schema.relation_label_names
        if arrows:
            with_arrows.append(task_id)
    assert with_arrows, "no stored prediction has a relation"

    from harness.browser import screenshot_task

    shot = Path(os.environ.get("CLINIE_ARTIFACTS", ROOT / "artifacts")) / "ddi_labeling_view.png"
    # an unannotated task, where the view shows the prediction itself, when one has arrows
    shown = next((t for t in with_arrows if t in task_ids[15:]), with_arrows[0])
    seen = screenshot_task(label_studio, project, shown, shot)
    assert shot.stat().st_size > 10_000
    assert seen["regions"] > 0 and seen["relations"] > 0, seen


def test_webhooks_lost_while_the_backend_was_down_are_recovered_by_re_sync(label_studio, tmp_path):
    """The backend is killed; annotators go on (Label Studio's webhooks fail and are forgotten):
    two new annotations, one changed, one deleted. Restarted, the backend re-syncs from Label
    Studio with a personal access token, and its store holds what Label Studio holds: the
    annotations, and the text of the task left unannotated."""
    api = label_studio.client
    control = parse_label_config(DISEASE_CONFIG).span_controls[0]
    docs = list(read_documents(DATA / "ncbi_disease" / "fewshot" / "gutierrez_train100_seed42.jsonl"))[:4]
    results = [document_to_result(d, control)[0] for d in docs]
    project = api.create_project("re-sync (clinie e2e)", DISEASE_CONFIG)
    task_ids = api.import_tasks(project, [{"text": d.text} for d in docs])
    settings = {"CLINIE_TRAIN_EVERY": "0", "CLINIE_SELECT_STRATEGIES": "", "CLINIE_SYNC_EVERY_MINUTES": "0",
                "CLINIE_LABEL_STUDIO_URL": label_studio.url,
                "CLINIE_LABEL_STUDIO_API_KEY": api.personal_access_token()}
    data_dir = tmp_path / "backend"

    def store_counts(server) -> dict:
        return requests.get(server.url + "/metrics?format=json", timeout=10).json()["store"]["annotations"]

    with BackendServer(data_dir, **settings) as server:
        assert requests.get(server.url + "/health", timeout=10).json()["label_studio"] == label_studio.url
        api.connect_ml_backend(project, server.url)
        kept, dropped = (api.create_annotation(t, r) for t, r in zip(task_ids[:2], results[:2]))
        assert store_counts(server) == {"submitted": 2}
        server.kill()
        port = server.port

    assert results[0], "the first sentence has a Disease span; the annotator removes it"
    api.update_annotation(kept, [])
    api.delete_annotation(dropped)
    new = [api.create_annotation(t, r) for t, r in zip(task_ids[2:], results[2:])]

    with BackendServer(data_dir, port=port, **settings) as server:
        wait_for(lambda: store_counts(server) == {"submitted": 3, "deleted": 1}, 120, server.log_tail())
        counts = requests.get(server.url + "/metrics?format=json", timeout=10).json()["counts"]
        assert counts["annotations_recovered_by_sync"] == 3 and counts["annotations_deleted_by_sync"] == 1
    store = AnnotationStore(data_dir / "clinie.sqlite3")
    by_id = {e.annotation_id: e for e in store.training_examples(str(project))}
    assert sorted(by_id) == sorted([kept, *new])
    assert by_id[kept].result == []
    # the task whose only annotation was deleted is unannotated now: re-sync's listing keeps its text
    assert store.unannotated_tasks(str(project)) == [{"id": task_ids[1], "data": {"text": docs[1].text}}]
