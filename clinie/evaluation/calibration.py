"""Calibration of span confidences against the annotators' corrections.

A span's score should read as the chance it is right (exact offsets and label): Label Studio
sorts tasks by it, and an annotator trusts a pre-annotation by it. Raw scores are not that —
LLM choices are over-confident, encoder means of word probabilities too (Li et al. 2023). The
calibrators here are fitted on *cross-validated* predictions (spans of documents the model did
not learn from), so their cost is the annotations a project already has:

- ``Temperature``: ``p' = sigmoid(logit(p) / T)``, one parameter — for small sets;
- ``Isotonic``: a monotone step function (pool-adjacent-violators) — from ``ISOTONIC_FROM``
  spans on, where its flexibility stops overfitting.

Both are monotone, so the ranking of spans never changes; only what the numbers mean.

Example:
    >>> scores, correct = [0.9, 0.9, 0.9, 0.9, 0.6, 0.6], [1, 0, 1, 0, 1, 0]
    >>> round(expected_calibration_error(scores, correct), 3)
    0.3
    >>> calibrator = fit_calibrator(scores, correct)  # half of them right: flatten towards 0.5
    >>> calibrator.method, round(expected_calibration_error(calibrator(scores), correct), 3)
    ('temperature', 0.02)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from clinie.core import Document

ISOTONIC_FROM = 200  # spans: below, one temperature; from there on, isotonic regression
_EPS = 1e-6


def labelled_outcomes(gold_docs: Iterable[Document], pred_docs: Iterable[Document]) -> list[tuple[str, float, int]]:
    """Each scored predicted span's label, score, and 1 when it is exactly right (offsets and label)."""
    gold = {d.id: {(s.start, s.end, s.label) for s in d.entities} for d in gold_docs}
    return [(s.label, float(s.score), int((s.start, s.end, s.label) in gold.get(d.id, ())))
            for d in pred_docs for s in d.entities if s.score is not None]


def span_outcomes(gold_docs: Iterable[Document], pred_docs: Iterable[Document]) -> tuple[list[float], list[int]]:
    """Each scored predicted span's score, and 1 when it is exactly right (offsets and label)."""
    outcomes = labelled_outcomes(gold_docs, pred_docs)
    return [score for _, score, _ in outcomes], [ok for _, _, ok in outcomes]


def reliability(scores: Sequence[float], correct: Sequence[int], bins: int = 10) -> list[dict[str, float]]:
    """Equal-width bins of confidence: each bin's span count, mean confidence and accuracy."""
    s, c = np.asarray(scores, dtype=float), np.asarray(correct, dtype=float)
    index = np.minimum((s * bins).astype(int), bins - 1)
    out = []
    for b in range(bins):
        inside = index == b
        count = int(inside.sum())
        out.append({"low": b / bins, "high": (b + 1) / bins, "count": count,
                    "confidence": float(s[inside].mean()) if count else 0.0,
                    "accuracy": float(c[inside].mean()) if count else 0.0})
    return out


def expected_calibration_error(scores: Sequence[float], correct: Sequence[int], bins: int = 10) -> float:
    """Mean |accuracy - confidence| over the bins, weighted by their span counts (0 for no spans)."""
    total = len(scores)
    if not total:
        return 0.0
    return sum(b["count"] / total * abs(b["accuracy"] - b["confidence"]) for b in reliability(scores, correct, bins))


def brier(scores: Sequence[float], correct: Sequence[int]) -> float:
    """Mean squared gap between a span's score and whether it is right (0 is perfect).

    >>> brier([1.0, 0.5], [1, 0])
    0.125
    """
    return sum((s - c) ** 2 for s, c in zip(scores, correct)) / len(scores) if scores else 0.0


def auroc(scores: Sequence[float], correct: Sequence[int]) -> float | None:
    """How well scores rank right spans above wrong ones: the chance a random right span scores
    higher than a random wrong one (ties count half); None without both kinds. Calibration can
    be perfect while this is 0.5 (one score for every span sorts nothing).

    >>> auroc([0.9, 0.8, 0.3, 0.3], [1, 0, 1, 0]), auroc([0.5, 0.5], [1, 0]), auroc([0.9], [1])
    (0.625, 0.5, None)
    """
    right = [s for s, c in zip(scores, correct) if c]
    wrong = [s for s, c in zip(scores, correct) if not c]
    if not right or not wrong:
        return None
    wins = sum((r > w) + 0.5 * (r == w) for r in right for w in wrong)
    return wins / (len(right) * len(wrong))


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, _EPS, 1 - _EPS)
    return np.log(p / (1 - p))


