"""The ways clinie pre-annotates, each registered once: selection, training, serving, the command
line and the benches all go through this registry.

A *kind* (``encoder``, ``probe``, ``gated``, ``llm``, ``verified``, ``rerank``, ``student``,
``distilled``) says what it is assembled from (the *parts* it reads: the fine-tuned encoder, the
probe on the local LLM's hidden states, the students) and whether it sends text to the LLM; a
*strategy* is a kind with its parameter, named as on the command line and in
``CLINIE_SELECT_STRATEGIES``: ``llm-k5`` (five retrieved demonstrations), ``gated-0.80`` (the
probe reads the sentences where the encoder's confidence is below 0.80), ``rerank-0.80`` (the LLM
decides those sentences' spans), ``verified-k5`` (the spans of ``llm-k5`` that the LLM confirms
on a second look),
``student-0.90`` (an encoder trained on the annotations and on the unannotated sentences the
probe labels with a confidence of at least 0.90), ``distilled`` (an encoder trained on the
annotations and on every unannotated sentence as the probe reads it: each word's distribution of
tags, its doubts included).

A strategy is built from ``Parts``: in cross-validation and studies the parts fitted on a fold's
training set (``StrategyBuilder``); when serving, a model version's saved parts and the project's
annotations as demonstrations (``ml_backend.serving``). Adding a kind is one function decorated
with ``register`` and, if it needs one, its extractor — in clinie, or in a package of its own
through the ``clinie.strategies`` entry points (docs/extending.md); a new part is one entry in
``PARTS``.

    >>> [s.name for s in parse_strategies("encoder,probe,llm,rerank")]
    ['encoder', 'probe', 'llm-k5', 'rerank-0.70', 'rerank-0.80', 'rerank-0.90']
    >>> [s.name for s in parse_strategies("gated,gated-0.95")]
    ['gated-0.70', 'gated-0.80', 'gated-0.90', 'gated-0.95']
    >>> parse_strategies("llm-k2,rerank-0.85")[1].band
    (0.0, 0.85)
    >>> Strategy.parse("gated-0.90").kind.saved_parts
    ('probe',)
    >>> [(s.name, s.threshold) for s in parse_strategies("student,student-0.50")]
    [('student-0.90', 0.9), ('student-0.50', 0.5)]
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

from clinie.core import Document, Extractor, LabelSpec, RelationSpec, sentence_documents
from clinie.extractors.base import SpansThenRelations
from clinie.extractors.encoder import EncoderTagger
from clinie.extractors.gated import Gated
from clinie.extractors.llm import LLMTagger
from clinie.extractors.probe import ProbeTagger
from clinie.extractors.relation_llm import LLMRelationExtractor
from clinie.extractors.rerank import Rerank
from clinie.extractors.verify import Verified
from clinie.llm.base import LLM
from clinie.llm.cache import CallCache
from clinie.llm.hidden import HiddenStates
from clinie.retrieval import Embedder

_T = TypeVar("_T")

DEFAULT_K = 5
DEFAULT_BANDS = (0.7, 0.8, 0.9)
#: The teacher's confidence a sentence needs to teach a student. One default, not a band per
#: value: every threshold costs an encoder training per fold.
DEFAULT_THRESHOLD = 0.9

# --- parts: what strategies are assembled from ----------------------------------------------


class FittedPart(Extractor, Protocol):
    """A fitted part: an extractor that saves itself into a model version's directory."""

    def save(self, directory: Path) -> Any: ...


@dataclass(frozen=True)
class Part:
    """A model a strategy reads, fitted on the annotations (and, if ``unannotated``, on the
    builder's unannotated documents) for a strategy, whose parameter it may take, and saved in a
    model version: in ``directory`` of it (``""``: the version's directory itself, which is the
    encoder's)."""

    directory: str
    fit: Callable[[StrategyBuilder, Sequence[Document], Strategy], FittedPart]
    load: Callable[[Path, Callable[[], HiddenStates]], FittedPart]
    unannotated: bool = False


