"""Filter-then-rerank (Ma et al., Findings of EMNLP 2023): the encoder labels everything, the LLM
decides only the hard cases.

``triage`` (pure) reads the encoder's per-word tag distributions: a span it predicts whose
confidence (mean probability of its words' tags) falls in ``band = (low, high)`` is a hard case,
and so is a mention it may have missed: among words it tags ``O`` with a probability of ``O``
in the band, the spans their second-best tags form (up to ``MAX_MISSED_WORDS``); everything
outside the band keeps the encoder's answer. Each hard case becomes a multiple-choice question
(``clinie.prompting.entity_mc``): the encoder's ``top`` labels for the mention, each verbalised,
and "not an entity". The LLM's choice replaces the encoder's there only; its probability is the
span's score. Demonstrations are the annotated mentions most similar to the question (and, as
negatives, one unannotated word per annotated sentence). The band is what true few-shot selection
tunes: (0, 0) asks nothing (the encoder alone); a wider band sends more sentences to the LLM.

Example (not run here: it trains an encoder and loads an LLM):
    encoder = EncoderTagger(["Disease"])
    rerank = Rerank(encoder, make_llm(settings.llm_options()), [LabelSpec("Disease")], band=(0, 0.8))
    predicted = rerank.fit(train_docs).predict(test_docs)
    predicted[0].meta["llm"]  # {'calls': 1, ..., 'sentences': 1, 'sentences_to_llm': 1, ...}
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from clinie.core import (
    Document,
    LabelSpec,
    Span,
    Token,
    bio_to_spans,
    mark_spans,
    number_spans,
    sentence_of,
    split_sentences,
    tokenize,
    word_ranges,
)
from clinie.extractors.decoding import bio_viterbi
from clinie.extractors.encoder import EncoderTagger
from clinie.llm.base import LLM
from clinie.llm.cache import CallCache
from clinie.prompting.choice import MARKS, MultipleChoice
from clinie.prompting.entity_mc import generate_prompt, option_texts
from clinie.retrieval import DemoPool, Embedder

MAX_MISSED_WORDS = 6  # a possibly missed mention longer than this is not asked about


@dataclass(frozen=True)
class HardCase:
    """A mention the encoder is unsure of: its span (encoder's label, or the best one for a
    missed mention), the candidate labels best first, and the encoder's confidence."""

    span: Span
    candidates: tuple[str, ...]
    confidence: float


def triage(text: str, words: Sequence[Token], probabilities: np.ndarray, tags: Sequence[str],
           band: tuple[float, float], top: int = 2) -> tuple[list[Span], list[HardCase]]:
    """The encoder's spans it is sure of, and the hard cases (see the module docstring).

    >>> text = "fever and asthma"
    >>> p = np.array([[.05, .95, 0], [.99, 0, .01], [.3, .6, .1]])
    >>> sure, hard = triage(text, tokenize(text), p, ["O", "B-D", "I-D"], band=(0.0, 0.9))
    >>> [s.text for s in sure], [(h.span.text, h.candidates, h.confidence) for h in hard]
    (['fever'], [('asthma', ('D',), 0.6)])
    """
    low, high = band
    labels = list(dict.fromkeys(tag[2:] for tag in tags if tag != "O"))
    columns = {label: [i for i, tag in enumerate(tags) if tag[2:] == label] for label in labels}
    best = bio_viterbi(probabilities, tags)  # decoded as every tagger's (``decode``)
    word_tags = [tags[i] for i in best]
    spans = bio_to_spans(text, words, word_tags, [float(probabilities[w, i]) for w, i in enumerate(best)])

    def ranked(first: int, last: int) -> tuple[str, ...]:
        mass = {label: float(probabilities[first:last + 1, columns[label]].sum()) for label in labels}
        return tuple(sorted(labels, key=lambda label: -mass[label])[:top])

    sure, hard = [], []
    for span, (first, last) in zip(spans, word_ranges(words, spans)):
        if low <= (span.score or 0.0) < high:
            hard.append(HardCase(span, ranked(first, last), span.score or 0.0))
        else:
            sure.append(span)
    # Words tagged O without confidence: their best entity tags (second choice) say which
    # mentions the encoder may have missed; too long a run says only that it is lost there.
    outside = (np.asarray([tag == "O" for tag in word_tags])
               & (probabilities[:, 0] >= low) & (probabilities[:, 0] < high))
    second = [tags[1 + int(row[1:].argmax())] for row in probabilities]
    i = 0
    while i < len(words):
        if not outside[i]:
            i += 1
            continue
        j = i
        while j + 1 < len(words) and outside[j + 1]:
            j += 1
        missed = bio_to_spans(text, words[i:j + 1], second[i:j + 1])
        for span, (first, last) in zip(missed, word_ranges(words, missed)):
            if last - first < MAX_MISSED_WORDS:
                hard.append(HardCase(span, ranked(first, last), float(probabilities[first:last + 1, 0].mean())))
        i = j + 1
    return sure, sorted(hard, key=lambda h: h.span.start)


