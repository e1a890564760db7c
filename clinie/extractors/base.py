"""What every extractor is: fit on Documents, predict Documents. None of them knows Label Studio."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from clinie.core import Document


@runtime_checkable
class Extractor(Protocol):
    """The interface of the LLM tagger, the encoder tagger and the relation extractors.

    ``labels`` are the only labels an extractor predicts; ``predict`` returns each document
    ``with_annotations(...)`` of its predictions (gold annotations are ignored and dropped),
    in the order given.
    """

    labels: tuple[str, ...]

    def fit(self, docs: Sequence[Document]) -> Extractor:
        """Learn from annotated documents; returns self."""
        ...

    def predict(self, docs: Sequence[Document]) -> list[Document]:
        """Each document with predicted annotations in place of whatever it had."""
        ...


class SpansThenRelations:
    """An extractor that finds spans with one extractor, then relations between them with another.

    ``relations`` keeps each document's spans and adds relations (``RelationClassifier``,
    ``LLMRelationExtractor``).
    """

    def __init__(self, spans: Extractor, relations: Extractor) -> None:
        self.spans = spans
        self.relations = relations
        self.labels = spans.labels

    def fit(self, docs: Sequence[Document]) -> SpansThenRelations:
        self.spans.fit(docs)
        self.relations.fit(docs)
        return self

    def predict(self, docs: Sequence[Document]) -> list[Document]:
        return self.relations.predict(self.spans.predict(docs))
