"""Structured word/TAG prompting (Blevins et al., ACL 2023): the model copies each word and
follows it with its BIO tag. A task is two functions, as in spacy-llm: ``generate_prompt`` and
``parse_response``; plus ``decode_constrained`` for models that run in-process.

Example:
    >>> from clinie.core import LabelSpec, tokenize
    >>> labels = (LabelSpec("Disease", "a disorder"),)
    >>> words = [w.text for w in tokenize("Familial breast cancer")]
    >>> tags, stats = parse_response("Familial/O breast/B-Disease cancer/I-Disease", words, labels)
    >>> tags
    ['O', 'B-Disease', 'I-Disease']

What the model says is never trusted for offsets: ``parse_response`` re-aligns the words it
copied to the source words; a source word it dropped or rewrote gets ``O``, and every repair is
counted in ``ParseStats``.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass, fields
from functools import cache
from pathlib import Path

from clinie.core import LabelSpec
from clinie.core.bio import OUTSIDE
from clinie.llm.base import DecodingSession

TEMPLATE_VERSION = "wordtag.v1"
_TEMPLATES = Path(__file__).parent / "templates"


@cache
def template(version: str = TEMPLATE_VERSION) -> str:
    return (_TEMPLATES / f"{version}.txt").read_text(encoding="utf-8")


def format_tagged(words: Sequence[str], tags: Sequence[str]) -> str:
    return " ".join(f"{w}/{t}" for w, t in zip(words, tags))


def generate_prompt(labels: Sequence[LabelSpec], words: Sequence[str],
                    demos: Sequence[tuple[Sequence[str], Sequence[str]]] = (),
                    version: str = TEMPLATE_VERSION) -> str:
    """The prompt for one sentence; ``demos`` are (words, tags) pairs, most similar last."""
    tag_lines = []
    for label in labels:
        described = f" ({label.description})" if label.description else ""
        tag_lines.append(f"B-{label.name}: first word of a {label.name}{described}")
        tag_lines.append(f"I-{label.name}: next word of the same {label.name}")
    tag_lines.append(f"{OUTSIDE}: any other word")
    demo_text = "".join(f"Sentence: {' '.join(w)}\nTagged: {format_tagged(w, t)}\n\n" for w, t in demos)
    return template(version).format(tag_lines="\n".join(tag_lines), demos=("\n" + demo_text) if demos else "\n",
                                    sentence=" ".join(words)).rstrip("\n")


def allowed_tags(previous: str, labels: Sequence[str]) -> list[str]:
    """BIO-consistent tags after ``previous``: ``I-x`` only continues ``B-x`` or ``I-x``."""
    tags = [OUTSIDE] + [f"B-{label}" for label in labels]
    if previous != OUTSIDE:
        tags.append(f"I-{previous.split('-', 1)[1]}")
    return tags


def _gbnf_literal(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def grammar(words: Sequence[str], labels: Sequence[str]) -> str:
    """GBNF for a server's guided decoding (llama.cpp server): every word copied in order, each
    followed by one of the tags. BIO order is not expressible without state; the parser repairs it.

    >>> print(grammar(["a", 'say "x"'], ["D"]))
    root ::= " a/" tag " say \\"x\\"/" tag
    tag ::= "O" | "B-D" | "I-D"
    """
    tags = [OUTSIDE] + [f"{p}-{label}" for label in labels for p in ("B", "I")]
    body = " ".join(f"{_gbnf_literal(f' {w}/')} tag" for w in words)
    return f"root ::= {body}\ntag ::= " + " | ".join(_gbnf_literal(t) for t in tags)


def decode_constrained(session: DecodingSession, words: Sequence[str],
                       labels: Sequence[str]) -> tuple[list[str], list[float]]:
    """Force every source word, in order, and let the model choose only a legal tag for each."""
    tags: list[str] = []
    scores: list[float] = []
    previous = OUTSIDE
    for word in words:
        session.force(f" {word}/")
        options = allowed_tags(previous, labels)
        index, probability = session.choose(options)
        previous = options[index]
        tags.append(previous)
        scores.append(probability)
    return tags, scores


@dataclass
class ParseStats:
    """How far the model's answer was from a clean copy of the sentence."""

    source_words: int = 0
    aligned: int = 0
    dropped: int = 0       # source words with no copy in the answer
    extra: int = 0         # answer words with no source word
    unknown_tags: int = 0  # tags outside the schema (replaced by O)
    repaired_bio: int = 0  # I-x without a preceding B-x/I-x (turned into B-x)

    def add(self, other: ParseStats) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


def _answer_items(response: str) -> list[tuple[str, str | None]]:
    """(word, tag) pairs from the tagged line of an answer, chatter around it removed."""
    text = response.split("Tagged:")[-1] if "Tagged:" in response else response
    lines = [line for line in text.strip().splitlines() if "/" in line]
    if not lines:
        return []
    best = max(lines[:3], key=lambda line: line.count("/"))  # the tagged line, not the chatter
    items: list[tuple[str, str | None]] = []
    for raw in best.split():
        word, slash, tag = raw.rpartition("/")
        items.append((word, tag.strip(".,;:")) if slash and word else (raw, None))
    return items


def parse_response(response: str, words: Sequence[str],
                   labels: Sequence[LabelSpec]) -> tuple[list[str], ParseStats]:
    """One tag per source word, re-aligned from whatever the model wrote."""
    names = {label.name for label in labels}
    stats = ParseStats(source_words=len(words))
    items = _answer_items(response)
    tags = [OUTSIDE] * len(words)
    matcher = difflib.SequenceMatcher(a=[w.lower() for w in words], b=[w.lower() for w, _ in items],
                                      autojunk=False)
    for block in matcher.get_matching_blocks():
        for k in range(block.size):
            tag = items[block.b + k][1]
            stats.aligned += 1
            if tag is None or tag == OUTSIDE:
                continue
            prefix, _, label = tag.partition("-")
            if prefix not in ("B", "I") or label not in names:
                stats.unknown_tags += 1
                continue
            tags[block.a + k] = tag
    stats.dropped = len(words) - stats.aligned
    stats.extra = len(items) - stats.aligned
    for i, tag in enumerate(tags):
        if tag.startswith("I-") and (i == 0 or tags[i - 1] == OUTSIDE or tags[i - 1][2:] != tag[2:]):
            tags[i] = "B-" + tag[2:]
            stats.repaired_bio += 1
    return tags, stats
