"""``clinie report`` and ``clinie purge``: commands on a backend's store, which the service owns
(registered with the ``clinie`` command line through the ``clinie.commands`` entry point, as
``clinie serve`` is): they reach the store, on SQLite or PostgreSQL, as the backend does."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from clinie.evaluation.thresholds import Thresholds
from clinie.settings import Settings
from ml_backend.annotations import project_documents, unannotated_documents
from ml_backend.model_store import ModelStore
from ml_backend.store import AnnotationStore


def add_report(commands: Any) -> None:
    """Add ``report`` to the ``clinie`` command line's sub-commands."""
    report = commands.add_parser("report", help="a project's report from the backend's store: its strategies "
                                                "cross-validated over its annotations, learning curve, calibration")
    report.add_argument("--project", required=True, help="the Label Studio project id")
    report.add_argument("--out", type=Path, required=True)
    report.add_argument("--data-dir", type=Path, help="the backend's CLINIE_DATA_DIR (default: the setting)")
    report.add_argument("--strategies", help="default: CLINIE_SELECT_STRATEGIES")
    report.add_argument("--repeats", type=int, default=2, help="subsamples per learning-curve point (0: no curve)")
    report.add_argument("--seed", type=int, default=0)
    report.add_argument("--examples", type=int, default=0, help="documents shown among the worst errors, their "
                                                                "text quoted (default 0: none)")
    report.set_defaults(run=_report)


def add_purge(commands: Any) -> None:
    """Add ``purge`` to the ``clinie`` command line's sub-commands."""
    purge = commands.add_parser("purge", help="delete everything the backend holds of a project (annotations, note "
                                              "text, model versions), as when Label Studio deletes the project")
    purge.add_argument("--project", required=True, help="the Label Studio project id")
    purge.add_argument("--data-dir", type=Path, help="the backend's CLINIE_DATA_DIR (default: the setting)")
    purge.set_defaults(run=_purge)


