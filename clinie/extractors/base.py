"""What every extractor is: fit on Documents, predict Documents. None of them knows Label Studio."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from clinie.core import Document


class Extractor(Protocol):
    labels: tuple[str, ...]

    def fit(self, docs: Sequence[Document]) -> Extractor:
        """Learn from annotated documents; returns self."""

    def predict(self, docs: Sequence[Document]) -> list[Document]:
        """Each document with predicted annotations in place of whatever it had."""
