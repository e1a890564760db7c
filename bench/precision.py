"""Precision first: what each ``CLINIE_MIN_PRECISION`` shows an annotator, on test items never used
to choose its thresholds.

For each corpus, pool size and seed, a pool is drawn from ``fewshot/gutierrez_train100_seed<seed>.jsonl``
(the only training data used), each strategy is cross-validated over it (``--folds``) and fitted on
all of it, and the thresholds reaching each level of ``clinie.evaluation.study.PRECISION_LEVELS``
are chosen on its cross-validated predictions alone (``clinie.evaluation.thresholds``) — then
applied to its predictions of the 200 items of ``fewshot/chen2023_test_sample200.jsonl``: precision,
recall, F1, and wrong regions per 100 sentences shown, each level against showing every region
(level 0). Run alone: torch on 2 cores slows many-fold beside another heavy process.

    python -m bench.precision                               # 20 and 100 annotations, 3 seeds, both corpora
    python -m bench.precision --corpora ncbi_disease --sizes 20 --seeds 42 --strategies probe

Each (corpus, size, seed) run is saved under ``bench/results/precision/<corpus>/runs`` (kept in
git; an interrupted bench resumes); ``python -m bench.results_doc`` puts them into docs/results.md.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from bench.loop import LABELS
from clinie.core import LabelSpec, read_documents
from clinie.evaluation.study import PRECISION_LEVELS, run_study
from clinie.strategies import StrategyBuilder, parse_strategies
from harness import DATA, ROOT

OUT = ROOT / "bench" / "results" / "precision"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpora", default="ncbi_disease,bc5cdr_chem")
    parser.add_argument("--sizes", default="20,100")
    parser.add_argument("--seeds", default="42,33,21")
    parser.add_argument("--strategies", default="probe,encoder")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    strategies = parse_strategies(args.strategies)
    for corpus in args.corpora.split(","):
        test = list(read_documents(DATA / corpus / "fewshot" / "chen2023_test_sample200.jsonl"))
        build = StrategyBuilder([LabelSpec(LABELS[corpus])])
        for size in (int(s) for s in args.sizes.split(",")):
            for seed in (int(s) for s in args.seeds.split(",")):
                pool = list(read_documents(DATA / corpus / "fewshot" / f"gutierrez_train100_seed{seed}.jsonl"))
                [run] = run_study(pool, test, [size], [seed], strategies, build, folds=args.folds,
                                  runs_dir=args.out / corpus / "runs", examples=0)
                for name, result in run["test"].items():
                    levels = ", ".join(f"{row['min_precision']:g}: P {row['precision']:.2f} R {row['recall']:.2f} "
                                       f"wrong/100 {row['wrong_per_100']:.0f}" for row in result["precision_first"])
                    print(f"{corpus} n={size} seed {seed} {name}: {levels}", flush=True)


def summary(runs: list[dict], strategy: str) -> dict[float, dict[str, float]]:
    """Per level, the mean over ``runs`` of the test precision, recall, F1 and wrong regions per
    100 sentences of ``strategy``."""
    out = {}
    for level in PRECISION_LEVELS:
        rows = [next(r for r in run["test"][strategy]["precision_first"] if r["min_precision"] == level)
                for run in runs if strategy in run["test"]]
        if rows:
            out[level] = {key: statistics.fmean(r[key] for r in rows)
                          for key in ("precision", "recall", "f1", "wrong_per_100")}
    return out


if __name__ == "__main__":
    main()
