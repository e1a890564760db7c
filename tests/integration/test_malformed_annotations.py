"""Hostile annotations (issue 38): each is stored as received, judged unusable where it arrives
and counted per reason, and never fails a training or a /predict of its project later."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from clinie.labelstudio import UnusableAnnotation, annotation_problem, annotation_to_document, parse_label_config
from clinie.settings import Settings
from harness.helpers import DISEASE_CONFIG, webhook_event
from ml_backend.annotations import annotated_documents
from ml_backend.app import create_app
from ml_backend.service import Backend
from ml_backend.store import AnnotationStore

SCHEMA = parse_label_config(DISEASE_CONFIG)
TEXT = "Cystic fibrosis causes lung disease ."
TASK = {"id": 3, "data": {"text": TEXT}}


def region(rid: str = "a", **value: Any) -> dict[str, Any]:
    """A "Cystic fibrosis" region as Label Studio sends it, ``value`` fields overridden."""
    return {"id": rid, "from_name": "label", "to_name": "text", "type": "labels",
            "value": {"start": 0, "end": 15, "text": TEXT[:15], "labels": ["Disease"], **value}}


def arrow(**fields: Any) -> dict[str, Any]:
    return {"type": "relation", "from_id": "a", "to_id": "b", "direction": "right", "labels": [], **fields}


BOTH = [region("a"), region("b", start=23, end=35)]

HOSTILE = [
    pytest.param([region(start=float("inf"))], "region offsets unusable", id="start-1e999"),  # OverflowError before
    pytest.param([region(start=float("nan"))], "region offsets unusable", id="start-nan"),
    pytest.param([region(start="3")], "region offsets unusable", id="start-string"),  # read as 3 before
    pytest.param([region(start=True)], "region offsets unusable", id="start-bool"),  # read as 1 before
    pytest.param([region(start=-1)], "region offsets unusable", id="start-negative"),
    pytest.param([region(end=len(TEXT) + 1)], "region offsets unusable", id="end-beyond-the-text"),
    pytest.param([region(labels=5)], "region labels not a list of strings", id="labels-int"),  # TypeError before
    pytest.param([region(labels={"a": 1})], "region labels not a list of strings", id="labels-dict"),  # KeyError
    pytest.param([region(labels=[5])], "region labels not a list of strings", id="labels-int-in-list"),
    pytest.param([region(labels=["Disease", "Disease"])], "region without exactly one label", id="labels-twice"),
    pytest.param([region(labels=["Drug"])], "label not in the config", id="label-unknown"),
    pytest.param([{**region(), "value": [0, 15]}], "region without offsets", id="value-list"),
    pytest.param([region(), "Cystic fibrosis"], "result item not an object", id="item-string"),  # skipped before
    pytest.param([*BOTH, arrow(from_id=5)], "relation ids not strings", id="relation-from-id-int"),
    pytest.param([*BOTH, arrow(labels=5)], "relation labels not a list of strings", id="relation-labels-int"),
    pytest.param({"0": region()}, "result not a list", id="result-dict"),  # read as no entity before
]


@pytest.mark.parametrize("result, reason", HOSTILE)
def test_a_hostile_annotation_is_unusable_for_its_reason_and_reading_it_raises_nothing_else(result, reason):
    assert annotation_problem(TASK, result, SCHEMA) == reason
    with pytest.raises(UnusableAnnotation) as raised:
        annotation_to_document(TASK, result, SCHEMA)
    assert raised.value.reason == reason and TEXT[:15] not in str(raised.value)


def test_integral_float_offsets_and_absent_relation_labels_are_read_as_before():
    doc = annotation_to_document(TASK, [region(start=0.0, end=15.0), region("b", start=23, end=35),
                                        arrow(labels=None)], SCHEMA)
    assert [(s.start, s.end, s.text) for s in doc.entities] == [(0, 15, "Cystic fibrosis"), (23, 35, "lung disease")]
    assert annotation_problem(TASK, [region()], SCHEMA) is None


def store_with(tmp_path: Path, bad_result: Any) -> AnnotationStore:
    """A project with two good annotations and, between them, ``bad_result``: as stored."""
    store = AnnotationStore(tmp_path / "store.sqlite3")
    store.set_label_config("1", DISEASE_CONFIG)
    for n, result in enumerate([[region()], bad_result, [region(start=23, end=35)]], start=1):
        store.record_annotation("1", {"id": n, "result": result, "completed_by": 1}, {"id": n, "data": {"text": TEXT}})
    return store


@pytest.mark.parametrize("result, reason", HOSTILE)
def test_a_project_with_one_hostile_annotation_among_good_ones_still_trains(tmp_path, result, reason):
    store = store_with(tmp_path, result)
    assert [e.annotation_id for e in store.training_examples("1")] == [1, 2, 3]  # stored as received
    read = annotated_documents(store, "1", SCHEMA)  # what a training and the LLM's demonstrations read
    assert [(d.id, [s.text for s in d.entities]) for d in read.docs] == [("1", ["Cystic fibrosis"]),
                                                                         ("3", ["lung disease"])]
    assert read.unusable == {reason: 1}


def test_an_annotation_that_raises_anything_else_is_skipped_and_counted_never_a_failed_training(
        tmp_path, monkeypatch, caplog):
    import ml_backend.annotations

    def reading(task: dict, result: Any, schema: Any):
        if task["id"] == 2:
            raise RuntimeError(f"a bug quoting the note: {TEXT}")
        return annotation_to_document(task, result, schema)

    monkeypatch.setattr(ml_backend.annotations, "annotation_to_document", reading)
    read = annotated_documents(store_with(tmp_path, [region()]), "1", SCHEMA)
    assert [d.id for d in read.docs] == ["1", "3"] and read.unusable == {"unreadable annotation": 1}
    assert TEXT not in caplog.text and "RuntimeError" in caplog.text


def test_a_webhook_with_a_malformed_annotation_is_stored_and_answered_200_saying_why_it_cannot_be_learned(tmp_path):
    settings = Settings(data_dir=tmp_path / "data", train_every=0, strategy="encoder")
    backend = Backend(settings, start_worker=False)
    client = create_app(settings, backend).test_client()
    good = webhook_event(1, 1, TEXT, [region()])
    assert "unusable" not in client.post("/webhook", json=good).json
    # as a client could send it: 1e999 is valid JSON, read as infinity
    body = json.dumps(webhook_event(2, 2, TEXT, [region(start=0)])).replace('"start": 0', '"start": 1e999')
    answer = client.post("/webhook", data=body, content_type="application/json")
    assert answer.status_code == 200
    assert answer.json["stored"] is True and answer.json["unusable"] == "region offsets unusable"
    labels_int = client.post("/webhook", json=webhook_event(3, 3, TEXT, [region(labels=5)])).json
    assert labels_int["stored"] is True and labels_int["unusable"] == "region labels not a list of strings"

    assert [e.annotation_id for e in backend.store.training_examples("1")] == [1, 2, 3]
    counted = client.get("/metrics?format=json").json["counts_by"]["annotations_unusable"]
    assert counted == {"reason": {"region labels not a list of strings": 1, "region offsets unusable": 1}}
    assert 'clinie_annotations_unusable_total{reason="region offsets unusable"} 1.0' in client.get("/metrics").text
    backend.close()
