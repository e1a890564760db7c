"""``clinie``: serve the Label Studio backend, or train, predict and evaluate on JSONL files.

Files are in the JSONL format of the shared corpora (one document per line with ``entities``
and ``relations``). Examples::

    clinie serve --host 0.0.0.0 --port 9090
    clinie train --data train.jsonl --out models/ncbi
    clinie train --data train.jsonl --unannotated texts.jsonl --strategy student --out models/ncbi-student
    clinie predict --model models/ncbi --data test.jsonl --out pred.jsonl
    clinie train --data ddi_pairs.jsonl --pairs listed --config label_configs/drug_interactions.xml --out models/ddi
    clinie predict --model models/ddi --gold-spans --data ddi_test.jsonl --out pred.jsonl
    clinie predict --strategy llm --demos train.jsonl --k 5 --data test.jsonl --out pred.jsonl
    clinie evaluate --gold test.jsonl --pred pred.jsonl --out reports/test
    clinie report --project 3 --out reports/project3
    clinie purge --project 3
    clinie fewshot --pool train.jsonl --test test.jsonl --sizes 10,25,50,100 --seeds 3 \
        --strategies encoder,gated,probe,llm,rerank --out reports/fewshot
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from clinie.core import read_documents, write_documents
from clinie.llm.providers import providers
from clinie.private import restrict_umask
from clinie.settings import Settings

if TYPE_CHECKING:
    from clinie.model_version import ModelVersion
    from clinie.strategies import LLMAccess


def _schema(args: argparse.Namespace):
    from clinie.labelstudio import parse_label_config

    return parse_label_config(args.config.read_text()) if args.config else None


def _relation_specs(schema, docs: list) -> list:
    """The config's relations, or else the relation labels the documents use."""
    from clinie.core import NO_RELATION, RelationSpec

    if schema is not None and schema.relation_labels:
        return list(schema.relation_labels)
    return [RelationSpec(name) for name in sorted({r.label for d in docs for r in d.relations} - {NO_RELATION})]


def _unannotated(args: argparse.Namespace, strategies: list) -> list:
    """The documents of ``--unannotated`` (their entities are the builder's to drop); refused
    when none of ``strategies`` would learn from them."""
    from clinie.strategies import kinds

    if not args.unannotated:
        return []
    if not any(s.kind.learns_from_unannotated for s in strategies):
        learners = ", ".join(name for name, kind in kinds().items() if kind.learns_from_unannotated)
        raise ValueError(f"--unannotated: no strategy asked for learns from unannotated text ({learners} do)")
    return list(read_documents(args.unannotated))


def _train(args: argparse.Namespace) -> int:
    from clinie.core import LabelSpec
    from clinie.extractors.encoder import EncoderTagger
    from clinie.extractors.relation_classifier import RELATIONS_DIR, RelationClassifier
    from clinie.model_version import MAIN_PART, ModelVersion
    from clinie.selection import probe_states
    from clinie.strategies import PARTS, Strategy, StrategyBuilder

    if ModelVersion.exists(args.out):
        raise SystemExit(f"{args.out} exists: a model version is written once; name a new --out")
    docs = list(read_documents(args.data))
    strategy = Strategy.parse(args.strategy)
    unannotated = _unannotated(args, [strategy])
    schema = _schema(args)
    if args.labels:
        labels = args.labels.split(",")
    else:
        labels = list(schema.span_labels) if schema else sorted({s.label for d in docs for s in d.entities})
    if not labels:
        raise SystemExit(f"{args.data}: no entities to learn from; pass --labels to name them")
    options = {"epochs": args.epochs} if args.epochs else {}
    tagger = EncoderTagger(labels, args.model, **options).fit(docs, progress=True)
    parts: dict[str, Any] = {MAIN_PART: tagger}
    print(f"trained on {len(docs)} documents, labels {', '.join(labels)}", file=sys.stderr)
    build = StrategyBuilder([LabelSpec(label) for label in labels], encoder_model=args.model, encoder_options=options,
                            states=lambda: probe_states(Settings.load()), unannotated=unannotated)
    for name in strategy.kind.saved_parts:  # what the strategy reads besides the encoder, saved beside it
        parts[PARTS[name].directory] = PARTS[name].fit(build, docs, strategy)
        print(f"{strategy.name}: {name} fitted", file=sys.stderr)
    if specs := _relation_specs(schema, docs):
        classifier = parts[RELATIONS_DIR] = RelationClassifier(specs, args.model, **options)
        classifier.fit(docs, listed=args.pairs == "listed", negatives=args.negatives, progress=True)
        print(f"relation classifier on {classifier.n_train_pairs} pairs and {classifier.n_negative_pairs} unlisted "
              f"ones, labels {', '.join(classifier.labels)}", file=sys.stderr)
    ModelVersion.write(args.out, parts, {"labels": labels, "strategy": strategy.name, "n_examples": len(docs)})
    print(f"saved: {args.out}", file=sys.stderr)
    return 0


