"""True few-shot model selection: cross-validation over only the examples a project really has.

No large validation set is assumed (Perez et al., NeurIPS 2021: selecting on one overestimates
few-shot performance). Over the ``n`` annotated documents, K-fold cross-validation (leave-one-
out below ``loo_below``) compares strategies — the LLM with ``k`` retrieved demonstrations, the
fine-tuned encoder, the probe (a tagger on the frozen LLM's hidden states), filter-then-rerank
and filter-then-probe with several bands — and picks the best by mean F1 over folds (ties go to
the strategy listed first: list the cheaper first; ``prefer`` names one kept while within one
standard error of the best, see ``pick``). A budget on the share of sentences the LLM
may see (``max_llm_share``, as measured in the cross-validation) rules out the strategies above
it. Every fold learns from the other folds only: its documents are in none of the encoder's or
the probe's training set and the LLM's demonstration pool.

Strategies are anything with a ``name`` (``clinie.strategies.Strategy``), fitted by a ``Build``.
Folds are seeded:

    >>> [len(f) for f in folds(12, k=5, loo_below=10, seed=0)]
    [3, 3, 2, 2, 2]
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from clinie.core import Document, Extractor, LabelSpec, split_sentences
from clinie.evaluation.metrics import evaluate_spans


class Candidate(Protocol):
    """What cross-validation compares: a strategy, known by its name."""

    @property
    def name(self) -> str: ...


#: Fits a strategy on the training documents (``clinie.strategies.StrategyBuilder``).
Build = Callable[[Any, Sequence[Document]], Extractor]


def folds(n: int, k: int = 5, loo_below: int = 10, seed: int = 0) -> list[list[int]]:
    """Held-out document indices per fold: leave-one-out below ``loo_below`` documents, else
    ``k`` folds of a seeded shuffle (sizes differ by one at most). Every index in exactly one."""
    if n < 2:
        raise ValueError(f"cross-validation needs at least 2 documents, not {n}")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    parts = n if n < loo_below else min(k, n)
    return [sorted(order[i::parts]) for i in range(parts)]


def sentence_share(docs: Sequence[Document]) -> float:
    """The share of the sentences of predicted ``docs`` that went to the LLM (``meta["llm"]``);
    0 where no LLM was involved.

    >>> sentence_share([Document("a", "x", meta={"llm": {"sentences": 3, "sentences_to_llm": 1}}), Document("b", "y")])
    0.3333333333333333
    """
    costs = [d.meta["llm"] for d in docs if "llm" in d.meta]
    sentences = sum(c.get("sentences", 0) for c in costs)
    return sum(c.get("sentences_to_llm", 0) for c in costs) / sentences if sentences else 0.0


#: The characters of a document a sampled strategy reads (``cross_validate``'s ``sample``): its
#: sentences up to the first that ends past them. A strategy scored on a sample costs seconds a
#: sentence; a long note's every sentence would cost it an hour.
SAMPLED_CHARS = 400


def cut(doc: Document, end: int) -> Document:
    """``doc``'s text up to ``end``, with the spans, and the relations between spans, wholly before it.

    >>> from clinie.core import Span
    >>> doc = Document("n", "Gout. Fever and rash.", (Span(0, 4, "D", "Gout"), Span(16, 20, "D", "rash")))
    >>> [s.text for s in cut(doc, 5).entities], cut(doc, 5).text
    (['Gout'], 'Gout.')
    """
    if end >= len(doc.text):
        return doc
    kept = tuple(s for s in doc.entities if s.end <= end)
    ids = {s.id for s in kept}
    return replace(doc, text=doc.text[:end], entities=kept,
                   relations=tuple(r for r in doc.relations if r.head in ids and r.tail in ids))


def leading(doc: Document, chars: int = SAMPLED_CHARS) -> Document:
    """``doc`` cut after its first sentence that ends at or past ``chars`` (whole when shorter): a
    long note's opening, a sentence or a short note whole.

    >>> leading(Document("n", "Gout. Fever and rash."), 3).text
    'Gout.'
    """
    return cut(doc, next((end for _, end in split_sentences(doc.text) if end >= chars), len(doc.text)))


@dataclass
class StrategyRun:
    """A strategy's cross-validated predictions (one per document, in the pool's order, or per
    document of its sample: ``cross_validate``'s ``sample``) and F1s (per fold it scored)."""

    strategy: Candidate
    predictions: list[Document]
    fold_f1: list[float]

    @property
    def mean_f1(self) -> float:
        return statistics.fmean(self.fold_f1)

    @property
    def sd_f1(self) -> float:
        return statistics.stdev(self.fold_f1) if len(self.fold_f1) > 1 else 0.0

    @property
    def llm_share(self) -> float:
        """The share of the pool's sentences it sent to the LLM, over all folds."""
        return sentence_share(self.predictions)


