"""The ``clinie`` command line on real files: train, predict (file and stdout), evaluate."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from clinie.cli import main
from clinie.core import read_documents, write_documents
from harness import DATA, ROOT
from harness.helpers import assert_spans_match_text

NCBI = DATA / "ncbi_disease" / "fewshot"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    train, test = tmp / "train.jsonl", tmp / "test.jsonl"
    write_documents(list(read_documents(NCBI / "gutierrez_train100_seed42.jsonl"))[:25], train)
    write_documents(list(read_documents(NCBI / "chen2023_test_sample200.jsonl"))[:15], test)
    return tmp, train, test


@pytest.mark.slow
def test_train_predict_evaluate(files, capsys):
    tmp, train, test = files
    model = tmp / "model"
    assert main(["train", "--data", str(train), "--out", str(model), "--epochs", "3"]) == 0
    assert (model / "clinie.json").exists()

    pred = tmp / "pred.jsonl"
    assert main(["predict", "--model", str(model), "--data", str(test), "--out", str(pred)]) == 0
    predicted = list(read_documents(pred))
    gold = list(read_documents(test))
    assert [d.id for d in predicted] == [d.id for d in gold]
    for doc in predicted:
        assert_spans_match_text(doc.text, doc.entities)
        assert {s.label for s in doc.entities} <= {"Disease"}

    capsys.readouterr()
    assert main(["evaluate", "--gold", str(test), "--pred", str(pred), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report) == {"entities"} and set(report["entities"]) == {"strict", "partial"}
    entities = report["entities"]
    assert entities["strict"]["micro"]["support"] == sum(len(d.entities) for d in gold)
    assert entities["partial"]["micro"]["tp"] >= entities["strict"]["micro"]["tp"]

    # The installed console script writes to stdout when --out is omitted.
    out = subprocess.run([sys.executable, "-m", "clinie.cli", "predict", "--model", str(model),
                          "--data", str(test)], capture_output=True, text=True, check=True).stdout
    assert [json.loads(line)["id"] for line in out.splitlines()] == [d.id for d in gold]


def test_evaluate_prints_a_table(files, capsys):
    _, _, test = files
    assert main(["evaluate", "--gold", str(test), "--pred", str(test)]) == 0
    out = capsys.readouterr().out
    assert "entities, strict matching" in out and "Disease" in out and "1.000" in out


def test_errors_are_one_clear_line(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "1", "text": "abc", "entities": [{"start": 0, "end": 9, "label": "X"}]}\n')
    assert main(["evaluate", "--gold", str(bad), "--pred", str(bad)]) == 2
    assert "bad.jsonl:1" in capsys.readouterr().err
    assert main(["train", "--data", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "m")]) == 2


@pytest.mark.slow
def test_predict_with_the_llm_strategy_and_retrieved_demos(files, tmp_path, capsys):
    _, train, test = files
    out = tmp_path / "llm.jsonl"
    config = ROOT / "label_configs" / "disease_ner.xml"
    assert main(["predict", "--strategy", "llm", "--demos", str(train), "--k", "2", "--config", str(config),
                 "--data", str(test), "--out", str(out), "--cache", str(tmp_path / "calls.sqlite3")]) == 0
    predicted = list(read_documents(out))
    assert len(predicted) == 15
    for doc in predicted:
        assert_spans_match_text(doc.text, doc.entities)
        assert {s.label for s in doc.entities} <= {"Disease"}
    assert "LLM entities: 15 calls, 0 cache hits" in capsys.readouterr().err
    # a second run is answered from the cache
    assert main(["predict", "--strategy", "llm", "--demos", str(train), "--k", "2", "--config", str(config),
                 "--data", str(test), "--out", str(out), "--cache", str(tmp_path / "calls.sqlite3")]) == 0
    assert "0 calls, 15 cache hits" in capsys.readouterr().err


def test_llm_strategy_refuses_an_implicit_remote_endpoint(files, capsys):
    _, _, test = files
    assert main(["predict", "--strategy", "llm", "--provider", "openai", "--labels", "Disease",
                 "--data", str(test)]) == 2
    assert "LLM_BASE_URL" in capsys.readouterr().err


@pytest.mark.heavy
@pytest.mark.slow
def test_relations_train_predict_on_gold_spans_and_evaluate(tmp_path, capsys):
    """DDI's pair-level files: train the tagger and the relation classifier (the listed pairs and
    a sample of the unlisted ones as negatives), predict relations between the given spans, and
    score them per listed pair."""
    from harness.helpers import assert_relations_join_spans

    ddi = DATA / "ddi" / "fewshot"
    train, test = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    short = [d for d in read_documents(ddi / "gutierrez_train100_balanced_seed42.jsonl") if len(d.text) < 200]
    write_documents(short[:30], train)
    write_documents(list(read_documents(ddi / "chen2023_test_sample200.jsonl"))[:20], test)
    model, pred = tmp_path / "model", tmp_path / "pred.jsonl"
    config = ROOT / "label_configs" / "drug_interactions.xml"
    assert main(["train", "--data", str(train), "--out", str(model), "--config", str(config),
                 "--pairs", "listed", "--negatives", "20", "--epochs", "2"]) == 0
    assert (model / "relations" / "clinie.json").exists()
    assert "relation classifier on 30 pairs and 20 unlisted ones" in capsys.readouterr().err
    assert main(["predict", "--model", str(model), "--gold-spans", "--data", str(test), "--out", str(pred)]) == 0
    gold, predicted = list(read_documents(test)), list(read_documents(pred))
    for g, p in zip(gold, predicted):
        assert p.entities == g.entities  # the given spans, untouched
        assert_relations_join_spans(p)
    capsys.readouterr()
    assert main(["evaluate", "--gold", str(test), "--pred", str(pred), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["relations"]) == {"strict", "pairs"}
    pairs = report["relations"]["pairs"]
    assert pairs["micro"]["support"] == sum(r.label != "false" for d in gold for r in d.relations)
    assert report["entities"]["strict"]["micro"]["f1"] == 1.0


@pytest.mark.slow
def test_evaluate_writes_a_report_of_what_it_printed(files, capsys, tmp_path):
    _, _, test = files
    gold = list(read_documents(test))
    pred = tmp_path / "pred.jsonl"
    # gold with every second span dropped: recall 1/2-ish, precision 1
    write_documents([d.with_annotations(d.entities[::2]) for d in gold], pred)
    assert main(["evaluate", "--gold", str(test), "--pred", str(pred), "--json", "--out", str(tmp_path / "r")]) == 0
    printed = json.loads(capsys.readouterr().out)
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["evaluation"]["per_label"]["all"]["f1"] == pytest.approx(printed["entities"]["strict"]["micro"]["f1"],
                                                                        abs=1e-4)
    assert report["evaluation"]["per_label"]["all"]["precision"] == 1.0
    assert report["evaluation"]["error_kinds"]["missed"] == printed["entities"]["strict"]["micro"]["fn"]
    assert (tmp_path / "r" / "report.html").exists() and (tmp_path / "r" / "report.md").exists()
    assert main(["evaluate", "--gold", str(test), "--pred", str(pred), "--out", str(tmp_path / "q"),
                 "--examples", "0"]) == 0
    assert gold[0].text not in (tmp_path / "q" / "report.html").read_text()  # no note text when asked


@pytest.mark.slow
def test_report_of_a_project_from_the_backends_store(tmp_path, monkeypatch, capsys):
    from clinie.labelstudio import document_to_result, parse_label_config
    from ml_backend.store import AnnotationStore

    config = (ROOT / "label_configs" / "disease_ner.xml").read_text()
    control = parse_label_config(config).span_controls[0]
    store = AnnotationStore(tmp_path / "data" / "clinie.sqlite3")
    store.set_label_config("3", config)
    docs = list(read_documents(NCBI / "gutierrez_train100_seed42.jsonl"))[:12]
    for i, doc in enumerate(docs, 1):
        result, _ = document_to_result(doc, control)
        store.record_annotation("3", {"id": i, "result": result}, {"id": i, "data": {"text": doc.text}})
    monkeypatch.setenv("CLINIE_ENCODER_EPOCHS", "4")
    out = tmp_path / "report"
    assert main(["report", "--project", "3", "--data-dir", str(tmp_path / "data"), "--strategies", "encoder",
                 "--repeats", "1", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["cross_validation"]["n_documents"] == 12 and report["cross_validation"]["selected"] == "encoder"
    assert [p["x"] for p in report["learning_curve"]["series"]["encoder"]] == [3, 6, 9]
    assert ("strategy selected at the last training", "none") in [tuple(x) for x in report["summary"]]
    assert report["evaluation"]["worst_errors"] == []  # no note text unless --examples asks for it
    assert not [f for f in out.iterdir() if any(d.text.encode() in f.read_bytes() for d in docs)]
    assert main(["report", "--project", "4", "--data-dir", str(tmp_path / "data"), "--out", str(out)]) == 2
    assert "no labeling config" in capsys.readouterr().err


def test_purge_removes_a_projects_notes_and_model_versions(tmp_path, capsys):
    from clinie.llm.cache import CallCache
    from ml_backend.store import AnnotationStore

    data = tmp_path / "data"
    store = AnnotationStore(data / "clinie.sqlite3")
    store.record_annotation("3", {"id": 1, "result": []}, {"id": 1, "data": {"text": "ZEBRA-PATIENT-7731 has asthma"}})
    store.record_annotation("4", {"id": 2, "result": []}, {"id": 2, "data": {"text": "kept"}})
    (data / "models" / "3" / "v1").mkdir(parents=True)
    CallCache(data / "llm_cache.sqlite3").put("a call", {"text": "ZEBRA-PATIENT-7731/B-Disease"})
    assert main(["purge", "--project", "3", "--data-dir", str(data)]) == 0
    assert "project 3: 1 annotations" in capsys.readouterr().err
    assert not (data / "models" / "3").exists()
    assert store.projects() == ["4"] and store.annotation_ids("4") == {2}
    assert not [f for f in data.rglob("*") if f.is_file() and b"ZEBRA-PATIENT-7731" in f.read_bytes()]
    assert main(["purge", "--project", "..", "--data-dir", str(data)]) == 2  # never a directory above models/
    assert (data / "clinie.sqlite3").exists()


def quoted(directory: Path, docs: list) -> list[str]:
    """The files under ``directory`` that hold the text of any of ``docs``."""
    return sorted(f.relative_to(directory).as_posix() for f in directory.rglob("*") if f.is_file()
                  and any(d.text.encode() in f.read_bytes() for d in docs))


@pytest.mark.slow
def test_fewshot_writes_no_note_text_unless_asked_to_keep_documents(files, tmp_path):
    _, train, test = files
    tests = list(read_documents(test))
    study = ["fewshot", "--pool", str(train), "--test", str(test), "--sizes", "4", "--seeds", "0,",
             "--strategies", "encoder", "--epochs", "1", "--folds", "2", "--loo-below", "0"]
    assert main([*study, "--out", str(tmp_path / "plain")]) == 0
    run = json.loads((tmp_path / "plain" / "runs" / "size4-seed0.json").read_text())
    assert run["test"]["encoder"]["worst_errors"] == [] and len(run["pool_ids"]) == 4
    assert quoted(tmp_path / "plain", tests) == []

    assert main([*study, "--keep-documents", "--out", str(tmp_path / "kept")]) == 0
    assert quoted(tmp_path / "kept", tests) == ["report.html", "report.json", "report.md", "runs/size4-seed0.json"]
    assert main([*study, "--out", str(tmp_path / "kept")]) == 0  # resumed without: the report quotes nothing
    assert quoted(tmp_path / "kept", tests) == ["runs/size4-seed0.json"]
