"""What a fresh project is shown before its first model: the precision of each cold-start option.

On held-out sentences (the first ``--items`` of the Chen et al. 2023 test sample of each corpus,
``data/<corpus>/fewshot/chen2023_test_sample200.jsonl``), with the embedded Gemma 3 270M in
llama.cpp, each option pre-annotates every sentence and is scored strictly against the gold:

- ``llm-k0``: the word/TAG tagger zero-shot (before this bench, clinie's default);
- ``verified-k0``: its spans that the LLM confirms on a second look (``clinie.extractors.verify``);
- ``llm-k5`` and ``verified-k5``: the same with five demonstrations, retrieved from the first
  ``--demos`` sentences of ``fewshot/gutierrez_train100_seed42.jsonl`` (a project's first few
  annotations);
- showing nothing (``CLINIE_COLD_START=none``): precision undefined, nothing to delete.

An annotator pays for every wrong region shown (found, then deleted): the run file records, per
option, precision, recall and F1, wrong regions per 100 sentences, how well the scores rank
right regions above wrong ones (AUROC), and seconds per sentence. Run alone: llama.cpp and
torch on 2 cores slow each other many-fold.

    python -m bench.cold_start                    # both corpora, 100 items each: ~30 min on 2 cores
    python -m bench.cold_start --corpora ncbi_disease --items 50

Writes ``bench/results/cold_start/<corpus>.json`` (kept in git); ``python -m bench.results_doc``
puts them into docs/results.md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bench import command_line
from bench.loop import LABELS
from clinie.core import LabelSpec, read_documents
from clinie.evaluation.calibration import auroc, span_outcomes
from clinie.evaluation.metrics import evaluate_spans
from clinie.llm import LLMOptions, make_llm
from clinie.strategies import StrategyBuilder, parse_strategies
from harness import DATA, ROOT

OUT = ROOT / "bench" / "results" / "cold_start"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpora", default="ncbi_disease,bc5cdr_chem")
    parser.add_argument("--items", type=int, default=100, help="held-out sentences scored per corpus")
    parser.add_argument("--demos", type=int, default=5, help="annotations the k=5 options retrieve from")
    parser.add_argument("--strategies", default="llm-k0,verified-k0,llm-k5,verified-k5")
    parser.add_argument("--threads", type=int, default=2, help="llama.cpp threads")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    llm = make_llm(LLMOptions(threads=args.threads))
    args.out.mkdir(parents=True, exist_ok=True)
    for corpus in args.corpora.split(","):
        files = DATA / corpus / "fewshot"
        test = list(read_documents(files / "chen2023_test_sample200.jsonl"))[:args.items]
        demos = list(read_documents(files / "gutierrez_train100_seed42.jsonl"))[:args.demos]
        build = StrategyBuilder([LabelSpec(LABELS[corpus])], llm=llm)
        options = {}
        for strategy in parse_strategies(args.strategies):
            started = time.perf_counter()
            predicted = build(strategy, demos).predict(test)
            seconds = time.perf_counter() - started
            strict = evaluate_spans(test, predicted)["strict"].micro
            scores, correct = span_outcomes(test, predicted)
            options[strategy.name] = {
                "precision": round(strict.precision, 4), "recall": round(strict.recall, 4), "f1": round(strict.f1, 4),
                "regions_shown": strict.tp + strict.fp,
                "wrong_per_100_sentences": round(100 * strict.fp / len(test), 1),
                "auroc": None if (a := auroc(scores, correct)) is None else round(a, 4),
                "seconds_per_sentence": round(seconds / len(test), 2)}
            print(f"{corpus} {strategy.name}: P {strict.precision:.3f} R {strict.recall:.3f} F1 {strict.f1:.3f}, "
                  f"{strict.tp + strict.fp} regions, {seconds / len(test):.1f} s/sentence", flush=True)
        run = {"corpus": corpus, "items": len(test), "demos": len(demos), "llm": llm.model,
               "command": command_line("bench.cold_start"),
               "gold_regions": sum(len(d.entities) for d in test), "options": options}
        (args.out / f"{corpus}.json").write_text(json.dumps(run, indent=2) + "\n")


if __name__ == "__main__":
    main()
