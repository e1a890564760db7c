"""Invariant checks shared by the tests of every module."""

from __future__ import annotations

from collections.abc import Iterable

from clinie.core import Span


def assert_spans_match_text(text: str, spans: Iterable[Span]) -> None:
    """Offsets are sacred: every span is a non-empty interval whose text is its surface form."""
    for s in spans:
        assert 0 <= s.start < s.end <= len(text), f"{s} is outside a text of {len(text)} chars"
        assert text[s.start : s.end] == s.text, f"{s}: text[start:end] is {text[s.start:s.end]!r}"


def assert_relations_join_spans(doc) -> None:
    """Every relation joins two different spans the document has."""
    ids = [s.id for s in doc.entities]
    assert len(set(ids)) == len(ids), f"{doc.id}: span ids repeat"
    for r in doc.relations:
        assert r.head in ids and r.tail in ids and r.head != r.tail, f"{doc.id}: {r} joins no two spans of the document"
