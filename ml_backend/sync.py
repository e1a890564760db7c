"""Re-sync: make the store hold what Label Studio holds.

Label Studio sends each webhook once, with a one-second timeout, and forgets it: an event sent
while the backend was restarting or slow is lost. So the backend also *pulls*: on "Start
training" and every ``sync_every_minutes``, it lists each known project's tasks with their
annotations through ``label-studio-sdk`` and writes them to the store — the same idempotent
write a webhook does, so what was already there changes nothing. The data of the newest
unannotated tasks listed is stored too (``AnnotationStore.record_tasks``, within its bound): the
text a student strategy learns from, including tasks nobody opened. Tasks and annotations the
store holds but Label Studio no longer does are purged, as their deletion webhooks would have.

Authentication is the SDK's: a personal access token (a JWT refresh token, refreshed by the SDK)
or a legacy API token. Only reads: nothing is written to Label Studio, no note text goes anywhere.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from clinie.labelstudio import LabelConfigError
from ml_backend.store import AnnotationStore, ProjectMismatch, Purged

log = logging.getLogger(__name__)

#: Tasks per page: one request per hundred tasks, each page a few hundred kB of notes at most.
PAGE_SIZE = 100


@dataclass(frozen=True)
class SyncResult:
    project: str
    annotations: int  # what Label Studio holds for the project
    stored: int  # of which new or changed in the store
    deleted: int  # store annotations Label Studio no longer holds, now purged
    refused: int = 0  # annotations another project of the store holds (``ProjectMismatch``)
    tasks_stored: int = 0  # unannotated tasks whose data was new or changed in the store
    tasks_deleted: int = 0  # tasks Label Studio no longer holds whose stored data was purged
    left_in_wal: bool = False  # what was purged stays in the store's WAL (``Purged.left_in_wal``)


class LabelStudioSync:
    """Pulls projects' annotations from one Label Studio into the store.

    Example (against a running Label Studio):
        sync = LabelStudioSync(store, "http://labelstudio:8080", api_key)
        sync.project("3")  # -> SyncResult(project='3', annotations=120, stored=2, deleted=0)
    """

    def __init__(self, store: AnnotationStore, url: str, api_key: str, timeout: float = 60) -> None:
        from label_studio_sdk.client import LabelStudio

        self.store = store
        self.url = url
        self._client = LabelStudio(base_url=url, api_key=api_key, timeout=timeout)
        self._lock = threading.Lock()  # one sync at a time: the scheduler and "Start training" may meet

    def project(self, project: str) -> SyncResult:
        """One project: its label config, every annotation of every task, the newest tasks'
        data, deletions.

        Raises whatever the SDK raises (Label Studio down, wrong key, unknown project) before
        purging anything: a partial listing never deletes. A label config clinie cannot use
        is not stored.
        """
        with self._lock:
            ls_project = self._client.projects.get(id=int(project))
            if ls_project.label_config:
                try:
                    self.store.set_label_config(project, ls_project.label_config)
                except LabelConfigError as e:
                    log.warning("project %s: re-sync: labeling config not stored: %s", project, e)
            annotations: set[int] = set()
            tasks: set[int] = set()
            unannotated = _Newest(self.store.keep_tasks)
            stored = refused = 0
            for task in self._client.tasks.list(project=int(project), fields="all", page_size=PAGE_SIZE):
                task_dict = _as_dict(task)
                tasks.add(int(task_dict["id"]))
                if not task_dict.get("annotations") and isinstance(task_dict.get("data"), dict):
                    unannotated.add(int(task_dict["id"]), task_dict["data"])
                for annotation in task_dict.get("annotations") or []:
                    annotation = _as_dict(annotation)
                    annotations.add(int(annotation["id"]))
                    try:
                        stored += self.store.record_annotation(project, annotation, task_dict, "SYNC")
                    except ProjectMismatch:
                        refused += 1
            deleted = self._purge_gone(project, tasks, annotations)  # first: what is gone leaves room in the bound
            tasks_stored = self.store.record_tasks(project, unannotated.items())
        return SyncResult(project, len(annotations), stored, deleted.annotations, refused, tasks_stored, deleted.tasks,
                          deleted.left_in_wal)

    def _purge_gone(self, project: str, listed_tasks: set[int], listed_annotations: set[int]) -> Purged:
        """Purge the tasks, then the annotations, the store holds and the listing lacked, each
        once Label Studio confirms it is gone (404): a listing paged while tasks are deleted
        can skip one that still exists, and a purge leaves a tombstone that no re-sync undoes."""
        tasks = {t for t in self.store.task_ids(project) - listed_tasks
                 if _gone(partial(self._client.tasks.get, id=str(t)))}
        purged = self.store.purge(project, tasks=tasks)
        annotations = {a for a in self.store.annotation_ids(project) - listed_annotations
                       if _gone(partial(self._client.annotations.get, id=a))}
        then = self.store.purge(project, annotations=annotations)
        return Purged(purged.annotations + then.annotations, tasks=purged.tasks,
                      left_in_wal=purged.left_in_wal or then.left_in_wal)


class _Newest:
    """The data of the ``keep`` listed tasks with the highest ids (None: all; 0: none): what the
    store would keep of them, gathered in bounded memory from a listing of any length."""

    def __init__(self, keep: int | None) -> None:
        self._keep = keep
        self._data: dict[int, Any] = {}

    def add(self, task_id: int, data: Any) -> None:
        if self._keep == 0:
            return
        self._data[task_id] = data
        if self._keep is not None and len(self._data) > 2 * self._keep:  # trimmed now and then, not per task
            self._data = dict(sorted(self._data.items())[-self._keep:])

    def items(self) -> list[tuple[int, Any]]:
        return sorted(self._data.items())[-self._keep:] if self._keep else sorted(self._data.items())


def _gone(fetch: Callable[[], Any]) -> bool:
    """Label Studio answers 404 for it; any other failure is raised (and nothing is purged)."""
    try:
        fetch()
    except Exception as e:
        if getattr(e, "status_code", None) == 404:
            return True
        raise
    return False


def _as_dict(value: Any) -> dict[str, Any]:
    """The SDK returns pydantic models (v1 or v2 API, by version) or plain dicts."""
    if isinstance(value, dict):
        return value
    dump = getattr(value, "model_dump", None) or value.dict
    return dump()
