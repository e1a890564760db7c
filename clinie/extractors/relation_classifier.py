"""Encoder relation classifier: entity markers and entity-start pooling (Baldini Soares et al. 2019).

- **preprocess** (``clinie.relations.mark``, pure): the sentences that hold a candidate pair, with ``[E1]``..
  ``[/E1]`` around the head and ``[E2]``..``[/E2]`` around the tail;
- **forward**: the encoder; the hidden states at ``[E1]`` and ``[E2]`` are concatenated and a
  linear layer scores ``NO_RELATION`` and every relation label;
- **postprocess**: labels the pair's span types do not allow are masked, the argmax wins, and
  a relation is kept when it is not ``NO_RELATION``, scored by its probability.

Negatives are the unannotated candidate pairs (``clinie.relations.labelled_pairs``), so the
classifier learns the real share of pairs that are relations. A long note has thousands of
candidate pairs, most of them ``NO_RELATION``: a fit learns a seeded sample of them that keeps
every label's real share (``sample_at_shares``), as many as its step budget goes over
``SAMPLED_EPOCHS`` times, so that the priors it learns are still the text's and its time does not
grow with the text. Trained on listed pairs instead (a
pair-level file sampled by label, ``fit(listed=True)``), it learns the sample's share: DDI's
few-shot file is 20 % negative, real candidate pairs 83 %, and labelling every candidate pair of a
sentence as trained predicts several times more relations than there are. ``fit(negatives=N)``
also learns N of the candidate pairs the file leaves unlisted as negatives, the kinds the sample
lacks: on DDI that cut the over-prediction and raised the end-to-end figure, but lowered the
listed pairs' (some unlisted pairs are relations nobody listed; docs/results.md). ``fit(taught=...)``
learns a teacher's reading of other documents' candidate pairs as well — unannotated text, its
spans found by a tagger — each pair as the teacher's posterior row (soft labels): the teacher →
student route of the taggers, for relations (``bench/relations.py --unannotated``). ``pair_priors``
re-estimates the class priors on the unlabelled pairs it is given and ``label`` labels under them
(``clinie.relations.priors``). On DDI that recovers little (docs/results.md, "Relations"): most
of the extra relations are negatives of kinds the listed sample lacks, which no prior corrects,
so ``predict`` labels as trained. It works on whatever spans a document has: gold ones, or the
encoder tagger's predictions.

Example (not run here: it fine-tunes a model):
    classifier = RelationClassifier(schema.relation_labels).fit(train_docs)
    classifier.predict(tagged_docs)[0].relations  # (Relation(head='T1', tail='T3', label='effect', score=0.91),)
"""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clinie.core import NO_RELATION, Document, Relation, RelationSpec, split_sentences
from clinie.embedded import encoder_path
from clinie.extractors.finetune import (
    annotated_repeats,
    default_epochs,
    fine_tune,
    planned_steps,
    read_meta,
    step_budget,
    write_meta,
)
from clinie.relations import (
    ENTITY_MARKERS,
    MAX_DISTANCE,
    Pair,
    PairTypes,
    candidate_pairs,
    labelled_pairs,
    mark,
    sample_at_shares,
    unlisted_pairs,
)
from clinie.relations.priors import Calibration, adjust_to_priors, estimate_priors, fit_calibration, label_frequencies

MARKERS = ENTITY_MARKERS
HEAD_FILE = "relation_head.pt"
KIND = "relation-classifier"
#: Where a trained model directory (the encoder tagger's) keeps its relation classifier.
RELATIONS_DIR = "relations"
#: How many times the step budget goes over the sampled candidate pairs of an exhaustive
#: annotation (``RelationClassifier._pair_cap``): the candidate pairs of a few long case reports
#: are more than the budget's steps go over once, and an epoch count over all of them grows with
#: the text. Several passes over a sample at the real shares, rather than part of one pass; against
#: one pass over four times the pairs it is not measured yet (``bench.relations --long-notes``).
SAMPLED_EPOCHS = 4
#: A pair to learn: its marked text, its target distribution over the classes, the classes its types allow.
Example = tuple[str, np.ndarray, list[bool]]


def _spec_field(value: Any) -> Any:
    """A relation spec's field as read from JSON: its lists back to tuples."""
    return tuple(value) if isinstance(value, list) else value


