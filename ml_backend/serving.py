"""Which model version and strategy answer a project's /predict, and the models they load.

One ``Serving`` per process holds what is expensive: every model version's parts loaded once
(``clinie.strategies.PARTS``), the one LLM with its embedder and call cache, the hidden states
the probe reads, and each project's assembled extractor until its version, strategy or (for the
strategies that prompt the LLM with the annotations as demonstrations) its annotations change.

A serving version whose files cannot be loaded (missing, or not matching the checksums its
manifest lists: ``clinie.model_version``) would fail every /predict of its project until the next
training: the newest registered version before it serves instead. Versions are read from the
models location (``ml_backend.model_store``), so any replica serves what any worker trained.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, NamedTuple

from clinie import __version__
from clinie.core import Document, Extractor, LabelSpec, Schema
from clinie.evaluation.calibration import Calibrator, calibrator_from_dict
from clinie.evaluation.thresholds import Thresholds
from clinie.extractors.relation_classifier import RELATIONS_DIR, RelationClassifier
from clinie.llm import make_llm
from clinie.llm.cache import CallCache
from clinie.llm.hidden import HiddenStates
from clinie.model_version import MAIN_PART, DamagedModel, ModelVersion
from clinie.retrieval import Embedder
from clinie.selection import candidates, probe_states, span_specs
from clinie.settings import Settings
from clinie.strategies import PARTS, LLMAccess, Strategy, assemble, model_version, parse_strategies
from ml_backend.annotations import annotated_documents
from ml_backend.metrics import Metrics
from ml_backend.model_store import ModelStore
from ml_backend.store import AnnotationStore, ModelRecord

log = logging.getLogger(__name__)

MB = 1_000_000

#: The version Label Studio sees while a project has no trained model: its predictions are empty.
NO_MODEL_VERSION = f"clinie-{__version__}-no-model-yet"


class DamagedVersion(RuntimeError):
    """A model version's saved files could not be loaded (deleted, truncated, corrupt)."""

    def __init__(self, record: ModelRecord) -> None:
        super().__init__(f"model version {record.version} cannot be loaded")
        self.record = record


class SharedModelUnavailable(RuntimeError):
    """A model every version reads (the LLM whose hidden states the probe reads) could not be
    loaded: no version is damaged by that, so none is skipped for it."""


class Predictor(NamedTuple):
    """What answers a project's /predict, and as which model version."""

    version: str
    model: Extractor | None
    calibrator: Calibrator | None
    fallback: Predictor | None  # the trained encoder, when ``model`` reads more than it and the version has one
    uses_llm: bool = False
    thresholds: Thresholds | None = None  # the least score of a region shown, per label (precision first)


