"""BIO tags over words <-> labelled character spans.

Tagging is where span boundaries meet word boundaries: a span that starts or ends inside a word
is widened to whole words by ``spans_to_bio``, and ``bio_to_spans`` only ever produces spans
that start at a word start and end at a word end.

Example:
    >>> from clinie.core.tokenize import tokenize
    >>> text = "Familial breast cancer in BRCA1 carriers"
    >>> words = tokenize(text)
    >>> tags = spans_to_bio(words, [Span.from_text(text, 9, 22, "Disease")])
    >>> tags
    ['O', 'B-Disease', 'I-Disease', 'O', 'O', 'O']
    >>> [(s.text, s.label) for s in bio_to_spans(text, words, tags)]
    [('breast cancer', 'Disease')]
"""

from __future__ import annotations

from collections.abc import Sequence

from clinie.core.tokenize import Token
from clinie.core.types import Document, Span

OUTSIDE = "O"


def bio_labels(labels: Sequence[str]) -> list[str]:
    """The tag set for ``labels``: ``O`` first, then ``B-x``, ``I-x`` per label in order; the
    labels of a tagger, so at least one, none twice."""
    if not labels:
        raise ValueError("a tag set needs at least one label")
    if len(set(labels)) != len(labels):
        raise ValueError(f"labels repeat: {list(labels)}")
    return [OUTSIDE] + [f"{prefix}-{label}" for label in labels for prefix in ("B", "I")]


def spans_to_bio(words: Sequence[Token], spans: Sequence[Span]) -> list[str]:
    """One BIO tag per word; a word belongs to a span when they share a character.

    Overlapping spans cannot both be tagged: the longer one wins (then the earlier), and the
    other is left out. Spans that cover no word (whitespace only) are left out too.
    """
    tags = [OUTSIDE] * len(words)
    for span in sorted(spans, key=lambda s: (-(s.end - s.start), s.start)):
        covered = [i for i, w in enumerate(words) if w.start < span.end and span.start < w.end]
        if not covered or any(tags[i] != OUTSIDE for i in covered):
            continue
        tags[covered[0]] = f"B-{span.label}"
        for i in covered[1:]:
            tags[i] = f"I-{span.label}"
    return tags


def bio_to_spans(
    text: str,
    words: Sequence[Token],
    tags: Sequence[str],
    scores: Sequence[float] | None = None,
) -> list[Span]:
    """Spans from word tags, each scored by the mean of its words' scores.

    An ``I-x`` that does not continue an ``x`` span starts one (the lenient reading, as in
    seqeval's default mode), so a model's broken BIO still yields its spans.
    """
    if len(tags) != len(words) or (scores is not None and len(scores) != len(words)):
        raise ValueError("words, tags and scores must have the same length")
    spans: list[Span] = []
    current: tuple[int, int, str] | None = None  # first word, last word, label

    def close() -> None:
        if current is None:
            return
        first, last, label = current
        score = None
        if scores is not None:
            score = sum(scores[first : last + 1]) / (last - first + 1)
        spans.append(Span.from_text(text, words[first].start, words[last].end, label, score=score))

    for i, tag in enumerate(tags):
        prefix, _, label = tag.partition("-")
        if tag == OUTSIDE or prefix not in ("B", "I") or not label:
            close()
            current = None
        elif prefix == "I" and current is not None and current[2] == label:
            current = (current[0], i, label)
        else:
            close()
            current = (i, i, label)
    close()
    return spans


def word_ranges(words: Sequence[Token], spans: Sequence[Span]) -> list[tuple[int, int]]:
    """The indices of each span's first and last word.

    Only for spans that begin and end on word boundaries, as ``bio_to_spans`` makes them; a span
    that does not raises ``KeyError``.

    >>> from clinie.core.tokenize import tokenize
    >>> text = "Familial breast cancer in BRCA1 carriers"
    >>> word_ranges(tokenize(text), [Span.from_text(text, 9, 22, "Disease")])
    [(1, 2)]
    """
    first = {w.start: i for i, w in enumerate(words)}
    last = {w.end: i for i, w in enumerate(words)}
    return [(first[s.start], last[s.end]) for s in spans]


def number_spans(doc: Document, spans: Sequence[Span]) -> Document:
    """``doc`` with ``spans`` as its annotations, in text order, with ids ``T1``, ``T2``..."""
    ordered = sorted(spans, key=lambda s: (s.start, s.end))
    return doc.with_annotations([Span(s.start, s.end, s.label, s.text, id=f"T{n}", score=s.score)
                                 for n, s in enumerate(ordered, 1)])