PARTS: dict[str, Part] = {
    "encoder": Part("", fit=lambda build, docs, s: build.encoder(docs),
                    load=lambda directory, states: EncoderTagger.load(directory)),
    "probe": Part("probe", fit=lambda build, docs, s: build.probe(docs),
                  load=lambda directory, states: ProbeTagger.load(directory, states())),
    "student": Part("student", fit=lambda build, docs, s: build.student(docs, s.threshold),
                    load=lambda directory, states: EncoderTagger.load(directory), unannotated=True),
    "distilled": Part("distilled", fit=lambda build, docs, s: build.distilled(docs),
                      load=lambda directory, states: EncoderTagger.load(directory), unannotated=True),
}


@dataclass
class LLMAccess:
    """The LLM, the embedder that retrieves its demonstrations and the call cache: the one place
    that builds the extractors that prompt it."""

    llm: LLM
    embedder: Embedder
    cache: CallCache | None = None
    guided: bool = False

    def tagger(self, specs: Sequence[LabelSpec], k: int, demos: Sequence[Document]) -> LLMTagger:
        """Word/TAG prompting with ``k`` demonstrations retrieved from ``demos`` (none: zero-shot)."""
        return LLMTagger(specs, self.llm, k=k if demos else 0, embedder=self.embedder, guided=self.guided,
                         cache=self.cache).fit(demos)

    def rerank(self, encoder: EncoderTagger, specs: Sequence[LabelSpec], band: tuple[float, float],
               demos: Sequence[Document]) -> Rerank:
        """The trained ``encoder``, the LLM choosing the spans of the sentences in ``band``."""
        return Rerank(encoder, self.llm, specs, band=band, embedder=self.embedder, guided=self.guided,
                      cache=self.cache).fit(demos, refit_encoder=False)

    def verified(self, specs: Sequence[LabelSpec], k: int, demos: Sequence[Document]) -> Verified:
        """The word/TAG tagger's spans that the LLM confirms on a second look, scored by it."""
        return Verified(self.tagger(specs, k, demos), self.llm, specs, guided=self.guided, cache=self.cache)

    def relations(self, specs: Sequence[RelationSpec], k: int, demos: Sequence[Document], *,
                  listed: bool = False) -> LLMRelationExtractor:
        """One multiple-choice question per candidate pair, ``k`` demonstrations each."""
        return LLMRelationExtractor(specs, self.llm, k=k if demos else 0, embedder=self.embedder,
                                    guided=self.guided, cache=self.cache).fit(demos, listed=listed)


class Parts(Protocol):
    """What a strategy is assembled from: fitted on a fold's training set, or loaded to serve."""

    # read-only (an attribute or a property provides them)
    @property
    def label_specs(self) -> Sequence[LabelSpec]: ...

    @property
    def demos(self) -> Sequence[Document]: ...  # the annotations it learns from (and the LLM's demonstration pool)

    def part(self, name: str) -> Any: ...

    def llm_access(self) -> LLMAccess: ...


# --- kinds ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Kind:
    """A way to pre-annotate, registered once by name."""

    name: str
    #: none; ``k`` demonstrations; a ``band`` of the encoder's confidence; a confidence ``threshold``
    param: Literal["", "k", "band", "threshold"]
    parts: tuple[str, ...]  # the fitted parts it reads (``PARTS``)
    reads_llm: bool  # sends text to the LLM: served one task at a time, the encoder answering if it fails
    build: Callable[[Parts, Strategy], Extractor]
    #: the model version Label Studio sees, from ``model`` (the trained version's name: a kind
    #: that saves parts serves from a version of its own, named for it), ``llm`` (the LLM's
    #: provider and model), ``name`` (the strategy's), ``k`` and ``pool`` (the annotations: a new
    #: one makes Label Studio ask again when they are the LLM's demonstrations)
    version: str
    relations_by_llm: bool = False  # relations asked of the LLM, not the version's classifier

    @property
    def saved_parts(self) -> tuple[str, ...]:
        """The parts saved beside the encoder in a model version that serves this kind."""
        return tuple(part for part in self.parts if PARTS[part].directory)

    @property
    def needs_training(self) -> bool:
        """Serves only from a trained model version."""
        return bool(self.parts)

    @property
    def beyond_encoder(self) -> bool:
        """Reads more than the encoder, which then stands by in case that fails."""
        return self.reads_llm or bool(self.saved_parts)

    @property
    def learns_from_unannotated(self) -> bool:
        """A part it reads is fitted on unannotated documents too."""
        return any(PARTS[part].unannotated for part in self.parts)

    def forms(self) -> list[str]:
        return [self.name] + {"": [], "k": [f"{self.name}-kN"], "band": [f"{self.name}-0.NN"],
                              "threshold": [f"{self.name}-0.NN"]}[self.param]