@dataclass
class CrossValidation:
    docs: list[Document]
    folds: list[list[int]]
    runs: dict[str, StrategyRun] = field(default_factory=dict)
    max_llm_share: float = 1.0
    prefer: str = ""
    incumbent: str = ""  # the strategy serving now, among the runs: what a challenger must not fall below

    @property
    def selected(self) -> Candidate:
        """The strategy ``pick`` chooses from these figures (a strategy scored on a sample of the
        documents only as the incumbent: its figures are not comparable with the others')."""
        figures = {name: {"mean_f1": r.mean_f1, "sd_f1": r.sd_f1, "fold_f1": r.fold_f1, "llm_share": r.llm_share}
                   for name, r in self.runs.items()
                   if name == self.incumbent or len(r.predictions) >= len(self.docs)}
        return self.runs[pick(figures, max_llm_share=self.max_llm_share, prefer=self.prefer,
                              incumbent=self.incumbent, versus=self.versus_incumbent())].strategy

    def versus_incumbent(self) -> dict[str, float] | None:
        """Each strategy's F1 over the documents the incumbent was scored on (as far as it read
        them: ``leading``), when that is a sample of them (an incumbent that costs seconds a
        sentence); None when it is all."""
        if self.incumbent not in self.runs:
            return None
        scored = {d.id: len(d.text) for d in self.runs[self.incumbent].predictions}
        if len(scored) == len(self.docs) and all(scored[d.id] == len(d.text) for d in self.docs):
            return None
        gold = [cut(d, scored[d.id]) for d in self.docs if d.id in scored]
        return {name: evaluate_spans(gold, [cut(d, scored[d.id]) for d in run.predictions if d.id in scored]
                                     )["strict"].micro.f1 for name, run in self.runs.items()}

    def fold_predictions(self, name: str) -> list[tuple[list[Document], list[Document]]]:
        """Per fold, (gold, predicted) documents of strategy ``name`` (those it was scored on)."""
        predicted = {d.id: d for d in self.runs[name].predictions}
        return [([self.docs[i] for i in fold if self.docs[i].id in predicted],
                 [predicted[self.docs[i].id] for i in fold if self.docs[i].id in predicted]) for fold in self.folds]

    def summary(self) -> dict[str, Any]:
        return {"n_documents": len(self.docs), "n_folds": len(self.folds),
                "scheme": "leave-one-out" if all(len(f) == 1 for f in self.folds) else f"{len(self.folds)}-fold",
                "selected": self.selected.name, "max_llm_share": self.max_llm_share, "prefer": self.prefer,
                "incumbent": self.incumbent or None,
                **({"versus_incumbent": {name: round(f1, 4) for name, f1 in versus.items()},
                    "incumbent_documents": len(self.runs[self.incumbent].predictions)}
                   if (versus := self.versus_incumbent()) is not None else {}),
                "strategies": {name: {"mean_f1": round(r.mean_f1, 4), "sd_f1": round(r.sd_f1, 4),
                                      "fold_f1": [round(f, 4) for f in r.fold_f1], "llm_share": round(r.llm_share, 4)}
                               for name, r in self.runs.items()}}


