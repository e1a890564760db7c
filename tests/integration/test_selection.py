"""A project's annotations as training documents: every one learned from, or counted and said why."""

from pathlib import Path

from clinie.labelstudio import parse_label_config
from ml_backend.annotations import project_documents, unannotated_documents
from ml_backend.store import AnnotationStore

CONFIG = ('<View><Labels name="label" toName="text"><Label value="Disease"/></Labels>'
          '<Relations><Relation value="causes"/></Relations><Text name="text" value="$text"/></View>')
TEXT = "Cystic fibrosis causes lung disease ."


def disease(start: int, end: int, rid: str | None = None, label: str = "Disease") -> dict:
    item = {"from_name": "label", "to_name": "text", "type": "labels",
            "value": {"start": start, "end": end, "text": TEXT[start:end], "labels": [label]}}
    return item if rid is None else {**item, "id": rid}


def test_annotations_without_region_ids_are_learned_and_unusable_ones_counted_never_trained_as_empty(tmp_path: Path):
    store = AnnotationStore(tmp_path / "store.sqlite3")
    store.set_label_config("1", CONFIG)
    annotations = [
        ([disease(0, 15), disease(23, 35)], {"text": TEXT}),                     # no ids, as the SDK sends
        ([disease(0, 15, "a"), {"type": "relation", "from_id": "a", "to_id": "gone", "labels": ["causes"]}],
         {"text": TEXT}),                                                          # an arrow to nothing
        ([disease(0, 15, "a"), disease(23, 99, "b")], {"text": TEXT}),            # offsets outside the text
        ([disease(0, 15, "a", label="Drug")], {"text": TEXT}),                   # a label the config lacks
        ([disease(0, 15, "a")], {"body": TEXT}),                                  # the task lacks $text
    ]
    for n, (result, data) in enumerate(annotations, start=1):
        store.record_annotation("1", {"id": n, "result": result, "completed_by": 1}, {"id": n, "data": data})

    read = project_documents(store, "1")
    assert [[(s.text, s.label) for s in d.entities] for d in read.docs] == [
        [("Cystic fibrosis", "Disease"), ("lung disease", "Disease")], [("Cystic fibrosis", "Disease")]]
    assert read.unusable == {"region offsets unusable": 1, "label not in the config": 1,
                             "task without the labelled text": 1}
    assert read.skipped_relations == 1
    assert read.summary() == {"unusable": {"label not in the config": 1, "region offsets unusable": 1,
                                           "task without the labelled text": 1}, "skipped_relations": 1}


def test_the_unannotated_documents_are_the_newest_stored_tasks_without_an_annotation_read_with_the_config(tmp_path):
    store = AnnotationStore(tmp_path / "store.sqlite3")
    store.record_tasks("1", [(1, {"text": "The oldest note ."}), (2, {"body": TEXT}), (3, {"text": ""}),
                             (4, {"text": "An annotated note ."}), (5, {"text": TEXT})])
    store.record_annotation("1", {"id": 9, "result": [disease(0, 15)], "completed_by": 1},
                            {"id": 4, "data": {"text": TEXT}})
    schema = parse_label_config(CONFIG)
    read = unannotated_documents(store, "1", schema, limit=None)
    assert [(d.id, d.text, d.entities) for d in read.docs] == [("1", "The oldest note .", ()), ("5", TEXT, ())]
    assert read.summary() == {"documents": 2, "skipped": 1}  # task 2 lacks $text; task 3 is empty
    assert [d.id for d in unannotated_documents(store, "1", schema, limit=2).docs] == ["5"]  # of tasks 3 and 5
