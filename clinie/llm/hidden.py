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
    [one, two] = states.many([(text, tokenize(text)) for text in ("Gout.", "Familial breast cancer")])
    one.features.shape, two.calls + one.calls  # (2, 2560), 1: both sentences in one forward pass
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

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


#: The feature cache's default bound in megabytes: ``CLINIE_FEATURE_CACHE_MB``'s default too
#: (``clinie.settings``), so that a backend and the command line keep as much.
DEFAULT_CACHE_MB = 1024
DEFAULT_CACHE_BYTES = DEFAULT_CACHE_MB * 2**20
#: Texts per forward pass: on 2 (busy) CPU cores, 16 and 32 read about as fast, 8 and 64 slower
#: (``python -m bench.serve --parts probe --batch-sizes 8,32,64``).
BATCH_SIZE = 16

Key = tuple[str, tuple[tuple[int, int], ...]]  # a text and its words' offsets: what the features are cached under


class Reading(NamedTuple):
    """The features of one text's words and its share of what reading them cost, so that a caller
    reading several documents in one call can say what each cost: ``calls`` is 1 for the first
    text of each forward pass (summed over a call's readings: its forward passes), ``cache_hits`` 1
    when the features were cached (or asked for twice in the call), ``prompt_tokens`` the text's
    own (padding not counted), ``seconds`` its share of its pass's time, by tokens."""

    features: np.ndarray
    calls: int
    cache_hits: int
    prompt_tokens: int
    seconds: float


class _DeepestRead(Exception):
    """Raised by the hook on the deepest layer read: nothing above it is needed."""


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
        self._cache: OrderedDict[Key, np.ndarray] = OrderedDict()
        self._cache_bytes, self._cached_bytes = cache_bytes, 0
        self.lock = threading.Lock()
        self.usage = {"calls": 0, "cache_hits": 0, "prompt_tokens": 0}  # forward passes (of a batch), as an LLM's calls

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
        return self.many([(text, words)])[0].features

    def many(self, items: Sequence[tuple[str, Sequence[Token]]], *, batch_size: int = BATCH_SIZE) -> list[Reading]:
        """``words`` for each ``(text, words)`` of ``items``, in their order, read in forward passes of up
        to ``batch_size`` texts: the matrix products of a pass over many rows run much nearer the
        CPU's peak than those of one sentence (on 2 cores, 2-4 times the sentences per second).
        Texts are batched by token count, so that the padding (after each row: a causal model's
        state at a token never sees the tokens after it) costs little. A text asked for twice is
        read once. The lock is taken per forward pass, so that a long reading (a training's) lets a
        ``/predict`` through between two."""
        readings: dict[int, Reading] = {}  # by index in items
        pending: dict[Key, tuple[list[int], list[int], list[int]]] = {}  # key: (ids, rows, indices in items)
        with self.lock:
            for i, (text, words) in enumerate(items):
                key = (text, tuple((w.start, w.end) for w in words))
                if not words:
                    readings[i] = Reading(np.zeros((0, self.dim), dtype=np.float32), 0, 0, 0, 0.0)
                elif key in pending:
                    pending[key][2].append(i)
                elif (cached := self._cache.get(key)) is not None:
                    self._cache.move_to_end(key)
                    self.usage["cache_hits"] += 1
                    readings[i] = Reading(cached, 0, 1, 0, 0.0)
                else:
                    pending[key] = (*self._prompt(text, words), [i])
        order = sorted(pending, key=lambda k: len(pending[k][0]))
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            with self.lock:
                started = time.perf_counter()
                states = self._forward([pending[key][0] for key in batch])
                seconds = time.perf_counter() - started
                tokens = sum(len(pending[key][0]) for key in batch)
                self.usage["calls"] += 1
                self.usage["prompt_tokens"] += tokens
                for n, (key, state) in enumerate(zip(batch, states)):
                    ids, rows, indices = pending[key]
                    features = self._remember(key, state[rows])
                    first, *again = indices
                    readings[first] = Reading(features, int(n == 0), 0, len(ids), seconds * len(ids) / tokens)
                    for i in again:
                        self.usage["cache_hits"] += 1
                        readings[i] = Reading(features, 0, 1, 0, 0.0)
        return [readings[i] for i in range(len(items))]

    def _prompt(self, text: str, words: Sequence[Token]) -> tuple[list[int], list[int]]:
        """The echo prompt's token ids, and per word the position of the token that stands for it."""
        prefix = ECHO.format(text=text)
        encoded = self._tokenizer(prefix + text, return_offsets_mapping=True)
        base = len(prefix)
        return encoded.input_ids, [last_token_in(encoded.offset_mapping, base + w.start, base + w.end) for w in words]

    def _forward(self, batch: Sequence[Sequence[int]]) -> list[np.ndarray]:
        """The states of each row of ``batch`` at ``self.layers``, concatenated: ``(len(row), dim)``.

        Rows are right-padded and given no attention mask: a causal model's states at a row's own
        tokens are those of the row alone (to float rounding), and without a mask the attention
        takes its causal fast path. The pass stops at the deepest layer read, not running the
        layers above it (a sixth of Gemma 270M's) nor the final norm: a hook on each layer read
        keeps its output, the deepest one's ends the pass.
        """
        torch = self._torch
        width = max(len(row) for row in batch)
        pad = self._tokenizer.pad_token_id or 0
        ids = torch.tensor([[*row, *[pad] * (width - len(row))] for row in batch], device=self.device)
        kept: dict[int, Any] = {}

        def keep(layer: int) -> Callable[..., None]:
            def hook(module: Any, args: Any, output: Any) -> None:
                kept[layer] = output[0] if isinstance(output, tuple) else output
                if layer == self.layers[-1]:
                    raise _DeepestRead

            return hook

        decoders = self._lm.model.layers
        hooks = [decoders[layer - 1].register_forward_hook(keep(layer)) for layer in self.layers]
        try:
            with torch.inference_mode():
                self._lm.model(input_ids=ids, use_cache=False)
        except _DeepestRead:
            pass
        finally:
            for hook in hooks:
                hook.remove()
        states = torch.cat([kept[layer] for layer in self.layers], dim=-1).float().cpu().numpy()
        return [states[i, :len(row)] for i, row in enumerate(batch)]

    def _remember(self, key: Key, features: np.ndarray) -> np.ndarray:
        """Cache ``features`` under ``key``, dropping the least recently used beyond the bound."""
        if (old := self._cache.pop(key, None)) is not None:  # read meanwhile by another thread's call
            self._cached_bytes -= old.nbytes
        self._cache[key] = features
        self._cached_bytes += features.nbytes
        while self._cached_bytes > self._cache_bytes and len(self._cache) > 1:
            self._cached_bytes -= self._cache.popitem(last=False)[1].nbytes
        return features
