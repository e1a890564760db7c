"""A project's annotations and unannotated tasks, read from the store as documents: what its
strategies learn from (``clinie.selection``), and the LLM's demonstrations. Read defensively: an
annotation or task that cannot be read is skipped and counted, never a failed training."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from clinie.core import Document, Schema
from clinie.labelstudio import (
    UNREADABLE,
    UnusableAnnotation,
    annotation_to_document,
    parse_label_config,
    task_to_document,
)
from ml_backend.store import AnnotationStore

log = logging.getLogger(__name__)


@dataclass
class Annotations:
    """A project's annotations read as documents (the latest submitted one per task, empty texts
    left out): what strategies learn from, and the LLM's demonstrations. Those clinie cannot
    learn from are counted per reason, never trained on as they stand."""

    schema: Schema
    docs: list[Document]
    unusable: Counter[str] = field(default_factory=Counter)  # reason -> annotations
    skipped_relations: int = 0  # arrows pointing at a region their annotation does not hold

    def summary(self) -> dict[str, Any]:
        """What a model version records of them (``ModelRecord.info``) and /metrics shows."""
        return {"unusable": dict(sorted(self.unusable.items())), "skipped_relations": self.skipped_relations}


def project_documents(store: AnnotationStore, project: str) -> Annotations:
    """The project's annotations, read with its stored labeling config."""
    config = store.label_config(project)
    if config is None:
        raise ValueError(f"project {project} has no labeling config yet (no /setup or webhook seen)")
    return annotated_documents(store, project, parse_label_config(config))


def annotated_documents(store: AnnotationStore, project: str, schema: Schema) -> Annotations:
    """The project's annotations read with ``schema`` (see ``Annotations``).

    Every stored annotation is read defensively: whatever it holds, it is skipped and counted,
    never a failed training or /predict (the LLM's demonstrations are read here too). Logged
    with ids and reasons only: an exception's message could quote the note."""
    read = Annotations(schema, [])
    for example in store.training_examples(project):
        try:
            doc = annotation_to_document(example.task, example.result, schema)
        except UnusableAnnotation as e:  # the reason only: the detail quotes the annotation's labels
            read.unusable[e.reason] += 1
            log.warning("project %s: annotation %s is not learned from: %s", project, example.annotation_id, e.reason)
            continue
        except Exception as e:  # a last resort: annotation_to_document is meant to raise nothing else
            read.unusable[UNREADABLE] += 1
            log.warning("project %s: annotation %s is not learned from: %s (%s)", project, example.annotation_id,
                        UNREADABLE, type(e).__name__)
            continue
        read.skipped_relations += doc.meta.get("skipped_relations", 0)
        if doc.text:
            read.docs.append(doc)
    return read


@dataclass
class Unannotated:
    """A project's unannotated tasks read as documents (empty texts left out): the text a student
    strategy learns from with its teacher's labels. A task whose data lacks the labelled text
    (imported before the config changed, say) is skipped and counted, never a failed training."""

    docs: list[Document]
    skipped: int = 0  # tasks without the text the config labels

    def summary(self) -> dict[str, int]:
        """What a selection records of them (``ModelRecord.info["selection"]``)."""
        return {"documents": len(self.docs), "skipped": self.skipped}


def unannotated_documents(store: AnnotationStore, project: str, schema: Schema, limit: int | None) -> Unannotated:
    """The text of the project's stored tasks that have no annotation, newest ``limit`` (None:
    all; ``CLINIE_STUDENT_POOL`` in a training), read with ``schema`` as ``annotated_documents``
    reads an annotated task: the text its first span control labels."""
    read = Unannotated([])
    control = schema.span_controls[0]
    for task in store.unannotated_tasks(project, limit):
        try:
            doc = task_to_document(task, control)
        except ValueError:  # the message names the key, never the text
            read.skipped += 1
            continue
        if doc.text:
            read.docs.append(doc)
    if read.skipped:
        log.warning("project %s: %d unannotated tasks lack the text the config labels; not read", project,
                    read.skipped)
    return read
