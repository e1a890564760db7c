"""Background training: one worker thread per process, one training at a time.

Label Studio's webhooks must be answered within a second, so a webhook only *requests* a
training; this worker does it. A new model version is written to a temporary directory,
renamed into place, and only then registered as the serving version (one SQLite transaction):
if anything fails before that, the old version keeps serving and the failure is recorded. An
encoder trained within ``CLINIE_FIRST_MODEL_STEPS`` serves first; the strategy selection picks is
recorded with it afterwards (``select_strategy``), its extra parts renamed into the version's
directory before that — or into a version ``<first>-full`` with the encoder trained to its full
budget, when the first was cut short and the choice reads it (``full_encoder``). Disk stays
bounded: the versions beyond the newest ``CLINIE_KEEP_MODELS`` are deleted after each training
(``prune_versions``), what a crash left half-written at the next start (``remove_partials``).
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from clinie.extractors.encoder import EncoderTagger
from clinie.extractors.relation_encoder import RELATIONS_DIR, RelationClassifier
from clinie.llm.base import LLM
from clinie.llm.hidden import HiddenStates
from clinie.selection import builder, candidates, select, selection_record
from clinie.settings import Settings
from clinie.strategies import PARTS
from ml_backend.annotations import Annotations, project_documents, unannotated_documents
from ml_backend.store import AnnotationStore, ModelRecord, project_models_dir

log = logging.getLogger(__name__)

#: The suffix of a directory a model is being written into (``_written``).
PARTIAL = ".partial"


class NotEnoughAnnotations(RuntimeError):
    pass


class Superseded(RuntimeError):
    """A newer training of the project was requested while this selection ran."""


class Progress(Protocol):
    """Where a training reports its stage and how far it has got (``ml_backend.metrics``)."""

    def training_stage(self, project: str, stage: str) -> None: ...

    def training_step(self, project: str, done: int, total: int) -> None: ...


def train_project(store: AnnotationStore, settings: Settings, project: str, training_id: int,
                  progress: Progress) -> tuple[ModelRecord, Annotations]:
    """Fine-tune the encoder tagger (and the relation classifier, when the config has relations
    and the annotations draw some) on the project's stored annotations and register it as the
    serving version at once. A project's first model is trained within ``CLINIE_FIRST_MODEL_STEPS``,
    so that it gets one within a minute; which strategy serves after it, with an encoder trained
    to its full budget (``full_encoder``), is ``select_strategy``'s to say."""
    progress.training_stage(project, "encoder")
    started = time.perf_counter()
    annotations = project_documents(store, project)
    schema, docs = annotations.schema, annotations.docs
    if len(docs) < max(1, settings.min_annotations):
        raise NotEnoughAnnotations(
            f"project {project} has {len(docs)} usable annotations, {settings.min_annotations} needed")
    # a quick first model only while nothing serves: a version already serving is better than one cut short
    first = store.serving_model(project) is None
    budget = {"max_steps": settings.first_model_steps} if settings.first_model_steps and first else {}
    tagger = EncoderTagger(list(schema.span_labels), settings.encoder_model or None, **_epochs(settings),
                           **budget).fit(docs)
    relations = None
    if schema.relation_labels and any(d.relations for d in docs):
        progress.training_stage(project, "relations")
        relations = RelationClassifier(schema.relation_labels, settings.encoder_model or None,
                                       **_epochs(settings)).fit(docs)

    version = f"clinie-encoder-p{project}-t{training_id}-n{len(docs)}"
    final = project_models_dir(settings.models_dir, project) / version
    with _written(final) as partial:
        tagger.save(partial)
        if relations is not None:
            relations.save(partial / RELATIONS_DIR)
    record = ModelRecord(
        version=version, project=project, kind="encoder", path=final, n_examples=len(docs),
        info={"labels": list(schema.span_labels), "base_model": settings.encoder_model or "embedded MiniLM",
              "relations": list(relations.labels) if relations else [],
              "relation_pairs": relations.n_train_pairs if relations else 0, "selection": None,
              "annotations": annotations.summary(), "cut_short": tagger.cut_short,
              "seconds": round(time.perf_counter() - started, 1)},
        created_at=_now())
    try:
        store.finish_training(training_id, record)
    except LookupError:  # the project was deleted meanwhile: so is what was learned from it
        shutil.rmtree(final, ignore_errors=True)
        raise
    return record, annotations


def full_encoder(settings: Settings, record: ModelRecord, annotations: Annotations,
                 progress: Progress) -> ModelRecord:
    """The encoder of a first model that ``CLINIE_FIRST_MODEL_STEPS`` cut short, trained to its
    full budget as version ``<first>-full`` (the relation classifier, never cut short, copied
    beside it). Not registered: the caller serves it once what it serves with is in place."""
    progress.training_stage(record.project, "encoder, full budget")
    started = time.perf_counter()
    tagger = EncoderTagger(list(annotations.schema.span_labels), settings.encoder_model or None,
                           **_epochs(settings)).fit(annotations.docs)
    final = record.path.with_name(record.version + "-full")
    with _written(final) as partial:
        tagger.save(partial)
        if (record.path / RELATIONS_DIR).is_dir():
            shutil.copytree(record.path / RELATIONS_DIR, partial / RELATIONS_DIR)
    return replace(record, version=final.name, path=final, created_at=_now(),
                   info={**record.info, "cut_short": False, "first_model": record.version,
                         "seconds": round(time.perf_counter() - started, 1)})


