"""What the backend does for each Label Studio call, without HTTP.

``Backend`` owns the process-wide pieces: the settings, the annotation store, what serves each
project (``ml_backend.serving``), the metrics, the training worker and the re-sync schedule.
It runs the /predict loop (chunks, the time budget, one bad task never sinking the batch),
keeps the data of the tasks it predicted (the project's unannotated text), and stores webhooks.
The Flask app in ``ml_backend.app`` only validates requests and calls it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from functools import lru_cache
from typing import Any, TypeVar

from clinie import __version__
from clinie.core import Document, Schema
from clinie.evaluation.calibration import calibrate_documents
from clinie.labelstudio import (LabelConfigError, annotation_problem, parse_label_config, prediction_to_result,
                                task_to_document)
from clinie.logs import without_credentials
from clinie.settings import Settings
from ml_backend.group_commit import GroupCommit
from ml_backend.jobs import Jobs, PublishedMetrics, QueuedJobs
from ml_backend.metrics import Metrics
from ml_backend.postgres import is_url
from ml_backend.serving import Predictor, Serving
from ml_backend.store import AnnotationStore, ModelRecord, ProjectMismatch, Purged
from ml_backend.sync import LabelStudioSync
from ml_backend.training import (NotEnoughAnnotations, Superseded, TrainingWorker, prune_versions, remove_partials,
                                 select_strategy, serve_full_encoder, train_project)

log = logging.getLogger(__name__)

ANNOTATION_ACTIONS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED")
T = TypeVar("T")

#: Tasks the encoder predicts per call: a batch for the encoder, and progress and the time budget
#: checked every fraction of a second. With the LLM (seconds a sentence) it is one task per call.
PREDICT_CHUNK = 8


def project_key(project: Any) -> str:
    """Label Studio names a project ``"<id>.<created_at>"`` in /setup and /predict, and as an
    object or an int in webhooks; the store keys it by the id alone."""
    if isinstance(project, dict):
        project = project.get("id")
    key = str(project).split(".", 1)[0].strip() if isinstance(project, (int, str)) and \
        not isinstance(project, bool) else ""
    if not (key.isascii() and key.isdigit()):
        raise ValueError("project is missing or not an id")
    return key


def is_id(value: Any) -> bool:
    """A database id as Label Studio sends it: an int, or ASCII digits, that fits SQLite's INTEGER."""
    if isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value)
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63


class TaskTooLong(ValueError):
    """A task whose text is longer than ``CLINIE_MAX_TASK_CHARS``: it gets an empty result."""


@lru_cache(maxsize=64)
def _schema(label_config: str) -> Schema:
    return parse_label_config(label_config)


