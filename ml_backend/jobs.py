"""Trainings as jobs: who runs a project's training once a webhook asked for it.

Two implementations of one small interface (``request``, ``is_pending``), chosen by the store:

- ``TrainingWorker`` (``ml_backend.training``), with SQLite: one thread of the backend's own
  process, as on one machine nothing else can share the store's file.
- ``QueuedJobs``, with PostgreSQL: jobs on a Procrastinate queue in the store's own database, run
  by ``clinie worker`` processes on any machine that reaches the database and the model store.
  A job is a row written in a store transaction, so that the request cannot be lost between two
  systems; Procrastinate's queueing lock keeps at most one training per project waiting, and its
  lock runs a project's trainings one at a time across all workers. A newer training waiting is
  what a running one checks between steps to give up its selection (``is_pending``), as with the
  thread. A job whose worker died (no heartbeat for ``STALLED_S``) is put back on the queue by
  the other workers (``retry_stalled``).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any, Protocol

from clinie.settings import Settings
from ml_backend.metrics import Metrics
from ml_backend.store import AnnotationStore

log = logging.getLogger(__name__)

#: The queue and the task a training job is, as workers know them.
QUEUE = "trainings"
TASK = "clinie.train"
#: A worker that sent no heartbeat for this long is taken for dead and its jobs run again.
STALLED_S = 30.0
HEARTBEAT_S = 5.0


class Jobs(Protocol):
    def request(self, project: str) -> bool:
        """Ask for a training of ``project``; False when one is waiting already."""

    def is_pending(self, project: str) -> bool:
        """A training of ``project`` waits to start (the one running gives up its selection)."""


class PublishedMetrics(Metrics):
    """A worker's metrics, each training's progress also written to the store (at most once a
    second per project, and at each new stage), where every web replica's /metrics reads it."""

    def __init__(self, store: AnnotationStore) -> None:
        super().__init__()
        self._store = store
        self._published: dict[str, float] = {}

    def training_stage(self, project: str, stage: str) -> None:
        super().training_stage(project, stage)
        self._publish(project, now=True)

    def training_step(self, project: str, done: int, total: int) -> None:
        super().training_step(project, done, total)
        self._publish(project, now=done == total)

    def training_ended(self, project: str) -> None:
        super().training_ended(project)
        self._published.pop(project, None)
        self._store.clear_progress(project)

    def _publish(self, project: str, now: bool) -> None:
        if not now and time.monotonic() - self._published.get(project, 0.0) < 1.0:
            return
        self._published[project] = time.monotonic()
        if info := self.trainings().get(project):
            try:
                self._store.set_progress(project, info["stage"], info["done"], info["total"], info["started"])
            except Exception:  # progress is for the eyes: it never fails a training
                log.exception("project %s: publishing the training's progress failed", project)


def training_lock(project: str) -> str:
    """The Procrastinate lock and queueing lock of a project's trainings."""
    return f"train-{project}"


class QueuedJobs:
    """Training jobs on the Procrastinate queue in the store's PostgreSQL database."""

    def __init__(self, store: AnnotationStore) -> None:
        self._store = store
        ensure_queue(store)

    def request(self, project: str) -> bool:
        with self._store._write() as db:
            return self.request_in(db, project)

    @staticmethod
    def request_in(db: Any, project: str) -> bool:
        """The job's row, in the caller's transaction: the annotation or *Start training* that
        asks for it and the job commit together, or neither does."""
        return db.execute(
            "INSERT INTO procrastinate_jobs (queue_name, task_name, lock, queueing_lock, args) "
            "VALUES (?, ?, ?, ?, CAST(? AS jsonb)) ON CONFLICT (queueing_lock) WHERE status = 'todo' DO NOTHING",
            (QUEUE, TASK, training_lock(project), training_lock(project), json.dumps({"project": project}))
        ).rowcount == 1

    def is_pending(self, project: str) -> bool:
        return bool(self._store._read("SELECT 1 FROM procrastinate_jobs WHERE queueing_lock = ? AND status = 'todo'",
                                      (training_lock(project),)))

    def depth(self) -> dict[str, int]:
        """Jobs per status (``todo``, ``doing``, …): the queue as /metrics shows it."""
        return {r[0]: r[1] for r in self._store._read(
            "SELECT status::text, COUNT(*) FROM procrastinate_jobs WHERE queue_name = ? GROUP BY status", (QUEUE,))}


def ensure_queue(store: AnnotationStore) -> None:
    """Procrastinate's tables in the store's database, created once, under the store's write lock
    (web replicas and workers starting together)."""
    from procrastinate.schema import SchemaManager

    with store._write() as db:
        if db.execute("SELECT to_regclass('procrastinate_jobs')").fetchone()[0] is None:
            db.executescript(SchemaManager.get_schema())


def run_worker(settings: Settings, concurrency: int) -> None:
    """``clinie worker``: run training jobs until SIGINT or SIGTERM (the jobs running then finish
    first). Each job trains through the same pipeline as the in-process worker
    (``Backend.train``); its progress goes to the database, where every replica's /metrics reads it."""
    import procrastinate

    from ml_backend.service import Backend

    backend = Backend(settings, role="worker")
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=settings.database_url))

    @app.task(name=TASK, queue=QUEUE)
    def train(project: str) -> None:
        backend.train(project)

    stop = threading.Event()
    threading.Thread(target=_retry_stalled_until, args=(backend.store, stop), name="clinie-stalled-jobs",
                     daemon=True).start()
    try:
        app.run_worker(queues=[QUEUE], concurrency=concurrency, update_heartbeat_interval=HEARTBEAT_S,
                       stalled_worker_timeout=STALLED_S)
    finally:
        stop.set()
        backend.close()


def retry_stalled(store: AnnotationStore) -> list[int]:
    """Put back on the queue the training jobs of workers that died (SIGKILL, a lost machine): no
    heartbeat for ``STALLED_S``. Their trainings start again from the beginning on a live worker;
    the ids of the jobs."""
    stalled = [r[0] for r in store._read(
        "SELECT job.id FROM procrastinate_jobs AS job LEFT JOIN procrastinate_workers AS w ON w.id = job.worker_id "
        "WHERE job.status = 'doing' AND job.queue_name = ? "
        "AND (w.id IS NULL OR w.last_heartbeat < NOW() - make_interval(secs => ?))", (QUEUE, STALLED_S))]
    for job_id in stalled:
        store._read("SELECT procrastinate_retry_job_v2(?, NOW(), CAST(NULL AS integer), CAST(NULL AS varchar), "
                    "CAST(NULL AS varchar))", (job_id,))
        log.warning("training job %s of a worker that died: queued again", job_id)
    return stalled


def _retry_stalled_until(store: AnnotationStore, stop: threading.Event) -> None:
    while not stop.wait(HEARTBEAT_S):
        try:
            retry_stalled(store)
        except Exception:  # the database away for a moment: again at the next beat
            log.exception("requeueing the jobs of dead workers failed")
