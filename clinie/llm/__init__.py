"""Language-model providers behind one small interface (``clinie.llm.base``), registered by name
(``clinie.llm.providers``)."""

from __future__ import annotations

from clinie.llm.base import LLM, Completion, LLMError
from clinie.llm.providers import LLMOptions, make_llm

__all__ = ["LLM", "Completion", "LLMError", "LLMOptions", "make_llm"]
