"""What the backend does for each Label Studio call, without HTTP.

``Backend`` owns the process-wide pieces: the settings, the annotation store, the loaded model
versions (each loaded once per process), the metrics and the training worker. The Flask app in
``ml_backend.app`` only parses requests and calls it.
"""

from __future__ import annotations

import logging
import threading
import time
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

from clinie import __version__
from clinie.core import Document, Schema
from clinie.evaluation.calibration import Calibrator, calibrate_documents, calibrator_from_dict
from clinie.evaluation.fewshot import Strategy
from clinie.extractors.base import Extractor, SpansThenRelations
from clinie.extractors.encoder import EncoderTagger
from clinie.extractors.gated import FilterThenProbe
from clinie.extractors.llm import LLMTagger
from clinie.extractors.probe import PROBE_DIR, PROBE_KINDS, ProbeTagger
from clinie.extractors.relation_encoder import RELATIONS_DIR, RelationClassifier
from clinie.extractors.relation_llm import LLMRelationExtractor
from clinie.extractors.rerank import FilterThenRerank
from clinie.labelstudio import annotation_to_document, document_to_result, parse_label_config, task_to_document
from clinie.llm import LLM, make_llm
from clinie.llm.cache import CallCache
from clinie.llm.hidden import HiddenStates
from clinie.retrieval import Embedder
from clinie.settings import Settings
from clinie.store import AnnotationStore, ModelRecord
from ml_backend.metrics import Metrics
from ml_backend.selection import probe_states, span_specs
from ml_backend.sync import LabelStudioSync
from ml_backend.training import NotEnoughAnnotations, TrainingWorker, train_project

log = logging.getLogger(__name__)

#: The version Label Studio sees while a project has no trained model: its predictions are empty.
NO_MODEL_VERSION = f"clinie-{__version__}-no-model-yet"

ANNOTATION_ACTIONS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED")

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


class Serving(NamedTuple):
    """What answers a project's /predict, and as which model version."""

    version: str
    model: Extractor | None
    calibrator: Calibrator | None
    fallback: Serving | None  # the trained encoder, when ``model`` uses the LLM
    uses_llm: bool = False


@lru_cache(maxsize=64)
def _schema(label_config: str) -> Schema:
    return parse_label_config(label_config)


