"""Relation extraction as multiple choice (QA4RE; Zhang et al., Findings of ACL 2023).

For one candidate pair the model reads the sentence, with the two mentions marked, and lettered
options: one sentence per relation label the pair may carry (``RelationSpec.verbalise``), then
"none of these". Language models answer such questions far better than they name relation
labels. As in spacy-llm, the task is ``generate_prompt`` and ``parse_response``; a model that
runs in-process instead scores the option letters (``choose``), which gives a probability.

Example:
    >>> from clinie.core import RelationSpec
    >>> specs = [RelationSpec("effect", template="{head} changes the effect of {tail}.")]
    >>> options = option_texts(specs, ("effect",), "aspirin", "warfarin")
    >>> print(generate_prompt("<< aspirin >> boosts << warfarin >> .", options).splitlines()[-3:])
    ['A. aspirin changes the effect of warfarin.', 'B. None of these: aspirin and warfarin are not related so.', 'Answer:']
    >>> parse_response(" B. None of these", len(options))
    1
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

from clinie.core import RelationSpec

TEMPLATE_VERSION = "relation_mc.v1"
MARKS = ("<<", ">>", "<<", ">>")  # how the mentions are marked in the sentence the model reads
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_TEMPLATES = Path(__file__).parent / "templates"


@lru_cache(maxsize=None)
def template(version: str = TEMPLATE_VERSION) -> str:
    return (_TEMPLATES / f"{version}.txt").read_text(encoding="utf-8")


def option_texts(specs: Sequence[RelationSpec], labels: Sequence[str], head: str, tail: str) -> list[str]:
    """One sentence per label in ``labels`` (in the order of ``specs``), then "none of these"."""
    chosen = [spec.verbalise(head, tail) for spec in specs if spec.name in labels]
    if len(chosen) + 1 > len(LETTERS):
        raise ValueError(f"{len(chosen)} relation options: at most {len(LETTERS) - 1} fit the letters")
    return [*chosen, f"None of these: {head} and {tail} are not related so."]


def _question(sentence: str, options: Sequence[str]) -> str:
    return "\n".join(f"{LETTERS[i]}. {text}" for i, text in enumerate(options))


def generate_prompt(sentence: str, options: Sequence[str],
                    demos: Sequence[tuple[str, Sequence[str], int]] = (), version: str = TEMPLATE_VERSION) -> str:
    """The prompt for one pair; ``demos`` are (marked sentence, options, index of the answer)."""
    demo_text = "".join(f"Sentence: {s}\nOptions:\n{_question(s, o)}\nAnswer: {LETTERS[a]}\n\n" for s, o, a in demos)
    return template(version).format(demos=("\n" + demo_text) if demos else "", sentence=sentence,
                                    options=_question(sentence, options)).rstrip("\n")


def letters(n: int) -> list[str]:
    """The continuations a model chooses among: `` A``, `` B``... (after ``Answer:``)."""
    return [f" {LETTERS[i]}" for i in range(n)]


def grammar(n: int) -> str:
    """GBNF for a server's guided decoding: exactly one option letter.

    >>> grammar(3)
    'root ::= " A" | " B" | " C"'
    """
    return "root ::= " + " | ".join(f'"{letter}"' for letter in letters(n))


# a letter alone, or followed by "." ")" ":" or "]": "I think" names no option
_ANSWER = re.compile(r"^\W*(?:answer|option)?\W*([A-Z])(?=[.):\]]|\s*$)", re.IGNORECASE)


def parse_response(text: str, n: int) -> int | None:
    """The index of the option the answer names, or None when it names none of the ``n``.

    >>> parse_response("Answer: (c)", 3), parse_response("E", 3), parse_response("I think B", 10)
    (2, None, None)
    """
    match = _ANSWER.match(text.strip())
    if not match:
        return None
    index = LETTERS.index(match.group(1).upper())
    return index if index < n else None
