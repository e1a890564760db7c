"""Background training: one worker thread per process, one training at a time.

Label Studio's webhooks must be answered within a second, so a webhook only *requests* a
training; this worker does it. A new model version is written to a temporary directory,
renamed into place, and only then registered as the serving version (one SQLite transaction):
if anything fails before that, the old version keeps serving and the failure is recorded.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import shutil
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from clinie.extractors.relation_encoder import RELATIONS_DIR, RelationClassifier
from clinie.llm.base import LLM
from clinie.llm.hidden import HiddenStates
from clinie.selection import builder, project_documents, select, selection_record
from clinie.settings import Settings
from clinie.store import AnnotationStore, ModelRecord
from clinie.strategies import PARTS, Strategy

log = logging.getLogger(__name__)


class NotEnoughAnnotations(RuntimeError):
    pass


def train_project(store: AnnotationStore, settings: Settings, project: str, training_id: int,
                  llm: Callable[[], LLM] | None = None,
                  states: Callable[[], HiddenStates] | None = None) -> ModelRecord:
    """Fine-tune the encoder tagger (and the relation classifier, when the config has relations
    and the annotations draw some) on the project's stored annotations, select the strategy that
    serves with it (``clinie.selection``), and register the result. The parts the selected
    strategy reads besides the encoder (the probe, alone or reading the sentences the encoder is
    unsure of) are fitted on all the annotations too and saved beside it (``probe/``); the
    encoder stays as the fallback.

    A selection that fails (the LLM cannot be loaded, say) is logged and recorded as failed;
    the new encoder still serves.
    """
    annotations = project_documents(store, project)
    schema, docs = annotations.schema, annotations.docs
    if len(docs) < max(1, settings.min_annotations):
        raise NotEnoughAnnotations(
            f"project {project} has {len(docs)} usable annotations, {settings.min_annotations} needed")
    build = builder(schema, settings, llm, states=states)
    selection: dict[str, Any] | None = None
    chosen: Strategy | None = None
    if settings.strategy == "auto" and settings.select_strategies and len(docs) >= 2:
        try:
            cv = select(docs, build, settings)
            selection, chosen = selection_record(cv), cv.selected
            log.info("project %s: selected %s (cross-validated F1 %.3f over %d annotations)", project,
                     selection["strategy"], selection["strategies"][selection["strategy"]]["mean_f1"], len(docs))
        except Exception as e:
            log.exception("project %s: strategy selection failed; the encoder serves", project)
            selection = {"strategy": None, "error": type(e).__name__}
    tagger = build.encoder(docs)
    options = {"epochs": settings.encoder_epochs} if settings.encoder_epochs else {}
    relations = None
    if schema.relation_labels and any(d.relations for d in docs):
        relations = RelationClassifier(schema.relation_labels, settings.encoder_model or None, **options).fit(docs)

    version = f"clinie-encoder-p{project}-t{training_id}-n{len(docs)}"
    final = settings.models_dir / re.sub(r"[^\w.-]", "_", project) / version
    partial = final.with_name(final.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    tagger.save(partial)
    for part in chosen.kind.saves if chosen else ():
        PARTS[part].fit(build, docs).save(partial / part)
    if relations is not None:
        relations.save(partial / RELATIONS_DIR)
    os.replace(partial, final)
    record = ModelRecord(
        version=version, project=project, kind="encoder", path=final, n_examples=len(docs),
        info={"labels": list(schema.span_labels), "base_model": settings.encoder_model or "embedded MiniLM",
              "relations": list(relations.labels) if relations else [],
              "relation_pairs": relations.n_train_pairs if relations else 0, "selection": selection,
              "annotations": annotations.summary()},
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    store.finish_training(training_id, record)
    return record


class TrainingWorker:
    """Runs ``train(project)`` for requested projects, each queued at most once at a time."""

    def __init__(self, train: Callable[[str], None]) -> None:
        self._train = train
        self._queue: queue.Queue[str] = queue.Queue()
        self._pending: set[str] = set()
        self._lock = threading.Lock()
        self._idle = threading.Event()
        self._idle.set()
        self._thread = threading.Thread(target=self._run, name="clinie-training", daemon=True)
        self._thread.start()

    def request(self, project: str) -> bool:
        """Queue a training of ``project``; False when one is already waiting."""
        with self._lock:
            if project in self._pending:
                return False
            self._pending.add(project)
            self._idle.clear()
        self._queue.put(project)
        return True

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until nothing is queued or running (tests wait on a training requested by webhook)."""
        return self._idle.wait(timeout)

    def _run(self) -> None:
        while True:
            project = self._queue.get()
            with self._lock:
                self._pending.discard(project)
            started = time.perf_counter()
            try:
                self._train(project)
            except Exception:  # the worker must outlive any one training
                log.exception("training of project %s crashed the worker loop", project)
            log.debug("training of project %s took %.1fs", project, time.perf_counter() - started)
            with self._lock:
                if not self._pending:
                    self._idle.set()