def serve_full_encoder(store: AnnotationStore, settings: Settings, record: ModelRecord,
                       annotations: Annotations, progress: Progress) -> ModelRecord:
    """What a training serves after a cut-short first model when no selection runs."""
    return _serve(store, full_encoder(settings, record, annotations, progress))


def _serve(store: AnnotationStore, model: ModelRecord) -> ModelRecord:
    try:
        store.serve_model(model)
    except LookupError:  # the project was deleted meanwhile: so is what was learned from it
        shutil.rmtree(model.path, ignore_errors=True)
        raise
    return model


@contextmanager
def _written(final: Path) -> Iterator[Path]:
    """A directory to write a model into, renamed to ``final`` once complete: a crash leaves a
    ``PARTIAL`` directory (removed at the next start, ``remove_partials``), never a half-written
    version. What was written, then the rename, is flushed to disk before the version can be
    registered: after a power loss the store must not name a version the file system forgot or
    holds only in part."""
    partial = final.with_name(final.name + PARTIAL)
    shutil.rmtree(partial, ignore_errors=True)
    yield partial
    for path in [*partial.rglob("*"), partial]:
        _flush(path)
    os.replace(partial, final)
    _flush(final.parent)


def _flush(path: Path) -> None:
    """``fsync`` a file (its content) or a directory (its entries: a file created or renamed in it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_partials(models_dir: Path) -> list[Path]:
    """Remove the ``PARTIAL`` directories a crash left under ``models_dir`` (a version, or a
    part of one, written when the process died): nothing reads them and each can be the size
    of a model. Only at start-up, when no training of this process can be writing one."""
    stale = sorted(p for p in models_dir.rglob("*" + PARTIAL) if p.is_dir()) if models_dir.is_dir() else []
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale


def prune_versions(store: AnnotationStore, settings: Settings, project: str) -> list[ModelRecord]:
    """Unregister and delete the project's model versions beyond the newest ``keep_models``
    (never the serving one): each is as large as the encoder, and a version nothing serves is
    only a way back, which a few recent ones give. The rows go first, so that no request is
    pointed at a directory being deleted. Returns the versions removed."""
    if not settings.keep_models:
        return []
    pruned = store.prune_models(project, settings.keep_models)
    for record in pruned:
        shutil.rmtree(record.path, ignore_errors=True)
    return pruned


def _epochs(settings: Settings) -> dict[str, int]:
    """``CLINIE_ENCODER_EPOCHS`` as the encoders' keyword, when set (else their default)."""
    return {"epochs": settings.encoder_epochs} if settings.encoder_epochs else {}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def select_strategy(store: AnnotationStore, settings: Settings, record: ModelRecord, annotations: Annotations,
                    progress: Progress, *, superseded: Callable[[], bool] = lambda: False,
                    llm: Callable[[], LLM] | None = None,
                    states: Callable[[], HiddenStates] | None = None) -> dict[str, Any]:
    """Cross-validate ``CLINIE_SELECT_STRATEGIES`` over the annotations ``record`` was trained on
    (``clinie.selection``), fit the parts the chosen strategy reads besides the encoder (the
    probe, alone or reading the sentences the encoder is unsure of) on all of them, save them
    beside it, and record the choice with the version: from then on it serves. The project's
    newest ``CLINIE_STUDENT_POOL`` unannotated tasks are what a student strategy learns from:
    when one is a candidate, the teacher reads them first, a stage of its own (``teacher``).

    Raises ``Superseded`` between two fits (or two sentences the teacher reads) once
    ``superseded()`` (a newer training is waiting).
    A selection that fails otherwise (the LLM cannot be loaded, say) is logged and recorded as
    failed; the encoder keeps serving.
    """
    project, docs = record.project, annotations.docs
    pool = unannotated_documents(store, project, annotations.schema, settings.student_pool or None)
    build = builder(annotations.schema, settings, llm, states=states, unannotated=pool.docs)
    started = time.perf_counter()

    def check() -> None:
        if superseded():
            raise Superseded(f"project {project}: a newer training supersedes the selection for {record.version}")

    def fitted(done: int, total: int) -> None:
        progress.training_step(project, done, total)
        check()

    serving = record
    try:
        if build.unannotated and any(s.kind.learns_from_unannotated for s in candidates(settings)):
            progress.training_stage(project, "teacher")  # reading the unannotated sentences
            build.read_unannotated(fitted)
        progress.training_stage(project, "selection")
        cv = select(docs, build, settings, on_fit=fitted)
        selection, chosen = {**selection_record(cv), "unannotated": pool.summary()}, cv.selected
        if "encoder" in chosen.kind.parts and record.info.get("cut_short"):
            serving = full_encoder(settings, record, annotations, progress)
            check()
        progress.training_stage(project, f"fitting {chosen.name}")
        for part in chosen.kind.saves:
            with _written(serving.path / PARTS[part].directory) as partial:
                PARTS[part].fit(build, docs, chosen).save(partial)
        selection["seconds"] = round(time.perf_counter() - started, 1)
        log.info("project %s: selected %s (cross-validated F1 %.3f over %d annotations)", project,
                 selection["strategy"], selection["strategies"][selection["strategy"]]["mean_f1"], len(docs))
    except Superseded:
        raise
    except Exception as e:
        log.exception("project %s: strategy selection failed; the encoder serves", project)
        selection, serving = {"strategy": None, "error": type(e).__name__}, record
    if serving is record:
        store.set_selection(record.version, selection)
    else:
        _serve(store, replace(serving, info={**serving.info, "selection": selection}))
    return selection


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

    def is_pending(self, project: str) -> bool:
        """A training of ``project`` is queued (and would supersede one in progress)."""
        with self._lock:
            return project in self._pending

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
