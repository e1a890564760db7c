"""The students: an encoder trained on the annotations and on the unannotated sentences its teacher
(the probe fitted on the same annotations) labels surely enough, or on every word's distribution
as the teacher reads it (``distilled``) — real MiniLM, real Gemma states, real NCBI sentences, a
few optimiser steps."""

from __future__ import annotations

import json

import pytest

from clinie.cli import main
from clinie.core import Document, LabelSpec, read_documents, split_sentences, write_documents
from clinie.evaluation.fewshot import cross_validate
from clinie.extractors.encoder import EncoderTagger
from clinie.llm.hidden import HiddenStates
from clinie.strategies import (
    DEFAULT_THRESHOLD,
    PARTS,
    Strategy,
    StrategyBuilder,
    kinds,
    model_version,
    parse_strategies,
    strategy_forms,
)
from harness import DATA
from harness.helpers import assert_spans_match_text

NCBI = DATA / "ncbi_disease"


def test_student_names_take_one_default_threshold_and_round_trip():
    assert [s.name for s in parse_strategies("student")] == [f"student-{DEFAULT_THRESHOLD:.2f}"]
    for strategy in parse_strategies("student-0.5,student-0.00,student-1.0,gated"):
        assert Strategy.parse(strategy.name) == strategy
    assert Strategy.parse("student-0.5").threshold == 0.5 and Strategy.parse("student-0.5").band == (0.0, 0.0)
    student = kinds()["student"]
    assert (student.saved_parts, student.reads_llm, student.learns_from_unannotated) == (("student",), False, True)
    assert not any(kinds()[name].learns_from_unannotated for name in ("encoder", "probe", "gated", "llm"))
    distilled = Strategy.parse("distilled")
    assert (distilled.name, distilled.kind.saved_parts, distilled.uses_llm) == ("distilled", ("distilled",), False)
    assert distilled.kind.learns_from_unannotated
    # a student serves from a version of its own, named for it (``ml_backend.training.derive``)
    assert model_version(distilled, trained="v1-distilled", llm_name="x", pool=3) == "v1-distilled"
    assert model_version(Strategy.parse("student-0.8"), trained="v1-student-0.80", llm_name="x",
                         pool=3) == "v1-student-0.80"
    assert "student-0.NN" in strategy_forms()
    with pytest.raises(ValueError, match="unknown strategy"):
        parse_strategies("student-k3")


@pytest.fixture(scope="module")
def annotated() -> list[Document]:
    return list(read_documents(NCBI / "fewshot" / "gutierrez_train100_seed42.jsonl"))[:10]


@pytest.fixture(scope="module")
def unannotated(annotated) -> list[Document]:
    """Thirty train-split sentences, gold spans still on them (the builder must drop them), and
    one text of two sentences (the teacher labels, the student keeps or drops, each alone)."""
    seen = {d.text for d in annotated}
    docs = [d for d in read_documents(NCBI / "train.jsonl") if d.text not in seen][200:230]
    return [*docs, Document("note", f"{docs[0].text}\n\n{docs[1].text}")]


@pytest.fixture(scope="module")
def build(unannotated) -> StrategyBuilder:
    return StrategyBuilder([LabelSpec("Disease")], encoder_options={"max_steps": 12}, probe_options={"epochs": 10},
                           unannotated=unannotated)


