"""What every extractor is: fit on Documents, predict Documents. None of them knows Label Studio.

The interface lives with the data it speaks, so that evaluation (which only calls ``predict``)
needs nothing above ``clinie.core``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from clinie.core.types import Document


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
