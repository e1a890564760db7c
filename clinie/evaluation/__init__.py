"""Evaluation: span metrics now; cross-validation, calibration and reports build on them."""

from clinie.evaluation.metrics import Scores, evaluate_spans

__all__ = ["Scores", "evaluate_spans"]
