"""LLM relation extraction as multiple choice (``clinie.prompting.relation_mc``), any provider.

Each candidate pair (``clinie.relations.candidate_pairs``) becomes one question whose options
are the relation labels its span types allow, plus "none of these". Demonstrations are the
annotated pairs most similar to it (MiniLM kNN over their marked sentences). A provider that
runs in-process scores the option letters from their logits (the answer's probability is the
relation's score); any other provider answers in text (``guided=True``: under a one-letter
grammar) and the letter is parsed; its first token's log-probability gives the score when the
server returns one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from clinie.core import NO_RELATION, Document, Relation, RelationSpec, split_sentences
from clinie.extractors.llm import Usage
from clinie.llm.base import LLM, SupportsDecoding
from clinie.llm.cache import CallCache
from clinie.prompting.relation_mc import MARKS, generate_prompt, grammar, letters, option_texts, parse_response
from clinie.relations import Pair, PairTypes, candidate_pairs, labelled_pairs, mark
from clinie.retrieval import DemoPool, Embedder


class LLMRelationExtractor:
    def __init__(self, specs: Sequence[RelationSpec], llm: LLM, *, k: int = 5, embedder: Embedder | None = None,
                 window: int = 1, guided: bool = False, cache: CallCache | None = None) -> None:
        if not specs:
            raise ValueError("an LLM relation extractor needs at least one relation label")
        self.specs = tuple(specs)
        self.labels = tuple(s.name for s in self.specs)
        self.llm = llm
        self.k = k
        self.window = window
        self.constrained = isinstance(llm, SupportsDecoding)
        self.guided = guided and not self.constrained
        self.types = PairTypes(self.specs)
        self.pool = DemoPool(embedder or Embedder()) if k > 0 else None
        self.cache = cache
        self.usage = Usage()
        self.unparsed = 0  # answers that named no option (counted as "none of these")

    def _choices(self, pair: Pair) -> tuple[list[str], list[str]]:
        """The labels a pair may get (``NO_RELATION`` last) and the option sentence for each."""
        labels = [*[s.name for s in self.specs if s.name in pair.labels], NO_RELATION]
        return labels, option_texts(self.specs, pair.labels, pair.head.text, pair.tail.text)

    def fit(self, docs: Sequence[Document], *, listed: bool = False) -> LLMRelationExtractor:
        """Learn type constraints from ``docs`` and add their labelled pairs to the demonstrations."""
        self.types = PairTypes.learn(self.specs, docs)
        if self.pool is None:
            return self
        demos = []
        for doc in docs:
            sentences = split_sentences(doc.text)
            for n, (pair, label) in enumerate(labelled_pairs(doc, self.types, self.window, listed=listed)):
                labels, options = self._choices(pair)
                if label in labels:
                    demos.append(Document(f"{doc.id}#{n}", mark(doc.text, pair, MARKS, sentences),
                                          meta={"options": options, "answer": labels.index(label)}))
        self.pool.add(demos)
        return self

    def _answer(self, prompt: str, n: int) -> tuple[int, float | None]:
        """The chosen option's index and probability (None when the provider gives none)."""
        key = None
        if self.cache is not None:
            mode = "constrained" if self.constrained else "guided" if self.guided else "free"
            key = self.cache.key(self.llm.provider, self.llm.model, prompt, {"task": "relation_mc", "mode": mode})
            if (hit := self.cache.get(key)) is not None:
                self.usage.cache_hits += 1
                return hit["index"], hit["score"]
        self.usage.calls += 1
        if self.constrained:
            with self.llm.session(prompt) as session:  # type: ignore[attr-defined]
                index, score = session.choose(letters(n))
                self.usage.prompt_tokens += session.prompt_tokens
                self.usage.completion_tokens += 1
        else:
            completion = self.llm.complete(prompt, max_tokens=4, stop=["\n"], grammar=grammar(n) if self.guided else None)
            self.usage.prompt_tokens += completion.prompt_tokens
            self.usage.completion_tokens += completion.completion_tokens
            parsed = parse_response(completion.text, n)
            if parsed is None:
                self.unparsed += 1
            index = n - 1 if parsed is None else parsed
            score = math.exp(completion.token_logprobs[0]) if parsed is not None and completion.token_logprobs else None
        if key is not None:
            self.cache.put(key, {"index": index, "score": score})
        return index, score

    def classify(self, doc: Document, pair: Pair) -> tuple[str, float | None]:
        """The label the model picks for one pair (``NO_RELATION`` for "none of these")."""
        sentence = mark(doc.text, pair, MARKS)
        labels, options = self._choices(pair)
        demos = [(d.text, d.meta["options"], d.meta["answer"])
                 for d in (self.pool.nearest(sentence, self.k) if self.pool is not None else [])]
        index, score = self._answer(generate_prompt(sentence, options, demos), len(options))
        return labels[index], score

    def predict(self, docs: Sequence[Document]) -> list[Document]:
        """Each document with its spans kept and relations predicted between them."""
        out = []
        for doc in docs:
            relations = []
            for pair in candidate_pairs(doc, self.types, self.window):
                label, score = self.classify(doc, pair)
                if label != NO_RELATION:
                    relations.append(Relation(pair.head.id, pair.tail.id, label, score))
            out.append(doc.with_annotations(doc.entities, relations))
        return out
