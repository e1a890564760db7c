"""Fitted extractors for the strategies true few-shot selection compares (``clinie.evaluation.fewshot``).

One ``StrategyBuilder`` serves a whole cross-validation or study: the encoder is fine-tuned once
per training set and shared by the ``encoder`` strategy and every ``rerank`` and ``gated`` band,
the probe likewise by ``probe`` and every ``gated`` band; the LLM, the
embedder and the hidden states the probe reads are loaded once, on first use; LLM answers go
through one call cache, so bands that ask the same question pay for it once.

Example (not run here: it fine-tunes a model):
    build = StrategyBuilder([LabelSpec("Disease")], llm=lambda: make_llm(settings))
    extractor = build(Strategy("rerank", band=(0.0, 0.8)), train_docs)
    extractor.predict(test_docs)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from clinie.core import Document, LabelSpec
from clinie.evaluation.fewshot import Strategy
from clinie.extractors.base import Extractor
from clinie.extractors.encoder import EncoderTagger
from clinie.extractors.gated import FilterThenProbe
from clinie.extractors.llm import LLMTagger
from clinie.extractors.probe import ProbeTagger
from clinie.extractors.rerank import FilterThenRerank
from clinie.llm.base import LLM
from clinie.llm.cache import CallCache
from clinie.llm.hidden import HiddenStates
from clinie.retrieval import Embedder


class StrategyBuilder:
    def __init__(self, label_specs: Sequence[LabelSpec], *, llm: LLM | Callable[[], LLM] | None = None,
                 embedder: Embedder | None = None, encoder_model: str | None = None,
                 encoder_options: dict[str, Any] | None = None, guided: bool = False,
                 cache: CallCache | None = None,
                 states: HiddenStates | Callable[[], HiddenStates] = HiddenStates.shared
                 ) -> None:
        self.label_specs = list(label_specs)
        self.labels = [spec.name for spec in self.label_specs]
        self._llm = llm
        self._embedder = embedder
        self.encoder_model = encoder_model
        self.encoder_options = encoder_options or {}
        self.guided = guided
        self.cache = cache if cache is not None else CallCache(":memory:")
        self._states = states
        self._fitted: dict[str, tuple[tuple[str, ...], Any]] = {}  # per model kind, the last training set's

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

    def _fitted_on(self, kind: str, train: Sequence[Document], fit: Callable[[], Any]) -> Any:
        """``fit()``, once per distinct training set in a row: the strategies of one fold share it."""
        key = tuple(d.id for d in train)
        if (cached := self._fitted.get(kind)) is None or cached[0] != key:
            cached = self._fitted[kind] = (key, fit())
        return cached[1]

    def probe(self, train: Sequence[Document]) -> ProbeTagger:
        """The probe trained on ``train``."""
        return self._fitted_on("probe", train, lambda: ProbeTagger(self.labels, lambda: self.states).fit(train))

    def encoder(self, train: Sequence[Document]) -> EncoderTagger:
        """The encoder fine-tuned on ``train``."""
        return self._fitted_on("encoder", train, lambda: EncoderTagger(self.labels, self.encoder_model,
                                                                       **self.encoder_options).fit(train))

    def __call__(self, strategy: Strategy, train: Sequence[Document]) -> Extractor:
        if strategy.kind == "encoder":
            return self.encoder(train)
        if strategy.kind == "probe":
            return self.probe(train)
        if strategy.kind == "llm":
            return LLMTagger(self.label_specs, self.llm, k=strategy.k, embedder=self.embedder,
                             guided=self.guided, cache=self.cache).fit(train)
        if strategy.kind == "rerank":
            return FilterThenRerank(self.encoder(train), self.llm, self.label_specs, band=strategy.band,
                                    embedder=self.embedder, guided=self.guided, cache=self.cache
                                    ).fit(train, refit_encoder=False)
        if strategy.kind == "gated":
            return FilterThenProbe(self.encoder(train), self.probe(train), band=strategy.band)
        raise ValueError(f"unknown strategy kind {strategy.kind!r}")
