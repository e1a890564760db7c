"""The one small interface every language-model provider implements.

A provider *completes* a prompt (``complete``). A provider that runs the model in-process can
also offer a ``DecodingSession``: the caller forces known text into the context and lets the
model only *choose* among given continuations, scored from the logits of just those tokens.
That is how word/TAG prompting decodes under the constraint "copy every word, pick a legal
tag" without a grammar over a 262k-token vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np


class LLMError(RuntimeError):
    """The model could not answer: endpoint down, timed out, refused, or bad configuration."""


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    #: Log-probability of each generated token, when the provider gives them.
    token_logprobs: tuple[float, ...] | None = None


@runtime_checkable
class LLM(Protocol):
    provider: str
    model: str

    def complete(self, prompt: str, *, max_tokens: int, stop: Sequence[str] = (),
                 grammar: str | None = None) -> Completion:
        """Greedy (temperature 0) continuation of ``prompt``; ``grammar`` is GBNF where supported."""


@runtime_checkable
class DecodingSession(Protocol):
    """A context that grows by forced text and constrained choices."""

    prompt_tokens: int
    forced_tokens: int

    def force(self, text: str) -> None:
        """Append ``text`` to the context as is."""

    def choose(self, options: Sequence[str]) -> tuple[int, float]:
        """Append the most likely of ``options``; its index and probability among the options."""


@runtime_checkable
class SupportsDecoding(Protocol):
    def session(self, prompt: str) -> DecodingSession:
        """A decoding session that starts from ``prompt``."""


def choose_option(sequences: Sequence[Sequence[int]], next_logits: Callable[[], np.ndarray],
                  feed: Callable[[int], None]) -> tuple[int, float]:
    """Walk the token trie of the options, at each branch keeping the likeliest child.

    ``sequences`` are the options' token ids, ``next_logits()`` the logits after the context so
    far, ``feed(token)`` appends a token to it. The probability of the result is the product of
    the softmax over the children at each branch: a distribution over the options, computed from
    a handful of logits, never from the whole vocabulary.

    Example (a model that always prefers the larger token id):
        >>> fed = []
        >>> index, p = choose_option([[5, 1], [5, 2], [3]], lambda: np.arange(8.0), fed.append)
        >>> index, round(p, 3), fed
        (1, 0.644, [5, 2])
    """
    alive = list(range(len(sequences)))
    depth, probability = 0, 1.0
    while True:
        ended = [i for i in alive if len(sequences[i]) == depth]
        if ended:  # an option that is a prefix of others wins once reached
            return ended[0], probability
        children = sorted({sequences[i][depth] for i in alive})
        if len(children) == 1:
            token = children[0]  # one way on: no choice, no logits needed
        else:
            logits = np.asarray(next_logits(), dtype=np.float64)[children]
            p = np.exp(logits - logits.max())
            p /= p.sum()
            best = int(p.argmax())
            probability *= float(p[best])
            token = children[best]
        feed(token)
        alive = [i for i in alive if sequences[i][depth] == token]
        depth += 1


class LocalSession:
    """What in-process decoding sessions share: the model's lock, held for the session's life;
    forced tokens queued until logits are next needed (then evaluated in one batch); choices
    scored by ``choose_option``. A subclass queues the prompt and implements ``_next_logits``.
    """

    def __init__(self, tokenize: Callable[[str], list[int]], lock: Any) -> None:
        self._tokenize = tokenize
        self._lock = lock
        self._pending: list[int] = []
        self.prompt_tokens = 0
        self.forced_tokens = 0
        lock.acquire()

    def close(self) -> None:
        self._lock.release()

    def __enter__(self) -> LocalSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def force(self, text: str) -> None:
        tokens = self._tokenize(text)
        self.forced_tokens += len(tokens)
        self._pending.extend(tokens)

    def choose(self, options: Sequence[str]) -> tuple[int, float]:
        # not self._pending.append: _next_logits replaces the list once it is evaluated
        return choose_option([self._tokenize(o) for o in options], self._next_logits,
                             lambda token: self._pending.append(token))

    def _next_logits(self) -> np.ndarray:
        raise NotImplementedError