@dataclass(frozen=True)
class Temperature:
    temperature: float = 1.0
    method: str = "temperature"

    @classmethod
    def fit(cls, scores: Sequence[float], correct: Sequence[int]) -> Temperature:
        """The temperature of least log-loss, searched on a log grid (no optimiser to diverge).
        Scores that are all 0 or all 1 say nothing about sharpness: those fit T = 1."""
        z, y = _logit(np.asarray(scores, dtype=float)), np.asarray(correct, dtype=float)
        grid = np.exp(np.linspace(np.log(0.05), np.log(20), 241))

        def loss(t: float) -> float:
            p = np.clip(1 / (1 + np.exp(-z / t)), _EPS, 1 - _EPS)
            return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())

        return cls(float(min(grid, key=loss))) if len(set(y.tolist())) > 1 else cls()

    def __call__(self, scores: Sequence[float]) -> list[float]:
        return (1 / (1 + np.exp(-_logit(np.asarray(scores, dtype=float)) / self.temperature))).tolist()

    def as_dict(self) -> dict[str, Any]:
        return {"method": self.method, "temperature": round(self.temperature, 6)}


@dataclass(frozen=True)
class Isotonic:
    thresholds: tuple[float, ...]  # increasing scores; between two, the value is interpolated
    values: tuple[float, ...]
    method: str = "isotonic"

    @classmethod
    def fit(cls, scores: Sequence[float], correct: Sequence[int]) -> Isotonic:
        """Pool adjacent violators over the spans sorted by score; each block keeps its mean score
        and its accuracy."""
        order = np.argsort(np.asarray(scores, dtype=float), kind="stable")
        blocks: list[list[float]] = []  # [sum of scores, sum of correct, count]
        for i in order:
            blocks.append([float(scores[i]), float(correct[i]), 1.0])
            while len(blocks) > 1 and blocks[-2][1] / blocks[-2][2] >= blocks[-1][1] / blocks[-1][2]:
                last = blocks.pop()
                blocks[-1] = [a + b for a, b in zip(blocks[-1], last)]
        return cls(tuple(b[0] / b[2] for b in blocks), tuple(b[1] / b[2] for b in blocks))

    def __call__(self, scores: Sequence[float]) -> list[float]:
        if not self.thresholds:
            return [float(s) for s in scores]
        return np.interp(np.asarray(scores, dtype=float), self.thresholds, self.values).tolist()

    def as_dict(self) -> dict[str, Any]:
        return {"method": self.method, "thresholds": [round(t, 6) for t in self.thresholds],
                "values": [round(v, 6) for v in self.values]}


Calibrator = Temperature | Isotonic


def fit_calibrator(scores: Sequence[float], correct: Sequence[int]) -> Calibrator:
    """Temperature below ``ISOTONIC_FROM`` spans, isotonic from there on."""
    if len(scores) >= ISOTONIC_FROM:
        return Isotonic.fit(scores, correct)
    return Temperature.fit(scores, correct)


def calibrator_from_dict(data: dict[str, Any]) -> Calibrator:
    if data["method"] == "temperature":
        return Temperature(float(data["temperature"]))
    if data["method"] == "isotonic":
        return Isotonic(tuple(data["thresholds"]), tuple(data["values"]))
    raise ValueError(f"unknown calibration method {data['method']!r}")


def cross_fitted(folds: Sequence[tuple[Sequence[float], Sequence[int]]]) -> list[float]:
    """Each fold's scores calibrated by a calibrator fitted on the *other* folds' spans: an honest
    estimate of how calibrated the scores of unseen documents will be."""
    out: list[float] = []
    for i, (scores, _) in enumerate(folds):
        rest_s = [s for j, (fs, _) in enumerate(folds) if j != i for s in fs]
        rest_c = [c for j, (_, fc) in enumerate(folds) if j != i for c in fc]
        out.extend(fit_calibrator(rest_s, rest_c)(scores) if rest_s else list(scores))
    return out


def calibrate_documents(docs: Iterable[Document], calibrator: Calibrator) -> list[Document]:
    """The documents with every scored span's score calibrated."""
    out = []
    for doc in docs:
        scored = [s for s in doc.entities if s.score is not None]
        new = iter(calibrator([s.score for s in scored]) if scored else [])  # type: ignore[misc]
        spans = [s if s.score is None else type(s)(s.start, s.end, s.label, s.text, s.id, round(next(new), 6))
                 for s in doc.entities]
        out.append(doc.with_annotations(spans, doc.relations))
    return out
