"""Filter-then-probe: the encoder labels everything, the LLM reads only the sentences it is unsure of.

Filter-then-rerank (Ma et al. 2023) asks the LLM a question per hard case; with the embedded
270M model its answers are worth little (``bench/headroom.py``), while the same model read by a
trained head (the probe, ``clinie.extractors.probe``) is the best tagger here — but it reads every
sentence. This strategy keeps the filter and swaps the judge: a sentence holding a hard case of
the encoder (``clinie.extractors.rerank.triage`` at ``band``: a span below ``band[1]``, or a run
of words tagged ``O`` without that confidence) goes through the LLM once, and the probe's spans
replace the encoder's in that sentence; every other sentence keeps the encoder's answer and never
reaches the LLM. The band trades F1 for the share of sentences the LLM reads; true few-shot
selection chooses it like the reranker's.

Example (not run here: it trains an encoder and loads the LLM):
    gated = Gated(EncoderTagger(["Disease"]), ProbeTagger(["Disease"], HiddenStates.shared()), band=(0, 0.8))
    predicted = gated.fit(train_docs).predict(test_docs)
    predicted[0].meta["llm"]  # {'calls': 1, ..., 'sentences': 1, 'sentences_to_llm': 1, 'seconds': 0.21}
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from clinie.core import Document, Span, Token, number_spans, sentence_of, split_sentences
from clinie.extractors.encoder import EncoderTagger, decode, with_confidence
from clinie.extractors.probe import ProbeTagger, reading_cost
from clinie.extractors.rerank import triage


def shift(span: Span, text: str, offset: int) -> Span:
    """A span of ``text[offset:...]`` as a span of ``text``.

    >>> text = "No fever. Mild asthma."
    >>> shift(Span.from_text(text[10:], 5, 11, "D"), text, 10).text
    'asthma'
    """
    return Span.from_text(text, span.start + offset, span.end + offset, span.label, score=span.score)


class Gated:
    """The ``gated`` strategy kind (a strategy kind's class is named for it): filter-then-probe,
    the probe reading the sentences where the encoder's confidence falls in ``band``."""

    def __init__(self, encoder: EncoderTagger, probe: ProbeTagger, band: tuple[float, float] = (0.0, 0.8)) -> None:
        if tuple(encoder.labels) != tuple(probe.labels):
            raise ValueError(f"the encoder tags {list(encoder.labels)} but the probe {list(probe.labels)}")
        if not 0 <= band[0] <= band[1] <= 1:
            raise ValueError(f"band {band} is not an interval of probabilities")
        self.encoder = encoder
        self.probe = probe
        self.labels = encoder.labels
        self.band = band

    def fit(self, docs: Sequence[Document]) -> Gated:
        """Train the encoder and the probe on ``docs`` (``StrategyBuilder`` passes both trained)."""
        self.encoder.fit(docs)
        self.probe.fit(docs)
        return self

    def hard_sentences(self, doc: Document, windows: Sequence[tuple[Sequence[Token], np.ndarray]],
                       sentences: Sequence[tuple[int, int]]) -> list[int]:
        """Indices of the sentences of ``doc`` holding a hard case of the encoder, in text order."""
        hard: set[int] = set()
        for words, probabilities in windows:
            _, cases = triage(doc.text, words, probabilities, self.encoder.tags, self.band)
            hard.update(sentence_of(sentences, case.span.start) for case in cases)
        return sorted(hard)

    def predict(self, docs: Sequence[Document]) -> list[Document]:
        """Each document with its spans; ``meta["llm"]`` says what reading cost it (forward
        passes, tokens, sentences and how many of them the LLM read, seconds)."""
        out = []
        for doc, windows in zip(docs, self.encoder.predict_words(docs)):
            started, before = time.perf_counter(), dict(self.probe.states.usage)
            sentences = split_sentences(doc.text)
            read = [sentences[i] for i in self.hard_sentences(doc, windows, sentences)]
            decoded = [(words, *decode(doc.text, words, p, self.encoder.tags)) for words, p in windows]
            spans = [s for _, found, _ in decoded for s in found
                     if not any(s.start < end and start < s.end for start, end in read)]
            # how sure the reading is: the encoder's words outside the sentences the probe read, the probe's inside
            confident = [probabilities[[i for i, w in enumerate(words)
                                        if not any(start <= w.start < end for start, end in read)]]
                         for words, _, probabilities in decoded]
            parts = [Document(f"{doc.id}@{start}", doc.text[start:end]) for start, end in read]
            for (start, _), part, pieces in zip(read, parts, self.probe.predict_words(parts)):
                for words, p in pieces:
                    found, probabilities = decode(part.text, words, p, self.probe.tags)
                    spans.extend(shift(s, doc.text, start) for s in found)
                    confident.append(probabilities)
            cost = reading_cost(self.probe.states, before, started, sentences=len(sentences), read=len(read))
            answer = with_confidence(number_spans(doc, spans), confident)
            out.append(replace(answer, meta={**answer.meta, "llm": cost}))
        return out
