"""What the backend keeps on disk stays bounded, and a damaged model version does not stop a
project: old versions pruned, crash leftovers removed, the LLM call cache bounded, the serving
version's directory damaged answered by the one before it. Real files, real SQLite, real models."""

from __future__ import annotations

import os
import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest

from clinie import model_version
from clinie.core import read_documents
from clinie.labelstudio import document_to_result, parse_label_config
from clinie.llm.cache import CallCache
from clinie.model_version import MAIN_PART, ModelVersion
from clinie.settings import Settings
from harness import DATA
from harness.helpers import DISEASE_CONFIG, Files, assert_regions_match_tasks, webhook_event
from ml_backend.app import create_app
from ml_backend.model_store import ModelStore
from ml_backend.service import Backend
from ml_backend.store import AnnotationStore, ModelRecord
from ml_backend.training import serve_full_encoder, train_project

CONTROL = parse_label_config(DISEASE_CONFIG).span_controls[0]
DOCS = list(read_documents(DATA / "ncbi_disease" / "fewshot" / "gutierrez_train100_seed42.jsonl"))[:10]
TASKS = [{"id": 100 + i, "data": {"text": d.text}} for i, d in enumerate(DOCS[:3])]


def tiny(tmp_path: Path, **changes) -> Settings:
    """Settings whose training is two quick fits: a first model cut short after one step, then
    the encoder to its full budget (one epoch) as ``<first>-full``."""
    return Settings(**{"data_dir": tmp_path / "data", "train_every": 0, "min_annotations": 2, "encoder_epochs": 1,
                       "first_model_steps": 1, "strategy": "encoder", **changes})


def annotated(settings: Settings) -> tuple[Backend, object]:
    backend = Backend(settings, start_worker=False)
    client = create_app(settings, backend).test_client()
    for i, doc in enumerate(DOCS):
        result, _ = document_to_result(doc, CONTROL)
        assert client.post("/webhook", json=webhook_event(i + 1, i + 1, doc.text, result)).json["stored"]
    return backend, client


def fake_version(store: AnnotationStore, settings: Settings, version: str, day: int = 1) -> ModelRecord:
    """A version registered (and serving) on ``day`` of January, holding one file."""
    written = ModelStore(settings.models_location, settings.data_dir).write(
        "1", version, {MAIN_PART: Files({"model.safetensors": b"\0" * 1024})}, {})
    record = ModelRecord(version, "1", "encoder", written.location, 5, {"selection": None},
                         f"2026-01-{day:02}T00:00:00+00:00")
    store.finish_training(store.begin_training("1"), record)
    return record


def predict(client, tasks: list[dict] = TASKS):
    return client.post("/predict", json={"tasks": tasks, "project": "1", "label_config": DISEASE_CONFIG})


def test_every_training_prunes_the_versions_beyond_the_newest_kept_but_never_the_serving_one(tmp_path):
    settings = Settings(data_dir=tmp_path / "data", train_every=0, keep_models=2)
    backend = Backend(settings, start_worker=False)
    backend.store.set_label_config("1", DISEASE_CONFIG)
    versions = [fake_version(backend.store, settings, f"v{i}", day=i + 1) for i in range(5)]
    with sqlite3.connect(settings.store_path) as db:  # an operator pointed serving back at the oldest
        db.execute("UPDATE serving SET version = 'v0' WHERE project = '1'")

    assert backend.train("1") is None  # no annotations: nothing trained, yet the bound applies
    assert [m.version for m in backend.store.models("1")] == ["v0", "v3", "v4"]
    assert [Path(v.location).is_dir() for v in versions] == [True, False, False, True, True]
    assert backend.store.serving_model("1").version == "v0"

    unbounded = Backend(replace(settings, keep_models=0), start_worker=False)
    fake_version(unbounded.store, settings, "v5", day=6)
    unbounded.train("1")
    assert len(unbounded.store.models("1")) == 4