#: The entry-point group of strategy kinds from other packages (a module whose import registers
#: them: see docs/extending.md).
ENTRY_POINTS = "clinie.strategies"

_KINDS: dict[str, Kind] = {}
_lock = threading.RLock()  # a module an entry point names may look kinds up as it registers
_loaded = False


def register(name: str, param: Literal["", "k", "band", "threshold"] = "", *, parts: tuple[str, ...],
             reads_llm: bool, version: str = "{model}", relations_by_llm: bool = False,
             ) -> Callable[[Callable[[Parts, Strategy], Extractor]], Callable[[Parts, Strategy], Extractor]]:
    """Register the decorated ``build(parts, strategy) -> Extractor`` as kind ``name`` (see ``Kind``)."""
    if name in _KINDS or not re.fullmatch(r"[a-z]+", name):
        raise ValueError(f"strategy kind {name!r} is taken or not a lower-case word")
    if unknown := set(parts) - set(PARTS):
        raise ValueError(f"strategy kind {name!r} reads parts there are none of: {sorted(unknown)}")

    def add(build: Callable[[Parts, Strategy], Extractor]) -> Callable[[Parts, Strategy], Extractor]:
        _KINDS[name] = Kind(name, param, parts=parts, reads_llm=reads_llm, build=build, version=version,
                            relations_by_llm=relations_by_llm)
        return build

    return add


def kinds() -> dict[str, Kind]:
    """Every kind: clinie's own and those the installed packages' entry points add (loaded once)."""
    global _loaded
    with _lock:
        if not _loaded:
            _loaded = True
            for entry in entry_points(group=ENTRY_POINTS):
                entry.load()
        return dict(_KINDS)


@dataclass(frozen=True)
class Strategy:
    """A kind with its parameter: ``k`` demonstrations, the ``band`` of the encoder's
    confidence whose sentences the probe (``gated``) or the LLM (``rerank``) takes over, or the
    teacher's confidence ``threshold`` a sentence needs to teach the ``student``."""

    kind_name: str
    k: int = 0
    band: tuple[float, float] = (0.0, 0.0)
    threshold: float = 0.0

    def __post_init__(self) -> None:
        if self.kind_name not in kinds():
            raise ValueError(f"unknown strategy kind {self.kind_name!r}")

    @property
    def kind(self) -> Kind:
        return _KINDS[self.kind_name]

    @property
    def name(self) -> str:
        param = self.kind.param
        return {"": self.kind_name, "k": f"{self.kind_name}-k{self.k}",
                "band": f"{self.kind_name}-{self.band[1]:.2f}",
                "threshold": f"{self.kind_name}-{self.threshold:.2f}"}[param]

    @property
    def uses_llm(self) -> bool:
        return self.kind.reads_llm

    @classmethod
    def parse(cls, name: str) -> Strategy:
        for strategy in parse_strategies(name):
            return strategy
        raise ValueError(f"no strategy in {name!r}")

    def build(self, parts: Parts) -> Extractor:
        return self.kind.build(parts, self)


def _with_value(kind: str, value: float) -> Strategy:
    """``kind`` with ``value`` as its band's upper bound or its threshold."""
    return Strategy(kind, band=(0.0, value)) if _KINDS[kind].param == "band" else Strategy(kind, threshold=value)


