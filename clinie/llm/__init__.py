"""Language-model providers behind one small interface (``clinie.llm.base``)."""

from __future__ import annotations

from clinie.llm.base import LLM, Completion, LLMError
from clinie.settings import Settings

__all__ = ["LLM", "Completion", "LLMError", "make_llm"]


def make_llm(settings: Settings) -> LLM:
    """The configured provider. Only ``openai`` sends text off the process, and only to the
    ``llm_base_url`` the settings name (``Settings.validate`` refuses it without one)."""
    if settings.llm_provider == "openai":
        from clinie.llm.openai_compat import OpenAICompatibleLLM

        return OpenAICompatibleLLM(settings.llm_model, base_url=settings.llm_base_url,
                                   api_key=settings.llm_api_key or None, chat=bool(settings.llm_chat),
                                   timeout=settings.llm_timeout_seconds,
                                   grammar_style=settings.llm_guided or "llama.cpp")
    if settings.llm_provider == "transformers":
        from clinie.llm.transformers_lm import TransformersLLM

        return TransformersLLM(settings.llm_model or None, device=settings.llm_device or None)
    from clinie.llm.llamacpp import LlamaCppLLM

    return LlamaCppLLM(settings.llm_model or None, n_threads=settings.llm_threads or None)
