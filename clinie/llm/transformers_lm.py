"""A Hugging Face causal LM in-process (``transformers``): for sites with a GPU and an HF model.

``model`` is a Hugging Face name, a local model directory, or a ``.gguf`` file (transformers
dequantizes it; no file named: the embedded Gemma 3 270M). The model runs on CUDA when there
is one, else on the CPU (about 6x slower than llama.cpp there, so llama.cpp is the CPU default).
It offers the same constrained decoding sessions as llama.cpp: forced text is evaluated
incrementally against a growing key/value cache and choices are scored from the logits of the
candidate tokens only. Unlike the llama.cpp provider, a session does not reuse the previous
session's prompt prefix.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from clinie.embedded import llm_gguf
from clinie.llm.base import Completion, LLMError, LocalSession
from clinie.llm.providers import LLMOptions, register


def load_causal_lm(model: str | Path | None = None, device: str | None = None) -> tuple[str, str, Any, Any]:
    """``(name, device, tokenizer, model)`` of a causal LM: a Hugging Face name, a model directory
    or a ``.gguf`` file (dequantized; none named: the embedded Gemma 3 270M), in evaluation mode,
    bfloat16 on CUDA (the default device when there is one), float32 on the CPU."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = Path(model) if model and str(model).endswith(".gguf") else model or llm_gguf()
    if isinstance(source, Path):
        if not source.is_file():
            raise LLMError(f"no GGUF model at {source}")
        where, options = str(source.parent), {"gguf_file": source.name}
    else:
        where, options = str(source), {}
    name = Path(where, options.get("gguf_file", "")).name if options else where
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        tokenizer = AutoTokenizer.from_pretrained(where, **options)
        lm = AutoModelForCausalLM.from_pretrained(
            where, dtype=torch.bfloat16 if device.startswith("cuda") else torch.float32, **options).to(device).eval()
    except OSError as e:  # no such directory, and no hub to fetch the name from
        raise LLMError(f"cannot load the causal LM {where!r}: {e}") from e
    return name, device, tokenizer, lm


class TransformersLLM:
    """One loaded model; calls are serialised (one model, one device)."""

    provider = "transformers"

    def __init__(self, model: str | Path | None = None, *, device: str | None = None) -> None:
        import torch

        self.model, self.device, self.tokenizer, self._lm = load_causal_lm(model, device)
        self._torch = torch
        self.lock = threading.RLock()

    def tokenize(self, text: str, *, special: bool = False) -> list[int]:
        """Token ids of ``text``; ``special`` adds what the model puts at a sequence start (BOS)."""
        return self.tokenizer(text, add_special_tokens=special).input_ids

    def complete(self, prompt: str, *, max_tokens: int, stop: Sequence[str] = (),
                 grammar: str | None = None) -> Completion:
        if grammar is not None:
            raise LLMError("the transformers provider takes no GBNF grammar: it decodes under constraints "
                           "itself (constrained=True)")
        ids = self._torch.tensor([self.tokenize(prompt, special=True)], device=self.device)
        with self.lock, self._torch.inference_mode():
            out = self._lm.generate(ids, attention_mask=self._torch.ones_like(ids), max_new_tokens=max_tokens,
                                    do_sample=False, stop_strings=list(stop) or None, tokenizer=self.tokenizer,
                                    pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id)
        generated = out[0, ids.shape[1]:].tolist()
        text = self.tokenizer.decode(generated, skip_special_tokens=True)
        cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=len(text))
        return Completion(text[:cut], ids.shape[1], len(generated))

    def session(self, prompt: str) -> TransformersSession:
        return TransformersSession(self, prompt)


class TransformersSession(LocalSession):
    """Forced text and constrained choices on a growing key/value cache."""

    def __init__(self, owner: TransformersLLM, prompt: str, *, max_tokens: int = 8192) -> None:
        from transformers import DynamicCache

        self._owner = owner
        tokens = owner.tokenize(prompt, special=True)
        self._max_tokens = min(max_tokens, getattr(owner._lm.config, "max_position_embeddings", max_tokens))
        if len(tokens) >= self._max_tokens:
            raise LLMError(f"prompt of {len(tokens)} tokens does not fit a context of {self._max_tokens}")
        super().__init__(owner.tokenize, owner.lock)
        self.prompt_tokens = len(tokens)
        self._pending = tokens
        self._cache = DynamicCache(config=owner._lm.config)
        self._seen = 0
        self._logits: np.ndarray | None = None

    def _next_logits(self) -> np.ndarray:
        if self._pending:
            if self._seen + len(self._pending) >= self._max_tokens:
                raise LLMError("the context is full")
            torch = self._owner._torch
            ids = torch.tensor([self._pending], device=self._owner.device)
            with torch.inference_mode():
                out = self._owner._lm(input_ids=ids, past_key_values=self._cache, use_cache=True,
                                      logits_to_keep=1)
            self._seen += len(self._pending)
            self._pending = []
            self._logits = out.logits[0, -1].float().cpu().numpy()
        assert self._logits is not None
        return self._logits


@register("transformers", reads=("model", "device"))
def make(options: LLMOptions) -> TransformersLLM:
    """In-process, on the GPU when there is one; ``model`` a directory, an HF name available
    offline or a GGUF path (empty: the embedded Gemma 3 270M)."""
    return TransformersLLM(options.model or None, device=options.device or None)
