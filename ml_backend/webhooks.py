"""Label Studio's webhooks: what each event changes in the store, and the trainings it calls for.

An event is stored before it is answered (an answer means it is durably stored, committed with
the events arriving together: group commit), and what clinie cannot act on is said, never
silently dropped: a labeling config it cannot use is not stored (``label_config_refused``), an
event about another project's annotation or task changes nothing (``refused``), an annotation no
training can learn from is stored and flagged (``unusable``); each counted in /metrics. Deletions
purge the note text everywhere clinie holds it: the store, the model directory, memory.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from clinie.labelstudio import LabelConfigError, annotation_problem
from ml_backend.jobs import QueuedJobs
from ml_backend.metrics import Metrics
from ml_backend.model_store import ModelStore
from ml_backend.protocol import label_config_schema, project_key
from ml_backend.serving import Serving
from ml_backend.store import AnnotationStore, ProjectMismatch, Purged

log = logging.getLogger(__name__)

ANNOTATION_ACTIONS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED")


def refused(metrics: Metrics, project: str, action: str, reason: str) -> None:
    """Counted and logged: a second Label Studio on one backend, or a forged event, shows."""
    metrics.count("events_refused")
    log.warning("project %s: %s refused: %s", project, action, reason)


def left_in_wal(metrics: Metrics) -> None:
    """A purge whose text a reader kept in the store's write-ahead log: counted and logged."""
    metrics.count("purges_left_in_wal")
    log.warning("a purge removed note text that stays in the store's write-ahead log until its next checkpoint: "
                "a reader held an older snapshot past the busy timeout")


class Webhooks:
    """Stores the events of ``store``'s projects (their model versions in ``models``). ``commit``
    runs a write (a function of the store's connection) with the writes waiting (group commit) or
    alone; with ``queued`` (trainings are jobs in the store's database) an annotation's training
    request is written in the annotation's own transaction; else ``request_training`` asks for one
    when ``training_due`` (given the changes since the last training) says so."""

    def __init__(self, store: AnnotationStore, models: ModelStore, serving: Serving, metrics: Metrics, *,
                 commit: Callable[[Callable[[Any], Any]], Any], queued: bool,
                 request_training: Callable[[str], bool], training_due: Callable[[int], bool]) -> None:
        self.store = store
        self.models = models
        self.serving = serving
        self.metrics = metrics
        self.queued = queued
        self._commit = commit
        self.request_training = request_training
        self.training_due = training_due

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
            refused(self.metrics, project, action, refusal)
            answer["refused"] = refusal
        elif action in ANNOTATION_ACTIONS and (problem := self._annotation_problem(project, payload)):
            answer["unusable"] = problem
        if action == "START_TRAINING":
            self.request_training(project)
        elif changed and not (self.queued and action in ANNOTATION_ACTIONS) and \
                self.training_due(self.store.changes_since_training(project)):
            self.request_training(project)  # on the queue, an annotation's request is in its own transaction
        return {**answer, "stored": changed}

    def _annotation_problem(self, project: str, payload: dict[str, Any]) -> str | None:
        """Why no training can learn from the annotation the event carries (it is stored all the
        same: what was received is never lost), or None; counted per reason, so that a client
        sending malformed annotations shows at once rather than at the next training. Judged with
        the config stored with it, parsed once (``label_config_schema``); none known yet, or cancelled: None."""
        annotation = payload["annotation"]
        config = None if annotation.get("was_cancelled") else self.store.label_config(project)
        if config is None:
            return None
        try:
            schema = label_config_schema(config)
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
            label_config_schema(config)
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
            if changed and self.queued and self.training_due(self.store.changes_since_training_in(db, project)):
                QueuedJobs.request_in(db, project)  # committed with the annotation, or not at all
            return changed, None

        return self._commit(step)

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
            left_in_wal(self.metrics)
        refusal = f"ids {', '.join(map(str, purged.refused))} belong to another project: not deleted" \
            if purged.refused else None
        return purged.removed, refusal

    def _purge_tasks_anywhere(self, task_ids: list[int]) -> bool:
        """Label Studio's "delete all tasks" of a project names no project (and reaches only
        organization webhooks): each task is purged from the project that holds it."""
        self.metrics.count("tasks_deleted", len(task_ids))
        self.serving.forget_read_text()
        return any([self._purged(self.store.purge(project, tasks=tasks))[0]
                    for project, tasks in self.store.task_projects(task_ids).items()])

    def delete_project(self, project: str) -> Purged:
        """Everything of the project, from the store, the model directory and memory."""
        purged = self.store.purge_project(project, self.models)
        self.serving.forget(project)
        self.serving.forget_read_text()
        self.metrics.count("projects_deleted")
        log.info("project %s deleted: %d annotations and its model versions purged", project, purged.annotations)
        return purged
