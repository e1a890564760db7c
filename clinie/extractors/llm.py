"""The LLM tagger: word/TAG prompting with retrieved demonstrations, any provider.

For each chunk of a document (whole sentences, ``max_words`` at most), the ``k`` most similar
annotated chunks are retrieved as demonstrations; the prompt asks the model to copy each word
with its tag. A provider that runs in-process decodes under the word/TAG constraint (every
source word forced, only BIO-consistent tags chosen, each tag scored from its logits); any
other provider generates (freely, or with ``guided=True`` under a GBNF grammar that llama.cpp's
server enforces) and its answer is re-aligned to the source words. Either way the spans come
from the source words' own offsets: the model never states an offset.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace

from clinie.core import (
    Document,
    LabelSpec,
    Span,
    Token,
    bio_to_spans,
    chunk,
    number_spans,
    spans_to_bio,
    split_document,
    split_sentences,
    tokenize,
)
from clinie.llm.base import LLM, SupportsDecoding
from clinie.llm.cache import CallCache
from clinie.prompting.usage import Usage
from clinie.prompting.wordtag import decode_constrained, generate_prompt, grammar, parse_response
from clinie.retrieval import DemoPool, Embedder


class LLMTagger:
    def __init__(self, labels: Sequence[LabelSpec], llm: LLM, *, k: int = 5, embedder: Embedder | None = None,
                 constrained: bool | None = None, guided: bool = False, max_words: int = 60,
                 cache: CallCache | None = None) -> None:
        if not labels:
            raise ValueError("an LLM tagger needs at least one label")
        self.label_specs = tuple(labels)
        self.labels = tuple(label.name for label in labels)
        self.llm = llm
        self.k = k
        self.constrained = isinstance(llm, SupportsDecoding) if constrained is None else constrained
        if self.constrained and not isinstance(llm, SupportsDecoding):
            raise ValueError(f"{llm.provider} cannot decode under constraints; use constrained=False")
        self.guided = guided and not self.constrained  # a GBNF grammar for the server (llama.cpp's)
        self.max_words = max_words
        self.pool = DemoPool(embedder or Embedder()) if k > 0 else None
        self.cache = cache
        self.usage = Usage()

    def fit(self, docs: Sequence[Document]) -> LLMTagger:
        """Add annotated documents to the demonstration pool (no training: they are used at once)."""
        if self.pool is not None:
            self.pool.add([part for d in docs for part in split_document(d, self.max_words)])
        return self

    def _demos(self, text: str) -> list[tuple[list[str], list[str]]]:
        if self.pool is None:
            return []
        demos = []
        for doc in self.pool.nearest(text, self.k):
            words = tokenize(doc.text)
            wanted = [s for s in doc.entities if s.label in self.labels]
            demos.append(([w.text for w in words], spans_to_bio(words, wanted)))
        return demos

    def _tag(self, prompt: str, words: list[str]) -> tuple[list[str], list[float] | None]:
        mode = "constrained" if self.constrained else "guided" if self.guided else "free"
        key = None
        if self.cache is not None:
            key = self.cache.key(self.llm.provider, self.llm.model, prompt, {"mode": mode, "labels": self.labels})
            if (hit := self.cache.get(key)) is not None:
                self.usage.cache_hits += 1
                return hit["tags"], hit["scores"]
        self.usage.calls += 1
        if self.constrained:
            with self.llm.session(prompt) as session:  # type: ignore[attr-defined]
                tags, scores = decode_constrained(session, words, self.labels)
                self.usage.prompt_tokens += session.prompt_tokens
                self.usage.completion_tokens += session.forced_tokens + len(words)
        else:
            completion = self.llm.complete(prompt, max_tokens=8 * len(words) + 16, stop=["\n\n", "Sentence:"],
                                           grammar=grammar(words, self.labels) if self.guided else None)
            self.usage.prompt_tokens += completion.prompt_tokens
            self.usage.completion_tokens += completion.completion_tokens
            tags, stats = parse_response(completion.text, words, self.label_specs)
            self.usage.parse.add(stats)
            scores = None
        if key is not None:
            assert self.cache is not None  # a key is made only with a cache
            self.cache.put(key, {"tags": tags, "scores": scores})
        return tags, scores

    def predict(self, docs: Sequence[Document]) -> list[Document]:
        """Each document with its predicted spans; ``meta["llm"]`` says what it cost (calls,
        tokens, sentences sent to the LLM — every one — and seconds)."""
        out = []
        for doc in docs:
            started, before = time.perf_counter(), self.usage.counts()
            spans: list[Span] = []
            for start, end in chunk(doc.text, self.max_words):
                words = [Token(w.start + start, w.end + start, w.text) for w in tokenize(doc.text[start:end])]
                texts = [w.text for w in words]
                prompt = generate_prompt(self.label_specs, texts, self._demos(doc.text[start:end]))
                tags, scores = self._tag(prompt, texts)
                spans.extend(bio_to_spans(doc.text, words, tags, scores))
            sentences = len(split_sentences(doc.text))
            cost = {**self.usage.since(before), "sentences": sentences, "sentences_to_llm": sentences,
                    "seconds": round(time.perf_counter() - started, 3)}
            out.append(replace(number_spans(doc, spans), meta={**doc.meta, "llm": cost}))
        return out
