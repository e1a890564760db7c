"""Extractors composed of others (the interface they all share is ``clinie.core.Extractor``)."""

from __future__ import annotations

from collections.abc import Sequence

from clinie.core import Document, Extractor


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
