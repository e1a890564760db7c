"""What a report says beyond one F1: intervals, kinds of errors, confusion of labels, worst documents.

Intervals are percentile bootstraps over *documents* (a note's spans are not independent):
documents are resampled with replacement, micro P/R/F1 recomputed from their summed counts.

Example:
    >>> from clinie.core import Span
    >>> text = "breast cancer and asthma"
    >>> gold = [Document("1", text, (Span.from_text(text, 0, 13, "Disease"), Span.from_text(text, 18, 24, "Disease")))]
    >>> pred = [Document("1", text, (Span.from_text(text, 7, 13, "Disease"),))]
    >>> error_kinds(gold, pred)
    {'exact': 0, 'boundary': 1, 'label': 0, 'label_and_boundary': 0, 'missed': 1, 'spurious': 0}
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from clinie.core import Document, Span

NONE = "(none)"  # the row/column of the confusion matrix for "no span there"


def _paired(gold_docs: Sequence[Document], pred_docs: Sequence[Document]) -> list[tuple[Document, Document | None]]:
    pred = {d.id: d for d in pred_docs}
    return [(g, pred.get(g.id)) for g in gold_docs]


def document_counts(gold_docs: Sequence[Document], pred_docs: Sequence[Document],
                    label: str | None = None) -> np.ndarray:
    """Per gold document: strict (tp, fp, fn), for one label or all."""
    rows = []
    for gold, pred in _paired(gold_docs, pred_docs):
        g = Counter((s.start, s.end, s.label) for s in gold.entities if label in (None, s.label))
        p = Counter((s.start, s.end, s.label) for s in (pred.entities if pred else ()) if label in (None, s.label))
        tp = sum((g & p).values())
        rows.append((tp, sum(p.values()) - tp, sum(g.values()) - tp))
    return np.asarray(rows, dtype=float).reshape(-1, 3)


def _f1(counts: np.ndarray) -> np.ndarray:
    tp, fp, fn = counts[..., 0], counts[..., 1], counts[..., 2]
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
    return f1


def bootstrap_f1(counts: np.ndarray, n: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of micro F1 over documents resampled with replacement.

    >>> counts = np.array([[1, 0, 0], [0, 1, 1], [1, 1, 0], [2, 0, 1]], dtype=float)
    >>> low, high = bootstrap_f1(counts, seed=1)
    >>> low < float(_f1(counts.sum(0))) < high
    True
    """
    if len(counts) == 0:
        return 0.0, 0.0
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(counts), size=(n, len(counts)))
    f1 = _f1(counts[picks].sum(axis=1))
    tail = (1 - level) / 2 * 100
    return float(np.percentile(f1, tail)), float(np.percentile(f1, 100 - tail))


def per_label(gold_docs: Sequence[Document], pred_docs: Sequence[Document], n: int = 1000,
              seed: int = 0) -> dict[str, dict[str, float]]:
    """Strict P/R/F1 per label and micro over all (key ``"all"``), each F1 with its interval."""
    labels = sorted({s.label for d in (*gold_docs, *pred_docs) for s in d.entities})
    out = {}
    for label in [*labels, None]:
        counts = document_counts(gold_docs, pred_docs, label)
        tp, fp, fn = counts.sum(axis=0) if len(counts) else (0.0, 0.0, 0.0)
        low, high = bootstrap_f1(counts, n, seed)
        out["all" if label is None else label] = {
            "precision": tp / (tp + fp) if tp + fp else 0.0, "recall": tp / (tp + fn) if tp + fn else 0.0,
            "f1": float(_f1(np.array([tp, fp, fn]))), "f1_low": low, "f1_high": high, "support": int(tp + fn)}
    return out


def _best_overlap(span: Span, others: Sequence[Span]) -> Span | None:
    overlapping = [o for o in others if o.overlaps(span)]
    return max(overlapping, key=lambda o: min(o.end, span.end) - max(o.start, span.start), default=None)


def error_kinds(gold_docs: Sequence[Document], pred_docs: Sequence[Document]) -> dict[str, int]:
    """Each gold span judged once by its best-overlapping prediction: exact, boundary (same label,
    other offsets), label (same offsets, other label), label_and_boundary, missed; predictions
    overlapping no gold span are spurious."""
    kinds = dict.fromkeys(("exact", "boundary", "label", "label_and_boundary", "missed", "spurious"), 0)
    for gold, pred in _paired(gold_docs, pred_docs):
        predicted = list(pred.entities) if pred else []
        for span in gold.entities:
            hit = _best_overlap(span, predicted)
            if hit is None:
                kinds["missed"] += 1
            else:
                same_offsets, same_label = (hit.start, hit.end) == (span.start, span.end), hit.label == span.label
                kinds["exact" if same_offsets and same_label else "boundary" if same_label
                      else "label" if same_offsets else "label_and_boundary"] += 1
        kinds["spurious"] += sum(1 for p in predicted if _best_overlap(p, list(gold.entities)) is None)
    return kinds


def confusion(gold_docs: Sequence[Document], pred_docs: Sequence[Document]) -> dict[str, dict[str, int]]:
    """``{gold label: {predicted label: count}}`` over overlapping spans; ``NONE`` for a gold span
    nothing overlaps (row) or a prediction that overlaps no gold span (column)."""
    table: dict[str, Counter[str]] = {}
    for gold, pred in _paired(gold_docs, pred_docs):
        predicted = list(pred.entities) if pred else []
        for span in gold.entities:
            hit = _best_overlap(span, predicted)
            table.setdefault(span.label, Counter())[hit.label if hit else NONE] += 1
        for p in predicted:
            if _best_overlap(p, list(gold.entities)) is None:
                table.setdefault(NONE, Counter())[p.label] += 1
    return {g: dict(sorted(row.items())) for g, row in sorted(table.items())}


def worst_documents(gold_docs: Sequence[Document], pred_docs: Sequence[Document], n: int = 5) -> list[dict[str, Any]]:
    """The ``n`` documents with the most strict errors (fp + fn), with what was missed and invented."""
    out: list[dict[str, Any]] = []
    for gold, pred in _paired(gold_docs, pred_docs):
        g = {(s.start, s.end, s.label): s for s in gold.entities}
        p = {(s.start, s.end, s.label): s for s in (pred.entities if pred else ())}
        missed = [g[key] for key in g if key not in p]
        spurious = [p[key] for key in p if key not in g]
        if missed or spurious:
            out.append({"id": gold.id, "text": gold.text, "errors": len(missed) + len(spurious),
                        "missed": [(s.text, s.label) for s in missed],
                        "spurious": [(s.text, s.label) for s in spurious]})
    return sorted(out, key=lambda e: -e["errors"])[:n]
