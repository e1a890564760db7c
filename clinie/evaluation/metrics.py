"""Entity-level precision, recall and F1 between gold and predicted documents.

Two matchings, as in the clinical IE literature: **strict** (same start, end and label) and
**partial** (same label and overlapping characters; each gold span matches at most one
prediction). Documents are paired by id; a predicted document with no gold is an error, a gold
document with no prediction counts as predicting nothing.

Example:
    >>> from clinie.core import Document, Span
    >>> text = "breast cancer and ovarian cancer"
    >>> gold = [Document("1", text, (Span.from_text(text, 0, 13, "Disease"),
    ...                              Span.from_text(text, 18, 32, "Disease")))]
    >>> pred = [Document("1", text, (Span.from_text(text, 7, 13, "Disease"),
    ...                              Span.from_text(text, 18, 32, "Disease")))]
    >>> evaluate_spans(gold, pred)["strict"].micro.f1
    0.5
    >>> evaluate_spans(gold, pred)["partial"].micro.f1
    1.0
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from clinie.core import Document, Span


@dataclass(frozen=True)
class PRF:
    tp: int
    fp: int
    fn: int

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    def as_dict(self) -> dict[str, float | int]:
        return {"precision": round(self.precision, 4), "recall": round(self.recall, 4),
                "f1": round(self.f1, 4), "tp": self.tp, "fp": self.fp, "fn": self.fn,
                "support": self.tp + self.fn}


@dataclass(frozen=True)
class Scores:
    per_label: dict[str, PRF]
    micro: PRF

    @property
    def macro_f1(self) -> float:
        """Mean F1 over the labels that occur in gold or predictions."""
        return sum(s.f1 for s in self.per_label.values()) / len(self.per_label) if self.per_label else 0.0

    def as_dict(self) -> dict:
        return {"micro": self.micro.as_dict(), "macro_f1": round(self.macro_f1, 4),
                "per_label": {label: s.as_dict() for label, s in sorted(self.per_label.items())}}


def _strict_matches(gold: list[Span], pred: list[Span]) -> list[Span]:
    remaining = Counter((s.start, s.end, s.label) for s in gold)
    matched = []
    for p in pred:
        key = (p.start, p.end, p.label)
        if remaining[key]:
            remaining[key] -= 1
            matched.append(p)
    return matched


def _partial_matches(gold: list[Span], pred: list[Span]) -> list[Span]:
    unused = list(gold)
    matched = []
    for p in sorted(pred, key=lambda s: (s.start, s.end)):
        hit = next((g for g in unused if g.label == p.label and g.overlaps(p)), None)
        if hit is not None:
            unused.remove(hit)
            matched.append(p)
    return matched


def evaluate_spans(gold_docs: Iterable[Document], pred_docs: Iterable[Document]) -> dict[str, Scores]:
    """``{"strict": Scores, "partial": Scores}`` over all documents."""
    gold_by_id = {d.id: d for d in gold_docs}
    pred_by_id = {d.id: d for d in pred_docs}
    if unknown := set(pred_by_id) - set(gold_by_id):
        raise ValueError(f"{len(unknown)} predicted documents have no gold, e.g. {sorted(unknown)[0]!r}")
    results = {}
    for mode, match in (("strict", _strict_matches), ("partial", _partial_matches)):
        tp: Counter[str] = Counter()
        n_gold: Counter[str] = Counter()
        n_pred: Counter[str] = Counter()
        for doc_id, gold in gold_by_id.items():
            pred = pred_by_id.get(doc_id)
            pred_spans = list(pred.entities) if pred else []
            n_gold.update(s.label for s in gold.entities)
            n_pred.update(s.label for s in pred_spans)
            tp.update(s.label for s in match(list(gold.entities), pred_spans))
        labels = set(n_gold) | set(n_pred)
        per_label = {lab: PRF(tp[lab], n_pred[lab] - tp[lab], n_gold[lab] - tp[lab]) for lab in labels}
        micro = PRF(sum(tp.values()), sum(n_pred.values()) - sum(tp.values()),
                    sum(n_gold.values()) - sum(tp.values()))
        results[mode] = Scores(per_label, micro)
    return results
