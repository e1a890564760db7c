"""llama.cpp in-process (``llama-cpp-python``): any GGUF file, the embedded Gemma 3 270M by default.

Constrained choices are scored from the logits of the candidate tokens only: asking
llama-cpp-python for ``logprobs`` sorts the whole vocabulary (262k for Gemma) in Python for
every token, and a GBNF grammar costs about as much as the decode step itself.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from clinie.embedded import llm_gguf
from clinie.llm.base import Completion, LLMError, LocalSession
from clinie.llm.providers import LLMOptions, register


class LlamaCppLLM:
    """One loaded model; calls are serialised (a llama.cpp context is not thread-safe)."""

    provider = "llama.cpp"

    def __init__(self, model_path: str | Path | None = None, *, n_ctx: int = 4096, n_threads: int | None = None,
                 seed: int = 0) -> None:
        from llama_cpp import Llama

        path = Path(model_path) if model_path else llm_gguf()
        if not path.is_file():
            raise LLMError(f"no GGUF model at {path}")
        self.model = path.name
        self._llm = Llama(model_path=str(path), n_ctx=n_ctx, n_threads=n_threads, seed=seed,
                          logits_all=False, verbose=False)
        self.lock = threading.RLock()

    def tokenize(self, text: str) -> list[int]:
        return self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)

    def complete(self, prompt: str, *, max_tokens: int, stop: Sequence[str] = (),
                 grammar: str | None = None) -> Completion:
        from llama_cpp import LlamaGrammar

        with self.lock:
            out = self._llm.create_completion(
                prompt, max_tokens=max_tokens, temperature=0.0, stop=list(stop) or None,
                grammar=LlamaGrammar.from_string(grammar, verbose=False) if grammar else None)
        usage = out["usage"]
        return Completion(out["choices"][0]["text"], usage["prompt_tokens"], usage["completion_tokens"])

    def session(self, prompt: str) -> LlamaCppSession:
        return LlamaCppSession(self, prompt)


class LlamaCppSession(LocalSession):
    """Forced text and constrained choices on the live llama.cpp context.

    The prompt reuses whatever prefix is still in the KV cache from the previous session (the
    instructions, and any demonstrations in common).
    """

    def __init__(self, owner: LlamaCppLLM, prompt: str) -> None:
        self._llm = owner._llm
        tokens = [self._llm.token_bos()] + owner.tokenize(prompt)
        if len(tokens) >= self._llm.n_ctx():
            raise LLMError(f"prompt of {len(tokens)} tokens does not fit a context of {self._llm.n_ctx()}")
        super().__init__(owner.tokenize, owner.lock)
        self.prompt_tokens = len(tokens)
        cached = self._llm.input_ids[: self._llm.n_tokens].tolist()
        common = 0
        for a, b in zip(cached, tokens):
            if a != b:
                break
            common += 1
        common = min(common, len(tokens) - 1)  # at least one token to evaluate, for fresh logits
        self._llm.n_tokens = common
        self._pending = tokens[common:]

    def _next_logits(self) -> np.ndarray:
        if self._llm.n_tokens + len(self._pending) >= self._llm.n_ctx():
            raise LLMError("the context is full")
        if self._pending:
            self._llm.eval(self._pending)
            self._pending = []
        # Logits of the last evaluated token (llama-cpp-python keeps them only with logits_all).
        return np.ctypeslib.as_array(self._llm._ctx.get_logits(), shape=(self._llm.n_vocab(),))


@register("llama.cpp", reads=("model", "threads"))
def make(options: LLMOptions) -> LlamaCppLLM:
    """In-process on the CPU; ``model`` a GGUF path (empty: the embedded Gemma 3 270M)."""
    return LlamaCppLLM(options.model or None, n_threads=options.threads or None)
