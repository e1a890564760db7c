"""Invariant checks shared by the tests of every module."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from clinie.core import Span
from harness import ROOT

DISEASE_CONFIG = (ROOT / "label_configs" / "disease_ner.xml").read_text()


def assert_spans_match_text(text: str, spans: Iterable[Span]) -> None:
    """Offsets are sacred: every span is a non-empty interval whose text is its surface form."""
    for s in spans:
        assert 0 <= s.start < s.end <= len(text), f"{s} is outside a text of {len(text)} chars"
        assert text[s.start : s.end] == s.text, f"{s}: text[start:end] is {text[s.start:s.end]!r}"


def assert_regions_match_tasks(tasks: list[dict], answer: dict) -> None:
    """The same for a /predict answer: each region's ``text`` is its task's text at its offsets."""
    for task, result in zip(tasks, answer["results"]):
        for region in result["result"]:
            assert task["data"]["text"][region["value"]["start"]:region["value"]["end"]] == region["value"]["text"]


def assert_relations_join_spans(doc) -> None:
    """Every relation joins two different spans the document has."""
    ids = [s.id for s in doc.entities]
    assert len(set(ids)) == len(ids), f"{doc.id}: span ids repeat"
    for r in doc.relations:
        assert r.head in ids and r.tail in ids and r.head != r.tail, f"{doc.id}: {r} joins no two spans of the document"


def webhook_event(annotation_id: int, task_id: int, text: str, result: list, project: int = 1,
                  action: str = "ANNOTATION_CREATED", label_config: str = DISEASE_CONFIG) -> dict:
    """An annotation webhook as Label Studio 1.23 sends it (the fields clinie reads)."""
    return {"action": action,
            "annotation": {"id": annotation_id, "result": result, "was_cancelled": False, "task": task_id,
                           "project": project, "completed_by": 1},
            "task": {"id": task_id, "data": {"text": text}, "meta": {}},
            "project": {"id": project, "label_config": label_config}}


class Files:
    """A model version's part that saves the given files (what an extractor's ``save`` writes, as
    bytes): for the tests of storing versions, where what the files hold does not matter."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files

    def save(self, directory: Path) -> Path:
        for name, content in self.files.items():
            (directory / name).parent.mkdir(parents=True, exist_ok=True)
            (directory / name).write_bytes(content)
        return directory
