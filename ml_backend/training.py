"""Background training: one worker thread per process (or ``clinie worker`` processes), one
training of a project at a time.

Label Studio's webhooks must be answered within a second, so a webhook only *requests* a
training; this worker does it. A new model version is written once (``clinie.model_version``:
staged, checked, never changed after) into the models location (``ml_backend.model_store``), and
only then registered as the serving version (one store transaction): if anything fails before
that, the old version keeps serving and the failure is recorded. An encoder trained within
``CLINIE_FIRST_MODEL_STEPS`` serves first; the strategy selection picks serves after it
(``select_strategy``), as a version of its own that carries the first one's parts and adds what it
reads besides (``<first>-<strategy>``) — with the encoder trained to its full budget when the
first was cut short and the choice reads it (``<first>-full`` when nothing else is added). While
another strategy serves (a cold-start policy, or the probe a selection chose), the first version
has no part and the selection's first stage comes at once; the relations, then the encoder, are
added to what it served after it (``complete``). Disk
stays bounded: the versions beyond the newest ``CLINIE_KEEP_MODELS`` are deleted after each
training (``prune_versions``), what a crash left half-written at the next start
(``ModelStore.remove_partials``).
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any, Protocol

from clinie.clock import utc_now
from clinie.core import Document, RelationSpec
from clinie.evaluation.fewshot import CrossValidation
from clinie.evaluation.thresholds import per_label, relation_outcomes
from clinie.extractors.encoder import EncoderTagger
from clinie.extractors.finetune import epochs_option
from clinie.extractors.relation_classifier import RELATIONS_DIR, RelationClassifier
from clinie.llm.base import LLM
from clinie.llm.hidden import HiddenStates
from clinie.model_version import MAIN_PART, Saveable
from clinie.selection import builder, candidates, select, selection_record, staged
from clinie.settings import Settings
from clinie.strategies import PARTS, Strategy, StrategyBuilder
from ml_backend.annotations import Annotations, project_documents, unannotated_documents
from ml_backend.model_store import ModelStore
from ml_backend.store import AnnotationStore, ModelRecord

log = logging.getLogger(__name__)

#: The share of the documents with relations that the relation thresholds are chosen on.
RELATIONS_HELD_OUT = 0.25


class NotEnoughAnnotations(RuntimeError):
    pass


class Superseded(RuntimeError):
    """A newer training of the project was requested while this selection ran."""


class Progress(Protocol):
    """Where a training reports its stage and how far it has got (``ml_backend.metrics``)."""

    def training_stage(self, project: str, stage: str) -> None: ...

    def training_step(self, project: str, done: int, total: int) -> None: ...


def train_project(store: AnnotationStore, settings: Settings, models: ModelStore, project: str, training_id: int,
                  progress: Progress, *, serve: bool = True, encoder: bool = True) -> tuple[ModelRecord, Annotations]:
    """Fine-tune the encoder tagger on the project's stored annotations and register it: as the
    serving version at once when ``serve`` (nothing is shown yet, or the encoder serves already),
    else it waits for ``select_strategy`` to compare it with what serves. A project's first model
    is trained within ``CLINIE_FIRST_MODEL_STEPS``, so that it gets one within a minute; which
    strategy serves after it, with an encoder trained to its full budget (``full_tagger``), is
    ``select_strategy``'s to say. Without ``encoder`` (a cold-start policy serves, which an
    encoder cut short would not beat), the version registered has no part yet: the selection's
    first stage comes first, and ``complete`` adds the encoder to what it serves."""
    progress.training_stage(project, "encoder" if encoder else "annotations")
    started = time.perf_counter()
    annotations = project_documents(store, project)
    schema, docs = annotations.schema, annotations.docs
    if len(docs) < max(1, settings.min_annotations):
        raise NotEnoughAnnotations(
            f"project {project} has {len(docs)} usable annotations, {settings.min_annotations} needed")
    parts: dict[str, Saveable] = {}
    cut_short = False
    if encoder:
        # a quick first model only while no trained version serves: one already serving is better than one cut short
        first = store.serving_model(project) is None
        budget: dict[str, Any] = \
            {"max_steps": settings.first_model_steps} if settings.first_model_steps and first else {}
        tagger = EncoderTagger(list(schema.span_labels), settings.encoder_model or None,
                               **epochs_option(settings.encoder_epochs), **budget).fit(docs)
        parts[MAIN_PART], cut_short = tagger, tagger.cut_short
    version = f"clinie-{'encoder-' if encoder else ''}p{project}-t{training_id}-n{len(docs)}"
    info = {"labels": list(schema.span_labels), "base_model": settings.encoder_model or "embedded MiniLM",
            "relations": [], "relation_pairs": 0, "selection": None,
            "annotations": annotations.summary(), "cut_short": cut_short,
            "seconds": round(time.perf_counter() - started, 1)}
    written = models.write(project, version, parts, info)
    record = ModelRecord(version=version, project=project, kind="encoder" if encoder else "annotations",
                         location=written.location, n_examples=len(docs), info=info, created_at=utc_now())
    try:
        store.finish_training(training_id, record, serve=serve and encoder)
    except LookupError:  # the project was deleted meanwhile: so is what was learned from it
        models.remove(written.location)
        raise
    return record, annotations


def complete(store: AnnotationStore, settings: Settings, models: ModelStore, record: ModelRecord,
             annotations: Annotations, progress: Progress) -> ModelRecord | None:
    """What ``record`` lacks, each added as soon as it is trained, as a version of its own
    (``<record>-relations``, then ``-encoder``) that serves in its place if ``record`` serves
    (else it waits with it for the selection): the relation classifier first, when the config has
    relations and the annotations draw some — it is what nothing else answers — then the encoder,
    when ``record`` has none (it answers when what serves cannot, and a selection's later stage
    reads it). Both come after ``record``'s entities serve, so that those never wait for them.
    None when nothing is lacking."""
    schema, docs = annotations.schema, annotations.docs
    completed = None
    if schema.relation_labels and any(d.relations for d in docs):
        progress.training_stage(record.project, "relations")
        started = time.perf_counter()
        thresholds = relation_thresholds(settings, schema.relation_labels, docs)
        classifier = RelationClassifier(schema.relation_labels, settings.encoder_model or None,
                                        **epochs_option(settings.encoder_epochs)).fit(
            docs, on_step=lambda done, total: progress.training_step(record.project, done, total))
        completed = _add(store, models, record, "relations", {RELATIONS_DIR: classifier}, {
            "relations": list(classifier.labels), "relation_pairs": classifier.n_train_pairs,
            "relation_pairs_labelled": classifier.n_labelled_pairs, "relations_cut_short": classifier.cut_short,
            "relation_thresholds": thresholds, "relations_seconds": round(time.perf_counter() - started, 1)})
    if not has_encoder(models, record):
        started = time.perf_counter()
        tagger = full_tagger(settings, record.project, annotations, progress)
        completed = _add(store, models, completed or record, "encoder", {MAIN_PART: tagger},
                         {"cut_short": False, "encoder_seconds": round(time.perf_counter() - started, 1)})
    return completed


def _add(store: AnnotationStore, models: ModelStore, record: ModelRecord, suffix: str, parts: Mapping[str, Saveable],
         info: Mapping[str, Any]) -> ModelRecord:
    """``record`` with ``parts`` (``derive``): serving in its place if it serves, else registered."""
    derived = derive(models, record, suffix, parts, info)
    serving = store.serving_model(record.project)
    if serving is not None and serving.version == record.version:
        return serve(store, models, derived)
    try:
        store.register_model(derived)
    except LookupError:
        models.remove(derived.location)
        raise
    return derived


def has_encoder(models: ModelStore, record: ModelRecord) -> bool:
    """``record``'s version has the encoder (a training's first version may not: ``train_project``)."""
    return models.open(record.location).has(MAIN_PART)


def relation_thresholds(settings: Settings, specs: Sequence[RelationSpec], docs: Sequence[Document],
                        ) -> dict[str, float | None]:
    """Precision first for relations (``clinie.evaluation.thresholds``): a classifier fitted on
    the documents with relations but a held-out share (``RELATIONS_HELD_OUT``, one at least),
    its relations between the held-out documents' own regions scored against theirs. Empty (every
    relation shown) with fewer than two documents with relations, or ``min_precision`` 0."""
    with_relations = [d for d in docs if d.relations]
    if len(with_relations) < 2 or not settings.min_precision:
        return {}
    held = set(random.Random(0).sample([d.id for d in with_relations],
                                       max(1, round(RELATIONS_HELD_OUT * len(with_relations)))))
    classifier = RelationClassifier(specs, settings.encoder_model or None,
                                    **epochs_option(settings.encoder_epochs)).fit([d for d in docs if d.id not in held])
    gold = [d for d in docs if d.id in held]
    predicted = classifier.predict([d.with_annotations(d.entities, ()) for d in gold])
    return per_label(relation_outcomes(gold, predicted), min_precision=settings.min_precision)


def full_tagger(settings: Settings, project: str, annotations: Annotations, progress: Progress) -> EncoderTagger:
    """The encoder of a first model that ``CLINIE_FIRST_MODEL_STEPS`` cut short, trained to its full budget."""
    progress.training_stage(project, "encoder, full budget")
    return EncoderTagger(list(annotations.schema.span_labels), settings.encoder_model or None,
                         **epochs_option(settings.encoder_epochs)).fit(annotations.docs)


def derive(models: ModelStore, record: ModelRecord, suffix: str, parts: Mapping[str, Saveable],
           info: Mapping[str, Any]) -> ModelRecord:
    """A version ``<record>-<suffix>`` with ``parts`` and every part of ``record`` they do not
    replace (carried, not copied anew: a version is never changed), its ``info`` updated. Not
    registered: the caller serves it (``serve``) once it is complete."""
    first = models.open(record.location)
    carried = {part: first for part in first.parts if part not in parts}
    version = f"{record.version}-{suffix}"
    info = {**record.info, **info, "first_model": record.version}
    written = models.write(record.project, version, parts, info, carried=carried)
    return replace(record, version=version, location=written.location, created_at=utc_now(), info=info)


def serve_full_encoder(store: AnnotationStore, settings: Settings, models: ModelStore, record: ModelRecord,
                       annotations: Annotations, progress: Progress) -> ModelRecord:
    """What a training serves after a cut-short first model when no selection runs."""
    started = time.perf_counter()
    tagger = full_tagger(settings, record.project, annotations, progress)
    return serve(store, models, derive(models, record, "full", {MAIN_PART: tagger},
                                       {"cut_short": False, "seconds": round(time.perf_counter() - started, 1)}))


def serve(store: AnnotationStore, models: ModelStore, model: ModelRecord) -> ModelRecord:
    """Register ``model`` and make it serve."""
    try:
        store.serve_model(model)
    except LookupError:  # the project was deleted meanwhile: so is what was learned from it
        models.remove(model.location)
        raise
    return model


def prune_versions(store: AnnotationStore, settings: Settings, models: ModelStore, project: str) -> list[ModelRecord]:
    """Unregister and delete the project's model versions beyond the newest ``keep_models``
    (never the serving one): each is as large as the encoder, and a version nothing serves is
    only a way back, which a few recent ones give. The rows go first, so that no request is
    pointed at a directory being deleted. Returns the versions removed."""
    if not settings.keep_models:
        return []
    pruned = store.prune_models(project, settings.keep_models)
    for record in pruned:
        models.remove(record.location)
    return pruned


def select_strategy(store: AnnotationStore, settings: Settings, models: ModelStore, record: ModelRecord,
                    annotations: Annotations, progress: Progress, *, superseded: Callable[[], bool] = lambda: False,
                    incumbent: Strategy | None = None, llm: Callable[[], LLM] | None = None,
                    states: Callable[[], HiddenStates] | None = None,
                    after_first: Callable[[ModelRecord], ModelRecord] | None = None) -> dict[str, Any]:
    """Cross-validate ``CLINIE_SELECT_STRATEGIES`` over the annotations ``record`` was trained on
    against what serves now — the ``incumbent`` (the strategy serving before this training), or
    ``record``'s encoder when it serves already — on the same folds (``clinie.selection``: the
    choice is never below it), in stages (``staged``): the likeliest winner first, served as soon
    as it is the choice, then the others, which replace it only where they beat it. A choice
    serves with the parts it reads besides the encoder fitted on all the annotations (the probe,
    alone or reading the sentences the encoder is unsure of): as ``record`` itself when it reads
    nothing more, else as a version of its own (``derive``).
    ``after_first(version)``, when given, runs after the first stage on the version it served, and
    gives the version the later stages build on (``complete``: what the first choice served
    without, so that it served sooner).
    The project's newest ``CLINIE_STUDENT_POOL`` unannotated tasks are what a student strategy
    learns from: before the stage with one, the teacher reads them, a stage of its own (``teacher``).

    Raises ``Superseded`` between two fits (or two sentences the teacher reads) of a later stage
    once ``superseded()`` (a newer training is waiting): what the first stage served keeps
    serving. The first stage is never superseded: were it, trainings that come faster than it
    ends would each start it again and none would serve.
    A selection that fails otherwise (the LLM cannot be loaded, say) is logged and recorded as
    failed; what served before keeps serving (``record`` itself if it served already).
    """
    project, docs = record.project, annotations.docs
    pool = unannotated_documents(store, project, annotations.schema, settings.student_pool or None)
    build = builder(annotations.schema, settings, llm, states=states, unannotated=pool.docs)
    started = time.perf_counter()

    def check() -> None:
        if served is not None and superseded():
            raise Superseded(f"project {project}: a newer training supersedes the selection for {record.version}")

    def fitted(done: int, total: int) -> None:
        progress.training_step(project, done, total)
        check()

    serving = incumbent or Strategy("encoder")  # the encoder: ``record`` serves (``train_project``)
    cv: CrossValidation | None = None
    served: ModelRecord | None = None
    selection: dict[str, Any] = {}
    stages = staged(candidates(settings), settings.select_prefer, serving)
    try:
        for stage in stages:
            if build.unannotated and any(s.kind.learns_from_unannotated for s in stage):
                progress.training_stage(project, "teacher")  # reading the unannotated sentences
                build.read_unannotated(fitted)
            progress.training_stage(project, "selection" if served is None else "selection, the other strategies")
            cv = select(docs, build, settings, stage, serving=serving, into=cv, on_fit=fitted)
            selection = {**selection_record(cv, settings.min_precision), "unannotated": pool.summary(),
                         "seconds": round(time.perf_counter() - started, 1)}
            if served is not None and cv.selected.name == serving.name:  # what the first stage served stays
                store.set_selection(served.version, selection)
                continue
            first = served is None
            chosen = cv.selected
            assert isinstance(chosen, Strategy)  # select() compares strategies
            served = _serve_choice(store, settings, models, record, annotations, progress, build, chosen,
                                   selection, check)
            serving = chosen
            log.info("project %s: %s serves (cross-validated F1 %.3f over %d annotations)", project, serving.name,
                     selection["strategies"][serving.name]["mean_f1"], len(docs))
            if first and after_first is not None:
                served = record = after_first(served)
    except Superseded:
        raise
    except Exception as e:
        log.exception("project %s: strategy selection failed; what served before keeps serving", project)
        if served is None:
            store.set_selection(record.version, {"strategy": None, "error": type(e).__name__})
            return {"strategy": None, "error": type(e).__name__}
        return served.info["selection"]
    return selection


def _serve_choice(store: AnnotationStore, settings: Settings, models: ModelStore, record: ModelRecord,
                  annotations: Annotations, progress: Progress, build: StrategyBuilder, chosen: Strategy,
                  selection: dict[str, Any], check: Callable[[], None]) -> ModelRecord:
    """Serve ``chosen`` with ``record``: the parts it reads fitted on all the annotations (the
    encoder trained to its full budget when ``record``'s was cut short or ``record`` has none), as
    a version of its own when there are any, else as ``record`` with the selection."""
    project, docs = record.project, annotations.docs
    parts: dict[str, Saveable] = {}
    had_encoder = has_encoder(models, record)
    if "encoder" in chosen.kind.parts and (record.info.get("cut_short") or not had_encoder):
        parts[MAIN_PART] = full_tagger(settings, project, annotations, progress)
        check()
    progress.training_stage(project, f"fitting {chosen.name}")
    for part in chosen.kind.saved_parts:
        parts[PARTS[part].directory] = PARTS[part].fit(build, docs, chosen)
    if not parts:
        store.set_selection(record.version, selection, serve=True)
        return replace(record, info={**record.info, "selection": selection})
    suffix = chosen.name if chosen.kind.saved_parts else "full" if had_encoder else "encoder"
    return serve(store, models, derive(models, record, suffix, parts, {"cut_short": False, "selection": selection}))


class TrainingWorker:
    """Runs ``train(project)`` for requested projects, each queued at most once at a time, after
    ``warm_up()`` (what the trainings read, loaded in the thread that reads it: libraries that
    import lazily are not safe to import from two threads at once)."""

    def __init__(self, train: Callable[[str], object], warm_up: Callable[[], None] = lambda: None) -> None:
        self._train = train
        self._warm_up = warm_up
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
        try:
            self._warm_up()
        except Exception:  # the first training will load it again, and say why it cannot
            log.exception("loading what the trainings read failed")
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
