"""Entity-level precision, recall and F1 between gold and predicted documents.

Two matchings, as in the clinical IE literature: **strict** (same start, end and label) and
**partial** (same label and overlapping characters; each gold span matches at most one
prediction). Documents are paired by id; a predicted document with no gold is an error, a gold
document with no prediction counts as predicting nothing.

Example:
    >>> from clinie.core import NO_RELATION, Document, Span
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

from clinie.core import NO_RELATION, Document, Span


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
        results[mode] = _tally(n_gold, n_pred, tp)
    return results


def _tally(n_gold: Counter[str], n_pred: Counter[str], tp: Counter[str]) -> Scores:
    labels = set(n_gold) | set(n_pred)
    per_label = {lab: PRF(tp[lab], n_pred[lab] - tp[lab], n_gold[lab] - tp[lab]) for lab in labels}
    micro = PRF(sum(tp.values()), sum(n_pred.values()) - sum(tp.values()), sum(n_gold.values()) - sum(tp.values()))
    return Scores(per_label, micro)


def _relation_keys(doc: Document) -> list[tuple[tuple[int, int, int, int], str]]:
    """Each relation as (head and tail offsets, label); relations to unknown span ids are errors."""
    by_id = {s.id: s for s in doc.entities}
    keys = []
    for r in doc.relations:
        if r.head not in by_id or r.tail not in by_id:
            raise ValueError(f"document {doc.id!r}: relation {r.label!r} points at a span id it does not have")
        head, tail = by_id[r.head], by_id[r.tail]
        keys.append(((head.start, head.end, tail.start, tail.end), r.label))
    return keys


def evaluate_relations(gold_docs: Iterable[Document], pred_docs: Iterable[Document]) -> dict[str, Scores]:
    """Relation P/R/F1: ``{"strict": Scores, "pairs": Scores}``.

    **strict**: a predicted relation is right when its head and tail spans have exactly the
    gold offsets (direction included) and its label is right — the end-to-end figure when spans
    were predicted too. **pairs**: only the pairs the gold lists are judged (with gold spans
    given, and pair-level files whose negatives are listed as ``NO_RELATION``): each listed
    pair's predicted label, if any, against its gold label; predictions on unlisted pairs are
    not counted. ``NO_RELATION`` is never a label that scores.

    >>> from clinie.core import Relation
    >>> text = "aspirin with warfarin and heparin"
    >>> spans = (Span.from_text(text, 0, 7, "drug", "a"), Span.from_text(text, 13, 21, "drug", "w"),
    ...          Span.from_text(text, 26, 33, "drug", "h"))
    >>> gold = [Document("1", text, spans, (Relation("a", "w", "effect"), Relation("a", "h", "false")))]
    >>> pred = [Document("1", text, spans, (Relation("a", "w", "effect"), Relation("w", "h", "int")))]
    >>> scores = evaluate_relations(gold, pred)
    >>> scores["strict"].micro.precision, scores["pairs"].micro.precision
    (0.5, 1.0)
    """
    gold_by_id = {d.id: d for d in gold_docs}
    pred_by_id = {d.id: d for d in pred_docs}
    if unknown := set(pred_by_id) - set(gold_by_id):
        raise ValueError(f"{len(unknown)} predicted documents have no gold, e.g. {sorted(unknown)[0]!r}")
    counts: dict[str, tuple[Counter[str], Counter[str], Counter[str]]] = \
        {mode: (Counter(), Counter(), Counter()) for mode in ("strict", "pairs")}
    for doc_id, gold in gold_by_id.items():
        gold_keys = _relation_keys(gold)
        pred_keys = [k for k in _relation_keys(pred_by_id[doc_id]) if k[1] != NO_RELATION] \
            if doc_id in pred_by_id else []
        listed = {pair for pair, _ in gold_keys}
        positives = [k for k in gold_keys if k[1] != NO_RELATION]
        for mode, predicted in (("strict", pred_keys), ("pairs", [k for k in pred_keys if k[0] in listed])):
            n_gold, n_pred, tp = counts[mode]
            n_gold.update(label for _, label in positives)
            n_pred.update(label for _, label in predicted)
            remaining = Counter(positives)
            for key in predicted:
                if remaining[key]:
                    remaining[key] -= 1
                    tp[key[1]] += 1
    return {mode: _tally(*c) for mode, c in counts.items()}