def parse_strategies(text: str, k: int = DEFAULT_K, bands: Sequence[float] = DEFAULT_BANDS) -> list[Strategy]:
    """Comma-separated names: a kind alone takes its defaults (``k`` demonstrations; each of
    ``bands``; ``DEFAULT_THRESHOLD``), ``llm-kN``, ``gated-0.NN`` and ``student-0.NN`` name one."""
    out: list[Strategy] = []
    known = kinds()
    for name in (part.strip() for part in text.split(",") if part.strip()):
        if (kind := known.get(name)) is not None:
            out.extend([Strategy(name)] if kind.param == "" else [Strategy(name, k=k)] if kind.param == "k"
                       else [_with_value(name, v) for v in (bands if kind.param == "band" else [DEFAULT_THRESHOLD])])
        elif (m := re.fullmatch(r"([a-z]+)-k(\d+)", name)) and m.group(1) in known and known[m.group(1)].param == "k":
            out.append(Strategy(m.group(1), k=int(m.group(2))))
        elif (m := re.fullmatch(r"([a-z]+)-(0?\.\d+|1(?:\.0+)?)", name)) and m.group(1) in known \
                and known[m.group(1)].param in ("band", "threshold"):
            out.append(_with_value(m.group(1), float(m.group(2))))
        else:
            raise ValueError(f"unknown strategy {name!r}: use {strategy_forms()}")
    if len({s.name for s in out}) != len(out):
        raise ValueError(f"strategies repeat in {text!r}")
    return out


def assemble(strategy: Strategy, parts: Parts, relation_specs: Sequence[RelationSpec],
             trained_relations: Callable[[], Extractor | None], *, listed: bool = False) -> Extractor:
    """``strategy`` built from ``parts``, followed by what finds relations between its spans: the
    LLM's questions when the kind asks them of the LLM (and there are relation labels), else the
    trained relation classifier, if ``trained_relations()`` gives one (``SpansThenRelations``)."""
    model = strategy.build(parts)
    relations: Extractor | None
    if strategy.kind.relations_by_llm:
        relations = parts.llm_access().relations(relation_specs, strategy.k, parts.demos, listed=listed) \
            if relation_specs else None
    else:
        relations = trained_relations()
    return model if relations is None else SpansThenRelations(model, relations)


#: The kinds selection and ``clinie fewshot`` compare when not told which, in this order (the
#: first is the likeliest winner where none is preferred: ``clinie.selection.staged``).
DEFAULT_CANDIDATES = ("encoder", "gated", "probe", "llm", "rerank")


def default_candidates(*, prompted: bool = True) -> str:
    """``DEFAULT_CANDIDATES`` as a strategy list, less the kinds that send text to the LLM
    unless ``prompted`` (with the embedded LLM, whose prompted answers never beat the encoder).

    >>> default_candidates(), default_candidates(prompted=False)
    ('encoder,gated,probe,llm,rerank', 'encoder,gated,probe')
    """
    known = kinds()
    return ",".join(name for name in DEFAULT_CANDIDATES if prompted or not known[name].reads_llm)


def strategy_forms() -> str:
    """How strategies are named: ``encoder, probe, gated, gated-0.NN, …``."""
    forms = [form for kind in kinds().values() for form in kind.forms()]
    return f"{', '.join(forms[:-1])} or {forms[-1]}"


def model_version(strategy: Strategy, *, trained: str | None, llm_name: str, pool: int) -> str:
    """The version Label Studio sees for ``strategy`` (see ``Kind.version``)."""
    return strategy.kind.version.format(model=trained, llm=llm_name, name=strategy.name,
                                        k=strategy.k if pool else 0, pool=pool)


def _extractor(parts: Parts, name: str) -> Extractor:
    """The fitted part ``name``, one that predicts on its own."""
    part: Extractor = parts.part(name)
    return part


@register("encoder", parts=("encoder",), reads_llm=False)
def _encoder(parts: Parts, strategy: Strategy) -> Extractor:
    return _extractor(parts, "encoder")


@register("probe", parts=("probe",), reads_llm=False)
def _probe(parts: Parts, strategy: Strategy) -> Extractor:
    return _extractor(parts, "probe")


@register("gated", "band", parts=("encoder", "probe"), reads_llm=False)
def _gated(parts: Parts, strategy: Strategy) -> Extractor:
    return Gated(parts.part("encoder"), parts.part("probe"), band=strategy.band)


