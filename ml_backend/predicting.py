"""The /predict loop: one result per task, in order, within Label Studio's patience.

Label Studio sends a batch of tasks and stores nothing if the answer takes over 100 s, or is not
one result per task. So the batch is predicted in chunks, its progress in /metrics; a time budget
turns a batch too slow for it into one task per request; and one bad task (unreadable, too long,
or one the model fails on) gets an empty result, never sinking the batch. The data of the tasks
predicted is kept, for the strategies that learn from a project's unannotated text.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from clinie.core import Document, Schema
from clinie.evaluation.calibration import calibrate_documents
from clinie.evaluation.thresholds import Thresholds
from clinie.labelstudio import prediction_to_result, task_to_document
from clinie.settings import Settings
from ml_backend.metrics import Metrics
from ml_backend.protocol import is_id, label_config_schema
from ml_backend.serving import Predictor, Serving
from ml_backend.store import AnnotationStore

log = logging.getLogger(__name__)

#: Tasks the encoder predicts per call: a batch for the encoder, and progress and the time budget
#: checked every fraction of a second. With the LLM (seconds a sentence) it is one task per call.
PREDICT_CHUNK = 8


class TaskTooLong(ValueError):
    """A task whose text is longer than ``CLINIE_MAX_TASK_CHARS``: it gets an empty result."""


class PredictLoop:
    """Answers /predict with what ``serving`` serves for the project. ``commit`` runs a write
    (a function of the store's connection) the way the webhooks' are committed."""

    def __init__(self, settings: Settings, store: AnnotationStore, serving: Serving, metrics: Metrics,
                 commit: Callable[[Callable[[Any], Any]], Any]) -> None:
        self.settings = settings
        self.store = store
        self.serving = serving
        self.metrics = metrics
        self._commit = commit

    def predict(self, project: str, tasks: list[Any], label_config: str | None) -> dict[str, Any]:
        """One result per task, in order; a task that fails gets an empty result, never the batch.

        Tasks are predicted in order, in chunks (``PREDICT_CHUNK`` for the encoder, one with the
        LLM), the batch's progress visible in /metrics. When ``predict_budget_seconds`` is spent
        before the last chunk (Label Studio gives up on a batch after 100 s and stores nothing),
        the answer holds the first task's result only: Label Studio 1.23 then asks for the tasks
        one request each, each well inside the budget (measured: with any other count short of
        the batch it stores nothing).
        """
        started = time.perf_counter()
        if label_config is None:
            label_config = self.store.label_config(project)
            if label_config is None:
                raise ValueError("no label_config in the request and none known for this project")
        schema = label_config_schema(label_config)
        self._keep_tasks(project, tasks)
        predictor = self.serving.predictor(project, schema)
        budget = self.settings.predict_budget_seconds
        chunk_size = 1 if predictor.uses_llm else PREDICT_CHUNK
        answering = predictor

        results: list[dict[str, Any]] = []
        batch = self.metrics.start_batch(len(tasks))
        try:
            for first in range(0, len(tasks), chunk_size):
                if results and budget and time.perf_counter() - started > budget:
                    self.metrics.count("predict_budget_exceeded")
                    log.warning("predict: the %g s budget was spent after %d of %d tasks; answering the first "
                                "task only, so that Label Studio asks for the others one by one",
                                budget, len(results), len(tasks))
                    results = results[:1]
                    break
                chunk = tasks[first:first + chunk_size]
                # once the LLM failed, the encoder answers the rest of the batch
                answers, answering = self._predict_chunk(chunk, schema, answering)
                results.extend(answers)
                self.metrics.batch_progress(batch, len(results))
        finally:
            self.metrics.end_batch(batch)
        self.metrics.count("predict_requests")
        self.metrics.count("predicted_tasks", len(results))
        self.metrics.observe("predict_request", time.perf_counter() - started)
        return {"results": results, "model_version": predictor.version}

    def _keep_tasks(self, project: str, tasks: list[Any]) -> None:
        """Store the data of the tasks about to be predicted: most of a project's text is never
        annotated, and a student strategy learns from it (``ml_backend.annotations.unannotated_documents``).
        Before predicting, so that a batch Label Studio gives up on (or a worker that dies in it)
        still leaves its text. One write for the batch, committed with the webhooks waiting
        (group commit) so as not to queue them on the store's lock; a failure costs the pool those
        tasks, never the prediction: counted (``task_store_failures``) and logged without the text."""
        rows = [(int(task["id"]), task["data"]) for task in tasks
                if isinstance(task, dict) and is_id(task.get("id")) and isinstance(task.get("data"), dict)]
        if not rows or not self.store.keeps_tasks:
            return
        try:
            self._commit(lambda db: self.store.record_tasks_in(db, project, rows))
        except Exception as e:
            self.metrics.count("task_store_failures")
            log.warning("project %s: the data of %d predicted tasks was not stored: %s", project, len(rows),
                        type(e).__name__)
            log.debug("storing predicted tasks failed", exc_info=e)

    def _predict_chunk(self, tasks: list[Any], schema: Schema,
                       predictor: Predictor) -> tuple[list[dict[str, Any]], Predictor]:
        docs: list[list[Document] | None] = []
        for task in tasks:
            try:
                docs.append(self._task_documents(task, schema))
            except Exception as e:
                docs.append(None)
                self._task_error(task, "read", e)
        predicted, predictor = self._run_model(predictor, tasks, docs)
        if predictor.thresholds is not None:  # precision first: what is shown was right often enough
            predicted = [None if p is None else self._shown(p, predictor.thresholds) for p in predicted]
        if predictor.calibrator is not None:  # the score Label Studio sorts tasks by means "chance it is right"
            predicted = [None if p is None else calibrate_documents(p, predictor.calibrator) for p in predicted]

        results = []
        for task, task_docs in zip(tasks, predicted):
            result: list[dict[str, Any]] = []
            score = None
            if task_docs is not None:
                try:
                    result, score = prediction_to_result(task_docs, schema)
                except Exception as e:
                    self._task_error(task, "convert", e)
            entry: dict[str, Any] = {"result": result, "model_version": predictor.version}
            if score is not None:
                entry["score"] = score
            results.append(entry)
        return results, predictor

    def _shown(self, docs: list[Document], thresholds: Thresholds) -> list[Document]:
        """``docs`` without the regions under their label's threshold, counted (``regions_not_shown``)."""
        shown = thresholds.apply(docs)
        self.metrics.count("regions_not_shown",
                           sum(len(d.entities) for d in docs) - sum(len(d.entities) for d in shown))
        return shown

    def _task_documents(self, task: Any, schema: Schema) -> list[Document]:
        """The texts of a task its span controls annotate; ``TaskTooLong`` beyond
        ``max_task_chars`` (one such note would hold the batch for minutes, or exhaust memory)."""
        docs = [task_to_document(task, control) for control in schema.span_controls]
        limit = self.settings.max_task_chars
        if limit and (chars := sum(len(doc.text) for doc in docs)) > limit:
            raise TaskTooLong(f"{chars} characters; at most {limit} are predicted (CLINIE_MAX_TASK_CHARS)")
        return docs

    def _run_model(self, predictor: Predictor, tasks: list[Any],
                   docs: list[list[Document] | None]) -> tuple[list[list[Document] | None], Predictor]:
        """Predict the chunk at once; if that fails, with the fallback encoder when the LLM was
        involved (its results then carry the encoder's version, so Label Studio asks again once
        the LLM is back), else task by task to isolate the culprit. Returns what answered too."""
        if predictor.model is None:
            return [None if d is None else [x.with_annotations(()) for x in d] for d in docs], predictor
        try:
            flat = [doc for task_docs in docs if task_docs for doc in task_docs]
            predictions = iter(predictor.model.predict(flat))
            return [None if d is None else [next(predictions) for _ in d] for d in docs], predictor
        except Exception as e:
            if predictor.fallback is not None:
                self.metrics.count("llm_failures")
                log.warning("prediction with the LLM failed (%s); the trained encoder answers", type(e).__name__)
                log.debug("LLM failure", exc_info=e)
                return self._run_model(predictor.fallback, tasks, docs)
            log.warning("batch prediction failed (%s); retrying task by task", type(e).__name__)
        out = []
        for task, task_docs in zip(tasks, docs):
            try:
                out.append(None if task_docs is None else predictor.model.predict(task_docs))
            except Exception as e:
                out.append(None)
                self._task_error(task, "predict", e)
        return out, predictor

    def _task_error(self, task: Any, stage: str, error: Exception) -> None:
        task_id = task.get("id") if isinstance(task, dict) else None
        self.metrics.count("prediction_errors")
        # The exception type, not its message: messages can quote note text.
        log.error("task %s: %s failed: %s", task_id, stage, type(error).__name__)
        log.debug("task %s: %s failed", task_id, stage, exc_info=error)
