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

import bisect
import re
from collections.abc import Sequence

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


def sentence_of(sentences: Sequence[tuple[int, int]], offset: int) -> int:
    """The index of the sentence ``offset`` lies in (of ``split_sentences``; the one before it
    when the offset falls in the whitespace between two).

    >>> sentence_of([(0, 9), (10, 22)], 15), sentence_of([(0, 9), (10, 22)], 9)
    (1, 0)
    """
    return max(0, bisect.bisect_right([start for start, _ in sentences], offset) - 1)


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


def word_pieces(texts: Sequence[str], max_words: int) -> list[tuple[int, list[Token]]]:
    """The words of each text (offsets into it), in pieces of whole sentences of at most
    ``max_words`` words (``chunk``), each with the index of its text; no empty piece.

    >>> [(i, [w.text for w in words]) for i, words in word_pieces(["Ataxia. Fever!", "", "Gout"], 2)]
    [(0, ['Ataxia', '.']), (0, ['Fever', '!']), (2, ['Gout'])]
    """
    pieces: list[tuple[int, list[Token]]] = []
    for i, text in enumerate(texts):
        words = tokenize(text)
        if len(words) <= max_words:  # the usual sentence: one piece, no second tokenization
            pieces.append((i, words))
            continue
        for start, end in chunk(text, max_words):
            pieces.append((i, [Token(w.start + start, w.end + start, w.text) for w in tokenize(text[start:end])]))
    return [(i, words) for i, words in pieces if words]


def split_document(doc: Document, max_words: int) -> list[Document]:
    """The chunks of ``doc`` as documents of their own, spans re-based to the chunk's text.

    A span that crosses a chunk boundary belongs to no chunk and is left out. Each chunk's
    ``meta["offset"]`` is where its text starts in the original.
    """
    return _parts(doc, chunk(doc.text, max_words))


def sentence_documents(doc: Document) -> list[Document]:
    """Each sentence of ``doc`` as a document of its own (``split_sentences``; otherwise as
    ``split_document``): what a teacher labels, and a student keeps or drops, one at a time.

    >>> [(d.id, d.text, d.meta["offset"]) for d in sentence_documents(Document("n", "Pain. Fever!"))]
    [('n#0', 'Pain.', 0), ('n#1', 'Fever!', 6)]
    """
    return _parts(doc, split_sentences(doc.text))


def _parts(doc: Document, intervals: Sequence[tuple[int, int]]) -> list[Document]:
    parts = []
    for n, (start, end) in enumerate(intervals):
        spans = tuple(Span(s.start - start, s.end - start, s.label, s.text, s.id, s.score)
                      for s in doc.entities if start <= s.start and s.end <= end)
        parts.append(Document(f"{doc.id}#{n}", doc.text[start:end], spans, meta={"offset": start, "parent": doc.id}))
    return parts


def mark_spans(text: str, marked: Sequence[tuple[Span, str, str]],
               sentences: Sequence[tuple[int, int]] | None = None) -> str:
    """The sentences from the first marked span to the last, each span between its opening and
    closing marker; whitespace runs become one space (what a model reads about a mention).
    ``sentences`` are ``split_sentences(text)``, passed by callers that mark many spans of one
    text so that a long note is split once, not once per mention.

    >>> text = "No issue. Aspirin raises warfarin levels. Done."
    >>> mark_spans(text, [(Span.from_text(text, 10, 17, "drug"), "<<", ">>")])
    '<< Aspirin >> raises warfarin levels.'
    """
    first = min(span.start for span, _, _ in marked)
    last = max(span.end for span, _, _ in marked)
    sentences = split_sentences(text) if sentences is None else sentences
    start = min(first, max((s for s, _ in sentences if s <= first), default=0))
    end = max(last, min((e for _, e in sentences if e >= last), default=len(text)))
    # inserted from the end; where two markers meet, the closing one comes first in the text
    inserts = sorted([insert for span, opening, closing in marked
                      for insert in ((span.start, 1, f" {opening} "), (span.end, 0, f" {closing} "))], reverse=True)
    out = text[start:end]
    for at, _, marker in inserts:
        out = out[: at - start] + marker + out[at - start:]
    return " ".join(out.split())
