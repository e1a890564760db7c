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

from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any

from clinie.core import Document, LabelSpec, Schema
from clinie.evaluation.fewshot import CrossValidation, cross_validate
from clinie.evaluation.study import cross_fitted_calibration
from clinie.labelstudio import annotation_to_document, parse_label_config
from clinie.llm.base import LLM
from clinie.llm.hidden import HiddenStates
from clinie.retrieval import Embedder
from clinie.settings import Settings
from clinie.store import AnnotationStore
from clinie.strategies import StrategyBuilder, parse_strategies


def project_documents(store: AnnotationStore, project: str) -> tuple[Schema, list[Document]]:
    """The project's schema and its annotated documents (latest submitted annotation per task)."""
    config = store.label_config(project)
    if config is None:
        raise ValueError(f"project {project} has no labeling config yet (no /setup or webhook seen)")
    schema = parse_label_config(config)
    return schema, annotated_documents(store, project, schema)


def annotated_documents(store: AnnotationStore, project: str, schema: Schema) -> list[Document]:
    """The project's annotations read with ``schema``: what strategies learn from, and the
    LLM's demonstrations (latest submitted annotation per task, empty texts left out)."""
    docs = [annotation_to_document(e.task, e.result, schema) for e in store.training_examples(project)]
    return [d for d in docs if d.text]


def span_specs(schema: Schema) -> list[LabelSpec]:
    return list({spec.name: spec for c in schema.span_controls for spec in c.labels}.values())


def builder(schema: Schema, settings: Settings, llm: Callable[[], LLM] | None = None,
            embedder: Embedder | None = None, states: Callable[[], HiddenStates] | None = None) -> StrategyBuilder:
    return StrategyBuilder(span_specs(schema), llm=llm, embedder=embedder, encoder_model=settings.encoder_model or None,
                           encoder_options={"epochs": settings.encoder_epochs} if settings.encoder_epochs else {},
                           guided=bool(settings.llm_guided), states=states or (lambda: probe_states(settings)))


def probe_states(settings: Settings) -> HiddenStates:
    """The hidden states the probe strategy reads (``CLINIE_PROBE_MODEL``, on ``CLINIE_LLM_DEVICE``)."""
    return HiddenStates.shared(settings.probe_model or None, device=settings.llm_device or None)


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


def select(docs: Sequence[Document], build: StrategyBuilder, settings: Settings, *, seed: int = 0) -> CrossValidation:
    """Cross-validate the configured strategies over ``docs`` (see the module docstring)."""
    strategies = parse_strategies(settings.select_strategies, k=settings.llm_k)
    return cross_validate(docs, strategies, build, k=settings.select_folds, seed=seed,
                          max_llm_share=settings.select_max_llm_share)
