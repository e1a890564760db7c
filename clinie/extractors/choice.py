"""Asking an LLM one multiple-choice question (``clinie.prompting.choice``), any provider.

A provider that runs in-process scores the option letters from its logits (the chosen option's
probability is its score); any other answers in text (``guided=True``: under a one-letter
grammar) and the letter is parsed, its first token's log-probability giving the score when the
server returns one. An answer that names no option is counted and read as the last option
("none of these"): a model that rambles adds nothing. Calls are cached and counted.
"""

from __future__ import annotations

import math

from clinie.extractors.llm import Usage
from clinie.llm.base import LLM, SupportsDecoding
from clinie.llm.cache import CallCache
from clinie.prompting.choice import grammar, letters, parse_response


class MultipleChoice:
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
            self.cache.put(key, {"index": index, "score": score})
        return index, score