@pytest.mark.slow
def test_a_training_of_two_versions_keeps_the_newest_and_forgets_the_pruned_ones_loaded(tmp_path):
    settings = tiny(tmp_path, keep_models=1)
    backend, client = annotated(settings)
    old = fake_version(backend.store, settings, "clinie-encoder-p1-t0-n5")

    record, annotations = train_project(backend.store, settings, backend.models, "1",
                                        backend.store.begin_training("1"), backend.metrics)
    assert predict(client).json["model_version"] == record.version  # the first model, loaded
    full = serve_full_encoder(backend.store, settings, backend.models, record, annotations, backend.metrics)
    backend.prune_versions("1")

    assert [m.version for m in backend.store.models("1")] == [full.version] == [record.version + "-full"]
    assert not Path(old.location).exists() and not Path(record.location).exists()
    assert ModelVersion.open(full.location).has(MAIN_PART), "the first version's encoder is not the full one's"
    assert sorted(os.listdir(backend.models.project_location("1"))) == [full.version]
    loaded = {version for version, _ in backend.serving._loaded.values()}
    assert record.version not in loaded  # nothing of a pruned version stays in memory
    answer = predict(client)
    assert answer.status_code == 200 and answer.json["model_version"] == full.version
    assert backend.metrics_snapshot()["store"]["model_versions"] == 1


@pytest.mark.slow
def test_a_damaged_serving_version_is_answered_by_the_one_registered_before_it(tmp_path):
    backend, client = annotated(tiny(tmp_path))
    backend.train("1")
    first, full = backend.store.models("1")
    assert backend.store.serving_model("1").version == full.version == first.version + "-full"
    (Path(full.location) / "config.json").write_text("{ truncated")  # a disk error, a bad restore

    for _ in range(2):
        answer = predict(client)
        assert answer.status_code == 200 and answer.json["model_version"] == first.version
        assert_regions_match_tasks(TASKS, answer.json)
    assert backend.model_version("1") == first.version
    assert backend.metrics_snapshot()["counts"]["model_fallbacks"] == 1  # found once, then set aside
    assert "clinie_model_fallbacks_total 1.0" in client.get("/metrics").text

    restarted = create_app(backend.settings, Backend(backend.settings, start_worker=False)).test_client()
    assert predict(restarted).json["model_version"] == first.version
    (Path(first.location) / "config.json").unlink()  # both damaged: no trained model left, no 500 either
    fresh = Backend(backend.settings, start_worker=False)
    answer = predict(create_app(backend.settings, fresh).test_client())
    assert answer.status_code == 200 and [r["result"] for r in answer.json["results"]] == [[]] * len(TASKS)
    assert fresh.metrics_snapshot()["counts"]["model_fallbacks"] == 2


def test_half_written_model_directories_are_removed_when_the_backend_starts(tmp_path):
    settings = Settings(data_dir=tmp_path / "data")
    models = Path(ModelStore(settings.models_location, settings.data_dir).project_location("1"))
    version = models / "clinie-encoder-p1-t1-n5"
    for partial in (models / "clinie-encoder-p1-t2-n6.partial", version / "probe.partial"):
        partial.mkdir(parents=True)
        (partial / "model.safetensors").write_bytes(b"\0" * 1024)
    (version / "config.json").write_text("{}")

    Backend(settings, start_worker=False)
    assert sorted(p.relative_to(models).as_posix() for p in models.rglob("*")) == [
        "clinie-encoder-p1-t1-n5", "clinie-encoder-p1-t1-n5/config.json"]


def test_a_written_version_is_renamed_durably(tmp_path, monkeypatch):
    """Its files are flushed before the rename, the directory holding the rename after it."""
    final = tmp_path / "models" / "1" / "v1"
    final.parent.mkdir(parents=True)
    flushed = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        flushed.append((os.fstat(fd).st_ino, final.is_dir()))
        real_fsync(fd)

    monkeypatch.setattr(model_version.os, "fsync", fsync)
    ModelVersion.write(final, {MAIN_PART: Files({"config.json": b"{}"})})
    config = (final / "config.json").stat().st_ino
    assert flushed.index((config, False)) < flushed.index((final.parent.stat().st_ino, True))


def test_the_llm_call_cache_evicts_the_oldest_calls_beyond_its_bound(tmp_path):
    path = tmp_path / "llm_cache.sqlite3"
    cache = CallCache(path, max_bytes=200_000)
    keys = [CallCache.key("llama.cpp", "m", f"sentence {i}", {}) for i in range(1000)]
    for i, key in enumerate(keys):
        cache.put(key, {"text": f"{i} " + "word " * 200})  # about 1 kB a call: 1 MB in all
    assert cache.used_bytes() <= 200_000 and path.stat().st_size <= 250_000 and cache.evicted > 800
    assert cache.get(keys[0]) is None and cache.get(keys[-1]) == {"text": "999 " + "word " * 200}
    assert CallCache(path).get(keys[-1]) is not None  # what is kept survives a reopening

    settings = Settings(data_dir=tmp_path / "data", llm_cache_mb=7)
    assert Backend(settings, start_worker=False).serving.llm_cache.max_bytes == 7_000_000