@register("llm", "k", parts=(), reads_llm=True, relations_by_llm=True, version="clinie-llm-{llm}-k{k}-pool{pool}")
def _llm(parts: Parts, strategy: Strategy) -> Extractor:
    return parts.llm_access().tagger(parts.label_specs, strategy.k, parts.demos)


@register("verified", "k", parts=(), reads_llm=True, relations_by_llm=True,
          version="clinie-llm-{llm}-verified-k{k}-pool{pool}")
def _verified(parts: Parts, strategy: Strategy) -> Extractor:
    return parts.llm_access().verified(parts.label_specs, strategy.k, parts.demos)


@register("rerank", "band", parts=("encoder",), reads_llm=True, version="{model}-{name}-pool{pool}")
def _rerank(parts: Parts, strategy: Strategy) -> Extractor:
    return parts.llm_access().rerank(parts.part("encoder"), parts.label_specs, strategy.band, parts.demos)


@register("student", "threshold", parts=("student",), reads_llm=False)
def _student(parts: Parts, strategy: Strategy) -> Extractor:
    return _extractor(parts, "student")


@register("distilled", parts=("distilled",), reads_llm=False)
def _distilled(parts: Parts, strategy: Strategy) -> Extractor:
    return _extractor(parts, "distilled")


# --- fitting: the parts of one training set --------------------------------------------------