def pick(figures: Mapping[str, Mapping[str, Any]], *, max_llm_share: float = 1.0, prefer: str = "",
         incumbent: str = "", versus: Mapping[str, float] | None = None) -> str:
    """The strategy to serve, from each one's cross-validated ``mean_f1``, ``sd_f1`` (over the
    folds), ``fold_f1`` and ``llm_share``: the best mean F1 among those within the LLM budget (the
    first listed among equals; when none is within it, the one that sends the LLM the fewest
    sentences) — unless ``prefer`` is within the budget and within one standard error of that
    best mean (``sd_f1 / sqrt(folds)``), then ``prefer``. Folds of a few sentences cannot rank
    close strategies: the one-standard-error rule keeps the one the measurements favour at every
    pool size (the probe; docs/results.md) unless another is clearly better.

    Never a strategy below the ``incumbent`` (the one serving now, within the budget) on the same
    folds: a preference cannot swap in a worse version; the incumbent stays unless the choice
    reaches its mean — or, with ``versus`` (each one's F1 on the documents the incumbent was
    scored on, when that is a sample), its F1 on those.

    >>> figures = {"encoder": {"mean_f1": 0.60, "sd_f1": 0.20, "fold_f1": [0.4, 0.8], "llm_share": 0.0},
    ...            "probe": {"mean_f1": 0.50, "sd_f1": 0.10, "fold_f1": [0.4, 0.6], "llm_share": 1.0}}
    >>> pick(figures), pick(figures, prefer="probe"), pick(figures, prefer="probe", max_llm_share=0.5)
    ('encoder', 'probe', 'encoder')
    >>> pick(figures, prefer="probe", incumbent="encoder"), pick(figures, incumbent="probe")
    ('encoder', 'encoder')
    """
    names = list(figures)
    eligible = [n for n in names if figures[n]["llm_share"] <= max_llm_share] or \
        [min(names, key=lambda n: figures[n]["llm_share"])]
    best = max(eligible, key=lambda n: figures[n]["mean_f1"])  # max keeps the first of equals
    choice = best
    if prefer in eligible and prefer != best:
        standard_error = figures[best]["sd_f1"] / math.sqrt(len(figures[best]["fold_f1"]))
        if figures[prefer]["mean_f1"] >= figures[best]["mean_f1"] - standard_error:
            choice = prefer
    if incumbent in eligible:
        f1 = versus if versus is not None else {name: figures[name]["mean_f1"] for name in (choice, incumbent)}
        if f1[choice] < f1[incumbent]:
            return incumbent
    return choice


