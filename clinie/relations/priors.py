"""Class priors of relation candidates: adapting a classifier trained on pairs sampled by label
to the pairs of real text (Saerens, Latinne & Decaestecker 2002).

Why: a pair-level few-shot file is *sampled by label* (DDI's ``gutierrez_train100_balanced``: 20
pairs per label, so 20 % ``false``), while among all candidate pairs of real sentences most are
negative (83 % of DDI test's candidates). A classifier's posterior is proportional to its training
prior times the likelihood, so one trained on the balanced sample sees relations four times as
often as they occur (prior shift). Bayes' rule puts the right prior back without touching the
model: ``p'(y|x) ∝ p(y|x) π'(y) / π(y)``. The real prior ``π'`` is unknown in the few-shot regime
(no labelled sample of real pairs), and EM estimates it from the classifier's posteriors on
*unlabelled* pairs: the E step adjusts the posteriors to the current prior, the M step takes their
mean as the next prior; each step raises the likelihood of the unlabelled pairs, and the
estimate uses no label.

Example:
    >>> import numpy as np
    >>> trained = np.array([0.5, 0.5])  # balanced training sample
    >>> posteriors = np.array([[0.9, 0.1]] * 8 + [[0.1, 0.9]] * 2)  # 80 % look negative
    >>> priors = estimate_priors(posteriors, trained)
    >>> bool(priors[0] > 0.8)  # the negatives are more frequent than the posteriors' mean says
    True
    >>> adjust_to_priors(np.array([[0.5, 0.5]]), trained, np.array([0.8, 0.2])).round(2).tolist()
    [[0.8, 0.2]]

EM needs calibrated posteriors: a classifier fine-tuned to zero loss on 100 pairs is sure of
every answer, and EM then finds the share it predicts, not the real one. ``fit_calibration``
learns bias-corrected temperature scaling (Alexandari, Kundaje & Shrikumar 2020) from posteriors
on held-out labelled pairs (cross-validation over the training pairs, in the few-shot regime).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def label_frequencies(labels: Sequence[str], classes: Sequence[str]) -> np.ndarray:
    """The share of each of ``classes`` among ``labels``: the prior a classifier learns them with."""
    counts = np.array([sum(label == c for label in labels) for c in classes], dtype=float)
    return counts / max(counts.sum(), 1.0)


def adjust_to_priors(posteriors: np.ndarray, trained: np.ndarray, priors: np.ndarray) -> np.ndarray:
    """``posteriors`` (one row per pair, one column per class, as learnt under the class priors
    ``trained``) as they would be under ``priors``. A class the training never saw (prior 0) is
    left as it is; a class a pair may not carry (posterior 0) stays 0."""
    ratio = np.divide(priors, trained, out=np.ones(len(trained)), where=np.asarray(trained) > 0)
    weighted = np.asarray(posteriors, dtype=float) * ratio
    return weighted / np.maximum(weighted.sum(axis=1, keepdims=True), np.finfo(float).tiny)


def estimate_priors(posteriors: np.ndarray, trained: np.ndarray, *, iterations: int = 1000,
                    tolerance: float = 1e-8) -> np.ndarray:
    """The class priors of the unlabelled pairs whose ``posteriors`` (learnt under ``trained``)
    are given, by EM (Saerens et al. 2002), starting from ``trained``; no pairs: ``trained``.

    EM takes the posteriors as calibrated; an overconfident classifier keeps the estimate near
    its own predictions (``Calibration`` first, as Alexandari et al. 2020 do)."""
    posteriors = np.asarray(posteriors, dtype=float)
    priors = np.asarray(trained, dtype=float)
    if not len(posteriors):
        return priors
    for _ in range(iterations):
        updated = adjust_to_priors(posteriors, trained, priors).mean(axis=0)
        done = np.abs(updated - priors).max() < tolerance
        priors = updated
        if done:
            break
    return priors


@dataclass(frozen=True)
class Calibration:
    """Bias-corrected temperature scaling: ``p'(y|x) ∝ exp(scale · log p(y|x) + bias[y])``.
    The identity (no bias) leaves posteriors as they are; a class a pair may not carry stays 0."""

    scale: float = 1.0
    bias: tuple[float, ...] = ()

    def apply(self, posteriors: np.ndarray) -> np.ndarray:
        posteriors = np.asarray(posteriors, dtype=float)
        if not self.bias or not len(posteriors):
            return posteriors
        allowed = posteriors > 0
        logits = np.where(allowed, self.scale * np.log(np.where(allowed, posteriors, 1.0)) + np.asarray(self.bias),
                          -np.inf)
        weights = np.exp(logits - logits.max(axis=1, keepdims=True))
        return weights / weights.sum(axis=1, keepdims=True)


def fit_calibration(posteriors: np.ndarray, labels: Sequence[int], *, iterations: int = 2000) -> Calibration:
    """The ``Calibration`` that minimises the negative log-likelihood of ``labels`` (class
    indices) under ``posteriors`` of held-out pairs. The likelihood is concave in (scale, bias),
    so gradient ascent with a halving step finds its maximum; no pairs: the identity.

    >>> overconfident = np.array([[0.99, 0.01]] * 7 + [[0.01, 0.99]] * 3)
    >>> calibration = fit_calibration(overconfident, [0] * 6 + [1] + [1] * 3)  # one in ten is wrong
    >>> round(float(calibration.apply(overconfident)[0, 0]), 2)  # six of seven such pairs are right
    0.86
    """
    posteriors = np.asarray(posteriors, dtype=float)
    if not len(posteriors):
        return Calibration()
    allowed = posteriors > 0
    logp = np.log(np.where(allowed, posteriors, 1.0))
    target = np.zeros_like(posteriors)
    target[np.arange(len(posteriors)), list(labels)] = 1.0
    params = np.concatenate([[1.0], np.zeros(posteriors.shape[1])])

    def likelihood(p: np.ndarray) -> tuple[float, np.ndarray]:
        calibrated = Calibration(float(p[0]), tuple(p[1:])).apply(posteriors)
        value = float(np.log(np.maximum((calibrated * target).sum(axis=1), np.finfo(float).tiny)).mean())
        residual = target - calibrated
        return value, np.concatenate([[(residual * logp).sum(axis=1).mean()], residual.mean(axis=0)])

    value, gradient = likelihood(params)
    step = 1.0
    for _ in range(iterations):
        candidate = params + step * gradient
        new_value, new_gradient = likelihood(candidate)
        if new_value >= value:
            params, value, gradient = candidate, new_value, new_gradient
            step *= 1.5
        else:
            step /= 2
        if step < 1e-10 or np.abs(gradient).max() < 1e-7:
            break
    return Calibration(float(params[0]), tuple(float(b) for b in params[1:]))
