"""A project's annotated documents, the strategies fitted from them, and the true few-shot
selection among those strategies (``clinie.evaluation.fewshot``).

Run by the backend's training worker after each training (every ``CLINIE_TRAIN_EVERY``
annotations and on Label Studio's "Start training"): the strategies of
``CLINIE_SELECT_STRATEGIES`` are cross-validated over the project's annotated documents, the best
by mean F1 is chosen, and a calibrator for its span scores is fitted on its cross-validated
predictions. The result is stored with the model version it was selected with
(``ModelRecord.info["selection"]``), so the backend switches model and strategy in one
transaction, and ``clinie report`` can say why."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from clinie.core import Document, LabelSpec, Schema
from clinie.evaluation.fewshot import CrossValidation, cross_validate
from clinie.evaluation.study import cross_fitted_calibration
from clinie.labelstudio import (UNREADABLE, UnusableAnnotation, annotation_to_document, parse_label_config,
                               task_to_document)
from clinie.llm.base import LLM
from clinie.llm.hidden import HiddenStates
from clinie.retrieval import Embedder
from clinie.settings import Settings
from clinie.store import AnnotationStore
from clinie.strategies import Strategy, StrategyBuilder, parse_strategies

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


def span_specs(schema: Schema) -> list[LabelSpec]:
    return list({spec.name: spec for c in schema.span_controls for spec in c.labels}.values())


def builder(schema: Schema, settings: Settings, llm: Callable[[], LLM] | None = None,
            embedder: Embedder | None = None, states: Callable[[], HiddenStates] | None = None,
            unannotated: Sequence[Document] = ()) -> StrategyBuilder:
    """What fits the strategies of a project with ``schema``; ``unannotated``: the project's
    unannotated documents (``unannotated_documents``), which the student strategy learns from."""
    return StrategyBuilder(span_specs(schema), llm=llm, embedder=embedder, encoder_model=settings.encoder_model or None,
                           encoder_options={"epochs": settings.encoder_epochs} if settings.encoder_epochs else {},
                           guided=bool(settings.llm_guided), states=states or (lambda: probe_states(settings)),
                           unannotated=unannotated)


def probe_states(settings: Settings) -> HiddenStates:
    """The hidden states the probe strategy reads (``CLINIE_PROBE_MODEL``, on ``CLINIE_LLM_DEVICE``)."""
    return HiddenStates.shared(settings.probe_model or None, device=settings.llm_device or None,
                               cache_bytes=settings.feature_cache_mb * 2**20)


def selection_record(cv: CrossValidation) -> dict[str, Any]:
    """What is stored: the choice, the figures behind it, the date, and the calibrator of the
    chosen strategy's scores (with its raw and cross-fitted expected calibration error)."""
    record: dict[str, Any] = {"strategy": cv.selected.name,
                              "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                              **cv.summary(), "calibrator": None}
    if calibration := cross_fitted_calibration(cv, cv.selected.name):
        record.update(calibrator=calibration["calibrator"], calibration_spans=calibration["spans"],
                      ece_raw=round(calibration["ece_raw"], 4), ece_calibrated=round(calibration["ece_calibrated"], 4))
    return record


def candidates(settings: Settings) -> list[Strategy]:
    """The strategies selection cross-validates (``CLINIE_SELECT_STRATEGIES``)."""
    return parse_strategies(settings.selection_candidates, k=settings.llm_k)


def select(docs: Sequence[Document], build: StrategyBuilder, settings: Settings, *, seed: int = 0,
           on_fit: Callable[[int, int], None] | None = None) -> CrossValidation:
    """Cross-validate the configured strategies over ``docs`` (see the module docstring);
    ``on_fit(done, total)`` before the first fit and after each strategy fitted on a fold
    (progress; it may raise to stop)."""
    return cross_validate(docs, candidates(settings), build, k=settings.select_folds, seed=seed,
                          max_llm_share=settings.select_max_llm_share, prefer=settings.select_prefer, on_fit=on_fit)
