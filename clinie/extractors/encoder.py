"""A fine-tuned encoder (BERT-style token classifier) that tags words with BIO labels.

Kept apart as in Hugging Face's ``TokenClassificationPipeline``:

- **preprocess** (``EncoderTagger._windows``): a document's words (``clinie.core.tokenize``)
  are grouped into chunks of whole sentences (``clinie.core.chunking.chunk``); a chunk still
  too long for the encoder is cut between words into windows that fit; each window becomes
  sub-words, with the index of the word each sub-word came from;
- **forward**: the encoder's tag distribution per sub-word, in padded batches;
- **postprocess** (``postprocess``, pure): ``aggregate_first`` gives each word the distribution
  of its first sub-word (the "first" strategy: the sub-word the model was trained on), the tags
  are the valid BIO sequence of highest probability, and ``bio_to_spans`` turns them into
  character spans of the original text, each scored by the mean probability of its words' tags
  (``decode``).

Every word keeps the character offsets ``tokenize`` gave it in the original text, so a span is
always ``text[start:end]``, however the note was chunked or windowed.

Example (not run here: it fine-tunes a model):
    tagger = EncoderTagger(["Disease"]).fit(train_docs, progress=True)
    tagger.save("models/ncbi")
    predicted = EncoderTagger.load("models/ncbi").predict(test_docs)
    predicted[0].entities  # (Span(start=..., label='Disease', id='T1', score=0.97), ...)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from clinie.core import Document, Span, Token, bio_labels, bio_to_spans, number_spans, spans_to_bio, word_pieces
from clinie.embedded import encoder_path
from clinie.extractors.decoding import bio_viterbi
from clinie.extractors.finetune import annotated_repeats, default_epochs, fine_tune, read_meta, step_budget, write_meta

KIND = "encoder-tagger"


@dataclass(frozen=True)
class Window:
    """Words of one document that go through the encoder together."""

    doc_index: int
    words: list[Token]
    input_ids: list[int]
    word_ids: list[int | None]  # per sub-word: index into ``words``, None for special tokens


def aggregate_first(probabilities: np.ndarray, word_ids: Sequence[int | None], n_words: int) -> np.ndarray:
    """Per-word tag distributions: each word takes the row of its first sub-word.

    ``probabilities`` has one row per sub-word; later sub-words of a word and special tokens
    (``None``) are ignored.

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


def postprocess(text: str, window: Window, probabilities: np.ndarray, tags: Sequence[str],
                ) -> tuple[list[Span], np.ndarray]:
    """Spans of ``text`` from one window's sub-word tag distributions ("first" aggregation), and
    each word's probability of its tag (``decode``: each word reads its first sub-word's
    distribution; a span's score is the mean over its words).

    >>> from clinie.core import tokenize
    >>> text = "neuroblastoma in kids"
    >>> words = tokenize(text)
    >>> window = Window(0, words, [101, 1, 2, 3, 4, 102], [None, 0, 0, 1, 2, None])
    >>> p = np.array([[1, 0, 0], [.1, .9, 0], [.8, .1, .1], [.7, 0, .3], [1, 0, 0], [1, 0, 0]])
    >>> [(s.text, s.label, round(s.score, 2)) for s in postprocess(text, window, p, ["O", "B-D", "I-D"])[0]]
    [('neuroblastoma', 'D', 0.9)]
    """
    return decode(text, window.words, aggregate_first(probabilities, window.word_ids, len(window.words)), tags)


