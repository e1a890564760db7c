"""Per-word hidden states of a causal LM, read with echo prompting — what the probe tagger learns from.

A causal LM's state at a word has seen only the words before it, and a tagger needs both sides
(is "breast" the start of "breast cancer"?). Echo embeddings (Springer et al., "Repetition
Improves Language Model Embeddings", 2024) fix that without touching the model: the sentence is
fed twice, and the states of its *second* copy are read — by then the model has read the whole
sentence once. A word's feature is the state of the last token that starts inside it (that
token has seen the word entire), at several layers from a third of the depth on, concatenated:
the last layer alone is shaped to predict the next token, not to describe the word. The layers
were fixed before any test figure was seen, not tuned.

Only an in-process model has hidden states: a remote API gives none. The model is the embedded
Gemma 3 270M unless another is named (any causal LM that ``clinie.llm.transformers_lm`` loads).

Example (not run here: it loads the model):
    states = HiddenStates.shared()  # the process's one copy: loading dequantizes the GGUF (~20 s, ~1 GB)
    words = tokenize("Familial breast cancer")
    states.words("Familial breast cancer", words).shape  # (3, 2560): 4 layers of 640
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from clinie.core import Token
from clinie.llm.transformers_lm import load_causal_lm

ECHO = "Rewrite the sentence: {text}\nRewritten sentence: "
DEPTHS = (1 / 3, 1 / 2, 2 / 3, 5 / 6)  # the layers read, as fractions of the model's depth (Gemma 270M: 6, 9, 12, 15)


def last_token_in(offsets: Sequence[tuple[int, int]], start: int, end: int) -> int:
    """The token whose state stands for the word ``[start, end)``: the last one that starts before
    ``end`` — the token that completes the word, or the one that holds it.

    >>> last_token_in([(0, 3), (3, 9), (9, 12)], 3, 12)  # a word of two tokens: the second
    2
    >>> last_token_in([(0, 5), (5, 9)], 2, 4)  # a word inside a token
    0
    """
    best = 0
    for i, (s, e) in enumerate(offsets):
        if s >= end:
            break
        if e > s:
            best = i
    return best


#: The feature cache's default bound (``CLINIE_FEATURE_CACHE_MB`` in a backend).
DEFAULT_CACHE_BYTES = 512 * 2**20


class HiddenStates:
    """One loaded causal LM; calls are serialised. Features of a text are cached (bounded in bytes:
    a sentence of 25 words holds 256 KB), since cross-validation asks for the same sentences once
    per fold."""

    _instances: dict[tuple[str, str | None], HiddenStates] = {}
    _instances_lock = threading.Lock()

    @classmethod
    def shared(cls, model: str | Path | None = None, *, device: str | None = None,
               cache_bytes: int = DEFAULT_CACHE_BYTES) -> HiddenStates:
        """The process's one instance per model and device: every training, selection and
        ``/predict`` of a backend reads the same copy of the model and the same feature cache
        (bounded by the ``cache_bytes`` it was first asked with)."""
        with cls._instances_lock:
            key = (str(model or ""), device)
            if key not in cls._instances:
                cls._instances[key] = cls(model, device=device, cache_bytes=cache_bytes)
            return cls._instances[key]

    def __init__(self, model: str | Path | None = None, *, device: str | None = None,
                 cache_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        import torch

        self.model, self.device, self._tokenizer, self._lm = load_causal_lm(model, device)
        depth = self._lm.config.num_hidden_layers
        self.layers = tuple(sorted({max(1, round(f * depth)) for f in DEPTHS}))
        self.dim = self._lm.config.hidden_size * len(self.layers)
        self._torch = torch
        self._cache: OrderedDict[tuple[str, tuple[tuple[int, int], ...]], np.ndarray] = OrderedDict()
        self._cache_bytes, self._cached_bytes = cache_bytes, 0
        self.lock = threading.Lock()
        self.usage = {"calls": 0, "cache_hits": 0, "prompt_tokens": 0}  # forward passes, as an LLM's calls

    def forget(self) -> None:
        """Drop every cached feature: they are read from note text (a project's unannotated tasks
        among them), which a deletion must not leave behind, in memory either."""
        with self.lock:
            self._cache.clear()
            self._cached_bytes = 0

    @classmethod
    def forget_all(cls) -> None:
        """``forget`` in every shared instance."""
        with cls._instances_lock:
            instances = list(cls._instances.values())
        for states in instances:
            states.forget()

    def words(self, text: str, words: Sequence[Token]) -> np.ndarray:
        """A row per word of ``text`` (offsets into ``text``): its echo features, ``(len(words), dim)``."""
        if not words:
            return np.zeros((0, self.dim), dtype=np.float32)
        key = (text, tuple((w.start, w.end) for w in words))
        with self.lock:
            if (cached := self._cache.get(key)) is not None:
                self._cache.move_to_end(key)
                self.usage["cache_hits"] += 1
                return cached
            prefix = ECHO.format(text=text)
            encoded = self._tokenizer(prefix + text, return_offsets_mapping=True)
            ids = self._torch.tensor([encoded.input_ids], device=self.device)
            self.usage["calls"] += 1
            self.usage["prompt_tokens"] += ids.shape[1]
            with self._torch.inference_mode():
                hidden = self._lm.model(input_ids=ids, output_hidden_states=True).hidden_states
            states = self._torch.cat([hidden[layer][0] for layer in self.layers], dim=-1).float().cpu().numpy()
            base = len(prefix)
            rows = [last_token_in(encoded.offset_mapping, base + w.start, base + w.end) for w in words]
            features = states[rows]
            self._cache[key] = features
            self._cached_bytes += features.nbytes
            while self._cached_bytes > self._cache_bytes and len(self._cache) > 1:
                self._cached_bytes -= self._cache.popitem(last=False)[1].nbytes
            return features
