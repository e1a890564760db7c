"""The one small interface every language-model provider implements.

A provider *completes* a prompt (``complete``). A provider that runs the model in-process can
also offer a ``DecodingSession``: the caller forces known text into the context and lets the
model only *choose* among given continuations, scored from the logits of just those tokens.
That is how word/TAG prompting decodes under the constraint "copy every word, pick a legal
tag" without a grammar over a 262k-token vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


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