class StrategyBuilder:
    """Fits strategies for a whole cross-validation or study: the encoder is fine-tuned once per
    training set and shared by ``encoder`` and every ``rerank`` and ``gated`` band, the probe by
    ``probe``, every ``gated`` band and, as their teacher, every ``student`` and ``distilled``
    (it labels the ``unannotated`` documents' sentences once per training set); the LLM, the
    embedder and the hidden states the probe reads are loaded once, on first use; LLM answers go
    through one call cache, so bands that ask the same question pay for it once.

    Example (not run here: it fine-tunes a model):
        build = StrategyBuilder([LabelSpec("Disease")], llm=lambda: make_llm(settings.llm_options()))
        extractor = build(Strategy("rerank", band=(0.0, 0.8)), train_docs)
        extractor.predict(test_docs)
    """

    def __init__(self, label_specs: Sequence[LabelSpec], *, llm: LLM | Callable[[], LLM] | None = None,
                 embedder: Embedder | None = None, encoder_model: str | None = None,
                 encoder_options: dict[str, Any] | None = None, probe_options: dict[str, Any] | None = None,
                 guided: bool = False, cache: CallCache | None = None,
                 states: HiddenStates | Callable[[], HiddenStates] = HiddenStates.shared,
                 unannotated: Sequence[Document] = ()) -> None:
        self.label_specs = list(label_specs)
        self.labels = [spec.name for spec in self.label_specs]
        self._llm = llm
        self._embedder = embedder
        self.encoder_model = encoder_model
        self.encoder_options = encoder_options or {}
        self.probe_options = probe_options or {}
        self.guided = guided
        self.cache = cache if cache is not None else CallCache(":memory:")
        self._states = states
        #: what a teacher labels for a student: the sentences of the unannotated documents, any
        #: spans they came with dropped
        self.unannotated = [part for doc in unannotated for part in sentence_documents(doc.with_annotations(()))]
        self._fitted: dict[str, tuple[tuple[str, ...], Any]] = {}  # per part, the last training set's

    @property
    def llm(self) -> LLM:
        if self._llm is None:
            raise ValueError("an LLM strategy was asked for but no LLM is configured")
        if not isinstance(self._llm, LLM):
            self._llm = self._llm()
        return self._llm

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            self._embedder = Embedder()
        return self._embedder

    @property
    def states(self) -> HiddenStates:
        """What the probe reads (by default the embedded Gemma's hidden states, loaded on first use)."""
        if not isinstance(self._states, HiddenStates):
            self._states = self._states()
        return self._states

    def _fitted_on(self, part: str, train: Sequence[Document], fit: Callable[[], _T]) -> _T:
        """``fit()``, once per distinct training set in a row: the strategies of one fold share it."""
        key = tuple(d.id for d in train)
        if (cached := self._fitted.get(part)) is None or cached[0] != key:
            cached = self._fitted[part] = (key, fit())
        fitted: _T = cached[1]  # what ``fit`` gave for ``part``
        return fitted

    def probe(self, train: Sequence[Document]) -> ProbeTagger:
        """The probe trained on ``train``."""
        return self._fitted_on("probe", train, lambda: ProbeTagger(self.labels, lambda: self.states,
                                                                   **self.probe_options).fit(train))

    def _new_encoder(self) -> EncoderTagger:
        return EncoderTagger(self.labels, self.encoder_model, **self.encoder_options)

    def encoder(self, train: Sequence[Document]) -> EncoderTagger:
        """The encoder fine-tuned on ``train``."""
        return self._fitted_on("encoder", train, lambda: self._new_encoder().fit(train))

    def taught(self, train: Sequence[Document]) -> list[Document]:
        """The unannotated sentences as the teacher — the probe trained on ``train``, never on
        an annotation it holds out — labels them, each with its confidence (``meta["confidence"]``,
        the least sure word's tag probability) and reading cost (``meta["llm"]``); once per
        training set, for every threshold."""
        return self._fitted_on("teacher", train,
                               lambda: self.probe(train).predict(self.unannotated) if self.unannotated else [])

    def read_unannotated(self, on_read: Callable[[int, int], None] | None = None) -> None:
        """The teacher's reading of the unannotated sentences (an LLM forward pass each), done
        before any teacher labels them: every fold's teacher then labels from the feature cache
        (when it holds them all), sentences an earlier training read cost nothing, and what is a
        training's longest stage reports progress and may stop between two sentences
        (``ProbeTagger.read``)."""
        ProbeTagger(self.labels, lambda: self.states, **self.probe_options).read(self.unannotated, on_read)

    def student(self, train: Sequence[Document], threshold: float) -> EncoderTagger:
        """The encoder fine-tuned on ``train`` and on the sentences its teacher labels with a
        confidence of at least ``threshold`` (``taught``), the annotations kept at least half of
        every epoch (``EncoderTagger.fit``). A sentence the teacher is unsure of is left out
        rather than learnt with its errors; the student serves at the encoder's speed what the
        probe reads at the LLM's. With no sentence to learn from (no unannotated documents, or
        none that sure), it is the encoder trained on ``train``."""
        kept = [d for d in self.taught(train) if d.meta.get("confidence", -1.0) >= threshold]
        if not kept:
            return self.encoder(train)
        return self._fitted_on(f"student-{threshold}", train, lambda: self._new_encoder().fit(train, taught=kept))

    def distilled(self, train: Sequence[Document]) -> EncoderTagger:
        """The encoder fine-tuned on ``train`` and on every unannotated sentence, each word
        learnt as the teacher (the probe trained on ``train``) reads it: its distribution over
        the tags, not the spans of their argmax (``EncoderTagger.fit``'s ``soft``). No sentence
        is dropped and no doubt is stated as sure; the annotations keep at least half of every
        epoch, as for ``student``. With no unannotated documents, it is the encoder."""
        if not self.unannotated:
            return self.encoder(train)

        def fit() -> EncoderTagger:
            read = self.probe(train).predict_words(self.unannotated)
            soft = [{word.start: row for words, rows in pieces for word, row in zip(words, rows)} for pieces in read]
            return self._new_encoder().fit(train, taught=self.unannotated, soft=soft)

        return self._fitted_on("distilled", train, fit)

    def llm_access(self) -> LLMAccess:
        return LLMAccess(self.llm, self.embedder, self.cache, self.guided)

    def __call__(self, strategy: Strategy, train: Sequence[Document]) -> Extractor:
        return strategy.build(_Fitted(self, train, strategy))


@dataclass
class _Fitted:
    """The parts of one training set for ``strategy``, fitted on first use (``Parts``)."""

    builder: StrategyBuilder
    demos: Sequence[Document]
    strategy: Strategy

    @property
    def label_specs(self) -> Sequence[LabelSpec]:
        return self.builder.label_specs

    def part(self, name: str) -> Any:
        return PARTS[name].fit(self.builder, self.demos, self.strategy)

    def llm_access(self) -> LLMAccess:
        return self.builder.llm_access()
