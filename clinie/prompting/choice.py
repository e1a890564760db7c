"""Multiple-choice prompting: a marked sentence, lettered options, one letter as the answer,
and asking it of an LLM (``MultipleChoice``).

Language models answer such questions far better than they name labels (QA4RE; Zhang et al.,
Findings of ACL 2023), and a model that runs in-process can score the option letters from its
logits instead of generating (``DecodingSession.choose``), which gives a probability. As in
spacy-llm, a task is ``generate_prompt`` and ``parse_response``; what differs between tasks is
the instruction (a versioned template in ``templates/``) and the option sentences.

``MultipleChoice`` asks one question of any provider. A provider that runs in-process scores
the option letters from its logits (the chosen option's probability is its score); any other
answers in text (``guided=True``: under a one-letter grammar) and the letter is parsed, its
first token's log-probability giving the score when the server returns one. An answer that
names no option is counted and read as the last option ("none of these"): a model that rambles
adds nothing. Calls are cached and counted.

Example:
    >>> prompt = generate_prompt("entity_mc.v1", "<< asthma >> worsened .",
    ...                          ['"asthma" is a Disease.', '"asthma" is none of these.'])
    >>> prompt.splitlines()[-3:]
    ['A. "asthma" is a Disease.', 'B. "asthma" is none of these.', 'Answer:']
    >>> parse_response(" B. none", 2)
    1
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from functools import cache
from pathlib import Path

from clinie.llm.base import LLM, SupportsDecoding
from clinie.llm.cache import CallCache
from clinie.prompting.usage import Usage

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
MARKS = ("<<", ">>")  # how a mention is marked in the sentence the model reads
_TEMPLATES = Path(__file__).parent / "templates"


@cache
def template(version: str) -> str:
    return (_TEMPLATES / f"{version}.txt").read_text(encoding="utf-8")


def _question(options: Sequence[str]) -> str:
    if len(options) > len(LETTERS):
        raise ValueError(f"{len(options)} options: at most {len(LETTERS)} fit the letters")
    return "\n".join(f"{LETTERS[i]}. {text}" for i, text in enumerate(options))


def generate_prompt(version: str, sentence: str, options: Sequence[str],
                    demos: Sequence[tuple[str, Sequence[str], int]] = ()) -> str:
    """The prompt for one question; ``demos`` are (marked sentence, options, index of the answer)."""
    demo_text = "".join(f"Sentence: {s}\nOptions:\n{_question(o)}\nAnswer: {LETTERS[a]}\n\n" for s, o, a in demos)
    return template(version).format(demos=("\n" + demo_text) if demos else "", sentence=sentence,
                                    options=_question(options)).rstrip("\n")


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


class MultipleChoice:
    """One multiple-choice question at a time to ``llm``, for ``task`` (see the module docstring)."""

    def __init__(self, llm: LLM, task: str, *, guided: bool = False, cache: CallCache | None = None) -> None:
        self.llm = llm
        self.task = task  # part of the cache key: the same prompt of two tasks is two questions
        self.constrained = isinstance(llm, SupportsDecoding)
        self.guided = guided and not self.constrained
        self.cache = cache
        self.usage = Usage()
        self.unparsed = 0  # answers that named no option

    def ask(self, prompt: str, n: int) -> tuple[int, float | None]:
        """The chosen option's index among ``n`` and its probability (None when unknown)."""
        key = None
        if self.cache is not None:
            mode = "constrained" if self.constrained else "guided" if self.guided else "free"
            key = self.cache.key(self.llm.provider, self.llm.model, prompt, {"task": self.task, "mode": mode})
            if (hit := self.cache.get(key)) is not None:
                self.usage.cache_hits += 1
                return hit["index"], hit["score"]
        self.usage.calls += 1
        if self.constrained:
            with self.llm.session(prompt) as session:  # type: ignore[attr-defined]
                index, score = session.choose(letters(n))
                self.usage.prompt_tokens += session.prompt_tokens
                self.usage.completion_tokens += 1
        else:
            completion = self.llm.complete(prompt, max_tokens=4, stop=["\n"],
                                           grammar=grammar(n) if self.guided else None)
            self.usage.prompt_tokens += completion.prompt_tokens
            self.usage.completion_tokens += completion.completion_tokens
            parsed = parse_response(completion.text, n)
            if parsed is None:
                self.unparsed += 1
            index = n - 1 if parsed is None else parsed
            score = math.exp(completion.token_logprobs[0]) if parsed is not None and completion.token_logprobs else None
        if key is not None:
            assert self.cache is not None  # a key is made only with a cache
            self.cache.put(key, {"index": index, "score": score})
        return index, score