class Serving:
    def __init__(self, settings: Settings, store: AnnotationStore, models: ModelStore, metrics: Metrics) -> None:
        self.settings = settings
        self.store = store
        self.models = models
        self.metrics = metrics
        self._loaded: dict[tuple[str, str], tuple[str, Any]] = {}  # (project, part) -> (version, model)
        self._assembled: dict[str, tuple[str, Extractor]] = {}  # project -> (revision, extractor)
        self._lock = threading.RLock()  # re-entered: loading the probe loads the hidden states
        self._llm_access: LLMAccess | None = None
        self._states: HiddenStates | None = None
        self.llm_cache = CallCache(settings.llm_cache_path, max_bytes=settings.llm_cache_mb * MB)
        self._damaged: set[str] = set()  # versions that failed to load: skipped until pruned

    # --- which strategy, as which version -------------------------------------------------

    def _record(self, project: str) -> ModelRecord | None:
        """The trained model version that serves ``project`` under the configured strategy, if any:
        the registered serving one or, once that failed to load, the newest registered one that
        has not."""
        if self.settings.strategy == "llm":
            return None
        record = self.store.serving_model(project)
        if record is None or record.version not in self._damaged:
            return record
        return next((m for m in reversed(self.store.models(project)) if m.version not in self._damaged), None)

    def _strategy(self, project: str, record: ModelRecord | None) -> Strategy | None:
        """The strategy that serves: under ``auto``, the one selection chose with this model
        version, else the encoder once trained, else the cold-start policy's for the project's
        annotations so far (``llm``, ``verified``, or none); otherwise the one configured. None when nothing may answer
        before a trained model and there is none yet."""
        if self.settings.strategy != "auto":
            name = self.settings.strategy
        elif record is not None:
            name = (record.info.get("selection") or {}).get("strategy") or "encoder"
        elif (name := self.settings.cold_start_policy(self.store.count_training_examples(project))) == "none":
            return None
        strategy = parse_strategies(name, k=self.settings.llm_k)[0]
        if record is None:
            return None if strategy.kind.needs_training else strategy
        version = self._opened(record)
        if any(not version.has(PARTS[part].directory) for part in strategy.kind.saved_parts):
            return Strategy("encoder")  # a strategy configured that this version was not trained for
        return strategy

    def _opened(self, record: ModelRecord) -> ModelVersion:
        """The version's manifest (``DamagedVersion`` when it has none that can be read; a bucket
        out of reach is not a damaged version, and its error goes to the caller)."""
        try:
            return self.models.open(record.location)
        except DamagedModel as e:
            raise DamagedVersion(record) from e

    def _version(self, project: str, record: ModelRecord | None, strategy: Strategy) -> str:
        pool = self.store.count_training_examples(project) if strategy.kind.reads_llm else 0
        return model_version(strategy, trained=record.version if record else None, llm_name=self.settings.llm_name,
                             pool=pool)

    def forget_read_text(self) -> None:
        """After a deletion: clear what holds traces of any note read — the LLM call cache (it
        cannot say which task a call read) and the probe's cached hidden states."""
        self.llm_cache.clear()
        HiddenStates.forget_all()

    def forget(self, project: str, versions: Collection[str] | None = None) -> None:
        """Drop what is loaded for a deleted project (its models learned from its notes), or
        only of its model ``versions`` that were pruned (their memory; nothing serves them again)."""

        def gone(version: str) -> bool:
            return versions is None or version in versions

        with self._lock:
            if (assembled := self._assembled.get(project)) and gone(assembled[0].split("|", 1)[0]):
                del self._assembled[project]
            for key in [key for key, (version, _) in self._loaded.items() if key[0] == project and gone(version)]:
                del self._loaded[key]
            self._damaged.difference_update(versions or ())

    def forget_gone(self, projects: Collection[str]) -> list[str]:
        """``forget`` every project loaded here that is no longer among ``projects`` (purged
        through another replica); returns them."""
        with self._lock:
            loaded = {project for project, _ in self._loaded} | set(self._assembled)
        gone = sorted(loaded - set(projects))
        for project in gone:
            self.forget(project)
        return gone

    def model_version(self, project: str) -> str:
        """The version ``predictor`` would answer as, without loading any model."""
        record, strategy = self._serving(project)
        return NO_MODEL_VERSION if strategy is None else self._version(project, record, strategy)

    def strategy(self, project: str) -> Strategy | None:
        """The strategy that answers ``project`` now (a cold-start policy's included); None while
        nothing is shown: what a new version must not fall below (``select_strategy``)."""
        return self._serving(project)[1]

    def _serving(self, project: str) -> tuple[ModelRecord | None, Strategy | None]:
        while True:  # as ``predictor``: a version whose manifest cannot be read is set aside
            record = self._record(project)
            try:
                return record, self._strategy(project, record)
            except DamagedVersion as e:
                self._set_aside(e)

    # --- what answers ---------------------------------------------------------------------

    def predictor(self, project: str, schema: Schema) -> Predictor:
        """The serving strategy's extractor for this project, the model version it answers as,
        the calibrator of its span scores (fitted when it was selected), and the trained encoder
        to fall back on when the strategy reads more than the encoder and that fails. A version
        that cannot be loaded is set aside (``_damaged``) and the one before it tried."""
        while True:  # each pass sets aside one more of the project's finitely many versions
            record = self._record(project)
            try:
                return self._predictor(project, schema, record)
            except DamagedVersion as e:
                self._set_aside(e)

    def predictor_of(self, record: ModelRecord, schema: Schema) -> Predictor:
        """What answers as ``record`` under its own selection, whether it serves or not: a bench
        compares the versions a training served."""
        return self._predictor(record.project, schema, record)

    def _set_aside(self, damaged: DamagedVersion) -> None:
        """Serve ``damaged.record``'s project from an earlier version from now on (logged and
        counted as ``model_fallbacks``: the directory needs looking at, or a new training)."""
        record = damaged.record
        with self._lock:
            self._damaged.add(record.version)
        self.metrics.count("model_fallbacks")
        log.warning("project %s: model version %s cannot be loaded (%s in %s); the version registered before it "
                    "serves until the next training", record.project, record.version,
                    type(damaged.__cause__).__name__, record.location)

    def _predictor(self, project: str, schema: Schema, record: ModelRecord | None) -> Predictor:
        strategy = self._strategy(project, record)
        if strategy is None:
            return Predictor(NO_MODEL_VERSION, None, None, None)
        selection = (record.info.get("selection") or {}) if record is not None else {}
        chosen = selection.get("strategy") == strategy.name
        calibrator = calibrator_from_dict(selection["calibrator"]) if chosen and selection.get("calibrator") else None
        thresholds = _thresholds(self.settings.min_precision, selection if chosen else {}, record)
        model = self._assembled_model(project, schema, record, strategy)
        fallback = None
        if record is not None and strategy.kind.beyond_encoder and self._opened(record).has(MAIN_PART):
            encoder = assemble(Strategy("encoder"), _VersionParts(self, record, [], []), (),
                               lambda: self._relation_classifier(record))
            fallback = Predictor(record.version, encoder, None, None)
        return Predictor(self._version(project, record, strategy), model, calibrator, fallback,
                         uses_llm=strategy.kind.reads_llm, thresholds=thresholds)

    def _assembled_model(self, project: str, schema: Schema, record: ModelRecord | None,
                         strategy: Strategy) -> Extractor:
        """``strategy`` built from the version's parts; a strategy that prompts the LLM takes the
        annotations as of now as its demonstrations (a new one joins the pool at once)."""
        revision = f"{record and record.version}|{strategy.name}|{hash(schema)}"
        if strategy.kind.reads_llm:
            revision += f"|{self.store.revision(project)}"
        with self._lock:
            cached = self._assembled.get(project)
        if cached is None or cached[0] != revision:
            demos = annotated_documents(self.store, project, schema).docs if strategy.kind.reads_llm else []
            model = assemble(strategy, _VersionParts(self, record, span_specs(schema), demos), schema.relation_labels,
                             lambda: self._relation_classifier(record))
            cached = (revision, model)
            with self._lock:
                self._assembled[project] = cached
        return cached[1]

    def _relation_classifier(self, record: ModelRecord | None) -> Extractor | None:
        """The version's relation classifier, if it has one."""
        if record is None or not (version := self._opened(record)).has(RELATIONS_DIR):
            return None
        return self._load(record, RELATIONS_DIR,
                          lambda: RelationClassifier.load(self.models.local(version, RELATIONS_DIR)))

    def _part(self, record: ModelRecord, name: str) -> Extractor:
        part, version = PARTS[name], self._opened(record)
        return self._load(record, name, lambda: part.load(self.models.local(version, part.directory),
                                                          self._shared_states))

    def _load(self, record: ModelRecord, name: str, load: Callable[[], Any]) -> Any:
        """``load()`` once per model version and part (concurrent requests wait for the one load).
        ``DamagedVersion`` when it fails for want of the version's own files."""
        with self._lock:
            cached = self._loaded.get((record.project, name))
            if cached is None or cached[0] != record.version:
                started = time.perf_counter()
                try:
                    model = load()
                except SharedModelUnavailable:
                    raise
                except Exception as e:
                    raise DamagedVersion(record) from e
                cached = self._loaded[(record.project, name)] = (record.version, model)
                self.metrics.observe("model_load", time.perf_counter() - started)
            return cached[1]

    def _shared_states(self) -> HiddenStates:
        """``states()`` for loading a part: when they fail, the LLM is at fault, not the version."""
        try:
            return self.states()
        except Exception as e:
            raise SharedModelUnavailable(f"the probe's LLM could not be loaded ({type(e).__name__})") from e

    # --- the shared models ----------------------------------------------------------------

    def llm_access(self) -> LLMAccess:
        """The one LLM of the process, with its embedder and call cache (trainings use it too)."""
        with self._lock:
            if self._llm_access is None:
                started = time.perf_counter()
                self._llm_access = LLMAccess(make_llm(self.settings.llm_options()), Embedder(), self.llm_cache,
                                             guided=bool(self.settings.llm_guided))
                self.metrics.observe("model_load", time.perf_counter() - started)
            return self._llm_access

    def states(self) -> HiddenStates:
        """The hidden states the probe reads: one model per process, for trainings and /predict."""
        with self._lock:
            if self._states is None:
                started = time.perf_counter()
                self._states = probe_states(self.settings)
                self.metrics.observe("model_load", time.perf_counter() - started)
            return self._states

    def warm_up(self) -> None:
        """Load, once at start, what the first requests would wait for (Label Studio's opening a
        task waits on /predict): every project's serving parts (the relation classifier too, when
        the strategy asks it for the relations) and the LLM a project's cold-start policy prompts."""
        for project in self.store.projects():
            record = self._record(project)
            try:
                if (strategy := self._strategy(project, record)) is None:
                    continue
                if record is None:  # a cold-start policy
                    if strategy.kind.reads_llm:
                        self.llm_access()
                    continue
                encoder = ("encoder",) if self._opened(record).has(MAIN_PART) else ()
                for part in dict.fromkeys((*encoder, *strategy.kind.saved_parts)):
                    self._part(record, part)
                if not strategy.kind.relations_by_llm:
                    self._relation_classifier(record)
            except DamagedVersion as e:
                self._set_aside(e)
            except Exception as e:  # the first /predict will say so again, per task
                log.warning("project %s: could not load %s: %s", project, record and record.version,
                            type(e).__name__)

    def warm_up_trainings(self) -> None:
        """Load the probe's LLM when the selection compares strategies that read it: loading
        dequantizes it, seconds a first training would otherwise spend before its first fit."""
        if self.settings.strategy == "auto" and any("probe" in s.kind.parts for s in candidates(self.settings)):
            self.states()

def _thresholds(min_precision: float, selection: dict[str, Any], record: ModelRecord | None) -> Thresholds | None:
    """The precision-first thresholds a version's regions (chosen with the ``selection`` it serves
    under) and relations (chosen when its relation classifier was trained) are shown from; None
    when ``CLINIE_MIN_PRECISION`` is 0 or none were chosen (every region shown)."""
    spans = (selection.get("thresholds") or {}).get("spans") or {}
    relations = (record.info.get("relation_thresholds") if record is not None else None) or {}
    return Thresholds(min_precision, spans, relations) if min_precision > 0 and (spans or relations) else None


@dataclass
class _VersionParts:
    """A model version's saved parts, and the project's annotations (``clinie.strategies.Parts``)."""

    serving: Serving
    record: ModelRecord | None
    label_specs: list[LabelSpec]
    demos: list[Document]

    def part(self, name: str) -> Extractor:
        if self.record is None:
            raise ValueError(f"the {name} part needs a trained model version")
        return self.serving._part(self.record, name)

    def llm_access(self) -> LLMAccess:
        return self.serving.llm_access()

