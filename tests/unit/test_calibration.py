"""Calibration of span scores: calibrators fitted on cross-validated spans, judged by ECE."""

from __future__ import annotations

import numpy as np
import pytest

from clinie.core import Document, Span
from clinie.evaluation.calibration import (
    ISOTONIC_FROM,
    Isotonic,
    Temperature,
    calibrate_documents,
    calibrator_from_dict,
    cross_fitted,
    expected_calibration_error,
    fit_calibrator,
    reliability,
    span_outcomes,
)
from clinie.evaluation.study import evaluation


def overconfident(n: int, seed: int = 0) -> tuple[list[float], list[int]]:
    """Scores near 0.9-1.0 for spans that are right only ~60 % of the time (an LLM's habit)."""
    rng = np.random.default_rng(seed)
    scores = rng.uniform(0.85, 1.0, n)
    correct = (rng.uniform(0, 1, n) < 0.6).astype(int)
    return scores.tolist(), correct.tolist()


def test_a_perfectly_calibrated_set_has_no_error_and_bins_count_every_span():
    scores, correct = [0.25] * 4 + [0.75] * 4, [1, 0, 0, 0, 1, 1, 1, 0]
    assert expected_calibration_error(scores, correct) == pytest.approx(0.0)
    bins = reliability(scores, correct)
    assert sum(b["count"] for b in bins) == 8 and len(bins) == 10
    assert expected_calibration_error([], []) == 0.0
    assert reliability([1.0], [1])[-1]["count"] == 1  # a score of exactly 1 falls in the last bin


@pytest.mark.parametrize("n", [60, ISOTONIC_FROM + 50])
def test_calibration_fitted_on_some_spans_lowers_the_error_on_others(n):
    fit_s, fit_c = overconfident(n, seed=1)
    test_s, test_c = overconfident(400, seed=2)
    calibrator = fit_calibrator(fit_s, fit_c)
    assert calibrator.method == ("temperature" if n < ISOTONIC_FROM else "isotonic")
    before, after = expected_calibration_error(test_s, test_c), expected_calibration_error(calibrator(test_s), test_c)
    assert before > 0.25 and after < before / 2, (before, after)


def test_calibrators_are_monotone_and_survive_a_round_trip():
    scores, correct = overconfident(300)
    for calibrator in (Temperature.fit(scores, correct), Isotonic.fit(scores, correct)):
        grid = np.linspace(0, 1, 101).tolist()
        out = calibrator(grid)
        assert all(a <= b + 1e-12 for a, b in zip(out, out[1:])), calibrator.method
        again = calibrator_from_dict(calibrator.as_dict())
        assert np.allclose(again(grid), out, atol=1e-5)
    with pytest.raises(ValueError, match="unknown calibration method"):
        calibrator_from_dict({"method": "platt"})


def test_one_class_only_leaves_a_temperature_of_one():
    assert Temperature.fit([0.9, 0.8], [1, 1]).temperature == 1.0


def test_cross_fitting_calibrates_each_fold_without_its_own_spans():
    folds = [overconfident(80, seed=s) for s in range(4)]
    out = cross_fitted(folds)
    assert len(out) == 320
    # fold 0's calibrated scores equal a calibrator fitted on folds 1-3 only
    rest_s = [s for f in folds[1:] for s in f[0]]
    rest_c = [c for f in folds[1:] for c in f[1]]
    assert np.allclose(out[:80], fit_calibrator(rest_s, rest_c)(folds[0][0]))


def test_span_outcomes_and_calibrated_documents_keep_offsets():
    text = "asthma\r\nand fever"
    gold = [Document("1", text, (Span.from_text(text, 0, 6, "Disease"),))]
    pred = [Document("1", text, (Span.from_text(text, 0, 6, "Disease", "T1", 0.99),
                                  Span.from_text(text, 12, 17, "Disease", "T2", 0.98),
                                  Span.from_text(text, 8, 11, "Disease", "T3")))]  # unscored: left alone
    assert span_outcomes(gold, pred) == ([0.99, 0.98], [1, 0])
    [calibrated] = calibrate_documents(pred, Temperature(3.0))
    assert ([(s.start, s.end, s.text) for s in calibrated.entities]
            == [(s.start, s.end, s.text) for s in pred[0].entities])
    assert calibrated.entities[0].score < 0.99 and calibrated.entities[2].score is None


def test_an_evaluation_says_how_well_scores_rank_beside_how_calibrated_they_are():
    text = "asthma and fever and cough"
    gold = [Document("1", text, (Span.from_text(text, 0, 6, "D"), Span.from_text(text, 11, 16, "D")))]
    predicted = [gold[0].with_annotations([Span.from_text(text, 0, 6, "D", score=0.9),    # right
                                           Span.from_text(text, 11, 16, "D", score=0.6),  # right
                                           Span.from_text(text, 21, 26, "D", score=0.7)])]  # wrong
    calibration = evaluation(gold, predicted, examples=0)["calibration"]
    assert calibration["auroc_raw"] == pytest.approx(0.5)  # the wrong span outranks one right one
    assert calibration["brier_raw"] == pytest.approx((0.1 ** 2 + 0.4 ** 2 + 0.7 ** 2) / 3)