@pytest.mark.slow
def test_a_student_learns_the_teachers_sure_sentences_and_serves_from_its_version_directory(
        build, annotated, unannotated, tmp_path):
    assert len(build.unannotated) == sum(len(split_sentences(d.text)) for d in unannotated)
    assert [d.meta["parent"] for d in build.unannotated].count("note") >= 2  # read a sentence at a time
    assert not any(d.entities for d in build.unannotated)  # gold spans of unannotated text are never read
    read: list[tuple[int, int]] = []
    build.read_unannotated(lambda done, total: read.append((done, total)))  # a backend's "teacher" stage
    assert read == [(i, len(build.unannotated)) for i in range(1, len(build.unannotated) + 1)]
    calls = build.states.usage["calls"]
    build.read_unannotated()  # as a later training would: what the cache holds costs no forward pass
    assert build.states.usage["calls"] == calls
    taught = build.taught(annotated)
    teacher = build.probe(annotated)
    assert [d.entities for d in taught] == [d.entities for d in teacher.predict(build.unannotated)]
    assert any(d.entities for d in taught)

    every = build(Strategy.parse("student-0.00"), annotated)
    assert (every.n_train_docs, every.n_taught_docs) == (len(annotated), len(build.unannotated))
    confidences = sorted(d.meta["confidence"] for d in taught)
    middle = confidences[len(confidences) // 2]
    sure = build(Strategy("student", threshold=middle), annotated)
    assert sure.n_taught_docs == sum(c >= middle for c in confidences) < len(taught)

    test = list(read_documents(NCBI / "fewshot" / "chen2023_test_sample200.jsonl"))[:8]
    version = tmp_path / "clinie-encoder-p1-t1-n10"
    for name in kinds()["student"].saved_parts:
        PARTS[name].fit(build, annotated, Strategy("student", threshold=middle)).save(version / PARTS[name].directory)
    loaded = PARTS["student"].load(version / "student", HiddenStates.shared)
    assert isinstance(loaded, EncoderTagger) and loaded.n_taught_docs == sure.n_taught_docs
    predicted = loaded.predict(test)
    assert [d.entities for d in predicted] == [d.entities for d in sure.predict(test)]
    for doc in predicted:
        assert_spans_match_text(doc.text, doc.entities)
        assert {s.label for s in doc.entities} <= {"Disease"}

    # distilled: every sentence, each word as the same teacher reads it, its doubts included
    calls = build.states.usage["calls"]
    distilled = build(Strategy.parse("distilled"), annotated)
    assert build.states.usage["calls"] == calls  # the teacher read the unannotated text once, for both
    assert (distilled.n_train_docs, distilled.n_taught_docs) == (len(annotated), len(build.unannotated))
    assert distilled not in (every, sure, build.encoder(annotated))
    loaded = PARTS["distilled"].load(distilled.save(version / "distilled"), HiddenStates.shared)
    assert [d.entities for d in loaded.predict(test)] == [d.entities for d in distilled.predict(test)]
    assert HiddenStates.shared()._cache  # the teacher's reading of the unannotated text, kept for the next fold
    HiddenStates.forget_all()  # what the backend does when Label Studio deletes anything
    assert not HiddenStates.shared()._cache


@pytest.mark.slow
def test_with_nothing_unannotated_the_student_is_the_encoder(annotated):
    build = StrategyBuilder([LabelSpec("Disease")], encoder_options={"max_steps": 4})
    assert build(Strategy.parse("student"), annotated) is build.encoder(annotated)
    assert build(Strategy.parse("distilled"), annotated) is build.encoder(annotated)
    assert build.taught(annotated) == []


@pytest.mark.slow
def test_a_folds_teacher_never_learns_from_the_annotations_the_fold_holds_out(build, annotated, monkeypatch):
    docs = annotated[:4]
    teachers: list[set[str]] = []
    fit_probe = build.probe
    monkeypatch.setattr(build, "probe", lambda train: teachers.append({d.id for d in train}) or fit_probe(train))
    cv = cross_validate(docs, [Strategy.parse("student-0.00")], build, k=4, loo_below=5, seed=1)
    assert len(teachers) == len(cv.folds) == 4  # one teacher per fold
    for fold, trained_on in zip(cv.folds, teachers):
        assert trained_on == {d.id for d in docs} - {docs[i].id for i in fold}


@pytest.mark.slow
def test_the_command_line_trains_a_student_beside_the_encoder_and_studies_it(annotated, unannotated, tmp_path):
    data, texts, test = tmp_path / "train.jsonl", tmp_path / "texts.jsonl", tmp_path / "test.jsonl"
    write_documents(annotated[:4], data)  # the teacher: the default probe, 60 epochs
    write_documents(unannotated[:8], texts)
    write_documents(list(read_documents(NCBI / "fewshot" / "chen2023_test_sample200.jsonl"))[:4], test)
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "m"), "--epochs", "1",
                 "--strategy", "student-0.00", "--unannotated", str(texts)]) == 0
    meta = json.loads((tmp_path / "m" / "student" / "clinie.json").read_text())
    sentences = sum(len(split_sentences(d.text)) for d in unannotated[:8])
    assert (meta["n_train_docs"], meta["n_taught_docs"]) == (4, sentences)
    assert main(["predict", "--model", str(tmp_path / "m"), "--strategy", "student", "--data", str(test),
                 "--out", str(tmp_path / "pred.jsonl")]) == 0
    assert len(list(read_documents(tmp_path / "pred.jsonl"))) == 4

    study = ["fewshot", "--pool", str(data), "--test", str(test), "--sizes", "4", "--seeds", "0,", "--epochs", "1",
             "--folds", "2", "--loo-below", "0", "--unannotated", str(texts)]
    assert main([*study, "--strategies", "encoder", "--out", str(tmp_path / "no")]) == 2  # nothing would read them
    assert main([*study, "--strategies", "encoder,student-0.00", "--out", str(tmp_path / "study")]) == 0
    run = json.loads((tmp_path / "study" / "runs" / "size4-seed0.json").read_text())
    assert list(run["test"]) == ["encoder", "student-0.00"] and list(run["cv"]["strategies"]) == list(run["test"])