class Backend:
    def __init__(self, settings: Settings, *, start_worker: bool = True) -> None:
        self.settings = settings
        self.store = AnnotationStore(settings.store_path)
        self.metrics = Metrics()
        self._models: dict[tuple[str, bool], tuple[str, Extractor]] = {}  # (project, probe?) -> (version, model)
        self._llm_extractors: dict[str, tuple[str, Extractor]] = {}  # project -> (revision, extractor)
        self._models_lock = threading.Lock()
        self._llm: LLM | None = None
        self._embedder: Embedder | None = None
        self._states: HiddenStates | None = None
        self._llm_cache = CallCache(settings.data_dir / "llm_cache.sqlite3")
        if abandoned := self.store.abandon_running_trainings():
            log.warning("%d trainings were interrupted by a restart and are marked failed", abandoned)
        self.sync = LabelStudioSync(self.store, settings.label_studio_url, settings.label_studio_api_key) \
            if settings.label_studio_url else None
        self._stopping = threading.Event()
        self.worker = TrainingWorker(self.train) if start_worker else None
        if start_worker:
            threading.Thread(target=self._warm_up, name="clinie-warm-up", daemon=True).start()
        if start_worker and self.sync:
            threading.Thread(target=self._sync_loop, name="clinie-sync", daemon=True).start()

    def _warm_up(self) -> None:
        """Load every project's serving encoder (and probe) once, at start, so that the first
        /predict after a restart does not pay for it (Label Studio's opening a task waits on it)."""
        for project in self.store.projects():
            if (record := self._encoder_record(project)) is not None:
                try:
                    self._model(record)
                    if self._selected(record).kind in PROBE_KINDS:
                        self._model(record, probe=True)
                except Exception as e:  # the first /predict will say so again, per task
                    log.warning("project %s: could not load %s: %s", project, record.version, type(e).__name__)

    def close(self) -> None:
        """Stop the re-sync schedule (graceful shutdown; a training in flight is left to finish
        or, if the process dies first, is marked failed at the next start)."""
        self._stopping.set()

    # --- setup and prediction -------------------------------------------------------------

    def setup(self, project: str, label_config: str) -> str:
        _schema(label_config)  # a config clinie cannot use is refused at connection time
        self.store.set_label_config(project, label_config)
        return self.model_version(project)

    def _encoder_record(self, project: str) -> ModelRecord | None:
        """The trained encoder that serves ``project`` under the configured strategy, if any."""
        return self.store.serving_model(project) if self.settings.strategy != "llm" else None

    def _selected(self, record: ModelRecord | None) -> Strategy:
        """The strategy that serves: the one selection chose with this model version (under
        ``auto``), else the encoder once trained, else the LLM."""
        if record is None:
            return Strategy("llm", k=self.settings.llm_k)
        chosen = (record.info.get("selection") or {}).get("strategy") if self.settings.strategy == "auto" else None
        strategy = Strategy.parse(chosen) if chosen else Strategy("encoder")
        if strategy.kind in PROBE_KINDS and not (record.path / PROBE_DIR).is_dir():  # a version dir pruned by hand
            return Strategy("encoder")
        return strategy

    def model_version(self, project: str) -> str:
        """The version ``predict`` would answer as, without loading any model."""
        record = self._encoder_record(project)
        if record is None and self.settings.strategy == "encoder":
            return NO_MODEL_VERSION
        return self._version(record, self._selected(record), project)

    def _version(self, record: ModelRecord | None, strategy: Strategy, project: str) -> str:
        """Names model and strategy; an LLM's names provider, model and pool size too, so that a
        new annotation (a new demonstration) makes Label Studio ask again."""
        if strategy.kind == "encoder" and record is not None:
            return record.version
        if strategy.kind in PROBE_KINDS and record is not None:
            return f"{record.version}-{strategy.name}"
        pool_size = self.store.count_training_examples(project)
        if strategy.kind == "rerank" and record is not None:
            return f"{record.version}-{strategy.name}-pool{pool_size}"
        s = self.settings
        if not s.llm_model:
            model = "gemma-3-270m-q4_k_m"
        elif s.llm_provider == "openai":
            model = s.llm_model
        else:  # a local file or directory: its name
            model = Path(s.llm_model).name.removesuffix(".gguf")
        k = strategy.k if pool_size else 0
        return f"clinie-llm-{s.llm_provider}-{model}-k{k}-pool{pool_size}"

    def _shared_llm(self) -> tuple[LLM, Embedder]:
        with self._models_lock:
            if self._llm is None:
                started = time.perf_counter()
                self._llm = make_llm(self.settings)
                self._embedder = Embedder()
                self.metrics.observe("model_load", time.perf_counter() - started)
            return self._llm, self._embedder

    def _shared_states(self) -> HiddenStates:
        """The hidden states the probe reads: one model per process, for trainings and /predict."""
        with self._models_lock:
            if self._states is None:
                started = time.perf_counter()
                self._states = probe_states(self.settings)
                self.metrics.observe("model_load", time.perf_counter() - started)
            return self._states

    def _with_demos(self, project: str, schema: Schema, record: ModelRecord | None, strategy: Strategy) -> Extractor:
        """An extractor that uses the LLM, its demonstrations the annotations as of now (a new
        one joins the pool at once, no training needed). ``llm``: the word/TAG tagger, and with
        ``<Relations>`` in the config a multiple-choice question per candidate pair; ``rerank``:
        the trained encoder, the LLM deciding its hard cases, and its relation classifier."""
        llm, embedder = self._shared_llm()
        revision = f"{self.store.revision(project)}|{hash(schema)}|{record and record.version}|{strategy.name}"
        with self._models_lock:
            cached = self._llm_extractors.get(project)
        if cached is None or cached[0] != revision:
            docs = [annotation_to_document(e.task, e.result, schema) for e in self.store.training_examples(project)]
            k, guided = strategy.k if docs else 0, bool(self.settings.llm_guided)
            extractor: Extractor
            if strategy.kind == "rerank" and record is not None:
                trained = self._model(record)
                encoder = trained.spans if isinstance(trained, SpansThenRelations) else trained
                extractor = FilterThenRerank(encoder, llm, span_specs(schema), band=strategy.band, embedder=embedder,
                                             guided=guided, cache=self._llm_cache).fit(docs, refit_encoder=False)
                if isinstance(trained, SpansThenRelations):
                    extractor = SpansThenRelations(extractor, trained.relations)
            else:
                extractor = LLMTagger(span_specs(schema), llm, k=k, embedder=embedder, guided=guided,
                                      cache=self._llm_cache).fit(docs)
                if schema.relation_labels:
                    extractor = SpansThenRelations(extractor, LLMRelationExtractor(
                        schema.relation_labels, llm, k=k, embedder=embedder, guided=guided,
                        cache=self._llm_cache).fit(docs))
            cached = (revision, extractor)
            with self._models_lock:
                self._llm_extractors[project] = cached
        return cached[1]

    def versions(self) -> list[str]:
        return [m.version for m in self.store.models()]

    def _model(self, record: ModelRecord, probe: bool = False) -> Extractor:
        """The model version's encoder, or its probe, with its relation classifier if it has one."""
        states = self._shared_states() if probe else None
        with self._models_lock:
            cached = self._models.get((record.project, probe))
            if cached is None or cached[0] != record.version:
                started = time.perf_counter()
                model: Extractor = ProbeTagger.load(record.path / PROBE_DIR, states) if states \
                    else EncoderTagger.load(record.path)
                if (record.path / RELATIONS_DIR).is_dir():
                    model = SpansThenRelations(model, RelationClassifier.load(record.path / RELATIONS_DIR))
                cached = (record.version, model)
                self._models[(record.project, probe)] = cached
                self.metrics.observe("model_load", time.perf_counter() - started)
            return cached[1]

    def _gated(self, record: ModelRecord, strategy: Strategy) -> Extractor:
        """Filter-then-probe over the model version's encoder and probe (loaded once each), with
        its relation classifier if it has one."""
        encoder, probe = self._model(record), self._model(record, probe=True)
        if not isinstance(encoder, SpansThenRelations):
            return FilterThenProbe(encoder, probe, strategy.band)
        assert isinstance(probe, SpansThenRelations)  # both were loaded with the version's relation classifier
        return SpansThenRelations(FilterThenProbe(encoder.spans, probe.spans, strategy.band), encoder.relations)

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
        serving = self._extractor(project, schema)
        budget = self.settings.predict_budget_seconds
        chunk_size = 1 if serving.uses_llm else PREDICT_CHUNK
        answering = serving

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
        return {"results": results, "model_version": serving.version}

    def _predict_chunk(self, tasks: list[Any], schema: Schema,
                       serving: Serving) -> tuple[list[dict[str, Any]], Serving]:
        docs: list[list[Document] | None] = []
        for task in tasks:
            try:
                docs.append([task_to_document(task, control) for control in schema.span_controls])
            except Exception as e:
                docs.append(None)
                self._task_error(task, "read", e)
        predicted, serving = self._run_model(serving, tasks, docs)
        if serving.calibrator is not None:  # the score Label Studio sorts tasks by means "chance it is right"
            predicted = [None if p is None else calibrate_documents(p, serving.calibrator) for p in predicted]

        results = []
        for task, task_docs in zip(tasks, predicted):
            result: list[dict[str, Any]] = []
            scores: list[float] = []
            if task_docs is not None:
                try:
                    for control, doc in zip(schema.span_controls, task_docs):
                        # Each control gets its own labels only; a label since removed from the
                        # config is not resurrected by a model trained before.
                        own = [s for s in doc.entities if s.label in control.label_names]
                        ids = {s.id for s in own}
                        relations = [r for r in doc.relations if r.label in schema.relation_label_names
                                     and r.head in ids and r.tail in ids]
                        items, _ = document_to_result(doc.with_annotations(own, relations), control,
                                                      schema.relation_label_names)
                        result.extend(items)
                        scores.extend(item["score"] for item in items if item["type"] == "labels" and "score" in item)
                except Exception as e:
                    result, scores = [], []
                    self._task_error(task, "convert", e)
            entry: dict[str, Any] = {"result": result, "model_version": serving.version}
            if scores:
                entry["score"] = round(sum(scores) / len(scores), 4)
            results.append(entry)
        return results, serving

    def _extractor(self, project: str, schema: Schema) -> Serving:
        """The serving strategy's extractor for this project, the model version it answers as,
        the calibrator of its span scores (fitted when it was selected), and the trained encoder
        to fall back on when the strategy uses the LLM and the LLM fails."""
        record = self._encoder_record(project)
        if record is None and self.settings.strategy == "encoder":
            return Serving(NO_MODEL_VERSION, None, None, None)
        strategy = self._selected(record)
        version = self._version(record, strategy, project)
        selection = (record.info.get("selection") or {}) if record is not None else {}
        calibrator = calibrator_from_dict(selection["calibrator"]) \
            if selection.get("calibrator") and selection.get("strategy") == strategy.name else None
        if strategy.kind == "encoder" and record is not None:
            return Serving(version, self._model(record), calibrator, None)
        fallback = Serving(record.version, self._model(record), None, None) if record is not None else None
        if strategy.kind == "probe" and record is not None:
            return Serving(version, self._model(record, probe=True), calibrator, fallback)
        if strategy.kind == "gated" and record is not None:
            return Serving(version, self._gated(record, strategy), calibrator, fallback)
        return Serving(version, self._with_demos(project, schema, record, strategy), calibrator, fallback,
                       uses_llm=True)

    def _run_model(self, serving: Serving, tasks: list[Any],
                   docs: list[list[Document] | None]) -> tuple[list[list[Document] | None], Serving]:
        """Predict the chunk at once; if that fails, with the fallback encoder when the LLM was
        involved (its results then carry the encoder's version, so Label Studio asks again once
        the LLM is back), else task by task to isolate the culprit. Returns what answered too."""
        if serving.model is None:
            return [None if d is None else [x.with_annotations(()) for x in d] for d in docs], serving
        try:
            flat = [doc for task_docs in docs if task_docs for doc in task_docs]
            predictions = iter(serving.model.predict(flat))
            return [None if d is None else [next(predictions) for _ in d] for d in docs], serving
        except Exception as e:
            if serving.fallback is not None:
                self.metrics.count("llm_failures")
                log.warning("prediction with the LLM failed (%s); the trained encoder answers", type(e).__name__)
                log.debug("LLM failure", exc_info=e)
                return self._run_model(serving.fallback, tasks, docs)
            log.warning("batch prediction failed (%s); retrying task by task", type(e).__name__)
        out = []
        for task, task_docs in zip(tasks, docs):
            try:
                out.append(None if task_docs is None else serving.model.predict(task_docs))
            except Exception as e:
                out.append(None)
                self._task_error(task, "predict", e)
        return out, serving

    def _task_error(self, task: Any, stage: str, error: Exception) -> None:
        task_id = task.get("id") if isinstance(task, dict) else None
        self.metrics.count("prediction_errors")
        # The exception type, not its message: messages can quote note text.
        log.error("task %s: %s failed: %s", task_id, stage, type(error).__name__)
        log.debug("task %s: %s failed", task_id, stage, exc_info=error)

    # --- annotations and training ---------------------------------------------------------

    def webhook(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Store the event (already validated by the caller) and return at once."""
        action = payload["action"]
        try:
            project = project_key(payload.get("project"))
        except ValueError:  # an event clinie does not act on, about no project it can name
            return {"status": "ok", "action": action, "stored": False}
        if isinstance(payload.get("project"), dict) and payload["project"].get("label_config"):
            self.store.set_label_config(project, payload["project"]["label_config"])
        changed = False
        if action in ANNOTATION_ACTIONS:
            changed = self.store.record_annotation(project, payload["annotation"], payload["task"], action)
            self.metrics.count("annotations_received")
        elif action == "ANNOTATIONS_DELETED":
            changed = bool(self.store.delete_annotations(project, [int(a["id"]) for a in payload["annotations"]]))
            self.metrics.count("annotations_deleted", len(payload["annotations"]))
        if action == "START_TRAINING":
            self.request_training(project)
        elif changed and self.settings.train_every and \
                self.store.changes_since_training(project) >= self.settings.train_every:
            self.request_training(project)
        return {"status": "ok", "action": action, "stored": changed}

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
        if result.stored or result.deleted:
            log.info("project %s: re-sync stored %d annotations webhooks had missed and marked %d deleted",
                     project, result.stored, result.deleted)
        return True

    def _sync_loop(self) -> None:
        """Re-sync every known project at start (what arrived while the backend was down) and
        then every ``sync_every_minutes`` (0: at start only); train where the changes call for it."""
        while not self._stopping.is_set():
            for project in self.store.projects():
                if self.resync(project) and self.settings.train_every and \
                        self.store.changes_since_training(project) >= self.settings.train_every:
                    self.request_training(project)
            self._stopping.wait(self.settings.sync_every_minutes * 60 or None)

    def request_training(self, project: str) -> bool:
        if self.worker is None:
            return False
        return self.worker.request(project)

    def train(self, project: str) -> ModelRecord | None:
        """Re-sync, then train now (in the calling thread); None when there is nothing to train yet."""
        self.resync(project)
        training_id = self.store.begin_training(project)
        if training_id is None:
            log.info("project %s: a training is already running", project)
            return None
        self.metrics.count("trainings_started")
        started = time.perf_counter()
        try:
            record = train_project(self.store, self.settings, project, training_id, llm=lambda: self._shared_llm()[0],
                                   states=self._shared_states)
        except NotEnoughAnnotations as e:
            self.store.fail_training(training_id, str(e))
            self.metrics.count("trainings_skipped")
            log.info("%s", e)
            return None
        except Exception as e:
            self.store.fail_training(training_id, f"{type(e).__name__}: {e}")
            self.metrics.count("trainings_failed")
            log.exception("project %s: training failed; the previous model keeps serving", project)
            return None
        self.metrics.count("trainings_succeeded")
        self.metrics.observe("training", time.perf_counter() - started)
        log.info("project %s: now serving %s (%d examples)", project, record.version, record.n_examples)
        return record

    def health(self) -> dict[str, Any]:
        """``remote_endpoints``: where note text is sent (an OpenAI-compatible LLM, only when
        configured); ``label_studio``: what annotations are re-synced from (read only)."""
        remote = [self.settings.llm_base_url] if self.settings.llm_provider == "openai" else []
        return {"status": "UP", "model_class": "clinie", "clinie_version": __version__,
                "strategy": self.settings.strategy, "remote_endpoints": remote,
                "label_studio": self.settings.label_studio_url or None}

    def metrics_snapshot(self) -> dict[str, Any]:
        snapshot = self.metrics.snapshot()
        snapshot["store"] = {"annotations": self.store.annotation_counts(),
                             "trainings": self.store.training_counts(),
                             "model_versions": len(self.store.models())}
        return snapshot
