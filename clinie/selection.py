"""The strategies fitted from a project's annotated documents, and the true few-shot selection
among them (``clinie.evaluation.fewshot``).

Run by the backend's training worker after each training (every ``CLINIE_TRAIN_EVERY``
annotations and on Label Studio's "Start training"; the documents read from its store by
``ml_backend.annotations``): the strategies of
``CLINIE_SELECT_STRATEGIES`` are cross-validated over the project's annotated documents, the best
by mean F1 is chosen, and a calibrator for its span scores is fitted on its cross-validated
predictions. The result is stored with the model version it was selected with
(``ModelRecord.info["selection"]``), so the backend switches model and strategy in one
transaction, and ``clinie report`` can say why."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from clinie.clock import utc_now
from clinie.core import Document, LabelSpec, Schema
from clinie.evaluation.fewshot import CrossValidation, cross_validate
from clinie.evaluation.study import cross_fitted_calibration
from clinie.evaluation.thresholds import fit_thresholds
from clinie.extractors.finetune import epochs_option
from clinie.llm.base import LLM
from clinie.llm.hidden import HiddenStates
from clinie.retrieval import Embedder
from clinie.settings import Settings
from clinie.strategies import Strategy, StrategyBuilder, parse_strategies

log = logging.getLogger(__name__)


#: Annotations a serving LLM strategy that is no candidate is scored on: with the embedded LLM on a
#: CPU each costs seconds (docs/results.md, cold start), and the likeliest winner waits for them.
INCUMBENT_SAMPLE = 6


def span_specs(schema: Schema) -> list[LabelSpec]:
    return list({spec.name: spec for c in schema.span_controls for spec in c.labels}.values())


def builder(schema: Schema, settings: Settings, llm: Callable[[], LLM] | None = None,
            embedder: Embedder | None = None, states: Callable[[], HiddenStates] | None = None,
            unannotated: Sequence[Document] = ()) -> StrategyBuilder:
    """What fits the strategies of a project with ``schema``; ``unannotated``: the project's
    unannotated documents (``unannotated_documents``), which the student strategy learns from."""
    return StrategyBuilder(span_specs(schema), llm=llm, embedder=embedder, encoder_model=settings.encoder_model or None,
                           encoder_options=epochs_option(settings.encoder_epochs),
                           guided=bool(settings.llm_guided), states=states or (lambda: probe_states(settings)),
                           unannotated=unannotated)


def probe_states(settings: Settings) -> HiddenStates:
    """The hidden states the probe strategy reads (``CLINIE_PROBE_MODEL``, on ``CLINIE_LLM_DEVICE``)."""
    return HiddenStates.shared(settings.probe_model or None, device=settings.llm_device or None,
                               cache_bytes=settings.feature_cache_mb * 2**20)


def selection_record(cv: CrossValidation, min_precision: float) -> dict[str, Any]:
    """What is stored: the choice, the figures behind it, the date, the thresholds its regions
    are shown from (``clinie.evaluation.thresholds``, reaching ``min_precision`` on its
    cross-validated predictions) and the calibrator of its scores (with its raw and
    cross-fitted expected calibration error)."""
    chosen = cv.selected.name
    record: dict[str, Any] = {"strategy": chosen,
                              "created_at": utc_now(),
                              **cv.summary(), "calibrator": None,
                              "thresholds": fit_thresholds(cv.docs, cv.runs[chosen].predictions,
                                                           min_precision=min_precision).as_dict()}
    if calibration := cross_fitted_calibration(cv, chosen):
        record.update(calibrator=calibration["calibrator"], calibration_spans=calibration["spans"],
                      ece_raw=round(calibration["ece_raw"], 4), ece_calibrated=round(calibration["ece_calibrated"], 4))
    return record


def candidates(settings: Settings) -> list[Strategy]:
    """The strategies selection cross-validates (``CLINIE_SELECT_STRATEGIES``)."""
    return parse_strategies(settings.selection_candidates, k=settings.llm_k)


def staged(strategies: Sequence[Strategy], likeliest: str, serving: Strategy | None) -> list[list[Strategy]]:
    """The order of a selection's comparisons: first the ``likeliest`` winner (``CLINIE_SELECT_PREFER``,
    else the first listed) beside what ``serving`` now, so that it serves as soon as it beats that;
    then the other strategies, which replace it only where they beat it. No stage is empty.

    >>> names = lambda stages: [[s.name for s in stage] for stage in stages]
    >>> names(staged(parse_strategies("encoder,gated,probe"), "probe", Strategy("verified")))
    [['probe', 'verified-k0'], ['encoder', 'gated-0.70', 'gated-0.80', 'gated-0.90']]
    >>> names(staged(parse_strategies("encoder"), "probe", Strategy("encoder")))
    [['encoder']]
    """
    first = next((s for s in strategies if s.name == likeliest), strategies[0] if strategies else serving)
    stage = list(dict.fromkeys(s for s in (first, serving) if s is not None))
    rest = [s for s in strategies if s not in stage]
    return [stage, rest] if rest else [stage]


def select(docs: Sequence[Document], build: StrategyBuilder, settings: Settings, strategies: Sequence[Strategy], *,
           seed: int = 0, serving: Strategy | None = None, into: CrossValidation | None = None,
           on_fit: Callable[[int, int], None] | None = None) -> CrossValidation:
    """Cross-validate ``strategies`` over ``docs`` (see the module docstring), joining the runs of
    ``into`` on its folds when given (a stage of ``staged``): the choice is never below ``serving``,
    the strategy serving now (a cold-start policy's included), which must be among the runs
    (``clinie.evaluation.fewshot.pick``). ``on_fit(done, total)`` before the first fit and after
    each strategy fitted on a fold (progress; it may raise to stop).

    A ``serving`` strategy that prompts the LLM and is no candidate (a cold-start policy: seconds
    a sentence on a CPU, the whole selection's time over the annotations) is scored on
    ``INCUMBENT_SAMPLE`` of them, and a challenger compared with it on those."""
    sample = {serving.name: INCUMBENT_SAMPLE} if serving is not None and serving.kind.reads_llm and \
        serving.name not in {s.name for s in candidates(settings)} else None
    return cross_validate(docs, strategies, build, k=settings.select_folds, seed=seed,
                          max_llm_share=settings.select_max_llm_share, prefer=settings.select_prefer,
                          incumbent=serving.name if serving else "", on_fit=on_fit, into=into, sample=sample)
