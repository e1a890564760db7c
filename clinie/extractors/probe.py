"""A tagger trained on a frozen LLM's hidden states (a probe): the LLM reads, a small head tags.

The local LLM knows far more biomedical vocabulary than the 22M-parameter encoder, but prompted
to tag it is weak (word/TAG prompting); its hidden states, read with echo prompting
(``clinie.llm.hidden``), hold that knowledge in a form a small head can learn from a hundred
sentences. The LLM is never fine-tuned: the head — a projection, a bidirectional LSTM (context
on both sides of a word) and a linear layer over BIO tags — is all that trains, in seconds, and
the features of a sentence are computed once however many folds train on it.

Kept apart like the encoder tagger: **preprocess** (words in pieces of whole sentences, their
echo features), **forward** (the head's tag distribution per word), **postprocess**
(``clinie.extractors.encoder.word_spans``: argmax tags to character spans of the original text,
scored by the mean probability of their words' tags). ``predict_words`` gives what
filter-then-rerank reads, as the encoder tagger's does.

Example (not run here: it loads the LLM):
    probe = ProbeTagger(["Disease"], HiddenStates.shared()).fit(train_docs)
    probe.save("models/ncbi-probe")
    ProbeTagger.load("models/ncbi-probe", HiddenStates.shared()).predict(test_docs)[0].entities
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from clinie.core import Document, Span, Token, bio_labels, number_spans, spans_to_bio, split_sentences, word_pieces
from clinie.extractors.encoder import with_confidence, word_spans
from clinie.extractors.finetune import fine_tune, read_meta, write_meta
from clinie.llm.hidden import HiddenStates

KIND = "probe-tagger"
HEAD_FILE = "head.pt"
SCALE_FILE = "scale.json"


def reading_cost(states: HiddenStates, before: dict[str, int], started: float, *, sentences: int,
                 read: int) -> dict[str, float]:
    """What reading a document cost since ``before`` (``states.usage`` then) and ``started``
    (``time.perf_counter()`` then), in the keys the LLM strategies count: forward passes as
    calls, no completion tokens, ``read`` of its ``sentences`` through the LLM."""
    return {**{k: v - before[k] for k, v in states.usage.items()}, "completion_tokens": 0, "sentences": sentences,
            "sentences_to_llm": read, "seconds": round(time.perf_counter() - started, 3)}


def _head(dim: int, n_tags: int, hidden: int, dropout: float) -> Any:
    import torch

    class Head(torch.nn.Module):
        """Projection, BiLSTM, tags; dropout on the features and before the output."""

        def __init__(self) -> None:
            super().__init__()
            self.drop = torch.nn.Dropout(dropout)
            self.project = torch.nn.Linear(dim, 2 * hidden)
            self.lstm = torch.nn.LSTM(2 * hidden, hidden, bidirectional=True, batch_first=True)
            self.out = torch.nn.Linear(2 * hidden, n_tags)

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # (1, words, dim) -> (1, words, tags)
            h, _ = self.lstm(torch.relu(self.project(self.drop(x))))
            return self.out(self.drop(h))

    return Head()


class ProbeTagger:
    """BIO tagging from ``states`` (a ``HiddenStates``, or a function that loads one on first use).

    Defaults, fixed before any test figure was seen: 60 epochs of one sentence per step, learning
    rate 1e-3 (AdamW, warm-up and linear decay, as ``fine_tune`` does), LSTM of 128 per direction,
    dropout 0.3; features standardised with the training set's mean and deviation.
    """

    def __init__(self, labels: Sequence[str], states: HiddenStates | Callable[[], HiddenStates], *,
                 epochs: int = 60, learning_rate: float = 1e-3, hidden: int = 128, dropout: float = 0.3,
                 max_words_per_chunk: int = 128, seed: int = 13) -> None:
        self.labels = tuple(labels)
        self.tags = bio_labels(self.labels)
        self._states = states
        self.hyperparameters = {"epochs": epochs, "learning_rate": learning_rate, "hidden": hidden,
                                "dropout": dropout, "max_words_per_chunk": max_words_per_chunk, "seed": seed}
        self.n_train_docs = 0
        self._head: Any = None
        self._scale: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def states(self) -> HiddenStates:
        if not isinstance(self._states, HiddenStates):
            self._states = self._states()
        return self._states

    # --- preprocess -----------------------------------------------------------------------

    def _pieces(self, docs: Sequence[Document]) -> list[tuple[int, list[Token], np.ndarray]]:
        """Every word of every document in one piece, with the piece's features."""
        return [(i, words, self.states.words(docs[i].text, words))
                for i, words in word_pieces([d.text for d in docs], self.hyperparameters["max_words_per_chunk"])]

    def read(self, docs: Sequence[Document], on_read: Callable[[int, int], None] | None = None) -> None:
        """Read the features of ``docs`` into the LLM's feature cache, a document at a time (what
        ``fit`` and ``predict`` would read first), calling ``on_read(done, total)`` after each: a
        long reading reports how far it has got and may be stopped (``on_read`` raising)
        between two documents."""
        for done, doc in enumerate(docs, 1):
            self._pieces([doc])
            if on_read is not None:
                on_read(done, len(docs))

    # --- forward --------------------------------------------------------------------------

    def _tensor(self, features: np.ndarray) -> Any:
        import torch

        assert self._scale is not None
        mean, sd = self._scale
        return torch.from_numpy(((features - mean) / sd).astype(np.float32))[None]

    def fit(self, docs: Sequence[Document], progress: bool = False) -> ProbeTagger:
        """Train a fresh head on ``docs`` (their spans in ``labels``); the LLM stays as it is.
        The same seed, documents and hyper-parameters give the same head."""
        import torch

        docs = [d for d in docs if d.text]
        if not docs:
            raise ValueError("no documents with text to train on")
        hp = self.hyperparameters
        index = {tag: i for i, tag in enumerate(self.tags)}
        pieces = self._pieces(docs)
        stacked = np.concatenate([features for _, _, features in pieces])
        self._scale = (stacked.mean(axis=0), stacked.std(axis=0) + 1e-5)
        examples = []
        for i, words, features in pieces:
            wanted = [s for s in docs[i].entities if s.label in self.labels]
            target = torch.tensor([index[t] for t in spans_to_bio(words, wanted)])
            examples.append((self._tensor(features), target))
        torch.manual_seed(hp["seed"])
        self._head = _head(stacked.shape[1], len(self.tags), hp["hidden"], hp["dropout"])
        self._head.train()

        def loss(batch: list[tuple[Any, Any]]) -> Any:
            [(x, y)] = batch
            return torch.nn.functional.cross_entropy(self._head(x)[0], y)

        fine_tune(self._head.parameters(), examples, loss, epochs=hp["epochs"], learning_rate=hp["learning_rate"],
                  batch_size=1, seed=hp["seed"], progress=progress, desc="training the probe")
        self._head.eval()
        self.n_train_docs = len(docs)
        return self

    def predict_words(self, docs: Sequence[Document]) -> list[list[tuple[list[Token], np.ndarray]]]:
        """Per document, its pieces in text order: the words and each word's tag distribution
        (a row per word, columns in ``self.tags`` order)."""
        import torch

        if self._head is None:
            raise RuntimeError("the probe is not trained: call fit() or ProbeTagger.load()")
        out: list[list[tuple[list[Token], np.ndarray]]] = [[] for _ in docs]
        with torch.inference_mode():
            for i, words, features in self._pieces(docs):
                out[i].append((words, torch.softmax(self._head(self._tensor(features))[0], dim=-1).numpy()))
        return out

    # --- postprocess ----------------------------------------------------------------------

    def predict(self, docs: Sequence[Document]) -> list[Document]:
        """Each document with the predicted spans (ids ``T1``... in text order, scored);
        ``meta["llm"]`` says what reading it cost: one forward pass per piece (``calls``, no
        completion tokens), every sentence through the LLM, seconds."""
        out = []
        for doc in docs:
            started, before = time.perf_counter(), dict(self.states.usage)
            [pieces] = self.predict_words([doc])
            spans: list[Span] = [s for words, p in pieces for s in word_spans(doc.text, words, p, self.tags)]
            sentences = len(split_sentences(doc.text))
            cost = reading_cost(self.states, before, started, sentences=sentences, read=sentences)
            read = with_confidence(number_spans(doc, spans), [p for _, p in pieces])
            out.append(replace(read, meta={**read.meta, "llm": cost}))
        return out

    # --- persistence ----------------------------------------------------------------------

    def save(self, directory: str | Path) -> Path:
        """The head, the feature scale and what the probe reads (the LLM is not copied)."""
        import torch

        if self._head is None or self._scale is None:
            raise RuntimeError("nothing to save: the probe is not trained")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        torch.save(self._head.state_dict(), directory / HEAD_FILE)
        (directory / SCALE_FILE).write_text(json.dumps([self._scale[0].tolist(), self._scale[1].tolist()]))
        write_meta(directory, KIND, labels=list(self.labels), tags=self.tags, llm=self.states.model,
                   layers=list(self.states.layers), hyperparameters=self.hyperparameters,
                   n_train_docs=self.n_train_docs)
        return directory

    @classmethod
    def load(cls, directory: str | Path, states: HiddenStates) -> ProbeTagger:
        """A probe written by ``save``, reading the same LLM's states (checked by name and layers)."""
        import torch

        directory = Path(directory)
        meta = read_meta(directory, KIND)
        if (meta["llm"], meta["layers"]) != (states.model, list(states.layers)):
            raise ValueError(f"{directory} was trained on {meta['llm']} layers {meta['layers']}, "
                             f"not {states.model} layers {list(states.layers)}")
        probe = cls(meta["labels"], states, **meta["hyperparameters"])
        mean, sd = json.loads((directory / SCALE_FILE).read_text())
        probe._scale = (np.asarray(mean, dtype=np.float32), np.asarray(sd, dtype=np.float32))
        hp = probe.hyperparameters
        probe._head = _head(len(mean), len(probe.tags), hp["hidden"], hp["dropout"])
        probe._head.load_state_dict(torch.load(directory / HEAD_FILE, weights_only=True))
        probe._head.eval()
        probe.n_train_docs = meta["n_train_docs"]
        return probe
