"""Sentences and chunks of long notes, as character intervals of the original text.

A chunk is a ``(start, end)`` interval: its text is ``text[start:end]`` and an offset ``i``
inside it is ``start + i`` in the note, so mapping back is one addition. Chunks never cut a
word: they end at sentence ends, or at a word end when one sentence alone is too long.

Example:
    >>> text = "Pain in chest. Started aspirin.\\n\\nNo allergies."
    >>> [text[s:e] for s, e in split_sentences(text)]
    ['Pain in chest.', 'Started aspirin.', 'No allergies.']
    >>> [text[s:e] for s, e in chunk(text, max_words=8)]
    ['Pain in chest. Started aspirin.', 'No allergies.']
"""

from __future__ import annotations

import re

from clinie.core.tokenize import Token, tokenize
from clinie.core.types import Document, Span

# A sentence ends at ., ! or ? (with closing quotes/brackets) before whitespace and an
# upper-case letter, digit or opening bracket; or at a line break followed by a blank line
# or by a list marker. Abbreviations such as "e.g. the" are not followed by a capital.
_BOUNDARY = re.compile(
    r"""(?<=[.!?])["')\]]*(?=\s+["'(\[]?[A-Z0-9])"""
    r"""|(?=\r?\n[ \t]*\r?\n)"""
    r"""|(?=\r?\n[ \t]*(?:[-*\u2022]|\d+[.)])\s)"""
)


def split_sentences(text: str) -> list[tuple[int, int]]:
    """Sentence intervals, whitespace around them excluded; none for a blank text."""
    cuts = [0, *(m.end() for m in _BOUNDARY.finditer(text)), len(text)]
    sentences = []
    for start, end in zip(cuts, cuts[1:]):
        while start < end and text[start].isspace():
            start += 1
        while end > start and text[end - 1].isspace():
            end -= 1
        if start < end:
            sentences.append((start, end))
    return sentences


def chunk(text: str, max_words: int) -> list[tuple[int, int]]:
    """Whole sentences packed into intervals of at most ``max_words`` words.

    A sentence longer than ``max_words`` is cut between words. Every word of ``text`` lies in
    exactly one chunk.
    """
    if max_words < 1:
        raise ValueError("max_words must be at least 1")
    pieces: list[list[Token]] = []
    for start, end in split_sentences(text):
        words = [Token(w.start + start, w.end + start, w.text) for w in tokenize(text[start:end])]
        pieces.extend(words[i : i + max_words] for i in range(0, len(words), max_words))
    chunks: list[tuple[int, int]] = []
    current: list[Token] = []
    for piece in pieces:
        if current and len(current) + len(piece) > max_words:
            chunks.append((current[0].start, current[-1].end))
            current = []
        current.extend(piece)
    if current:
        chunks.append((current[0].start, current[-1].end))
    return chunks


def split_document(doc: Document, max_words: int) -> list[Document]:
    """The chunks of ``doc`` as documents of their own, spans re-based to the chunk's text.

    A span that crosses a chunk boundary belongs to no chunk and is left out. Each chunk's
    ``meta["offset"]`` is where its text starts in the original.
    """
    parts = []
    for n, (start, end) in enumerate(chunk(doc.text, max_words)):
        spans = tuple(Span(s.start - start, s.end - start, s.label, s.text, s.id, s.score)
                      for s in doc.entities if start <= s.start and s.end <= end)
        parts.append(Document(f"{doc.id}#{n}", doc.text[start:end], spans, meta={"offset": start, "parent": doc.id}))
    return parts
