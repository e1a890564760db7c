"""A tagger trained on a frozen LLM's hidden states (a probe): the LLM reads, a small head tags.

The local LLM knows far more biomedical vocabulary than the 22M-parameter encoder, but prompted
to tag it is weak (word/TAG prompting); its hidden states, read with echo prompting
(``clinie.llm.hidden``), hold that knowledge in a form a small head can learn from a hundred
sentences. The LLM is never fine-tuned: the head — a projection, a bidirectional LSTM (context
on both sides of a word) and a linear layer over BIO tags — is all that trains, in seconds, and
the features of a sentence are computed once however many folds train on it.

Kept apart like the encoder tagger: **preprocess** (words in pieces of whole sentences, their
echo features), **forward** (the head's tag distribution per word), **postprocess**
(``clinie.extractors.encoder.decode``: argmax tags to character spans of the original text,
scored by the mean probability of their words' tags). ``predict_words`` gives what
filter-then-rerank reads, as the encoder tagger's does. Each call hands the pieces of all its
documents to the LLM at once (``HiddenStates.many``), which reads them in batched forward passes.

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
from clinie.extractors.encoder import decode, with_confidence
from clinie.extractors.finetune import fine_tune, read_meta, write_meta
from clinie.llm.hidden import BATCH_SIZE, HiddenStates, Reading

KIND = "probe-tagger"
HEAD_FILE = "head.pt"
SCALE_FILE = "scale.json"


def cost(usage: dict[str, int], seconds: float, *, sentences: int, read: int) -> dict[str, float]:
    """``usage`` (``HiddenStates.usage``'s keys) and ``seconds`` in the keys the LLM strategies
    count: forward passes as calls, no completion tokens, ``read`` of ``sentences`` through the LLM."""
    return {**usage, "completion_tokens": 0, "sentences": sentences, "sentences_to_llm": read,
            "seconds": round(seconds, 3)}


def reading_cost(states: HiddenStates, before: dict[str, int], started: float, *, sentences: int,
                 read: int) -> dict[str, float]:
    """What reading a document cost since ``before`` (``states.usage`` then) and ``started``
    (``time.perf_counter()`` then): ``cost``."""
    return cost({k: v - before[k] for k, v in states.usage.items()}, time.perf_counter() - started,
                sentences=sentences, read=read)


def usage_of(readings: Sequence[Reading]) -> dict[str, int]:
    """What ``readings`` cost, in ``HiddenStates.usage``'s keys: a document's share of a batched reading."""
    return {"calls": sum(r.calls for r in readings), "cache_hits": sum(r.cache_hits for r in readings),
            "prompt_tokens": sum(r.prompt_tokens for r in readings)}


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


#: The most optimiser steps (one piece of at most 128 words each) a probe's head takes, whatever
#: the annotations' number: about 30 s on 2 cores (9.5 ms a step). 60 epochs up to 50 pieces (the
#: first trainings, unchanged); past them, fewer epochs rather than more time — at 100 annotations
#: a cross-validation fold's fit took 45 s, five of them most of the wait for the selected strategy.
#: Fixed from the time it allows, before its test figures (bench.quality ``--probe-steps``).
STEP_BUDGET = 3000


class ProbeTagger:
    """BIO tagging from ``states`` (a ``HiddenStates``, or a function that loads one on first use).

    Defaults, fixed before any test figure was seen: 60 epochs of one sentence per step, learning
    rate 1e-3 (AdamW, warm-up and linear decay, as ``fine_tune`` does), LSTM of 128 per direction,
    dropout 0.3; features standardised with the training set's mean and deviation. At most
    ``STEP_BUDGET`` steps (``max_steps``; None: the epochs alone).
    """

    def __init__(self, labels: Sequence[str], states: HiddenStates | Callable[[], HiddenStates], *,
                 epochs: int = 60, learning_rate: float = 1e-3, hidden: int = 128, dropout: float = 0.3,
                 max_words_per_chunk: int = 128, seed: int = 13, max_steps: int | None = STEP_BUDGET) -> None:
        self.labels = tuple(labels)
        self.tags = bio_labels(self.labels)
        self._states = states
        self.hyperparameters: dict[str, Any] = {"epochs": epochs, "learning_rate": learning_rate, "hidden": hidden,
                                                "dropout": dropout, "max_words_per_chunk": max_words_per_chunk,
                                                "seed": seed, "max_steps": max_steps}
        self.n_train_docs = 0
        self._head: Any = None
        self._scale: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def states(self) -> HiddenStates:
        if not isinstance(self._states, HiddenStates):
            self._states = self._states()
        return self._states

    # --- preprocess -----------------------------------------------------------------------

    def _read(self, docs: Sequence[Document]) -> list[tuple[int, list[Token], Reading]]:
        """Every word of every document in one piece, with the piece's reading: all in one call to
        the LLM, which batches them. The LLM reads each piece's own text (its sentences), not its
        document's: a long note's every piece would otherwise cost a pass over the whole note."""
        pieces = word_pieces([d.text for d in docs], self.hyperparameters["max_words_per_chunk"])
        items = []
        for i, words in pieces:
            start, end = words[0].start, words[-1].end
            items.append((docs[i].text[start:end], [Token(w.start - start, w.end - start, w.text) for w in words]))
        readings = self.states.many(items)
        return [(i, words, reading) for (i, words), reading in zip(pieces, readings)]

    def _pieces(self, docs: Sequence[Document]) -> list[tuple[int, list[Token], np.ndarray]]:
        """Every word of every document in one piece, with the piece's features."""
        return [(i, words, reading.features) for i, words, reading in self._read(docs)]

    def read(self, docs: Sequence[Document], on_read: Callable[[int, int], None] | None = None,
             group: int = 4 * BATCH_SIZE) -> None:
        """Read the features of ``docs`` into the LLM's feature cache (what ``fit`` and ``predict``
        would read first), ``group`` documents per call to the LLM (enough for full batches of
        sentences of like length), calling ``on_read(done, total)`` after each document: a long
        reading reports how far it has got and may be stopped (``on_read`` raising) between two
        groups."""
        for start in range(0, len(docs), group):
            self._read(docs[start:start + group])
            if on_read is not None:
                for done in range(start + 1, min(start + group, len(docs)) + 1):
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
                  batch_size=1, seed=hp["seed"], max_steps=hp["max_steps"], progress=progress,
                  desc="training the probe")
        self._head.eval()
        self.n_train_docs = len(docs)
        return self

    def _trained(self) -> None:
        """Refuse an untrained probe (no head) before the LLM reads anything for it."""
        if self._head is None:
            raise RuntimeError("the probe is not trained: call fit() or ProbeTagger.load()")

    def _tag(self, features: np.ndarray) -> np.ndarray:
        """The head's tag distribution per word of one piece: a row per word, columns in ``self.tags`` order."""
        import torch

        with torch.inference_mode():
            return torch.softmax(self._head(self._tensor(features))[0], dim=-1).numpy()

    def predict_words(self, docs: Sequence[Document]) -> list[list[tuple[list[Token], np.ndarray]]]:
        """Per document, its pieces in text order: the words and each word's tag distribution
        (a row per word, columns in ``self.tags`` order)."""
        self._trained()
        out: list[list[tuple[list[Token], np.ndarray]]] = [[] for _ in docs]
        for i, words, features in self._pieces(docs):
            out[i].append((words, self._tag(features)))
        return out

    # --- postprocess ----------------------------------------------------------------------

    def predict(self, docs: Sequence[Document]) -> list[Document]:
        """Each document with the predicted spans (ids ``T1``... in text order, scored);
        ``meta["llm"]`` says what reading it cost: its share of the batched forward passes (``calls``:
        summed over ``docs``, the passes made; ``HiddenStates.many``), no completion tokens, every
        sentence through the LLM, seconds (its share of the passes and its own tagging)."""
        self._trained()
        pieces: list[list[tuple[list[Token], Reading]]] = [[] for _ in docs]
        for i, words, reading in self._read(docs):
            pieces[i].append((words, reading))
        out = []
        for doc, mine in zip(docs, pieces):
            started = time.perf_counter()
            decoded = [decode(doc.text, words, self._tag(reading.features), self.tags) for words, reading in mine]
            spans: list[Span] = [s for found, _ in decoded for s in found]
            answer = with_confidence(number_spans(doc, spans), [probabilities for _, probabilities in decoded])
            readings = [reading for _, reading in mine]
            seconds = time.perf_counter() - started + sum(r.seconds for r in readings)
            sentences = len(split_sentences(doc.text))
            spent = cost(usage_of(readings), seconds, sentences=sentences, read=sentences)
            out.append(replace(answer, meta={**answer.meta, "llm": spent}))
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
