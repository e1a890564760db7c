"""Demonstrations for the LLM: the annotated examples most similar to the input (kNN over
sentence embeddings; Gutiérrez et al. 2022), never fixed ones.

Embeddings are MiniLM mean-pooled (the packaged all-MiniLM-L6-v2 by default), normalised, so
similarity is a dot product. Ties are broken by pool order: the same pool and input always give
the same demonstrations.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from clinie.core import Document
from clinie.embedded import encoder_path


class Embedder:
    """Sentence embeddings from any Hugging Face encoder (mean pooling over tokens)."""

    def __init__(self, model: str | Path | None = None, batch_size: int = 64) -> None:
        from transformers import AutoModel, AutoTokenizer

        path = str(model or encoder_path())
        self._tokenizer = AutoTokenizer.from_pretrained(path)
        self._model = AutoModel.from_pretrained(path).eval()
        self.batch_size = batch_size

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        out = []
        with torch.inference_mode():
            for b in range(0, len(texts), self.batch_size):
                batch = self._tokenizer(list(texts[b : b + self.batch_size]), padding=True, truncation=True,
                                        max_length=256, return_tensors="pt")
                hidden = self._model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
        return np.concatenate(out) if out else np.zeros((0, 1), dtype=np.float32)


class DemoPool:
    """Annotated documents and their embeddings; ``nearest`` finds the k most similar."""

    def __init__(self, embedder: Embedder, docs: Sequence[Document] = ()) -> None:
        self._embedder = embedder
        self.docs: list[Document] = []
        self._vectors = np.zeros((0, 0), dtype=np.float32)
        self.add(docs)

    def __len__(self) -> int:
        return len(self.docs)

    def add(self, docs: Sequence[Document]) -> None:
        docs = [d for d in docs if d.text]
        if not docs:
            return
        vectors = self._embedder.embed([d.text for d in docs])
        self._vectors = vectors if not self.docs else np.concatenate([self._vectors, vectors])
        self.docs.extend(docs)

    def nearest(self, text: str, k: int, exclude_ids: frozenset[str] = frozenset()) -> list[Document]:
        """The ``k`` most similar documents, least similar first (the closest sits next to the input)."""
        if k <= 0 or not self.docs:
            return []
        similarity = self._vectors @ self._embedder.embed([text])[0]
        order = sorted(range(len(self.docs)), key=lambda i: (-similarity[i], i))
        chosen = [self.docs[i] for i in order if self.docs[i].id not in exclude_ids][:k]
        return chosen[::-1]
