"""The training pipeline: when a project trains, and what a training does beyond saving a model.

A training is asked for by the webhooks (``CLINIE_TRAIN_EVERY`` changed annotations, or Label
Studio's START_TRAINING) and by the re-sync schedule, and run by the jobs (``ml_backend.jobs``:
a thread of this process with SQLite, ``clinie worker`` processes on the queue with PostgreSQL).
Each re-syncs the project from Label Studio first, trains (``ml_backend.training``: the encoder,
serving as soon as it is saved, then the selection of the strategy that serves with it), counts
and logs how it went, and prunes the versions beyond ``CLINIE_KEEP_MODELS``.
"""

from __future__ import annotations

import logging
import threading
import time

from clinie.settings import Settings
from ml_backend.jobs import Jobs, QueuedJobs
from ml_backend.metrics import Metrics
from ml_backend.model_store import ModelStore
from ml_backend.serving import Serving
from ml_backend.store import AnnotationStore, ModelRecord
from ml_backend.sync import LabelStudioSync
from ml_backend.training import (
    NotEnoughAnnotations,
    Superseded,
    TrainingWorker,
    complete,
    prune_versions,
    select_strategy,
    serve_full_encoder,
    train_project,
)
from ml_backend.webhooks import left_in_wal, refused  # what a re-sync refused or left is said as for a webhook

log = logging.getLogger(__name__)


class TrainingPipeline:
    """The trainings of ``store``'s projects. ``jobs`` runs them: the queue in the store's
    PostgreSQL database when ``queued``, else a thread of this process (``start_worker``), else
    none (a training then runs only when ``train`` is called). ``sync`` re-syncs from Label Studio
    when one is configured; ``sync_loop`` runs its schedule until ``stop``."""

    def __init__(self, settings: Settings, store: AnnotationStore, models: ModelStore, serving: Serving,
                 metrics: Metrics, sync: LabelStudioSync | None, *, queued: bool, start_worker: bool) -> None:
        self.settings = settings
        self.store = store
        self.models = models
        self.serving = serving
        self.metrics = metrics
        self.sync = sync
        self.queued = queued
        self._stopping = threading.Event()
        self.jobs: Jobs | None = QueuedJobs(store) if queued else \
            TrainingWorker(self.train, serving.warm_up_trainings) if start_worker else None

    def stop(self) -> None:
        """End ``sync_loop`` (a training in flight is left to finish)."""
        self._stopping.set()

    def training_due(self, changes: int) -> bool:
        """``CLINIE_TRAIN_EVERY`` annotations changed since the last training started."""
        return bool(self.settings.train_every) and changes >= self.settings.train_every

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
            left_in_wal(self.metrics)
        if result.refused:
            refused(self.metrics, project, "re-sync", f"{result.refused} annotations another project holds")
        if result.stored or result.deleted or result.tasks_stored or result.tasks_deleted:
            log.info("project %s: re-sync stored %d annotations webhooks had missed and the data of %d unannotated "
                     "tasks, and purged %d deleted annotations and the data of %d deleted tasks", project,
                     result.stored, result.tasks_stored, result.deleted, result.tasks_deleted)
        return True

    def sync_loop(self) -> None:
        """Re-sync every known project at start (what arrived while the backend was down) and
        then every ``sync_every_minutes`` (0: at start only); train where the changes call for it."""
        while not self._stopping.is_set():
            for project in self.store.projects():
                if self.resync(project) and self.training_due(self.store.changes_since_training(project)):
                    self.request_training(project)
            self._stopping.wait(self.settings.sync_every_minutes * 60 or None)

    def request_training(self, project: str) -> bool:
        return self.jobs is not None and self.jobs.request(project)

    def train(self, project: str) -> ModelRecord | None:
        """Re-sync, then train now (in the calling thread): the encoder first, which serves as soon
        as it is saved, then (under ``auto``) the selection of the strategy that serves with it,
        its second stage given up when a newer training of the project is waiting; while another
        strategy than the encoder serves, the selection's first stage first. None when there is nothing to
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
            pruned = prune_versions(self.store, self.settings, self.models, project)
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
        selecting = self.settings.strategy == "auto" and bool(self.settings.selection_candidates)
        # what serves now: a new version replaces it only once the selection found it no worse on
        # the same folds, unless it is the same strategy (the encoder) retrained on more annotations
        incumbent = self.serving.strategy(project) if selecting else None
        serve = incumbent is None or incumbent.name == "encoder"
        # another strategy serves (a cold-start policy, or the probe a selection chose), which an
        # encoder alone would not replace: the selection's first stage (the likeliest winner) comes
        # first, and the relations and the encoder are added to what it serves (``complete``)
        first_stage_first = not serve
        try:
            record, annotations = train_project(self.store, self.settings, self.models, project, training_id,
                                                  self.metrics, serve=serve, encoder=not first_stage_first)
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
        selects = selecting and len(annotations.docs) >= 2

        def completed(base: ModelRecord) -> ModelRecord:
            """``base`` with what it lacks (``complete``); ``base`` when that fails: its entities
            serve without it."""
            try:
                return complete(self.store, self.settings, self.models, base, annotations, self.metrics) or base
            except Exception:
                self.metrics.count("trainings_failed")
                log.exception("project %s: training the relation classifier or the encoder failed; %s serves "
                              "without it", project, base.version)
                return base

        if not (first_stage_first and selects):  # the entities serve already: now the relations
            record = completed(record)
        log.info("project %s: trained %s (%d examples)%s", project, record.version, record.n_examples,
                 "" if serve or incumbent is None else f"; {incumbent.name} serves until the selection compares them")
        if selects:
            try:
                select_strategy(self.store, self.settings, self.models, record, annotations, self.metrics,
                                superseded=lambda: self.jobs is not None and self.jobs.is_pending(project),
                                incumbent=incumbent, llm=lambda: self.serving.llm_access().llm,
                                states=self.serving.states,
                                after_first=completed if first_stage_first else None)
                self.metrics.observe("selection", time.perf_counter() - started)
            except Superseded as e:
                self.metrics.count("selections_superseded")
                log.info("%s", e)
        elif record.info["cut_short"] and self.settings.strategy != "llm":  # the encoder serves: its full budget
            try:
                serve_full_encoder(self.store, self.settings, self.models, record, annotations, self.metrics)
            except Exception:
                log.exception("project %s: training the encoder to its full budget failed; the first model serves",
                              project)
        return self.store.serving_model(project)