def cross_validate(docs: Sequence[Document], strategies: Sequence[Candidate], build: Build, *, k: int = 5,
                   loo_below: int = 10, seed: int = 0, max_llm_share: float = 1.0, prefer: str = "",
                   incumbent: str = "", progress: bool = False, on_fit: Callable[[int, int], None] | None = None,
                   into: CrossValidation | None = None, sample: Mapping[str, int] | None = None) -> CrossValidation:
    """Every strategy fitted on each fold's complement and run on the fold (see module doc);
    ``on_fit(done, total)`` is called before the first fit and after each (a caller's progress:
    how many there will be is known at once; it may raise to stop). With ``into``, a cross-
    validation of the same documents, the strategies join its runs on its folds (comparisons made
    in stages: the likeliest winner first), and it is returned with ``incumbent`` updated.
    ``sample`` names strategies scored on that many documents only (the first of a seeded order,
    each in its fold, read as far as ``leading`` cuts it): an incumbent that costs seconds a
    sentence, compared on them alone (``CrossValidation.versus_incumbent``)."""
    if not 0 <= max_llm_share <= 1:
        raise ValueError(f"max_llm_share {max_llm_share} is not a share of sentences (0 to 1)")
    from tqdm.auto import tqdm

    docs = list(docs)
    if len({d.id for d in docs}) != len(docs):
        raise ValueError("document ids repeat: folds could not keep a document out of its own training set")
    if into is None:
        cv = CrossValidation(docs, folds(len(docs), k, loo_below, seed), max_llm_share=max_llm_share, prefer=prefer,
                             incumbent=incumbent)
    elif [d.id for d in into.docs] == [d.id for d in docs]:
        cv = into
        cv.incumbent = incumbent
    else:
        raise ValueError("the strategies must join a cross-validation of the same documents")
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    scored = {s.name: set(order[:max(1, sample[s.name])]) if sample and s.name in sample else set(order)
              for s in strategies}
    fits = [(fold, s) for fold in cv.folds for s in strategies if scored[s.name] & set(fold)]
    predictions: dict[str, list[Document | None]] = {s.name: [None] * len(docs) for s in strategies}
    fold_f1: dict[str, list[float]] = {s.name: [] for s in strategies}
    steps = tqdm(total=len(fits), desc="cross-validation", unit="fit", disable=not progress)
    if on_fit is not None:
        on_fit(0, len(fits))
    for done, (fold, strategy) in enumerate(fits, 1):
        held = set(fold)
        train = [d for i, d in enumerate(docs) if i not in held]
        tested = [i for i in fold if i in scored[strategy.name]]
        test = [leading(docs[i]) if sample and strategy.name in sample else docs[i] for i in tested]
        predicted = build(strategy, train).predict(test)
        for i, doc in zip(tested, predicted):
            predictions[strategy.name][i] = doc
        fold_f1[strategy.name].append(evaluate_spans(test, predicted)["strict"].micro.f1)
        steps.update()
        if on_fit is not None:
            on_fit(done, len(fits))
    steps.close()
    for strategy in strategies:
        cv.runs[strategy.name] = StrategyRun(strategy, [d for d in predictions[strategy.name] if d is not None],
                                             fold_f1[strategy.name])
    return cv


def subsample(pool: Sequence[Document], size: int, seed: int) -> list[Document]:
    """``size`` documents of ``pool`` drawn with ``seed`` (all of them, shuffled, when size >= n)."""
    return random.Random(seed).sample(list(pool), min(size, len(pool)))


def label_specs(docs: Sequence[Document], described: Sequence[LabelSpec] = ()) -> list[LabelSpec]:
    """The span labels of ``docs`` (first seen first), with descriptions where ``described`` has one."""
    known = {spec.name: spec for spec in described}
    names = dict.fromkeys([*known, *(s.label for d in docs for s in d.entities)])
    return [known.get(name, LabelSpec(name)) for name in names]


def learning_curve(docs: Sequence[Document], strategies: Sequence[Candidate], build: Build, sizes: Sequence[int], *,
                   repeats: int = 3, seed: int = 0, progress: bool = False) -> dict[str, list[dict[str, float]]]:
    """F1 against the number of annotations, from the annotations alone: for each size, ``repeats``
    seeded subsamples are learnt from and the remaining documents scored; per strategy and size,
    the mean F1 and the mean of the bootstrap intervals (over the scored documents)."""
    from tqdm.auto import tqdm

    from clinie.evaluation.analysis import bootstrap_f1, document_counts

    sizes = [size for size in sizes if 1 <= size < len(docs)]
    points: dict[str, list[dict[str, float]]] = {s.name: [] for s in strategies}
    steps = tqdm(total=len(sizes) * repeats * len(strategies), desc="learning curve", unit="fit", disable=not progress)
    for size in sizes:
        scored: dict[str, list[tuple[float, float, float]]] = {s.name: [] for s in strategies}
        for r in range(repeats):
            train = subsample(docs, size, seed + r)
            chosen = {d.id for d in train}
            rest = [d for d in docs if d.id not in chosen]
            for strategy in strategies:
                predicted = build(strategy, train).predict(rest)
                counts = document_counts(rest, predicted)
                low, high = bootstrap_f1(counts, seed=seed + r)
                scored[strategy.name].append((evaluate_spans(rest, predicted)["strict"].micro.f1, low, high))
                steps.update()
        for name, values in scored.items():
            points[name].append({"x": size, "y": statistics.fmean(v[0] for v in values),
                                 "low": statistics.fmean(v[1] for v in values),
                                 "high": statistics.fmean(v[2] for v in values)})
    steps.close()
    return points
