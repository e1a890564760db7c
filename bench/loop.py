"""The learning loop on NCBI-disease and BC5CDR-chemical, true few-shot.

For each corpus and seed, pools of 10, 25, 50 and 100 sentences are drawn from
``fewshot/gutierrez_train100_seed<seed>.jsonl`` (the only training data used); over each pool,
cross-validation alone picks a strategy (encoder, filter-then-probe and filter-then-rerank at
several bands, the probe, the LLM with k=5 retrieved demonstrations) among those that send at most
``--max-llm-share`` of the sentences to the LLM (a quarter, the goal's budget); then every
strategy, fitted on the whole pool, is scored
on the 200 items of ``fewshot/chen2023_test_sample200.jsonl`` — strict entity F1, as Chen et al.
2023 report GPT-4 zero-shot on the same items. Printed per corpus and pool size: each strategy's
F1 (mean ± sd over seeds), the CV-selected strategy's, and the share of sentences it sent to
the LLM. A report per corpus is written under ``--out``.

Each (corpus, size, seed) run is saved as it finishes (``--out/<corpus>/runs``, kept in git for
the default ``--out``): an interrupted bench resumes where it stopped. Runs go largest pool
first. The LLM's answers are kept in ``--out/llm-calls.sqlite``: a run interrupted half-way, or
re-run after a change to one strategy, asks the LLM only what it has not asked before (delete
the file to time the LLM afresh).

    python -m bench.loop                                   # everything: a few hours on 2 cores
    python -m bench.loop --corpora ncbi_disease --sizes 100 --seeds 42
    python -m bench.loop --saved                           # the table of the runs saved so far
"""

from __future__ import annotations

import argparse
import functools
import time
from pathlib import Path

from clinie.core import LabelSpec, read_documents
from clinie.evaluation.report import new_report, write_report
from clinie.evaluation.study import PICKS, load_run, mean_sd_text, run_study, study_report, summarise
from clinie.llm import LLMOptions, make_llm
from clinie.llm.cache import CallCache
from clinie.strategies import StrategyBuilder, default_candidates, parse_strategies
from harness import DATA, ROOT

LABELS = {"ncbi_disease": "Disease", "bc5cdr_chem": "Chemical"}
#: Published, not measured here: Chen et al. 2023 (arXiv 2305.16326), strict entity F1 of GPT-4
#: zero-shot and one-shot on the same 200 test items (data/README.md).
GPT4_ZERO_SHOT = {"ncbi_disease": 0.5673, "bc5cdr_chem": 0.7443}
GPT4_ONE_SHOT = {"ncbi_disease": 0.4837, "bc5cdr_chem": 0.8207}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpora", default="ncbi_disease,bc5cdr_chem")
    parser.add_argument("--sizes", default="10,25,50,100")
    parser.add_argument("--seeds", default="42,33,21")
    parser.add_argument("--strategies", default=default_candidates())
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--max-llm-share", type=float, default=0.25,
                        help="select among strategies sending at most this share of the sentences to the LLM")
    parser.add_argument("--threads", type=int, default=2, help="llama.cpp threads")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "loop")
    parser.add_argument("--saved", action="store_true",
                        help="run nothing: summarise the runs already saved, whatever their strategies")
    args = parser.parse_args()

    corpora, seeds = args.corpora.split(","), [int(s) for s in args.seeds.split(",")]
    sizes = sorted((int(s) for s in args.sizes.split(",")), reverse=True)
    strategies = parse_strategies(args.strategies)
    llm = functools.cache(lambda: make_llm(LLMOptions(threads=args.threads)))  # loaded once, if asked for
    cache = CallCache(args.out / "llm-calls.sqlite")
    builders = {c: StrategyBuilder([LabelSpec(LABELS[c])], llm=llm, cache=cache) for c in corpora}
    test = {c: list(read_documents(DATA / c / "fewshot" / "chen2023_test_sample200.jsonl")) for c in corpora}
    runs: dict[str, list] = {c: [] for c in corpora}
    for size in sizes:
        for corpus in corpora:
            for seed in seeds:
                if args.saved:
                    if saved := load_run(args.out / corpus / "runs", size, seed):
                        runs[corpus].append(saved)
                    continue
                pool = list(read_documents(DATA / corpus / "fewshot" / f"gutierrez_train100_seed{seed}.jsonl"))
                started = time.perf_counter()
                [run] = run_study(pool, test[corpus], [size], [seed], strategies, builders[corpus], folds=args.folds,
                                  max_llm_share=args.max_llm_share, runs_dir=args.out / corpus / "runs")
                runs[corpus].append(run)
                f1 = {name: result["per_label"]["all"]["f1"] for name, result in run["test"].items()}
                print(f"{corpus} n={size} seed {seed}: selected {run['selected']} "
                      f"({f1[run['selected']]:.3f}); " + ", ".join(f"{n} {v:.3f}" for n, v in f1.items())
                      + f" [{time.perf_counter() - started:.0f} s]", flush=True)

    for corpus in (c for c in corpora if runs[c]):
        summary = summarise(runs[corpus])
        print(f"\n{corpus}: strict F1 on the 200 Chen et al. items, mean ± sd over seeds; "
              f"GPT-4 zero-shot {GPT4_ZERO_SHOT[corpus]:.3f}\n")
        names = [*summary["strategies"], *PICKS]
        print("| pool | seeds | " + " | ".join(names) + " | CV picked | CV picked, no budget | default picked | "
              "sentences to LLM (selected) |")
        print("|---" * (len(names) + 6) + "|")
        for size in summary["sizes"]:
            row = summary["by_size"][size]
            cells = [mean_sd_text(row["strategies"][n]["f1"]) for n in names]
            seeds_run = ", ".join(map(str, row["seeds"]))
            print(f"| {size} | {seeds_run} | " + " | ".join(cells) + f" | {', '.join(row['selected'])} | "
                  f"{', '.join(row['no budget'])} | {', '.join(row['default'])} | "
                  f"{row['strategies']['selected']['sentence_share']:.0%} |")
        report = new_report(f"True few-shot learning loop: {corpus}", "fewshot", "python -m bench.loop "
                            f"--corpora {corpus} --sizes {args.sizes} --seeds {args.seeds} "
                            f"--strategies {','.join(summary['strategies'])} --max-llm-share {args.max_llm_share}")
        report["summary"] = [("corpus", corpus), ("pools", f"gutierrez_train100_seed{{{args.seeds}}}.jsonl"),
                             ("test", "chen2023_test_sample200.jsonl (200 items)"),
                             ("GPT-4 zero-shot on the same items (Chen et al. 2023)", GPT4_ZERO_SHOT[corpus])]
        print(f"report: {write_report(study_report(runs[corpus], report), args.out / corpus)}")


if __name__ == "__main__":
    main()