def decode(text: str, words: Sequence[Token], word_probs: np.ndarray, tags: Sequence[str], *,
           constrained: bool = True) -> tuple[list[Span], np.ndarray]:
    """Spans from per-word tag distributions (what every tagger here returns), and each word's
    probability of the tag decoded for it (what ``word_confidence`` reads): the valid BIO sequence
    of highest probability (``clinie.extractors.decoding.bio_viterbi``), each word scored by its
    tag's probability, a span by the mean over its words. Decoded so, a word the tagger hesitates
    on joins the span its neighbours open instead of starting a broken one: never worse than each
    word's argmax at 100 annotations, better on average (``python -m bench.quality``;
    docs/results.md). ``constrained=False``: each word's argmax, for comparison.

    >>> from clinie.core import tokenize
    >>> text = "no acute asthma"
    >>> p = np.array([[.9, .1, 0], [.4, .3, .3], [.1, .3, .6]])  # argmax: O O I-D
    >>> [s.text for s in decode(text, tokenize(text), p, ["O", "B-D", "I-D"], constrained=False)[0]]
    ['asthma']
    >>> spans, decoded = decode(text, tokenize(text), p, ["O", "B-D", "I-D"])
    >>> [s.text for s in spans], decoded.tolist()
    (['acute asthma'], [0.9, 0.3, 0.6])
    """
    best = bio_viterbi(word_probs, tags) if constrained else np.asarray(word_probs).argmax(axis=1)
    decoded = np.asarray(word_probs)[np.arange(len(best)), best]
    return bio_to_spans(text, words, [tags[i] for i in best], [float(p) for p in decoded]), decoded


def word_confidence(decoded: Sequence[np.ndarray]) -> float | None:
    """How sure a tagger is of its whole reading: the probability of its least sure word's
    decoded tag (``decode``), "O" included (a word barely called "O" may be a
    missed entity). The task score Label Studio sorts by (``clinie.labelstudio.task_score``):
    the lowest first is what annotating would teach the model most; never above a region's
    score. None for a text with no words.

    >>> word_confidence([np.array([0.9, 0.7]), np.array([0.6])])
    0.6
    """
    rows = [p for p in decoded if len(p)]
    return float(min(p.min() for p in rows)) if rows else None


def with_confidence(doc: Document, decoded: Sequence[np.ndarray]) -> Document:
    """``doc`` with ``meta["confidence"]``, the ``word_confidence`` of the words it read."""
    confidence = word_confidence(decoded)
    return doc if confidence is None else replace(doc, meta={**doc.meta, "confidence": round(confidence, 6)})