def _report(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from clinie.evaluation.fewshot import cross_validate, learning_curve
    from clinie.evaluation.report import new_report, write_report
    from clinie.evaluation.study import project_report
    from clinie.llm import make_llm
    from clinie.selection import builder
    from clinie.strategies import parse_strategies

    settings = Settings.load()
    if args.data_dir:
        settings = replace(settings, data_dir=args.data_dir)
    store = AnnotationStore(_existing_store(settings))
    annotations = project_documents(store, args.project)
    schema, docs = annotations.schema, annotations.docs
    if len(docs) < 2:
        raise ValueError(f"project {args.project} has {len(docs)} usable annotations: a report needs at least 2")
    strategies = parse_strategies(args.strategies or settings.selection_candidates or "encoder", k=settings.llm_k)
    pool = unannotated_documents(store, args.project, schema, settings.student_pool or None)
    build = builder(schema, settings, llm=lambda: make_llm(settings.llm_options()), unannotated=pool.docs)
    cv = cross_validate(docs, strategies, build, k=settings.select_folds, seed=args.seed,
                        max_llm_share=settings.select_max_llm_share, prefer=settings.select_prefer, progress=True)
    sizes = sorted({max(1, round(len(docs) * f)) for f in (0.25, 0.5, 0.75)})
    curve = learning_curve(docs, strategies, build, sizes, repeats=args.repeats, seed=args.seed, progress=True) \
        if args.repeats else {}
    record = store.serving_model(args.project)
    stored = (record.info.get("selection") or {}) if record else {}
    report = new_report(f"Project {args.project}: how good are the pre-annotations", "project", args.command_line)
    unusable = ", ".join(f"{n} {reason}" for reason, n in sorted(annotations.unusable.items())) or "none"
    report["summary"] = [("annotations (latest submitted per task)", len(docs)),
                         ("annotations not learned from", unusable),
                         ("relations pointing at a region their annotation lacks (skipped)",
                          annotations.skipped_relations),
                         ("labels", ", ".join(schema.span_labels)),
                         ("serving model", f"{record.version} (trained in {record.info.get('seconds', '?')} s)"
                          if record else "none trained yet"),
                         ("strategy selected at the last training",
                          f"{stored['strategy']} ({stored['created_at']}, over {stored['n_documents']} annotations, "
                          f"{stored.get('seconds', '?')} s of selection after the encoder served)"
                          if stored.get("strategy") else "none"),
                         ("compared with what served before it", _compared(stored)),
                         ("regions shown (precision first)", _shown_from(stored)),
                         ("strategy this cross-validation selects", cv.selected.name)]
    project_report(cv, curve, report, examples=args.examples)
    print(f"report: {write_report(report, args.out)}", file=sys.stderr)
    return 0


def _compared(selection: dict[str, Any]) -> str:
    """Why the selected strategy serves: what served before its training (the incumbent), both
    cross-validated on the same folds; a challenger below it waits."""
    incumbent, figures, chosen = selection.get("incumbent"), selection.get("strategies", {}), selection.get("strategy")
    if chosen not in figures:
        return "no selection yet"
    if incumbent not in figures:
        return "nothing was shown before it"
    f1 = selection.get("versus_incumbent") or {name: figures[name]["mean_f1"] for name in (chosen, incumbent)}
    on = f"on the {selection['incumbent_documents']} annotations it was scored on" \
        if "versus_incumbent" in selection else "on the same folds"
    if chosen == incumbent:
        return f"{incumbent} kept (F1 {f1[incumbent]:.3f} {on}): no other strategy reached it"
    return f"{chosen} (F1 {f1[chosen]:.3f}) replaced {incumbent} (F1 {f1[incumbent]:.3f} {on})"


def _shown_from(selection: dict[str, Any]) -> str:
    """From which score each label's regions are shown (``clinie.evaluation.thresholds``)."""
    if not (stored := selection.get("thresholds")):
        return "all: no thresholds chosen yet"
    thresholds = Thresholds.from_dict(stored)
    labels = {**thresholds.spans, **thresholds.relations}
    if not labels or not thresholds.min_precision:
        return "all: nothing scored to choose thresholds from"
    least = ", ".join(f"{label or 'any other label'} " + (f"from score {t:.2f}" if t is not None else "none")
                      for label, t in labels.items())
    return f"where at least {thresholds.min_precision:.0%} of cross-validated regions were right: {least}"


def _existing_store(settings: Settings) -> str:
    """The backend's store, which a command reads and never creates: a mistyped data directory
    would otherwise report on, or purge, an empty store of its own."""
    if not settings.database_url and not settings.store_path.exists():
        raise ValueError(f"no annotation store at {settings.store_path} (CLINIE_DATA_DIR or --data-dir, or "
                         "CLINIE_DATABASE_URL)")
    return settings.store_location


def _purge(args: argparse.Namespace) -> int:
    """As Label Studio's PROJECT_DELETED webhook: for a project deleted while no webhook reached
    the backend, or whose notes must go while it lives on in Label Studio."""
    from dataclasses import replace

    from clinie.llm.cache import CallCache


    settings = Settings.load()
    if args.data_dir:
        settings = replace(settings, data_dir=args.data_dir)
    store = AnnotationStore(_existing_store(settings), keep_history_days=settings.keep_history)
    purged = store.purge_project(args.project, ModelStore(settings.models_location, settings.data_dir))
    if settings.llm_cache_path.exists():
        CallCache(settings.llm_cache_path).clear()
    print(f"project {args.project}: {purged.annotations} annotations, their tasks' text, the data of {purged.tasks} "
          "tasks stored from /predict and re-sync, label config, trainings and model versions purged; the LLM call "
          "cache cleared", file=sys.stderr)
    if purged.refused:
        print(f"not purged: tasks {', '.join(map(str, purged.refused))}, which another project holds (their "
              "annotations of this project are purged)", file=sys.stderr)
    if purged.left_in_wal:
        print(f"not purged: the removed text stays in {store.location}-wal until its next checkpoint, because a "
              "reader held the store past the busy timeout; run `clinie purge` again when the backend is idle",
              file=sys.stderr)
    return 1 if purged.refused or purged.left_in_wal else 0
