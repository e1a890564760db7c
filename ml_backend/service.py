"""What the backend does for each Label Studio call, without HTTP: the composition root.

``Backend`` owns the process-wide pieces: the settings, the annotation store, the model versions
(``ml_backend.model_store``), what serves each project (``ml_backend.serving``), the metrics, the
group commit of the webhooks' writes and the trainings' jobs. It builds the three components that
do the work, each given what it needs, and answers through them: the /predict loop
(``ml_backend.predicting``), the webhooks (``ml_backend.webhooks``) and the training pipeline with
its re-sync schedule (``ml_backend.pipeline``). The Flask app in ``ml_backend.app`` only validates
requests and calls it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

from clinie import __version__
from clinie.logs import without_credentials
from clinie.settings import Settings
from ml_backend.group_commit import GroupCommit
from ml_backend.jobs import Jobs, PublishedMetrics, QueuedJobs
from ml_backend.metrics import Metrics
from ml_backend.model_store import ModelStore
from ml_backend.pipeline import TrainingPipeline
from ml_backend.postgres import is_url
from ml_backend.predicting import PredictLoop
from ml_backend.serving import Serving
from ml_backend.store import AnnotationStore, ModelRecord, Purged
from ml_backend.sync import LabelStudioSync
from ml_backend.webhooks import Webhooks

log = logging.getLogger(__name__)

T = TypeVar("T")
#: How often a web replica on PostgreSQL drops what it holds of projects purged through another.
SWEEP_SECONDS = 60


def _commit_alone(store: AnnotationStore, step: Callable[[Any], T]) -> T:
    """``step(connection)`` committed in a transaction of its own (group commit off)."""
    [outcome] = store.write_together([step])
    if outcome.error is not None:
        raise outcome.error
    return outcome.result


def _resolve_lazy_imports() -> None:
    """Resolve, in the calling thread, the names the model code imports from transformers: its
    lazy module is not safe to resolve from two threads at once (a warm-up and a training
    starting together failed with ``cannot import name 'AutoConfig'``)."""
    import transformers

    for name in ("AutoConfig", "AutoModel", "AutoModelForCausalLM", "AutoModelForTokenClassification",
                 "AutoTokenizer", "DynamicCache", "get_linear_schedule_with_warmup"):
        getattr(transformers, name)


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
        self.models = ModelStore(settings.models_location, settings.data_dir)
        self.serving = Serving(settings, self.store, self.models, self.metrics)
        #: trainings are jobs on the queue in the store's PostgreSQL database, for ``clinie worker``
        self.queued = is_url(settings.store_location)
        if not self.queued:  # this process owns the store: what ran in it died with the last one
            if abandoned := self.store.abandon_running_trainings():
                log.warning("%d trainings were interrupted by a restart and are marked failed", abandoned)
            if stale := self.models.remove_partials():
                log.warning("removed %d model directories a crash left half-written", len(stale))
        if start_worker:  # threads that load models start below
            _resolve_lazy_imports()
        self.sync = LabelStudioSync(self.store, settings.label_studio_url, settings.label_studio_api_key) \
            if settings.label_studio_url else None
        self.trainings = TrainingPipeline(settings, self.store, self.models, self.serving, self.metrics, self.sync,
                                          queued=self.queued, start_worker=start_worker)
        self.jobs: Jobs | None = self.trainings.jobs
        # ``step(connection)`` committed: with the writes waiting (group commit), or alone
        commit = self.commits.run if self.commits is not None else partial(_commit_alone, self.store)
        self.predictions = PredictLoop(settings, self.store, self.serving, self.metrics, commit)
        self.webhooks = Webhooks(self.store, self.models, self.serving, self.metrics, commit=commit, queued=self.queued,
                                 request_training=self.trainings.request_training,
                                 training_due=self.trainings.training_due)
        self._stopping = threading.Event()
        if start_worker and role == "web":
            threading.Thread(target=self.serving.warm_up, name="clinie-warm-up", daemon=True).start()
            if self.sync:
                threading.Thread(target=self.trainings.sync_loop, name="clinie-sync", daemon=True).start()
            if self.queued:
                threading.Thread(target=self._sweep_loop, name="clinie-sweep", daemon=True).start()

    def close(self) -> None:
        """Stop the re-sync schedule (graceful shutdown; a training in flight is left to finish
        or, if the process dies first, is marked failed at the next start)."""
        self._stopping.set()
        self.trainings.stop()
        if self.commits is not None:
            self.commits.close()

    def sweep(self) -> None:
        """Drop what this replica holds of versions and projects the store no longer names: a
        project deleted in Label Studio reaches one replica by webhook, the others find it gone here."""
        if gone := self.serving.forget_gone(self.store.projects()):
            log.info("forgot the models of %d projects deleted through another replica", len(gone))
        if stale := self.models.sweep_cache({m.location for m in self.store.models()}):
            log.info("removed %d cached model versions no longer registered", len(stale))

    def _sweep_loop(self) -> None:
        while not self._stopping.wait(SWEEP_SECONDS):
            try:
                self.sweep()
            except Exception:  # the store unreachable for a while: the next sweep tries again
                log.exception("sweeping what is cached of deleted projects failed")

    # --- setup and prediction -------------------------------------------------------------

    def setup(self, project: str, label_config: str) -> str:
        self.store.set_label_config(project, label_config)  # one clinie cannot use is refused (422)
        return self.model_version(project)

    def model_version(self, project: str) -> str:
        return self.serving.model_version(project)

    def versions(self) -> list[str]:
        return [m.version for m in self.store.models()]

    def predict(self, project: str, tasks: list[Any], label_config: str | None) -> dict[str, Any]:
        """``PredictLoop.predict``: one result per task, in order, within the time budget."""
        return self.predictions.predict(project, tasks, label_config)

    # --- annotations and training ---------------------------------------------------------

    def webhook(self, payload: dict[str, Any]) -> dict[str, Any]:
        """``Webhooks.webhook``: store the event (already validated by the caller) and answer."""
        return self.webhooks.webhook(payload)

    def delete_project(self, project: str) -> Purged:
        """``Webhooks.delete_project``: everything of the project, from the store, disk and memory."""
        return self.webhooks.delete_project(project)

    def resync(self, project: str) -> bool:
        """``TrainingPipeline.resync``: pull the project's annotations from Label Studio."""
        return self.trainings.resync(project)

    def request_training(self, project: str) -> bool:
        """``TrainingPipeline.request_training``: ask the jobs for a training of the project."""
        return self.trainings.request_training(project)

    def train(self, project: str) -> ModelRecord | None:
        """``TrainingPipeline.train``: re-sync, then train now, in the calling thread."""
        return self.trainings.train(project)

    def prune_versions(self, project: str) -> None:
        """``TrainingPipeline.prune_versions``: keep the project's newest ``keep_models`` versions."""
        self.trainings.prune_versions(project)

    def health(self) -> dict[str, Any]:
        """``remote_endpoints``: where note text is sent (an OpenAI-compatible LLM, only when
        configured); ``label_studio``: what annotations are re-synced from (read only)."""
        remote = [without_credentials(self.settings.llm_base_url)] if self.settings.llm_remote else []
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