def _llm_settings(args: argparse.Namespace) -> Settings:
    """The settings, the command line's LLM options in place of the ``CLINIE_LLM_*`` they name.
    Those not given keep their setting, unless ``--provider`` names another provider than
    ``CLINIE_LLM_PROVIDER``: then they are its defaults (one provider's model or endpoint is never
    handed to another)."""
    from dataclasses import replace

    given = {"llm_provider": args.provider, "llm_model": args.llm_model, "llm_base_url": args.base_url,
             "llm_guided": args.guided, "llm_device": args.device, "llm_chat": 1 if args.chat else None}
    settings = Settings.load()
    if args.provider and args.provider != settings.llm_provider:
        defaults = Settings()
        settings = replace(settings, **{name: getattr(defaults, name) for name in given})
    settings = replace(settings, **{name: value for name, value in given.items() if value is not None})
    settings.validate()
    return settings


class _CommandLineParts:
    """What a strategy is built from on the command line (``clinie.strategies.Parts``): the
    model directory ``--model`` (written by ``clinie train``, or a backend's model version), the
    demonstrations ``--demos``, and the LLM of the ``--provider`` options."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.demos = list(read_documents(args.demos)) if args.demos else []
        self.schema = _schema(args)
        self._llm_access: LLMAccess | None = None
        self._version: ModelVersion | None = None

    @property
    def label_specs(self) -> list:
        from clinie.core import LabelSpec

        if self.schema:
            return [label for control in self.schema.span_controls for label in control.labels]
        names = self.args.labels.split(",") if self.args.labels else \
            sorted({s.label for d in self.demos for s in d.entities})
        if not names:
            raise ValueError("name the labels: --config label_configs/X.xml, --labels A,B, or --demos with entities")
        return [LabelSpec(name) for name in names]

    @property
    def relation_specs(self) -> list:
        return _relation_specs(self.schema, self.demos)

    def version(self, name: str):
        """The model version ``--model`` names (``DamagedModel`` when it is not one)."""
        from clinie.model_version import ModelVersion

        if not self.args.model:
            raise ValueError(f"--model DIR (written by 'clinie train') is needed: the {name} is read from it")
        if self._version is None:
            self._version = ModelVersion.open(self.args.model)
        return self._version

    def part(self, name: str):
        from clinie.selection import probe_states
        from clinie.strategies import PARTS

        part = PARTS[name]
        return part.load(self.version(name).local(part.directory), lambda: probe_states(_llm_settings(self.args)))

    def trained_relations(self):
        from clinie.extractors.relation_classifier import RELATIONS_DIR, RelationClassifier

        if not self.args.model or not self.version("relation classifier").has(RELATIONS_DIR):
            return None
        return RelationClassifier.load(self.version("relation classifier").local(RELATIONS_DIR))

    def llm_access(self):
        from clinie.llm import make_llm
        from clinie.llm.cache import CallCache
        from clinie.retrieval import Embedder
        from clinie.strategies import LLMAccess

        if self._llm_access is None:
            settings = _llm_settings(self.args)
            self._llm_access = LLMAccess(make_llm(settings.llm_options()), Embedder(),
                                         CallCache(self.args.cache) if self.args.cache else None,
                                         guided=bool(settings.llm_guided))
        return self._llm_access


def _predict(args: argparse.Namespace) -> int:
    from clinie.extractors.base import SpansThenRelations
    from clinie.strategies import assemble, parse_strategies

    docs = list(read_documents(args.data))
    strategy = parse_strategies(args.strategy, k=args.k)[0]
    parts = _CommandLineParts(args)
    model = assemble(strategy, parts, parts.relation_specs, parts.trained_relations, listed=args.pairs == "listed")
    spans, relations = (model.spans, model.relations) if isinstance(model, SpansThenRelations) else (model, None)
    predictions = []
    for first in tqdm(range(0, len(docs), args.batch_size), desc="predicting", unit="batch"):
        chunk = docs[first:first + args.batch_size]
        # --gold-spans: the data's spans kept, its relations dropped
        tagged = [d.with_annotations(d.entities) for d in chunk] if args.gold_spans else spans.predict(chunk)
        predictions.extend(relations.predict(tagged) if relations else tagged)
    for name, extractor in (("entities", spans), ("relations", relations)):
        if (usage := getattr(extractor, "usage", None)) and usage.calls + usage.cache_hits:
            print(f"LLM {name}: {usage.calls} calls, {usage.cache_hits} cache hits, {usage.prompt_tokens} prompt "
                  f"and {usage.completion_tokens} generated tokens", file=sys.stderr)
    if args.out:
        write_documents(predictions, args.out)
    else:
        write_documents(predictions, sys.stdout)
    return 0


def _read_gold(path: Path, schema) -> list:
    """JSONL, or a Label Studio JSON export (``.json``: a list of tasks)."""
    from clinie.labelstudio import read_export

    return read_export(path, schema) if path.suffix == ".json" else list(read_documents(path))


def _evaluate(args: argparse.Namespace) -> int:
    from clinie.evaluation import evaluate_relations, evaluate_spans

    gold, pred = _read_gold(args.gold, _schema(args)), list(read_documents(args.pred))
    if args.out:
        from clinie.evaluation.report import new_report, write_report
        from clinie.evaluation.study import evaluation

        report = new_report(f"Evaluation of {args.pred.name} against {args.gold.name}", "evaluate", args.command_line)
        report["summary"] = [("gold", f"{args.gold} ({len(gold)} documents, "
                                      f"{sum(len(d.entities) for d in gold)} spans)"),
                             ("predictions", f"{args.pred} ({sum(len(d.entities) for d in pred)} spans)")]
        report["evaluation"] = evaluation(gold, pred, examples=args.examples)
        print(f"report: {write_report(report, args.out)}", file=sys.stderr)
    report = {"entities": {mode: s.as_dict() for mode, s in evaluate_spans(gold, pred).items()}}
    if any(d.relations for d in gold):
        report["relations"] = {mode: s.as_dict() for mode, s in evaluate_relations(gold, pred).items()}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    for kind, mode, s in [(kind, mode, s) for kind, modes in report.items() for mode, s in modes.items()]:
        print(f"\n{kind}, {mode} matching")
        print(f"{'label':<20} {'P':>6} {'R':>6} {'F1':>6} {'support':>8}")
        for label, row in [*s["per_label"].items(), ("micro", s["micro"])]:
            print(f"{label:<20} {row['precision']:>6.3f} {row['recall']:>6.3f} {row['f1']:>6.3f} {row['support']:>8}")
        print(f"{'macro F1':<20} {'':>6} {'':>6} {s['macro_f1']:>6.3f}")
    return 0


def _fewshot(args: argparse.Namespace) -> int:
    from clinie.evaluation.fewshot import label_specs
    from clinie.evaluation.report import new_report, write_report
    from clinie.evaluation.study import run_study, study_report
    from clinie.llm import make_llm
    from clinie.llm.cache import CallCache
    from clinie.strategies import StrategyBuilder, parse_strategies

    pool, test = list(read_documents(args.pool)), list(read_documents(args.test))
    schema = _schema(args)
    specs = label_specs(pool, [label for c in schema.span_controls for label in c.labels] if schema else ())
    strategies = parse_strategies(args.strategies, k=args.k, bands=[float(b) for b in args.bands.split(",")])
    sizes = [int(size) for size in args.sizes.split(",")]
    seeds = list(range(int(args.seeds))) if args.seeds.isdigit() \
        else [int(seed) for seed in args.seeds.split(",") if seed.strip()]
    settings = _llm_settings(args) if any(s.uses_llm for s in strategies) else None
    build = StrategyBuilder(specs, llm=(lambda: make_llm(settings.llm_options())) if settings else None,
                            encoder_model=args.model, encoder_options={"epochs": args.epochs} if args.epochs else {},
                            guided=bool(settings and settings.llm_guided),
                            cache=CallCache(args.cache) if args.cache else None,
                            unannotated=_unannotated(args, strategies))
    runs = run_study(pool, test, sizes, seeds, strategies, build, folds=args.folds, loo_below=args.loo_below,
                     max_llm_share=args.max_llm_share, runs_dir=args.out / "runs",
                     examples=KEPT_DOCUMENTS if args.keep_documents else 0, progress=True)
    report = new_report(f"True few-shot study: {args.pool.name} -> {args.test.name}", "fewshot", args.command_line)
    report["summary"] = [("pool", f"{args.pool} ({len(pool)} documents)"),
                         ("test", f"{args.test} ({len(test)} documents)"),
                         *([("unannotated", f"{args.unannotated} ({len(build.unannotated)} sentences, entities "
                                             "ignored)")] if args.unannotated else []),
                         ("pool sizes", ", ".join(map(str, sizes))), ("seeds", ", ".join(map(str, seeds))),
                         ("strategies", ", ".join(s.name for s in strategies)),
                         ("model selection", f"{args.folds}-fold cross-validation over each pool "
                                             f"(leave-one-out below {args.loo_below} documents), best mean F1"
                                             + (f" among the strategies sending at most {args.max_llm_share:.0%} "
                                                "of the sentences to the LLM" if args.max_llm_share < 1 else ""))]
    print(f"report: {write_report(study_report(runs, report), args.out)}", file=sys.stderr)
    return 0


def _add_llm_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--provider", choices=sorted(providers()),
                        help="llm: in-process llama.cpp or transformers, an OpenAI-compatible endpoint, or another "
                             "package's (default: CLINIE_LLM_PROVIDER, else llama.cpp)")
    parser.add_argument("--llm-model", help="llm: GGUF path, HF model directory or name (default: embedded "
                                            "Gemma 3 270M), or the endpoint's model name")
    parser.add_argument("--base-url", help="llm: the OpenAI-compatible endpoint (required with --provider openai)")
    parser.add_argument("--chat", action="store_true", help="llm: the endpoint's chat API instead of completions")
    parser.add_argument("--device", help="llm: torch device for --provider transformers (default: CUDA if any)")
    parser.add_argument("--k", type=int, default=5, help="llm: demonstrations per sentence (default 5)")
    parser.add_argument("--guided", choices=("llama.cpp", "vllm"),
                        help="llm: guided decoding by the server, a grammar in the form this server takes")
    parser.add_argument("--cache", type=Path, help="llm: SQLite file caching model calls")


#: The worst test documents ``clinie fewshot --keep-documents`` quotes per strategy and run.
KEPT_DOCUMENTS = 5

UNANNOTATED_HELP = ("JSONL texts (their entities, if any, ignored) whose sentences a student learns from, as the "
                    "probe trained on the annotations labels them")
PAIRS_HELP = ("relations in the data: 'all' (default) = every unannotated pair of spans is a negative; "
              "'listed' = only the listed pairs are examples, label 'false' a negative (DDI's pair files)")


def build_parser() -> argparse.ArgumentParser:
    from clinie.strategies import default_candidates, strategy_forms

    parser = argparse.ArgumentParser(prog="clinie", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    # commands of other packages (``clinie serve``: the backend, ``ml_backend.server``), which
    # depend on this library, never the reverse
    for command in entry_points(group="clinie.commands"):
        command.load()(commands)

    train = commands.add_parser("train", help="fine-tune the encoder tagger on a JSONL file")
    train.add_argument("--data", type=Path, required=True)
    train.add_argument("--out", type=Path, required=True,
                       help="a new directory for the trained model version (written once, with checksums)")
    train.add_argument("--model", help="base encoder: HF name or directory (default: embedded MiniLM)")
    train.add_argument("--labels", help="comma-separated labels (default: those in the data)")
    train.add_argument("--config", type=Path, help="a labeling config: its labels, and its relations with their "
                                                   "type constraints (default: the labels in the data)")
    train.add_argument("--pairs", choices=("all", "listed"), default="all", help=PAIRS_HELP)
    train.add_argument("--negatives", type=int, default=0,
                       help="with --pairs listed: learn this many of the texts' unlisted candidate pairs as no "
                            "relation (most candidate pairs are none; a sample drawn by label lacks them)")
    train.add_argument("--epochs", type=int)
    train.add_argument("--strategy", default="encoder",
                       help=f"{strategy_forms()}: what it reads besides the encoder (the probe, the student) is "
                            "trained too and saved in --out, for 'clinie predict --strategy' (default encoder)")
    train.add_argument("--unannotated", type=Path, help=UNANNOTATED_HELP)
    train.set_defaults(run=_train)

    predict = commands.add_parser("predict", help="predict entities for a JSONL file")
    predict.add_argument("--data", type=Path, required=True)
    predict.add_argument("--out", type=Path, help="output JSONL (default: stdout)")
    predict.add_argument("--strategy", default="encoder",
                         help=f"{strategy_forms()} (default encoder; llm, verified: --k demos)")
    predict.add_argument("--model", type=Path, help="a directory written by 'clinie train' or a backend's model "
                                                    "version (the encoder, and the probe if saved there)")
    predict.add_argument("--batch-size", type=int, default=32)
    _add_llm_arguments(predict)
    predict.add_argument("--demos", type=Path, help="llm: annotated JSONL to retrieve demonstrations from")
    predict.add_argument("--config", type=Path, help="llm: a labeling config whose label hints describe the labels")
    predict.add_argument("--labels", help="llm: comma-separated labels (default: those in --demos)")
    predict.add_argument("--pairs", choices=("all", "listed"), default="all", help="llm: " + PAIRS_HELP)
    predict.add_argument("--gold-spans", action="store_true",
                         help="keep the data's spans and predict only the relations between them")
    predict.set_defaults(run=_predict)

    evaluate = commands.add_parser("evaluate", help="span (strict, partial) and relation (strict, pairs) P/R/F1")
    evaluate.add_argument("--gold", type=Path, required=True)
    evaluate.add_argument("--pred", type=Path, required=True)
    evaluate.add_argument("--json", action="store_true", help="print the figures as JSON")
    evaluate.add_argument("--config", type=Path, help="the labeling config, to read a Label Studio export as gold "
                                                      "(default: the labels its regions use)")
    evaluate.add_argument("--out", type=Path, help="write report.html, report.md and report.json in this directory")
    evaluate.add_argument("--examples", type=int, default=0, help="report: documents shown among the worst errors, "
                                                                  "their text quoted (default 0: none)")
    evaluate.set_defaults(run=_evaluate)

    fewshot = commands.add_parser("fewshot", help="true few-shot study: CV selection on pools of several sizes, "
                                                  "every strategy scored on a test set; writes a report")
    fewshot.add_argument("--pool", type=Path, required=True, help="annotated JSONL the pools are drawn from")
    fewshot.add_argument("--test", type=Path, required=True, help="annotated JSONL to score on")
    fewshot.add_argument("--sizes", default="10,25,50,100", help="pool sizes (default 10,25,50,100)")
    fewshot.add_argument("--seeds", default="3",
                         help="a count (3: seeds 0,1,2) or a comma-separated list (42,33,21; one seed: 42,)")
    fewshot.add_argument("--strategies", default=default_candidates(),
                         help=f"comma-separated: {strategy_forms()} (llm: --k demos; gated, rerank: every --bands)")
    fewshot.add_argument("--bands", default="0.7,0.8,0.9",
                         help="rerank and gated: upper confidence bounds of the bands")
    fewshot.add_argument("--max-llm-share", type=float, default=1.0,
                         help="select only among strategies sending at most this share of the sentences to the "
                              "LLM in cross-validation (default 1: no limit)")
    fewshot.add_argument("--folds", type=int, default=5)
    fewshot.add_argument("--loo-below", type=int, default=10, help="leave-one-out for pools smaller than this")
    fewshot.add_argument("--config", type=Path, help="a labeling config whose label hints describe the labels")
    fewshot.add_argument("--model", help="base encoder: HF name or directory (default: embedded MiniLM)")
    fewshot.add_argument("--epochs", type=int, help="encoder fine-tuning epochs (default: the tagger's)")
    fewshot.add_argument("--unannotated", type=Path, help=UNANNOTATED_HELP)
    fewshot.add_argument("--out", type=Path, required=True, help="report directory (runs/ keeps each run: resumable)")
    fewshot.add_argument("--keep-documents", action="store_true",
                         help=f"quote the {KEPT_DOCUMENTS} worst test documents of each strategy in the run files and "
                              "the report (default: no text, the pools named by document ids)")
    _add_llm_arguments(fewshot)
    fewshot.set_defaults(run=_fewshot)
    return parser


def main(argv: list[str] | None = None) -> int:
    restrict_umask()  # reports, run files, models and the store hold note text (clinie.private)
    # transformers reports every fine-tuning's fresh classifier head and loading bar: noise in a
    # study that fits dozens of models (CLINIE_LOG_LEVEL=DEBUG keeps them)
    if os.environ.get("CLINIE_LOG_LEVEL", "").upper() != "DEBUG":
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args.command_line = "clinie " + " ".join(shlex.quote(a) for a in argv)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"clinie {args.command}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