class Backend:
    """``role``: ``web`` answers Label Studio (and, with SQLite, trains in a thread of its own
    unless ``start_worker`` is false); ``worker`` only trains, for ``clinie worker`` (PostgreSQL)."""

    def __init__(self, settings: Settings, *, start_worker: bool = True, role: str = "web") -> None:
        self.settings = settings
        self.store = AnnotationStore(settings.store_location, keep_history_days=settings.keep_history,
                                     keep_tasks=settings.unannotated_tasks)
        self.metrics = PublishedMetrics(self.store) if role == "worker" else Metrics()
        # annotation webhooks arriving together: one transaction (ml_backend.group_commit)
        self.commits = GroupCommit(self.store) if settings.webhook_group_commit else None
        self.serving = Serving(settings, self.store, self.metrics)
        #: trainings are jobs on the queue in the store's PostgreSQL database, for ``clinie worker``
        self.queued = is_url(settings.store_location)
        if not self.queued:  # this process owns the store: what ran in it died with the last one
            if abandoned := self.store.abandon_running_trainings():
                log.warning("%d trainings were interrupted by a restart and are marked failed", abandoned)
            if stale := remove_partials(settings.models_dir):
                log.warning("removed %d model directories a crash left half-written", len(stale))
        self.sync = LabelStudioSync(self.store, settings.label_studio_url, settings.label_studio_api_key) \
            if settings.label_studio_url else None
        self._stopping = threading.Event()
        self.jobs: Jobs | None = QueuedJobs(self.store) if self.queued \
            else TrainingWorker(self.train) if start_worker else None
        if start_worker and role == "web":
            threading.Thread(target=self.serving.warm_up, name="clinie-warm-up", daemon=True).start()
            if self.sync:
                threading.Thread(target=self._sync_loop, name="clinie-sync", daemon=True).start()

    def close(self) -> None:
        """Stop the re-sync schedule (graceful shutdown; a training in flight is left to finish
        or, if the process dies first, is marked failed at the next start)."""
        self._stopping.set()
        if self.commits is not None:
            self.commits.close()

    # --- setup and prediction -------------------------------------------------------------

    def setup(self, project: str, label_config: str) -> str:
        self.store.set_label_config(project, label_config)  # one clinie cannot use is refused (422)
        return self.model_version(project)

    def model_version(self, project: str) -> str:
        return self.serving.model_version(project)

    def versions(self) -> list[str]:
        return [m.version for m in self.store.models()]

    def predict(self, project: str, tasks: list[Any], label_config: str | None) -> dict[str, Any]:
        """One result per task, in order; a task that fails gets an empty result, never the batch.

        Tasks are predicted in order, in chunks (``PREDICT_CHUNK`` for the encoder, one with the
        LLM), the batch's progress visible in /metrics. When ``predict_budget_seconds`` is spent before the last chunk (Label Studio
        gives up on a batch after 100 s and stores nothing), the answer holds the first task's
        result only: Label Studio 1.23 then asks for the tasks one request each, each well
        inside the budget (measured: with any other count short of the batch it stores nothing).
        """
        started = time.perf_counter()
        if label_config is None:
            label_config = self.store.label_config(project)
            if label_config is None:
                raise ValueError("no label_config in the request and none known for this project")
        schema = _schema(label_config)
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

    # --- annotations and training ---------------------------------------------------------

    def webhook(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Store the event (already validated by the caller) and return at once.

        A labeling config clinie cannot use is not stored (the one held stays; the answer says
        why under ``label_config_refused``) while the rest of the event is; an event about an
        annotation or task another project holds changes nothing (``refused``). Both counted.
        """
        action = payload["action"]
        try:
            project = project_key(payload.get("project"))
        except ValueError:  # an event clinie does not act on, about no project it can name
            stored = action == "TASKS_DELETED" and self._purge_tasks_anywhere([int(t["id"]) for t in payload["tasks"]])
            return {"status": "ok", "action": action, "stored": stored}
        answer: dict[str, Any] = {"status": "ok", "action": action}
        if action in ANNOTATION_ACTIONS:
            config, config_refusal = self._usable_label_config(project, action, payload)
            changed, refusal = self._store_annotation(project, action, payload, config)
        else:
            config_refusal = self._store_label_config(project, action, payload)
            changed, refusal = self._store_event(project, action, payload)
        if config_refusal:
            answer["label_config_refused"] = config_refusal
        if refusal:
            self._refused(project, action, refusal)
            answer["refused"] = refusal
        elif action in ANNOTATION_ACTIONS and (problem := self._annotation_problem(project, payload)):
            answer["unusable"] = problem
        if action == "START_TRAINING":
            self.request_training(project)
        elif changed and not (self.queued and action in ANNOTATION_ACTIONS) and \
                self._training_due(self.store.changes_since_training(project)):
            self.request_training(project)  # on the queue, an annotation's request is in its own transaction
        return {**answer, "stored": changed}

    def _training_due(self, changes: int) -> bool:
        """``CLINIE_TRAIN_EVERY`` annotations changed since the last training started."""
        return bool(self.settings.train_every) and changes >= self.settings.train_every

    def _annotation_problem(self, project: str, payload: dict[str, Any]) -> str | None:
        """Why no training can learn from the annotation the event carries (it is stored all the
        same: what was received is never lost), or None; counted per reason, so that a client
        sending malformed annotations shows at once rather than at the next training. Judged with
        the config stored with it, parsed once (``_schema``); none known yet, or cancelled: None."""
        annotation = payload["annotation"]
        config = None if annotation.get("was_cancelled") else self.store.label_config(project)
        if config is None:
            return None
        try:
            schema = _schema(config)
        except LabelConfigError:  # stored by an older clinie under older rules: training will say so
            return None
        problem = annotation_problem(payload["task"], annotation.get("result") or [], schema)
        if problem:
            self.metrics.count_by("annotations_unusable", "reason", problem)
            log.warning("project %s: annotation %s is stored but cannot be learned from: %s", project,
                        annotation["id"], problem)
        return problem

    def _store_label_config(self, project: str, action: str, payload: dict[str, Any]) -> str | None:
        """Keep the labeling config the event carries, if clinie can use it; else why not."""
        config, refusal = self._usable_label_config(project, action, payload)
        if config:
            self.store.set_label_config(project, config)
        return refusal

    def _usable_label_config(self, project: str, action: str, payload: dict[str, Any]) -> tuple[str | None, str | None]:
        """The labeling config the event carries, to store when clinie can use it; else why not."""
        config = payload["project"].get("label_config") if isinstance(payload.get("project"), dict) else None
        if not config or action == "PROJECT_DELETED":  # storing it would bring the project back
            return None, None
        try:
            _schema(config)
        except LabelConfigError as e:
            self.metrics.count("label_configs_refused")
            log.warning("project %s: %s webhook: labeling config not stored: %s", project, action, e)
            return None, str(e)
        return config, None

    def _store_annotation(self, project: str, action: str, payload: dict[str, Any],
                          config: str | None) -> tuple[bool, str | None]:
        """Store an annotation event and the config it carries, in one transaction: committed
        with the events arriving at the same time (group commit) unless that is off; returns once
        committed. An event another project's annotation or task refuses stores nothing, its
        config included: the config would otherwise land on a project the event had no right to."""
        self.metrics.count("annotations_received")
        annotation, task = payload["annotation"], payload["task"]

        def step(db: Any) -> tuple[bool, str | None]:
            try:
                changed = self.store.record_annotation_in(db, project, annotation, task, action)
            except ProjectMismatch as e:  # raised before the annotation wrote anything
                return False, str(e)
            if config:
                self.store.set_label_config_in(db, project, config)
            if changed and self.queued and self._training_due(self.store.changes_since_training_in(db, project)):
                QueuedJobs.request_in(db, project)  # committed with the annotation, or not at all
            return changed, None

        return self._commit(step)

    def _commit(self, step: Callable[[Any], T]) -> T:
        """``step(connection)`` committed: with the writes waiting (group commit), or alone."""
        if self.commits is not None:
            return self.commits.run(step)
        [outcome] = self.store.write_together([step])
        if outcome.error is not None:
            raise outcome.error
        return outcome.result

    def _store_event(self, project: str, action: str, payload: dict[str, Any]) -> tuple[bool, str | None]:
        """What the event changes in the store: whether something did, and what was refused."""
        if action == "ANNOTATIONS_DELETED":
            self.metrics.count("annotations_deleted", len(payload["annotations"]))
            self.serving.forget_read_text()
            return self._purged(self.store.purge(project, annotations=[int(a["id"]) for a in payload["annotations"]]))
        if action == "TASKS_DELETED":
            self.metrics.count("tasks_deleted", len(payload["tasks"]))
            self.serving.forget_read_text()  # a task predicted by the LLM but never annotated is in it too
            return self._purged(self.store.purge(project, tasks=[int(t["id"]) for t in payload["tasks"]]))
        if action == "PROJECT_DELETED":
            return self._purged(self.delete_project(project))
        return False, None

    def _purged(self, purged: Purged) -> tuple[bool, str | None]:
        """A purge as ``_store_event`` reports it: whether it removed anything, and what it
        refused. A purge whose text a reader kept in the write-ahead log is counted and logged."""
        if purged.left_in_wal:
            self._left_in_wal()
        refusal = f"ids {', '.join(map(str, purged.refused))} belong to another project: not deleted" \
            if purged.refused else None
        return purged.removed, refusal

    def _left_in_wal(self) -> None:
        self.metrics.count("purges_left_in_wal")
        log.warning("a purge removed note text that stays in the store's write-ahead log until its next checkpoint: "
                    "a reader held an older snapshot past the busy timeout")

    def _purge_tasks_anywhere(self, task_ids: list[int]) -> bool:
        """Label Studio's "delete all tasks" of a project names no project (and reaches only
        organization webhooks): each task is purged from the project that holds it."""
        self.metrics.count("tasks_deleted", len(task_ids))
        self.serving.forget_read_text()
        return any([self._purged(self.store.purge(project, tasks=tasks))[0]
                    for project, tasks in self.store.task_projects(task_ids).items()])

    def _refused(self, project: str, action: str, reason: str) -> None:
        """Counted and logged: a second Label Studio on one backend, or a forged event, shows."""
        self.metrics.count("events_refused")
        log.warning("project %s: %s refused: %s", project, action, reason)

    def delete_project(self, project: str) -> Purged:
        """Everything of the project, from the store, the model directory and memory."""
        purged = self.store.purge_project(project, self.settings.models_dir)
        self.serving.forget(project)
        self.serving.forget_read_text()
        self.metrics.count("projects_deleted")
        log.info("project %s deleted: %d annotations and its model versions purged", project, purged.annotations)
        return purged

    def resync(self, project: str) -> bool:
        """Pull the project's annotations from Label Studio; False when that failed (logged,
        counted: the store keeps what it has)."""
        if self.sync is None:
            return False
        try:
            result = self.sync.project(project)
        except Exception as e:
            self.metrics.count("sync_failures")
            log.warning("project %s: re-sync from Label Studio failed: %s", project, type(e).__name__)
            log.debug("re-sync failed", exc_info=e)
            return False
        self.metrics.count("syncs")
        self.metrics.count("annotations_recovered_by_sync", result.stored)
        self.metrics.count("annotations_deleted_by_sync", result.deleted)
        if result.deleted or result.tasks_deleted:
            self.serving.forget_read_text()
        if result.left_in_wal:
            self._left_in_wal()
        if result.refused:
            self._refused(project, "re-sync", f"{result.refused} annotations another project holds")
        if result.stored or result.deleted or result.tasks_stored or result.tasks_deleted:
            log.info("project %s: re-sync stored %d annotations webhooks had missed and the data of %d unannotated "
                     "tasks, and purged %d deleted annotations and the data of %d deleted tasks", project,
                     result.stored, result.tasks_stored, result.deleted, result.tasks_deleted)
        return True

    def _sync_loop(self) -> None:
        """Re-sync every known project at start (what arrived while the backend was down) and
        then every ``sync_every_minutes`` (0: at start only); train where the changes call for it."""
        while not self._stopping.is_set():
            for project in self.store.projects():
                if self.resync(project) and self._training_due(self.store.changes_since_training(project)):
                    self.request_training(project)
            self._stopping.wait(self.settings.sync_every_minutes * 60 or None)

    def request_training(self, project: str) -> bool:
        return self.jobs is not None and self.jobs.request(project)

    def train(self, project: str) -> ModelRecord | None:
        """Re-sync, then train now (in the calling thread): the encoder first, which serves as soon
        as it is saved, then (under ``auto``) the selection of the strategy that serves with it,
        given up when a newer training of the project is waiting. None when there is nothing to
        train yet; else the model version as it ends up. Its stage is in /metrics throughout."""
        self.resync(project)
        if self.queued:  # the queue runs one training of a project at a time: one left running died
            self.store.abandon_running_trainings(project)
        training_id = self.store.begin_training(project)
        if training_id is None:
            log.info("project %s: a training is already running", project)
            return None
        try:
            return self._train(project, training_id)
        finally:
            self.metrics.training_ended(project)
            self.prune_versions(project)

    def prune_versions(self, project: str) -> None:
        """Keep the project's newest ``keep_models`` versions (``ml_backend.training.prune_versions``)
        and forget what is loaded of the others. A failure is logged: it never fails a training."""
        try:
            pruned = prune_versions(self.store, self.settings, project)
        except Exception:
            log.exception("project %s: pruning old model versions failed; they stay on disk", project)
            return
        if pruned:
            self.serving.forget(project, {record.version for record in pruned})
            log.info("project %s: %d old model versions deleted (CLINIE_KEEP_MODELS=%d)", project, len(pruned),
                     self.settings.keep_models)

    def _train(self, project: str, training_id: int) -> ModelRecord | None:
        self.metrics.count("trainings_started")
        started = time.perf_counter()
        try:
            record, annotations = train_project(self.store, self.settings, project, training_id, self.metrics)
        except NotEnoughAnnotations as e:
            self.store.fail_training(training_id, str(e))
            self.metrics.count("trainings_skipped")
            log.info("%s", e)
            return None
        except Exception as e:
            self.store.fail_training(training_id, type(e).__name__)  # a message may quote note text
            self.metrics.count("trainings_failed")
            log.exception("project %s: training failed; the previous model keeps serving", project)
            return None
        self.metrics.count("trainings_succeeded")
        self.metrics.observe("training", time.perf_counter() - started)
        log.info("project %s: now serving %s (%d examples)", project, record.version, record.n_examples)
        if self.settings.strategy == "auto" and self.settings.selection_candidates and len(annotations.docs) >= 2:
            try:
                select_strategy(self.store, self.settings, record, annotations, self.metrics,
                                superseded=lambda: self.jobs is not None and self.jobs.is_pending(project),
                                llm=lambda: self.serving.llm().llm, states=self.serving.states)
                self.metrics.observe("selection", time.perf_counter() - started)
            except Superseded as e:
                self.metrics.count("selections_superseded")
                log.info("%s", e)
        elif record.info["cut_short"] and self.settings.strategy != "llm":  # the encoder serves: its full budget
            try:
                serve_full_encoder(self.store, self.settings, record, annotations, self.metrics)
            except Exception:
                log.exception("project %s: training the encoder to its full budget failed; the first model serves",
                              project)
        return self.store.serving_model(project)

    def health(self) -> dict[str, Any]:
        """``remote_endpoints``: where note text is sent (an OpenAI-compatible LLM, only when
        configured); ``label_studio``: what annotations are re-synced from (read only)."""
        remote = [without_credentials(self.settings.llm_base_url)] if self.settings.llm_provider == "openai" else []
        return {"status": "UP", "model_class": "clinie", "clinie_version": __version__,
                "strategy": self.settings.strategy, "remote_endpoints": remote,
                "label_studio": without_credentials(self.settings.label_studio_url) or None}

    def metrics_snapshot(self) -> dict[str, Any]:
        """This process's figures, and the store's: what every replica shares (with PostgreSQL,
        the trainings of ``clinie worker`` processes and the queue of training jobs)."""
        snapshot = self.metrics.snapshot(self.store.progress() if self.queued else [])
        serving = {project: record for project in self.store.projects()
                   if (record := self.store.serving_model(project)) is not None}
        snapshot["store"] = {"annotations": self.store.annotation_counts(),
                             "trainings": self.store.training_counts(),
                             "model_versions": len(self.store.models()),
                             # the text a student strategy learns from, per project
                             "unannotated_tasks": self.store.unannotated_counts(),
                             # what the serving version could not learn from, per project and reason
                             "unusable_annotations": {project: record.info.get("annotations", {}).get("unusable", {})
                                                      for project, record in serving.items()}}
        if isinstance(self.jobs, QueuedJobs):
            snapshot["store"]["queue"] = self.jobs.depth()
        return snapshot
