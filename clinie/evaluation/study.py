"""The offline true few-shot study, and the evaluation of one set of predictions.

``run_study``: for each pool size and seed, a pool of that size is drawn; cross-validation over
it alone picks a strategy (``clinie.evaluation.fewshot``), and each strategy is then fitted on
the whole pool and scored on the test set — so the report shows what the selection would have
chosen without seeing the test set, and how that choice fared on it. Span scores are calibrated
on the pool's cross-validated predictions and judged on the test set. Each run is a JSON file
in ``runs_dir``: an interrupted study resumes where it stopped. Only its ``examples`` worst
documents quote text (``worst_errors``); the pool is named by document ids.

``evaluation``: P/R/F1 per label with bootstrap intervals, kinds of errors, confusion of labels,
calibration and LLM cost of one prediction set against its gold.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from clinie.core import Document
from clinie.evaluation.analysis import confusion, error_kinds, per_label, worst_documents
from clinie.evaluation.calibration import (
    auroc,
    brier,
    calibrate_documents,
    cross_fitted,
    expected_calibration_error,
    fit_calibrator,
    reliability,
    span_outcomes,
)
from clinie.evaluation.fewshot import Build, Candidate, CrossValidation, cross_validate, pick, sentence_share, subsample
from clinie.evaluation.metrics import evaluate_spans
from clinie.evaluation.thresholds import fit_thresholds
from clinie.settings import Settings

COST_KEYS = ("calls", "cache_hits", "prompt_tokens", "completion_tokens", "sentences", "sentences_to_llm", "seconds")


def llm_cost(docs: Sequence[Document]) -> dict[str, float] | None:
    """Summed LLM cost of predicted documents (``meta["llm"]``), None when no LLM was involved."""
    costs = [d.meta["llm"] for d in docs if "llm" in d.meta]
    if not costs:
        return None
    total = {key: sum(c.get(key, 0) for c in costs) for key in COST_KEYS}
    total["documents"] = len(docs)
    total["sentence_share"] = sentence_share(docs)
    return total


def evaluation(gold: Sequence[Document], predicted: Sequence[Document], *, calibration_from: Sequence[Document] = (),
               calibration_gold: Sequence[Document] = (), examples: int = 5, seed: int = 0) -> dict[str, Any]:
    """Everything a report says about one prediction set. With ``calibration_from`` (cross-
    validated predictions of other documents, and their gold), scores are calibrated on those and
    the calibration is judged on ``predicted``."""
    out: dict[str, Any] = {"per_label": per_label(gold, predicted, seed=seed),
                           "error_kinds": error_kinds(gold, predicted), "confusion": confusion(gold, predicted),
                           "worst_errors": worst_documents(gold, predicted, examples) if examples else []}
    scores, correct = span_outcomes(gold, predicted)
    if scores:
        # calibrated is not enough: scores must also rank right spans above wrong ones (AUROC)
        calibration: dict[str, Any] = {"spans": len(scores), "ece_raw": expected_calibration_error(scores, correct),
                                       "brier_raw": brier(scores, correct), "auroc_raw": auroc(scores, correct),
                                       "bins_raw": reliability(scores, correct)}
        fit_scores, fit_correct = span_outcomes(calibration_gold, calibration_from)
        if fit_scores:
            calibrator = fit_calibrator(fit_scores, fit_correct)
            calibrated, _ = span_outcomes(gold, calibrate_documents(predicted, calibrator))
            calibration.update(fitted_on=len(fit_scores), calibrator=calibrator.as_dict(),
                               ece_calibrated=expected_calibration_error(calibrated, correct),
                               brier_calibrated=brier(calibrated, correct), auroc_calibrated=auroc(calibrated, correct),
                               bins_calibrated=reliability(calibrated, correct))
        out["calibration"] = calibration
        if calibration_from:
            out["precision_first"] = precision_first(gold, predicted, calibration_gold, calibration_from)
    if (cost := llm_cost(predicted)) is not None:
        out["llm_cost"] = cost
    return out


#: The ``CLINIE_MIN_PRECISION`` values a study measures (0: every region shown).
PRECISION_LEVELS = (0.0, 0.5, 0.6, 0.7, 0.8)


def precision_first(gold: Sequence[Document], predicted: Sequence[Document], fit_gold: Sequence[Document],
                    fit_predicted: Sequence[Document]) -> list[dict[str, Any]]:
    """Per ``PRECISION_LEVELS``: thresholds chosen on ``fit_predicted`` (cross-validated predictions
    of ``fit_gold``, never ``gold``), applied to ``predicted``: what is shown of it — precision,
    recall, F1, and the wrong regions an annotator deletes per 100 documents (sentences, in the
    few-shot corpora)."""
    rows = []
    for level in PRECISION_LEVELS:
        thresholds = fit_thresholds(fit_gold, fit_predicted, min_precision=level)
        micro = evaluate_spans(gold, thresholds.apply(predicted) if level else predicted)["strict"].micro
        rows.append({"min_precision": level, "precision": round(micro.precision, 4), "recall": round(micro.recall, 4),
                     "f1": round(micro.f1, 4), "wrong_per_100": round(100 * micro.fp / max(1, len(gold)), 1),
                     "shown": micro.tp + micro.fp, "thresholds": dict(thresholds.spans)})
    return rows


def one_run(pool: Sequence[Document], test: Sequence[Document], strategies: Sequence[Candidate], build: Build, *,
            seed: int, folds: int = 5, loo_below: int = 10, max_llm_share: float = 1.0, examples: int = 5,
            progress: bool = False) -> dict[str, Any]:
    """Select by cross-validation on ``pool``; fit every strategy on all of it; score on ``test``
    (with the text of its ``examples`` worst documents per strategy)."""
    cv: CrossValidation = cross_validate(pool, strategies, build, k=folds, loo_below=loo_below, seed=seed,
                                         max_llm_share=max_llm_share, progress=progress)
    results: dict[str, Any] = {}
    for strategy in strategies:
        predicted = build(strategy, pool).predict(test)
        run = cv.runs[strategy.name]
        results[strategy.name] = evaluation(test, predicted, calibration_from=run.predictions, calibration_gold=pool,
                                            examples=examples, seed=seed)
    return {"size": len(pool), "seed": seed, "pool_ids": [d.id for d in pool], "cv": cv.summary(),
            "selected": cv.selected.name, "test": results}


def run_path(runs_dir: Path, size: int, seed: int) -> Path:
    """Where ``run_study`` keeps the run of one pool size and seed."""
    return runs_dir / f"size{size}-seed{seed}.json"


def load_run(runs_dir: Path, size: int, seed: int) -> dict[str, Any] | None:
    """The saved run of (size, seed), or None if it was never run."""
    path = run_path(runs_dir, size, seed)
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def save_run(runs_dir: Path, run: dict[str, Any]) -> None:
    """Keep ``run`` where ``load_run`` finds it, replacing what was saved for its size and seed."""
    path = run_path(runs_dir, run["size"], run["seed"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(run, indent=1, ensure_ascii=False), encoding="utf-8")


def run_study(pool: Sequence[Document], test: Sequence[Document], sizes: Sequence[int], seeds: Sequence[int],
              strategies: Sequence[Candidate], build: Build, *, folds: int = 5, loo_below: int = 10,
              max_llm_share: float = 1.0, runs_dir: Path | None = None, examples: int = 5,
              progress: bool = False) -> list[dict[str, Any]]:
    """One run per (size, seed), quoting ``examples`` worst test documents per strategy; runs
    already in ``runs_dir`` under the same LLM budget are reused, with no more quoted documents
    than that (a study resumed without them reports none). A saved run that lacks some of
    ``strategies`` gets only those run, on the same folds (``extended``): adding a strategy to a
    study costs that strategy alone. A strategy is scored on the folds alone, whatever else is
    run beside it, so a saved run holding strategies not asked for is answered with the asked
    ones (``among``: the pick made again among them) and keeps the others on disk: a study of
    fewer strategies never overwrites what a larger one measured."""
    names = [s.name for s in strategies]
    runs = []
    for size in sizes:
        for seed in seeds:
            saved = load_run(runs_dir, size, seed) if runs_dir else None
            if saved and saved["cv"].get("max_llm_share", 1.0) != max_llm_share:
                saved = None
            missing = [s for s in strategies if not saved or s.name not in saved["test"]]
            if saved and not missing:
                runs.append(_quoting(saved if list(saved["test"]) == names else among(saved, names), examples))
                continue
            if progress:
                print(f"pool of {size}, seed {seed}: {', '.join(s.name for s in missing)}", flush=True)
            run = one_run(subsample(pool, size, seed), test, missing, build, seed=seed, folds=folds,
                          loo_below=loo_below, max_llm_share=max_llm_share, examples=examples, progress=progress)
            kept = run
            if saved:
                kept = extended(_quoting(saved, examples), run, [*names, *(n for n in saved["test"] if n not in names)])
                run = among(kept, names)
            if runs_dir is not None:
                save_run(runs_dir, kept)
            runs.append(run)
    return runs


def extended(saved: dict[str, Any], added: dict[str, Any], names: Sequence[str]) -> dict[str, Any]:
    """``saved`` with the strategies of ``added`` (a run of the same pool, seed and folds), in
    the order of ``names``, and cross-validation's pick made again among them all (``pick``,
    under the saved run's LLM budget and preference). What only the saved run measured (a
    bench's speeds of its models) is left out: it did not measure the added ones.

    >>> figures = lambda f1: {"mean_f1": f1, "sd_f1": 0.0, "fold_f1": [f1], "llm_share": 0.0}
    >>> run = lambda fs: {"size": 2, "seed": 1, "pool_ids": ["a", "b"], "selected": max(fs, key=fs.get),
    ...                   "cv": {"n_folds": 2, "max_llm_share": 1.0, "prefer": "", "selected": max(fs, key=fs.get),
    ...                          "strategies": {n: figures(f) for n, f in fs.items()}},
    ...                   "test": {n: {} for n in fs}, "speed": {}}
    >>> both = extended(run({"encoder": 0.5}), run({"probe": 0.6}), ["probe", "encoder"])
    >>> both["selected"], list(both["cv"]["strategies"]), list(both["test"]), "speed" in both
    ('probe', ['probe', 'encoder'], ['probe', 'encoder'], False)
    """
    if (saved["pool_ids"], saved["cv"]["n_folds"]) != (added["pool_ids"], added["cv"]["n_folds"]):
        raise ValueError("the added strategies were not run on the saved run's pool and folds")
    both = {**saved, "cv": {**saved["cv"], "strategies": {**saved["cv"]["strategies"], **added["cv"]["strategies"]}},
            "test": {**saved["test"], **added["test"]}}
    return among(both, names)


def among(run: dict[str, Any], names: Sequence[str]) -> dict[str, Any]:
    """``run`` with the strategies ``names`` alone, in that order, and cross-validation's pick made
    again among them (under the run's LLM budget and preference), as if they alone had been run.
    What only the whole run measured (a bench's speeds of its models) is left out.

    >>> figures = lambda f1: {"mean_f1": f1, "sd_f1": 0.0, "fold_f1": [f1], "llm_share": 0.0}
    >>> fs = {"encoder": 0.5, "probe": 0.6}
    >>> run = {"size": 2, "seed": 1, "pool_ids": ["a", "b"], "selected": "probe", "speed": {},
    ...        "cv": {"n_folds": 2, "max_llm_share": 1.0, "prefer": "", "selected": "probe",
    ...               "strategies": {n: figures(f) for n, f in fs.items()}}, "test": {n: {} for n in fs}}
    >>> one = among(run, ["encoder"])
    >>> one["selected"], list(one["cv"]["strategies"]), list(one["test"]), "speed" in one, run["selected"]
    ('encoder', ['encoder'], ['encoder'], False, 'probe')
    """
    cv = {**run["cv"], "strategies": {name: run["cv"]["strategies"][name] for name in names}}
    cv["selected"] = pick(cv["strategies"], max_llm_share=cv["max_llm_share"], prefer=cv["prefer"])
    return {**{key: run[key] for key in ("size", "seed", "pool_ids")}, "cv": cv, "selected": cv["selected"],
            "test": {name: run["test"][name] for name in names}}


def _quoting(run: dict[str, Any], examples: int) -> dict[str, Any]:
    """``run`` with at most ``examples`` worst documents quoted per strategy."""
    for result in run["test"].values():
        if "worst_errors" in result:
            result["worst_errors"] = result["worst_errors"][:examples]
    return run


def _mean_sd(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def mean_sd_text(values: Sequence[float]) -> str:
    """``mean ± sd`` over seeds; one seed has no spread to show.

    >>> mean_sd_text([0.5, 0.6]), mean_sd_text([0.5])
    ('0.550 ± 0.071', '0.500')
    """
    mean, sd = _mean_sd(values)
    return f"{mean:.3f} ± {sd:.3f}" if len(values) > 1 else f"{mean:.3f}"


def best_in_cv(run: dict[str, Any]) -> str:
    """What cross-validation would have picked in ``run`` with no LLM budget: the best mean F1,
    the first listed among equals (``pick`` with no budget, on the saved figures)."""
    return pick(run["cv"]["strategies"])


def default_pick(run: dict[str, Any]) -> str:
    """What the backend's default selection would have picked in ``run``: no budget, the
    strategy ``CLINIE_SELECT_PREFER`` names while within one standard error of the best."""
    return pick(run["cv"]["strategies"], prefer=Settings().select_prefer)


#: The rows of a summary that stand, in each run, for the strategy a rule picked.
PICKS = {"selected": lambda run: run["selected"], "no budget": best_in_cv, "default": default_pick}


def summarise(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per pool size: each strategy's test F1 (mean, sd over seeds), that of the strategy CV
    selected and of the one it would have selected with no LLM budget (``PICKS``), which they
    were, and the share of sentences each sent to the LLM. Only the strategies every run scored
    are compared (runs saved by different studies may differ)."""
    sizes = sorted({r["size"] for r in runs})
    names = [n for n in runs[0]["test"] if all(n in r["test"] for r in runs)] if runs else []
    table: dict[int, dict[str, Any]] = {}
    for size in sizes:
        at = [r for r in runs if r["size"] == size]
        row: dict[str, Any] = {"seeds": [r["seed"] for r in at], "strategies": {}}
        for name in [*names, *PICKS]:
            results = [r["test"][PICKS[name](r) if name in PICKS else name] for r in at]
            f1 = [result["per_label"]["all"]["f1"] for result in results]
            # no cost: the LLM read nothing
            shares = [(result.get("llm_cost") or {}).get("sentence_share", 0.0) for result in results]
            mean, sd = _mean_sd(f1)
            row["strategies"][name] = {"f1_mean": mean, "f1_sd": sd, "f1": f1, "f1_min": min(f1), "f1_max": max(f1),
                                       "sentence_share": statistics.fmean(shares)}
            if name not in PICKS:
                row["strategies"][name]["cv_f1_mean"] = statistics.fmean(r["cv"]["strategies"][name]["mean_f1"]
                                                                         for r in at)
        row.update({name: [rule(r) for r in at] for name, rule in PICKS.items()})
        table[size] = row
    return {"sizes": sizes, "strategies": names, "by_size": table}


def study_report(runs: Sequence[dict[str, Any]], report: dict[str, Any]) -> dict[str, Any]:
    """Fill ``report`` (``clinie.evaluation.report.new_report``) with a study's figures: the
    comparison of strategies per pool size, learning curves, and the full evaluation of the
    strategy cross-validation selected at the largest pool (first seed)."""
    summary = summarise(runs)
    sizes, names = summary["sizes"], summary["strategies"]
    by_size = summary["by_size"]
    largest = sizes[-1]
    columns = ["strategy", *[f"n={size}" for size in sizes], f"CV F1 at n={largest}",
               f"sentences to LLM at n={largest}"]
    budgets = {r["cv"].get("max_llm_share", 1.0) for r in runs}
    titles = {**{name: name for name in names}, "selected": "selected by CV"}
    if max(budgets) < 1:  # without a budget the two picks are one
        titles["no budget"] = "selected by CV, no LLM budget"
    rows = []
    for name, title in titles.items():
        cells = [mean_sd_text(by_size[s]["strategies"][name]["f1"]) for s in sizes]
        at = by_size[largest]["strategies"][name]
        rows.append([title, *cells, f"{at['cv_f1_mean']:.3f}" if "cv_f1_mean" in at else "",
                     f"{at['sentence_share']:.0%}" if at["sentence_share"] else "–"])
    picks = "; ".join(f"n={s}: " + ", ".join(f"{p} ×{by_size[s]['selected'].count(p)}"
                                                for p in dict.fromkeys(by_size[s]["selected"])) for s in sizes)
    within = (f", among the strategies that sent at most {max(budgets):.0%} of the sentences to the LLM in "
              "cross-validation ('no LLM budget': among all of them)") if max(budgets) < 1 else ""
    report["comparison"] = {
        "columns": columns, "rows": rows,
        "caption": ("Strict F1 on the test set, mean ± sd over seeds. Each strategy was fitted on the pool "
                    "alone; 'selected by CV' is, for each pool, the strategy that cross-validation over that "
                    f"pool picked{within} — it never saw the test set. Picks: {picks}.")}
    series = {("selected by CV" if name == "selected" else name):
              [{"x": s, "y": by_size[s]["strategies"][name]["f1_mean"], "low": by_size[s]["strategies"][name]["f1_min"],
                "high": by_size[s]["strategies"][name]["f1_max"]} for s in sizes] for name in [*names, "selected"]}
    report["learning_curve"] = {"x_label": "annotated examples in the pool", "series": series,
                                "caption": "Test F1 against pool size; the band spans the seeds' lowest to highest."}
    first = next(r for r in runs if r["size"] == largest)
    report["evaluation_of"] = f"{first['selected']}, selected at n={largest}, seed {first['seed']}"
    report["evaluation"] = first["test"][first["selected"]]
    report["summary_by_size"] = by_size
    report["runs"] = list(runs)
    return report


def cross_fitted_calibration(cv: CrossValidation, name: str) -> dict[str, Any] | None:
    """Calibration of a strategy's cross-validated scores: raw, and each fold calibrated by a
    calibrator fitted on the other folds (what unseen documents will get)."""
    folds = [span_outcomes(gold, predicted) for gold, predicted in cv.fold_predictions(name)]
    scores = [s for fold, _ in folds for s in fold]
    correct = [c for _, fold in folds for c in fold]
    if not scores:
        return None
    calibrated = cross_fitted(folds)
    return {"spans": len(scores), "ece_raw": expected_calibration_error(scores, correct),
            "bins_raw": reliability(scores, correct), "fitted_on": len(scores),
            "calibrator": fit_calibrator(scores, correct).as_dict(),
            "ece_calibrated": expected_calibration_error(calibrated, correct),
            "bins_calibrated": reliability(calibrated, correct)}


def project_report(cv: CrossValidation, curve: dict[str, list[dict[str, float]]], report: dict[str, Any],
                   examples: int = 5) -> dict[str, Any]:
    """Fill ``report`` for a project: its strategies cross-validated over its annotations, the
    learning curve, and the evaluation of the selected strategy's cross-validated predictions."""
    rows = []
    for name, run in cv.runs.items():
        cost = llm_cost(run.predictions)
        rows.append([name, f"{run.mean_f1:.3f}", f"{run.sd_f1:.3f}", ", ".join(f"{f:.2f}" for f in run.fold_f1),
                     f"{cost['sentence_share']:.0%}" if cost else "–"])
    report["comparison"] = {"columns": ["strategy", "mean F1", "sd", "F1 per fold", "sentences to LLM"], "rows": rows,
                            "caption": f"Strict F1, {cv.summary()['scheme']} cross-validation over the project's "
                                       f"{len(cv.docs)} annotations; selected: {cv.selected.name} (best mean F1)."}
    if curve and any(curve.values()):
        report["learning_curve"] = {"x_label": "annotations learnt from", "series": curve,
                                    "caption": "F1 on the annotations not learnt from, mean over repeated subsamples; "
                                               "the band is the mean 95 % bootstrap interval."}
    chosen = cv.selected.name
    report["evaluation_of"] = f"{chosen}, cross-validated predictions of all {len(cv.docs)} annotations"
    report["evaluation"] = evaluation(cv.docs, cv.runs[chosen].predictions, examples=examples)
    if calibration := cross_fitted_calibration(cv, chosen):
        report["evaluation"]["calibration"] = calibration
    report["cross_validation"] = cv.summary()
    return report
