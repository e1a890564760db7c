"""LLM relation extraction as multiple choice (``clinie.prompting.relation_mc``), any provider.

Each candidate pair (``clinie.relations.candidate_pairs``) becomes one question whose options
are the relation labels its span types allow, plus "none of these". Demonstrations are the
annotated pairs most similar to it (MiniLM kNN over their marked sentences). A provider that
runs in-process scores the option letters from their logits (the answer's probability is the
relation's score); any other provider answers in text and the letter is parsed
(``clinie.prompting.choice.MultipleChoice``).
"""

from __future__ import annotations

from collections.abc import Sequence

from clinie.core import NO_RELATION, Document, Relation, RelationSpec, split_sentences
from clinie.llm.base import LLM
from clinie.llm.cache import CallCache
from clinie.prompting.choice import MultipleChoice
from clinie.prompting.relation_mc import MARKS, generate_prompt, option_texts
from clinie.prompting.usage import Usage
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
        self.types = PairTypes(self.specs)
        self.pool = DemoPool(embedder or Embedder()) if k > 0 else None
        self.questions = MultipleChoice(llm, "relation_mc", guided=guided, cache=cache)

    @property
    def usage(self) -> Usage:
        return self.questions.usage

    @property
    def unparsed(self) -> int:
        """Answers that named no option (read as "none of these")."""
        return self.questions.unparsed

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

    def classify(self, doc: Document, pair: Pair) -> tuple[str, float | None]:
        """The label the model picks for one pair (``NO_RELATION`` for "none of these")."""
        sentence = mark(doc.text, pair, MARKS)
        labels, options = self._choices(pair)
        demos = [(d.text, d.meta["options"], d.meta["answer"])
                 for d in (self.pool.nearest(sentence, self.k) if self.pool is not None else [])]
        index, score = self.questions.ask(generate_prompt(sentence, options, demos), len(options))
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
