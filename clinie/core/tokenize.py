"""Words with character offsets, from scispaCy's rule-based tokenizer.

The tokenizer is scispaCy's ``combined_rule_tokenizer`` on a blank English pipeline: it knows
biomedical forms ("BRCA1-associated", "5-FU", "e.g.") and needs no model download. Whitespace
tokens (newlines, tabs, runs of spaces) are not words and are dropped, so every word's
``text[start:end]`` is its surface form and never contains whitespace.

Example:
    >>> [(w.text, w.start) for w in tokenize("Aspirin 81mg\\r\\nq.d.")]
    [('Aspirin', 0), ('81', 8), ('mg', 10), ('q.d', 14), ('.', 17)]
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import lru_cache
from typing import Any


@dataclass(frozen=True)
class Token:
    start: int
    end: int
    text: str


@lru_cache(maxsize=1)
def _tokenizer() -> Any:
    import spacy
    from scispacy.custom_tokenizer import combined_rule_tokenizer

    nlp = spacy.blank("en")
    with warnings.catch_warnings():  # spaCy compiles scispaCy's regexes with a FutureWarning
        warnings.simplefilter("ignore", FutureWarning)
        return combined_rule_tokenizer(nlp)


def tokenize(text: str) -> list[Token]:
    """The words of ``text`` with their character offsets, whitespace excluded."""
    if not text:
        return []
    return [
        Token(t.idx, t.idx + len(t.text), t.text)
        for t in _tokenizer()(text)
        if not t.text.isspace()
    ]
