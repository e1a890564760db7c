"""Evaluation: span and relation metrics; cross-validation, calibration and reports build on them."""

from clinie.evaluation.metrics import Scores, evaluate_relations, evaluate_spans

__all__ = ["Scores", "evaluate_relations", "evaluate_spans"]