def negative_mention(text: str, sentence: tuple[int, int], spans: Sequence[Span]) -> Span | None:
    """An unannotated word of the sentence to show the LLM what is *not* an entity: its longest
    alphabetic word outside every span (the first of equals), if one has 4 letters or more."""
    start, end = sentence
    words = [w for w in tokenize(text[start:end]) if w.text.isalpha() and len(w.text) >= 4
             and not any(s.start < w.end + start and w.start + start < s.end for s in spans)]
    if not words:
        return None
    word = max(words, key=lambda w: (len(w.text), -w.start))
    return Span.from_text(text, word.start + start, word.end + start, "")


class Rerank:
    """The ``rerank`` strategy kind (a strategy kind's class is named for it): filter-then-rerank,
    the LLM choosing the spans of the hard cases in ``band`` of the encoder's confidence."""

    def __init__(self, encoder: EncoderTagger, llm: LLM, label_specs: Sequence[LabelSpec], *,
                 band: tuple[float, float] = (0.0, 0.9), top: int = 2, k: int = 5,
                 embedder: Embedder | None = None, guided: bool = False, cache: CallCache | None = None) -> None:
        specs = {spec.name: spec for spec in label_specs}
        if missing := [label for label in encoder.labels if label not in specs]:
            raise ValueError(f"no label description for the encoder's labels {missing}")
        if not 0 <= band[0] <= band[1] <= 1:
            raise ValueError(f"band {band} is not an interval of probabilities")
        self.encoder = encoder
        self.labels = encoder.labels
        self.specs = {label: specs[label] for label in encoder.labels}
        self.band = band
        self.top = top
        self.k = k
        self.pool = DemoPool(embedder or Embedder()) if k > 0 else None
        self.questions = MultipleChoice(llm, "entity_mc", guided=guided, cache=cache)

    def _options(self, candidates: Sequence[str], mention: str) -> list[str]:
        return option_texts([self.specs[label] for label in candidates], mention)

    def fit(self, docs: Sequence[Document], *, refit_encoder: bool = True) -> Rerank:
        """Fine-tune the encoder on ``docs`` (unless it already was: ``refit_encoder=False``) and
        make their mentions the demonstrations."""
        if refit_encoder:
            self.encoder.fit(docs)
        if self.pool is None:
            return self
        demos = []
        for doc in docs:
            spans = [s for s in doc.entities if s.label in self.specs]
            sentences = split_sentences(doc.text)
            mentions = [(span, span.label) for span in spans]
            # negatives only beside positives: about as many of each, whatever share of the
            # annotated texts has no mention at all
            for sentence in sentences:
                if spans and (negative := negative_mention(doc.text, sentence, spans)) is not None:
                    mentions.append((negative, ""))
            for n, (span, label) in enumerate(mentions):
                others = [name for name in self.labels if name != label]
                candidates = sorted([label, *others][: self.top] if label else others[: self.top],
                                    key=self.labels.index)
                options = self._options(candidates, span.text)
                answer = candidates.index(label) if label else len(candidates)
                demos.append(Document(f"{doc.id}#{n}", mark_spans(doc.text, [(span, *MARKS)], sentences),
                                      meta={"options": options, "answer": answer}))
        self.pool.add(demos)
        return self

    def decide(self, text: str, case: HardCase, sentences: Sequence[tuple[int, int]]) -> Span | None:
        """The LLM's answer to one hard case: the span with the chosen label, or None."""
        sentence = mark_spans(text, [(case.span, *MARKS)], sentences)
        options = self._options(case.candidates, case.span.text)
        demos = [(d.text, d.meta["options"], d.meta["answer"])
                 for d in (self.pool.nearest(sentence, self.k) if self.pool is not None else [])]
        index, score = self.questions.ask(generate_prompt(sentence, options, demos), len(options))
        if index == len(case.candidates):
            return None
        return replace(case.span, label=case.candidates[index], score=score)

    def predict(self, docs: Sequence[Document]) -> list[Document]:
        """Each document with its spans; ``meta["llm"]`` says what the LLM cost it (calls,
        tokens, questions, sentences and how many of them went to the LLM, seconds)."""
        out = []
        for doc, windows in zip(docs, self.encoder.predict_words(docs)):
            started, before = time.perf_counter(), self.questions.usage.counts()
            sentences = split_sentences(doc.text)
            spans, asked, questions = [], set(), 0
            for words, probabilities in windows:
                sure, hard = triage(doc.text, words, probabilities, self.encoder.tags, self.band, self.top)
                spans.extend(sure)
                questions += len(hard)
                for case in hard:
                    asked.add(sentence_of(sentences, case.span.start))
                    if (decided := self.decide(doc.text, case, sentences)) is not None:
                        spans.append(decided)
            cost = {**self.questions.usage.since(before), "questions": questions,
                    "sentences": len(sentences), "sentences_to_llm": len(asked),
                    "seconds": round(time.perf_counter() - started, 3)}
            out.append(replace(number_spans(doc, spans), meta={**doc.meta, "llm": cost}))
        return out