class EncoderTagger:
    """Fine-tunes any Hugging Face encoder (directory or hub name) for word-level BIO tagging.

    ``model`` defaults to the embedded all-MiniLM-L6-v2. The other defaults were chosen for the
    few-shot regime (30-100 annotated sentences) on CPU with ``bench/encoder.py``: trained on
    the 100 NCBI-disease sentences of seed 42, strict F1 on the 200 Chen et al. items was 0.567
    at learning rate 1e-4, 20 epochs, batch 8, against 0.551 at 2e-4, 0.522 at 5e-5,
    0.523 with 10 epochs, 0.559 with 30 and 0.518 with batch 16. By default (``epochs=None``)
    a small training set gets more epochs, so that training takes at least ``MIN_STEPS``
    optimiser steps: at 100 sentences 20 epochs are 260 steps, but at 16 sentences they would be
    40, too few for the new classifier head (cross-validated on 16 NCBI sentences, 8 epochs
    predicted no span at all), and a large one stops at ``STEP_BUDGET`` steps, so that long notes
    do not multiply the training time. An explicit ``epochs`` is taken as given. An explicit
    ``max_steps`` caps any of these (the backend's quick first model: ``CLINIE_FIRST_MODEL_STEPS``).
    Training is AdamW (weight decay 0.01), 10 % linear warm-up then linear decay, gradients clipped
    at 1.

    ``max_subwords`` caps a window in sub-words (specials included); the default is the
    encoder's own maximum length. ``max_words_per_chunk`` is the sentence-packing budget.
    """

    def __init__(
        self,
        labels: Sequence[str],
        model: str | Path | None = None,
        *,
        epochs: int | None = None,
        learning_rate: float = 1e-4,
        batch_size: int = 8,
        max_words_per_chunk: int = 128,
        max_subwords: int | None = None,
        seed: int = 13,
        max_steps: int | None = None,
        device: str = "cpu",
    ) -> None:
        from transformers import AutoConfig, AutoTokenizer

        self.labels = tuple(labels)
        self.tags = bio_labels(self.labels)
        self.base_model = str(model or encoder_path())
        self.hyperparameters: dict[str, Any] = {
            "epochs": epochs, "learning_rate": learning_rate, "batch_size": batch_size,
            "max_words_per_chunk": max_words_per_chunk, "max_subwords": max_subwords, "seed": seed,
            "max_steps": max_steps}
        self.device = device
        self.n_train_docs = 0
        self.n_taught_docs = 0  # teacher-labelled documents the last fit learnt from beside them
        self.cut_short = False  # whether ``max_steps`` stopped the last fit before its epochs
        self._tokenizer = AutoTokenizer.from_pretrained(self.base_model)
        if not self._tokenizer.is_fast:
            raise ValueError(f"{self.base_model}: a fast tokenizer is needed to map sub-words to words")
        limit = self._tokenizer.model_max_length
        if limit > 100_000:  # the tokenizer does not say: the position embeddings do
            limit = AutoConfig.from_pretrained(self.base_model).max_position_embeddings
        self._max_subwords = min(max_subwords or limit, limit)
        if self._max_subwords <= self._tokenizer.num_special_tokens_to_add():
            raise ValueError(f"max_subwords={max_subwords} leaves no room for a word")
        self._model: Any = None

    # --- preprocess -----------------------------------------------------------------------

    def _windows(self, docs: Sequence[Document]) -> list[Window]:
        """Every word of every document in exactly one window that fits the encoder."""
        return self._encode(word_pieces([d.text for d in docs], self.hyperparameters["max_words_per_chunk"]))

    def _encode(self, pieces: list[tuple[int, list[Token]]]) -> list[Window]:
        """Sub-words per piece of words; a piece too long for the encoder is cut between words.

        A word the tokenizer drops entirely (a zero-width or control character) is fed as the
        unknown token, so every word has a first sub-word and gets a tag. A single word longer
        than a whole window keeps its first sub-words.
        """
        tokenizer = self._tokenizer
        budget = self._max_subwords - tokenizer.num_special_tokens_to_add()
        texts = [[w.text for w in words] for _, words in pieces]
        counted = tokenizer(texts, is_split_into_words=True, add_special_tokens=False, verbose=False)
        parts: list[tuple[int, list[Token], list[str]]] = []
        for n, (doc_index, words) in enumerate(pieces):
            sizes = [0] * len(words)
            for word in counted.word_ids(n):
                sizes[word] += 1
            names = [t if size else tokenizer.unk_token for t, size in zip(texts[n], sizes)]
            first, used = 0, 0
            for i, size in enumerate(sizes):
                if i > first and used + max(size, 1) > budget:
                    parts.append((doc_index, words[first:i], names[first:i]))
                    first, used = i, 0
                used += max(size, 1)
            parts.append((doc_index, words[first:], names[first:]))
        encoded = tokenizer([names for _, _, names in parts], is_split_into_words=True,
                            truncation=True, max_length=self._max_subwords)
        return [Window(doc_index, words, encoded["input_ids"][n], encoded.word_ids(n))
                for n, (doc_index, words, _) in enumerate(parts)]

    # --- forward --------------------------------------------------------------------------

    def _batch(self, windows: Sequence[Window]) -> dict[str, Any]:
        import torch

        width = max(len(w.input_ids) for w in windows)
        ids = torch.full((len(windows), width), self._tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(windows), width), dtype=torch.long)
        for i, w in enumerate(windows):
            ids[i, : len(w.input_ids)] = torch.tensor(w.input_ids)
            mask[i, : len(w.input_ids)] = 1
        return {"input_ids": ids.to(self.device), "attention_mask": mask.to(self.device)}

    def _loss(self, examples: Sequence[tuple[Window, np.ndarray]]) -> Any:
        """Cross-entropy of each learnt sub-word's predicted tags against its target distribution,
        averaged over the learnt sub-words of the batch: with one-hot targets, exactly the token
        classifier's usual loss; with a teacher's distributions, distillation on soft labels."""
        import torch

        logits = self._model(**self._batch([w for w, _ in examples])).logits
        target = torch.zeros(logits.shape, dtype=torch.float32)
        for i, (_, rows) in enumerate(examples):
            target[i, : len(rows)] = torch.from_numpy(rows)
        target = target.to(self.device)
        learnt = target.sum(dim=-1) > 0
        return -(target * torch.log_softmax(logits.float(), dim=-1)).sum(dim=-1)[learnt].mean()

    def _subword_targets(self, window: Window, word_rows: np.ndarray) -> np.ndarray:
        """Each word's tag distribution (``word_rows``, a row per word in ``self.tags`` order) on
        its first sub-word, the one it is trained and read on; later sub-words and specials get
        a row of zeros: not learnt."""
        out = np.zeros((len(window.word_ids), len(self.tags)), dtype=np.float32)
        previous = None
        for n, word in enumerate(window.word_ids):
            if word is not None and word != previous:
                out[n] = word_rows[word]
            previous = word
        return out

    def _epochs(self, n_examples: int) -> int:
        hp = self.hyperparameters
        return default_epochs(n_examples, batch_size=hp["batch_size"], epochs=hp["epochs"])

    def _step_budget(self) -> int | None:
        return step_budget(epochs=self.hyperparameters["epochs"], max_steps=self.hyperparameters["max_steps"])

    def _examples(self, docs: Sequence[Document],
                  soft: Sequence[Mapping[int, np.ndarray]] | None = None) -> list[tuple[Window, np.ndarray]]:
        """Every window of ``docs`` with its sub-word targets: one-hot, from the spans in
        ``labels``; or, with ``soft``, each document's distribution per word (keyed by the word's
        start offset), its spans unread."""
        one_hot = np.eye(len(self.tags), dtype=np.float32)
        index = {tag: i for i, tag in enumerate(self.tags)}
        examples = []
        for window in self._windows(docs):
            if soft is None:
                wanted = [s for s in docs[window.doc_index].entities if s.label in self.labels]
                rows = one_hot[[index[tag] for tag in spans_to_bio(window.words, wanted)]]
            else:
                rows = np.stack([soft[window.doc_index][word.start] for word in window.words]).astype(np.float32)
            examples.append((window, self._subword_targets(window, rows)))
        return examples

    def fit(self, docs: Sequence[Document], progress: bool = False, *, taught: Sequence[Document] = (),
            soft: Sequence[Mapping[int, np.ndarray]] | None = None) -> EncoderTagger:
        """Fine-tune a fresh copy of the base encoder on ``docs`` (their spans in ``labels``).

        Spans with other labels are ignored; documents with empty text are skipped. The same
        seed, documents and hyper-parameters give the same model.

        ``taught``: documents a teacher labelled (a student, ``clinie.strategies``), learnt from
        beside ``docs``. Thousands of them would drown a hundred annotations, and teach the
        student the teacher's errors more than the annotators' reading: each annotation enters an
        epoch ``annotated_repeats`` times, so that they stay at least half of it;
        and the epochs are those ``docs`` alone would get, divided by those repeats — the
        annotations are seen as often as the encoder would see them, and the teacher's sentences
        fill as many steps again at most: about twice the encoder's training time, and never more
        than ``STEP_BUDGET`` steps by default (then the mix, not the count, is kept).

        ``soft``: per taught document, the teacher's tag distribution of each of its words (start
        offset to a row in ``self.tags`` order, as ``predict_words`` gives them), learnt instead
        of its spans: what the teacher doubts stays a doubt (distillation), where spans would
        state it as surely as an annotation.
        """
        import torch
        from transformers import AutoModelForTokenClassification

        docs = [d for d in docs if d.text]
        if not docs:
            raise ValueError("no documents with text to train on")
        if soft is not None and len(soft) != len(taught):
            raise ValueError(f"{len(soft)} soft targets for {len(taught)} taught documents")
        kept = [n for n, d in enumerate(taught) if d.text]
        taught = [taught[n] for n in kept]
        hp = self.hyperparameters
        annotated = self._examples(docs)
        extra = self._examples(taught, None if soft is None else [soft[n] for n in kept])
        repeats = annotated_repeats(len(annotated), len(extra))
        examples = annotated * repeats + extra
        torch.manual_seed(hp["seed"])
        self._model = AutoModelForTokenClassification.from_pretrained(
            self.base_model, num_labels=len(self.tags), id2label=dict(enumerate(self.tags)),
            label2id={t: i for i, t in enumerate(self.tags)}, ignore_mismatched_sizes=True).to(self.device)
        self._model.train()
        epochs = self._epochs(len(annotated))
        self.cut_short = fine_tune(self._model.parameters(), examples, self._loss,
                  epochs=math.ceil(epochs / repeats), learning_rate=hp["learning_rate"], batch_size=hp["batch_size"],
                  seed=hp["seed"], max_steps=self._step_budget(),
                  progress=progress)
        self._model.eval()
        self.n_train_docs, self.n_taught_docs = len(docs), len(taught)
        return self

    def _forward(self, docs: Sequence[Document], batch_size: int, progress: bool) -> list[tuple[Window, np.ndarray]]:
        """Every window of ``docs`` with its sub-word tag distributions, in window order."""
        import torch
        from tqdm.auto import tqdm

        if self._model is None:
            raise RuntimeError("the tagger is not trained: call fit() or EncoderTagger.load()")
        windows = self._windows(docs)
        out: list[tuple[Window, np.ndarray] | None] = [None] * len(windows)
        order = sorted(range(len(windows)), key=lambda i: len(windows[i].input_ids))  # less padding
        with torch.inference_mode():
            for b in tqdm(range(0, len(order), batch_size), desc="predicting", unit="batch", disable=not progress):
                part = order[b : b + batch_size]
                logits = self._model(**self._batch([windows[i] for i in part])).logits
                probabilities = torch.softmax(logits.float(), dim=-1).cpu().numpy()
                for i, p in zip(part, probabilities):
                    out[i] = (windows[i], p)
        return out  # type: ignore[return-value]

    def predict(self, docs: Sequence[Document], batch_size: int = 32, progress: bool = False) -> list[Document]:
        """Each document with the predicted spans (ids ``T1``, ``T2``... in text order, scored).

        Gold annotations are dropped; an empty or blank text gets no spans.
        """
        spans: list[list[Span]] = [[] for _ in docs]
        read: list[list[np.ndarray]] = [[] for _ in docs]
        for window, p in self._forward(docs, batch_size, progress):
            found, decoded = postprocess(docs[window.doc_index].text, window, p, self.tags)
            spans[window.doc_index].extend(found)
            read[window.doc_index].append(decoded)
        return [with_confidence(number_spans(doc, found), probs) for doc, found, probs in zip(docs, spans, read)]

    def predict_words(self, docs: Sequence[Document],
                      batch_size: int = 32) -> list[list[tuple[list[Token], np.ndarray]]]:
        """Per document, its windows in text order: the words and each word's tag distribution
        (a row per word, columns in ``self.tags`` order) — what filter-then-rerank reads."""
        out: list[list[tuple[list[Token], np.ndarray]]] = [[] for _ in docs]
        for window, p in self._forward(docs, batch_size, progress=False):
            out[window.doc_index].append((window.words, aggregate_first(p, window.word_ids, len(window.words))))
        return out

    # --- persistence ----------------------------------------------------------------------

    def save(self, directory: str | Path) -> Path:
        """Write a directory that ``load`` (and ``transformers.pipeline``) can read."""
        if self._model is None:
            raise RuntimeError("nothing to save: the tagger is not trained")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._model.save_pretrained(directory)
        self._tokenizer.save_pretrained(directory)
        write_meta(directory, KIND, labels=list(self.labels), tags=self.tags, base_model=self.base_model,
                   hyperparameters=self.hyperparameters, n_train_docs=self.n_train_docs,
                   n_taught_docs=self.n_taught_docs)
        return directory

    @classmethod
    def load(cls, directory: str | Path, device: str = "cpu") -> EncoderTagger:
        """A tagger written by ``save``, ready to predict (or to ``fit`` again from its base)."""
        from transformers import AutoModelForTokenClassification

        directory = Path(directory)
        meta = read_meta(directory, KIND)
        tagger = cls(meta["labels"], directory, device=device, **meta["hyperparameters"])
        if tagger.tags != meta["tags"]:
            raise ValueError(f"{directory}: tag set does not match its labels")
        tagger.base_model = meta["base_model"]
        tagger.n_train_docs = meta["n_train_docs"]
        tagger.n_taught_docs = meta.get("n_taught_docs", 0)  # saved before students existed: none
        tagger._model = AutoModelForTokenClassification.from_pretrained(directory).to(device).eval()
        return tagger