@dataclass(frozen=True)
class Scored:
    """A document's candidate pairs and their posteriors as trained (``RelationClassifier.posteriors``)."""

    doc: Document
    pairs: list[Pair]
    posteriors: np.ndarray


class RelationClassifier:
    """Fine-tunes any Hugging Face encoder to label candidate pairs (``NO_RELATION`` or a relation).

    Defaults follow the encoder tagger's (learning rate 1e-4, batch 8; by default, ``epochs=None``,
    ``EPOCHS`` epochs and at least ``MIN_STEPS`` steps, stopped at ``STEP_BUDGET`` steps): they
    were not tuned for relations, on purpose — there is no validation set in the few-shot regime.
    An explicit ``epochs`` is taken as given, and every labelled pair learnt; an explicit
    ``max_steps`` caps any of these. ``max_pairs`` caps the candidate pairs of an exhaustive
    annotation that a fit learns (None: as many as the step budget covers ``SAMPLED_EPOCHS``
    times); ``max_distance`` is the most characters between a candidate pair's spans
    (``clinie.relations.MAX_DISTANCE``), at training and prediction alike.
    """

    def __init__(self, specs: Sequence[RelationSpec], model: str | Path | None = None, *, epochs: int | None = None,
                 learning_rate: float = 1e-4, batch_size: int = 8, window: int = 1, max_subwords: int = 256,
                 seed: int = 13, max_steps: int | None = None, max_pairs: int | None = None,
                 max_distance: int | None = MAX_DISTANCE, device: str = "cpu") -> None:
        from transformers import AutoTokenizer

        if not specs:
            raise ValueError("a relation classifier needs at least one relation label")
        self.specs = tuple(specs)
        self.labels = tuple(s.name for s in self.specs)
        self.classes = (NO_RELATION, *self.labels)
        self.base_model = str(model or encoder_path())
        self.hyperparameters: dict[str, Any] = {
            "epochs": epochs, "learning_rate": learning_rate, "batch_size": batch_size, "window": window,
            "max_subwords": max_subwords, "seed": seed, "max_steps": max_steps, "max_pairs": max_pairs,
            "max_distance": max_distance}
        self.device = device
        self.types = PairTypes(self.specs)
        self.n_labelled_pairs = 0  # the documents' labelled pairs, before sampling (``fit``)
        self.n_train_pairs = 0
        self.n_negative_pairs = 0  # unlisted pairs learnt as NO_RELATION beside listed ones (``fit``)
        self.n_taught_pairs = 0  # pairs of other documents learnt as a teacher read them (``fit``)
        self.listed = False  # trained on listed pairs: their priors are the sample's, not the text's
        self.train_priors = label_frequencies((), self.classes)
        self.calibration = Calibration()
        self.cut_short = False  # whether the step budget stopped the last fit before its epochs
        self._tokenizer = AutoTokenizer.from_pretrained(self.base_model)
        self._tokenizer.add_special_tokens({"additional_special_tokens": list(MARKERS)})
        self._marker_ids = self._tokenizer.convert_tokens_to_ids(["[E1]", "[E2]"])
        self._all_marker_ids = frozenset(self._tokenizer.convert_tokens_to_ids(list(MARKERS)))
        # how many special tokens the tokenizer puts before a text and after it ([CLS] and [SEP])
        bare = self._tokenizer("[E1]", add_special_tokens=False)["input_ids"]
        framed = self._tokenizer("[E1]")["input_ids"]
        lead = framed.index(bare[0])
        self._specials = (lead, len(framed) - lead - len(bare))
        self._encoder: Any = None
        self._head: Any = None

    # --- preprocess / forward -------------------------------------------------------------

    def _encode(self, texts: Sequence[str]) -> Any:
        """The marked texts as a padded batch of at most ``max_subwords`` sub-words each. A longer
        one keeps the sub-words from its first marker to its last, centred in as much context
        as fits, where truncation would keep its beginning: in a long sentence (a list of drugs,
        a table of a note) a late pair would lose its markers and read as the first token (3.8 %
        of DDI's training pairs did)."""
        tokenizer = self._tokenizer
        lead, trail = self._specials
        room = self.hyperparameters["max_subwords"] - lead - trail
        rows = []
        for ids in tokenizer(list(texts), verbose=False)["input_ids"]:
            words = ids[lead : len(ids) - trail]
            if len(words) > room:
                marked = [n for n, i in enumerate(words) if i in self._all_marker_ids] or [0]
                context = max(room - (marked[-1] + 1 - marked[0]), 0)
                start = max(0, min(marked[0] - context // 2, len(words) - room))
                ids = ids[:lead] + words[start : start + room] + ids[len(ids) - trail :]
            rows.append(ids)
        return tokenizer.pad({"input_ids": rows}, return_tensors="pt")

    def _forward(self, texts: Sequence[str]):
        """Logits over ``classes`` for each marked text."""
        import torch

        batch = self._encode(texts).to(self.device)
        hidden = self._encoder(**batch).last_hidden_state
        rows = torch.arange(hidden.shape[0], device=self.device)
        pooled = []
        for marker in self._marker_ids:
            found = batch["input_ids"] == marker
            # a marker cut off (a pair longer than max_subwords) falls back to the first token
            position = torch.where(found.any(1), found.int().argmax(1), torch.zeros_like(rows))
            pooled.append(hidden[rows, position])
        return self._head(torch.cat(pooled, dim=-1))

    def _new_head(self, hidden_size: int):
        import torch

        head = torch.nn.Sequential(torch.nn.Dropout(0.1), torch.nn.Linear(2 * hidden_size, len(self.classes)))
        return head.to(self.device)

    def fit(self, docs: Sequence[Document], *, listed: bool = False, negatives: int = 0,
            taught: Sequence[Scored] = (), calibration_folds: int = 0, progress: bool = False,
            on_step: Callable[[int, int], None] | None = None) -> RelationClassifier:
        """Fine-tune a fresh copy of the base encoder on the labelled pairs of ``docs``.

        Exhaustive annotations (the default): every candidate pair is labelled, and when they
        are more than ``_pair_cap`` (long notes) a seeded sample of them is learnt, each label
        at its share of them (``sample_at_shares``): the priors learnt are the text's, so
        ``predict`` labels as trained, and the step budget goes over the sample several times
        instead of over a part of an epoch.
        ``listed=True`` for pair-level files (see ``labelled_pairs``): the listed pairs are all
        learnt. Type constraints of the relations the config does not declare are learned from
        ``docs`` here.
        ``negatives`` (listed pairs only): that many of the candidate pairs the file leaves
        unlisted (``unlisted_pairs``, drawn with the seed) are learnt as ``NO_RELATION`` beside
        the listed ones, which keep half of every epoch (``annotated_repeats``): a sample drawn
        by label holds few negatives, and none of the kinds most candidate pairs are.
        ``taught``: a teacher's reading of other documents' candidate pairs (``score`` of
        unannotated text, on the spans a tagger found there), each pair learnt as the teacher's
        posterior row over ``classes`` — its doubts kept, as soft labels — beside the unlisted
        negatives; the labelled pairs still keep half of every epoch.
        ``calibration_folds`` (0: none) first fine-tunes that many copies, each with one fold of
        the listed pairs held out, and fits a ``Calibration`` to the held-out posteriors: the
        posteriors are then calibrated, which estimating the pairs' priors needs (``pair_priors``),
        at that many more fits' cost.
        ``on_step(done, total)`` is called after every optimiser step, counted over all the fits
        (the calibration folds' too): what the backend shows of a training in flight.
        """
        hp = self.hyperparameters
        if negatives and not listed:
            raise ValueError("negatives are drawn from the pairs a listed file leaves out; "
                             "an exhaustive annotation's unlabelled pairs are all negatives already")
        self.types = PairTypes.learn(self.specs, docs)
        if any(s.posteriors.shape != (len(s.pairs), len(self.classes)) for s in taught):
            raise ValueError(f"a teacher's posteriors must have a row per pair and a column per {self.classes}")
        one_hot = dict(zip(self.classes, np.eye(len(self.classes), dtype=np.float32)))
        split = functools.cache(split_sentences)  # each text split once, however many pairs it holds

        def example(doc: Document, pair: Pair, target: np.ndarray) -> Example:
            return mark(doc.text, pair, sentences=split(doc.text)), target, self._allowed(pair)

        labelled = [((doc, pair), label) for doc in docs
                    for pair, label in labelled_pairs(doc, self.types, hp["window"], listed=listed,
                                                      max_distance=hp["max_distance"]) if label in one_hot]
        n_labelled = len(labelled)
        if not listed and (cap := self._pair_cap()) is not None:
            labelled = sample_at_shares(labelled, cap, hp["seed"])
        examples = [example(doc, pair, one_hot[label]) for (doc, pair), label in labelled]
        if not examples:
            raise ValueError("no candidate pairs to learn relations from")
        unlisted = unlisted_pairs(docs, self.types, hp["window"], hp["max_distance"]) if negatives else []
        presumed = [example(doc, pair, one_hot[NO_RELATION])
                    for doc, pair in random.Random(hp["seed"]).sample(unlisted, min(negatives, len(unlisted)))]
        read = [example(s.doc, pair, row.astype(np.float32))
                for s in taught for pair, row in zip(s.pairs, s.posteriors)]
        extra = presumed + read
        folds: list[set[int]] = []
        if calibration_folds > 1:
            order = np.random.default_rng(hp["seed"]).permutation(len(examples))
            folds = [set(order[fold::calibration_folds].tolist()) for fold in range(calibration_folds)]
        # every fit's steps are known beforehand: progress is reported over all of them
        sizes = [len(examples) - len(out) for out in folds] + [len(examples)]
        steps = [self._steps(n, len(extra)) for n in sizes]
        reports = [None if on_step is None else self._report(on_step, sum(steps[:n]), sum(steps))
                   for n in range(len(steps))]
        self.calibration = Calibration()
        if folds:
            held_out: list[np.ndarray] = []
            labels: list[int] = []
            for out, report in zip(folds, reports):
                self._train([e for i, e in enumerate(examples) if i not in out], extra, progress, report)
                part = [examples[i] for i in sorted(out)]
                held_out.append(self._probabilities([t for t, _, _ in part], [a for _, _, a in part]))
                labels.extend(int(target.argmax()) for _, target, _ in part)
            self.calibration = fit_calibration(np.concatenate(held_out), labels)
        self.cut_short = self._train(examples, extra, progress, reports[-1])
        self.n_labelled_pairs = n_labelled
        self.n_train_pairs, self.n_negative_pairs, self.n_taught_pairs = len(examples), len(presumed), len(read)
        self.listed = listed
        repeats = annotated_repeats(len(examples), len(extra))
        self.train_priors = np.mean([target for _, target, _ in examples * repeats + extra], axis=0).astype(float)
        return self

    def _allowed(self, pair: Pair) -> list[bool]:
        """Which ``classes`` the pair's span types allow."""
        return [c == NO_RELATION or c in pair.labels for c in self.classes]

    def _epochs(self, n_examples: int) -> int:
        hp = self.hyperparameters
        return default_epochs(n_examples, batch_size=hp["batch_size"], epochs=hp["epochs"])

    def _step_budget(self) -> int | None:
        return step_budget(epochs=self.hyperparameters["epochs"], max_steps=self.hyperparameters["max_steps"])

    def _pair_cap(self) -> int | None:
        """How many of an exhaustive annotation's candidate pairs a fit learns: ``max_pairs`` when
        given; else as many as the step budget goes over ``SAMPLED_EPOCHS`` times (at least a
        batch), and all of them when there is no budget (explicit epochs)."""
        hp = self.hyperparameters
        if hp["max_pairs"] is not None:
            return hp["max_pairs"]
        budget = self._step_budget()
        return None if budget is None else max(budget * hp["batch_size"] // SAMPLED_EPOCHS, hp["batch_size"])

    def _schedule(self, n_examples: int, n_extra: int) -> tuple[int, int]:
        """How many times each of ``n_examples`` enters an epoch beside ``n_extra`` others, and
        the epochs: those the examples alone would get, divided by those repeats."""
        repeats = annotated_repeats(n_examples, n_extra)
        return repeats, math.ceil(self._epochs(n_examples) / repeats)

    def _steps(self, n_examples: int, n_extra: int) -> int:
        """The optimiser steps of a fit on ``n_examples`` and ``n_extra`` others."""
        hp = self.hyperparameters
        repeats, epochs = self._schedule(n_examples, n_extra)
        return planned_steps(n_examples * repeats + n_extra, epochs=epochs, batch_size=hp["batch_size"],
                             max_steps=self._step_budget())

    @staticmethod
    def _report(on_step: Callable[[int, int], None], before: int, total: int) -> Callable[[int, int], None]:
        """``on_step`` for one of several fits: its steps counted after the ``before`` of the others."""
        return lambda done, _: on_step(before + done, total)

    def _train(self, examples: list[Example], extra: list[Example], progress: bool,
               on_step: Callable[[int, int], None] | None = None) -> bool:
        """Fine-tune a fresh copy on ``examples`` and the ``extra`` ones (presumed negatives, a
        teacher's soft labels), the examples repeated to keep half of every epoch and seen as
        often as they would be alone; the loss is cross-entropy against each target distribution.
        True when the step budget cut the epochs short."""
        import torch
        from transformers import AutoModel

        hp = self.hyperparameters
        torch.manual_seed(hp["seed"])
        self._encoder = AutoModel.from_pretrained(self.base_model).to(self.device)
        self._encoder.resize_token_embeddings(len(self._tokenizer))
        self._head = self._new_head(self._encoder.config.hidden_size)
        self._encoder.train()
        self._head.train()

        def batch_loss(part: list[Example]):
            target = torch.from_numpy(np.stack([target for _, target, _ in part])).to(self.device)
            return torch.nn.functional.cross_entropy(self._forward([text for text, _, _ in part]), target)

        repeats, epochs = self._schedule(len(examples), len(extra))
        cut_short = fine_tune([*self._encoder.parameters(), *self._head.parameters()], examples * repeats + extra,
                              batch_loss, epochs=epochs, learning_rate=hp["learning_rate"],
                              batch_size=hp["batch_size"], seed=hp["seed"],
                              max_steps=self._step_budget(), progress=progress, desc="fine-tuning relations",
                              on_step=on_step)
        self._encoder.eval()
        self._head.eval()
        return cut_short

    def _probabilities(self, texts: Sequence[str], allowed: Sequence[list[bool]], batch_size: int = 32) -> np.ndarray:
        """Uncalibrated P(class | marked text), labels not ``allowed`` masked to 0; batched by
        length, so that a long note's pairs are padded to their neighbours', not to the longest."""
        import torch

        rows = np.zeros((len(texts), len(self.classes)))
        order = sorted(range(len(texts)), key=lambda n: len(texts[n]))
        with torch.inference_mode():
            for b in range(0, len(order), batch_size):
                part = order[b : b + batch_size]
                logits = self._forward([texts[n] for n in part]).float()
                mask = torch.tensor([allowed[n] for n in part], device=logits.device)
                rows[part] = torch.softmax(logits.masked_fill(~mask, float("-inf")), dim=-1).cpu().numpy()
        return rows

    # --- postprocess ----------------------------------------------------------------------

    def posteriors(self, doc: Document, pairs: Sequence[Pair], batch_size: int = 32) -> np.ndarray:
        """P(class | pair) as trained (calibrated, if fitted so), a row per pair and a column per
        ``classes``; a label the pair's types forbid has probability 0. The document's pairs are
        batched among themselves, so that the same pairs get the same figures however they are
        asked for (``classify``, ``score``)."""
        if self._encoder is None:
            raise RuntimeError("the relation classifier is not trained: call fit() or load()")
        sentences = split_sentences(doc.text)
        texts = [mark(doc.text, p, sentences=sentences) for p in pairs]
        return self.calibration.apply(self._probabilities(texts, [self._allowed(p) for p in pairs], batch_size))

    def classify(self, doc: Document, pairs: Sequence[Pair], batch_size: int = 32) -> list[tuple[str, float]]:
        """The label and its probability for each pair, as trained (listed pairs: their sample's
        priors are unknown, so none are assumed); labels a pair's types forbid are masked."""
        probabilities = self.posteriors(doc, pairs, batch_size)
        return [(self.classes[best], float(row[best]))
                for row, best in zip(probabilities, probabilities.argmax(axis=1))]

    def score(self, docs: Sequence[Document]) -> list[Scored]:
        """Each document's candidate pairs (at most ``max_distance`` characters apart: a long note's
        pairs grow with its spans, not with their square) with their posteriors as trained."""
        hp = self.hyperparameters
        out = []
        for doc in docs:
            pairs = candidate_pairs(doc, self.types, hp["window"], hp["max_distance"])
            out.append(Scored(doc, pairs, self.posteriors(doc, pairs)))
        return out

    def pair_priors(self, scored: Sequence[Scored]) -> np.ndarray | None:
        """The class priors of the candidate pairs in ``scored`` when they differ from the
        training ones, else None. Trained on listed pairs (sampled by label, see
        ``clinie.relations.priors``), they are estimated by EM from the posteriors of these
        very pairs, no label used; trained on the candidate pairs of its documents (all, or a
        sample at every label's real share: ``sample_at_shares``), the classifier learnt the
        real priors already."""
        if not self.listed:
            return None
        rows = [s.posteriors for s in scored]
        return estimate_priors(np.concatenate(rows) if rows else np.zeros((0, len(self.classes))), self.train_priors)

    def label(self, scored: Sequence[Scored], priors: np.ndarray | None = None) -> list[Document]:
        """Each scored document with its spans kept and a relation for each pair whose most
        probable class (under ``priors``, if given) is not ``NO_RELATION``."""
        out = []
        for s in scored:
            probabilities = s.posteriors if priors is None else \
                adjust_to_priors(s.posteriors, self.train_priors, priors)
            relations = [Relation(pair.head.id, pair.tail.id, self.classes[best], float(row[best]))
                         for pair, row, best in zip(s.pairs, probabilities, probabilities.argmax(axis=1))
                         if self.classes[best] != NO_RELATION]
            out.append(s.doc.with_annotations(s.doc.entities, relations))
        return out

    def predict(self, docs: Sequence[Document]) -> list[Document]:
        """Each document with its spans kept and its relations predicted between them, labelled
        as trained. Not under the priors ``pair_priors`` estimates: on DDI they gained little,
        lost once the posteriors were calibrated, and a weakly trained classifier's estimate
        went to all ``NO_RELATION`` (``bench/relations.py`` measures both)."""
        return self.label(self.score(docs))

    # --- persistence ----------------------------------------------------------------------

    def save(self, directory: str | Path) -> Path:
        import torch

        if self._encoder is None:
            raise RuntimeError("nothing to save: the relation classifier is not trained")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._encoder.save_pretrained(directory)
        self._tokenizer.save_pretrained(directory)
        torch.save(self._head.state_dict(), directory / HEAD_FILE)
        write_meta(directory, KIND, specs=[asdict(s) for s in self.specs], classes=self.classes,
                   types=self.types.as_dict(), base_model=self.base_model, hyperparameters=self.hyperparameters,
                   n_labelled_pairs=self.n_labelled_pairs, n_train_pairs=self.n_train_pairs,
                   n_negative_pairs=self.n_negative_pairs, n_taught_pairs=self.n_taught_pairs, listed=self.listed,
                   train_priors=self.train_priors.tolist(), calibration=asdict(self.calibration))
        return directory

    @classmethod
    def load(cls, directory: str | Path, device: str = "cpu") -> RelationClassifier:
        import torch
        from transformers import AutoModel

        directory = Path(directory)
        meta = read_meta(directory, KIND)
        specs = [RelationSpec(**{k: _spec_field(v) for k, v in s.items()})
                 for s in meta["specs"]]
        classifier = cls(specs, directory, device=device, **meta["hyperparameters"])
        classifier.base_model = meta["base_model"]
        classifier.types = PairTypes.from_dict(classifier.specs, meta["types"])
        classifier.n_train_pairs = meta["n_train_pairs"]
        classifier.n_labelled_pairs = meta.get("n_labelled_pairs", classifier.n_train_pairs)  # saved before sampling
        classifier.n_negative_pairs = meta.get("n_negative_pairs", 0)
        classifier.n_taught_pairs = meta.get("n_taught_pairs", 0)
        # saved before clinie adapted priors: labelled as trained, as then
        classifier.listed = meta.get("listed", False)
        classifier.train_priors = np.asarray(meta.get("train_priors", classifier.train_priors))
        calibration = meta.get("calibration", {})
        classifier.calibration = Calibration(calibration.get("scale", 1.0), tuple(calibration.get("bias", ())))
        classifier._encoder = AutoModel.from_pretrained(directory).to(device).eval()
        classifier._head = classifier._new_head(classifier._encoder.config.hidden_size)
        # weights_only: the head is a state dict of tensors; a full unpickle of the file could run code
        classifier._head.load_state_dict(torch.load(directory / HEAD_FILE, map_location=device, weights_only=True))
        classifier._head.eval()
        return classifier
