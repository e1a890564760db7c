"""Teacher -> student on NCBI-disease and BC5CDR-chemical, true few-shot: does an encoder trained on
the annotations and on the probe's labels of unannotated text read like the probe, at the
encoder's speed?

For each corpus and seed, pools of 25, 50 and 100 annotated sentences are drawn from
``fewshot/gutierrez_train100_seed<seed>.jsonl``; the unannotated text is ``--unannotated``
sentences (2,000) drawn with the seed from the corpus's *train* split, none of them a sentence of
that few-shot file or of the test items, their gold spans dropped. Over each pool, cross-validation
picks among the strategies (``encoder``, ``probe``, and ``student`` at each threshold asked for:
a fold's teacher is the probe fitted on that fold's annotations alone), and ``distilled``
(every unannotated sentence, each word learnt as the teacher's distribution over the tags: soft
labels, where the students learn the spans of the sentences it is sure enough of); each is then
fitted on the whole pool and scored on the 200 items of ``fewshot/chen2023_test_sample200.jsonl`` — strict
entity F1, as ``bench.loop``.

In the same run, with the models fitted on the whole pool: the teacher's labelling time (the
probe reading ``--timed`` unannotated sentences, one forward pass of the LLM each, per 1,000
sentences), and the sentences per second each of the encoder, the students and the probe serves,
predicting the test items one sentence per call (as one /predict task each), the models taking
turns sentence by sentence (their ratios hold under a changing load). The probe is timed on a copy
of the LLM that keeps no features, so that it reads as it would a new task.

Each (corpus, size, seed) run is saved as it finishes (``--out/<corpus>/runs``, kept in git for
the default ``--out``), speeds included: an interrupted bench resumes where it stopped, and a
strategy added to ``--strategies`` is run alone and added to the saved runs (their speeds timed
again, all models in turn); a saved run holding more strategies than asked is read, not run
again, and kept whole. Runs go
corpus by corpus, seed by seed, largest pool first: the teacher's features of one seed's
unannotated sentences are computed once for its three pools (``--feature-cache-gb``).

    python -m bench.student                                 # everything: many hours on 2 cores
    python -m bench.student --corpora ncbi_disease --sizes 100 --seeds 42
    python -m bench.student --saved                         # the tables of the runs saved so far
"""

from __future__ import annotations

import argparse
import functools
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.loop import GPT4_ZERO_SHOT, LABELS
from clinie.core import Document, Extractor, LabelSpec, read_documents
from clinie.evaluation.fewshot import subsample
from clinie.evaluation.report import new_report, write_report
from clinie.evaluation.study import PICKS, load_run, mean_sd_text, run_study, save_run, study_report, summarise
from clinie.extractors.probe import ProbeTagger
from clinie.llm.hidden import HiddenStates
from clinie.strategies import Strategy, StrategyBuilder, parse_strategies
from harness import DATA, ROOT


def unannotated_sentences(train: Sequence[Document], excluded: Sequence[Document], n: int,
                          seed: int) -> list[Document]:
    """``n`` texts of ``train`` drawn with ``seed``, spans dropped, each text once and none that
    is the text of a document of ``excluded`` (the few-shot file, the test items).

    >>> train = [Document(f"t{i}", f"text {i % 4}") for i in range(8)]
    >>> sorted(d.text for d in unannotated_sentences(train, [Document("x", "text 0")], 5, seed=1))
    ['text 1', 'text 2', 'text 3']
    """
    seen, kept = {d.text for d in excluded}, []
    for doc in train:
        if doc.text not in seen:
            seen.add(doc.text)
            kept.append(doc.with_annotations(()))
    return random.Random(seed).sample(kept, min(n, len(kept)))


def per_second(models: dict[str, Extractor], docs: Sequence[Document]) -> dict[str, float]:
    """Sentences per second of each model predicting each of ``docs`` alone (one /predict task
    of one sentence), after one warm-up call each. They take turns sentence by sentence, so that
    a change of load on the machine falls on all of them alike and their ratios hold."""
    for model in models.values():
        model.predict([docs[0]])
    spent = dict.fromkeys(models, 0.0)
    for doc in docs:
        for name, model in models.items():
            started = time.perf_counter()
            model.predict([doc])
            spent[name] += time.perf_counter() - started
    return {name: round(len(docs) / seconds, 2) for name, seconds in spent.items()}


def speeds(build: StrategyBuilder, pool: Sequence[Document], test: Sequence[Document], timed: Sequence[Document],
           students: Sequence[Strategy], cold: Callable[[], HiddenStates]) -> dict[str, Any]:
    """The teacher's labelling time and the serving speeds of the models fitted on ``pool`` (the
    study's last fits: cached in ``build``); the probe reads through ``cold()``, which keeps no
    features, as it reads new text."""
    with tempfile.TemporaryDirectory() as tmp:
        probe = ProbeTagger.load(build.probe(pool).save(Path(tmp) / "probe"), cold())
    started = time.perf_counter()
    probe.predict(list(timed))
    teacher = (time.perf_counter() - started) / len(timed) * 1000
    served: dict[str, Extractor] = {"encoder": build(Strategy("encoder"), pool), "probe": probe}
    served.update({s.name: build(s, pool) for s in students})
    return {"teacher_seconds_per_1000_sentences": round(teacher, 1), "teacher_sentences_timed": len(timed),
            "served_sentences_per_second": per_second(served, test),
            "unannotated_sentences": len(build.unannotated),
            "taught_sentences": {s.name: build(s, pool).n_taught_docs for s in students}}


#: The strategies of every run: a saved run that lacks one is under way (adding it resumes the run).
STRATEGIES = "encoder,probe,student,student-0.00,distilled"

#: The issue's goals at 100 annotations (issue 23): the probe's quality at the encoder's speed.
GOALS = {"ncbi_disease": 0.72, "bc5cdr_chem": 0.85}


def tables(corpus: str, runs: Sequence[dict[str, Any]]) -> list[str]:
    """Markdown: test F1 per strategy and pick, per pool size (mean ± sd over seeds), against
    GPT-4 and the goal; then the speeds and what each student kept."""
    summary = summarise(runs)
    names = [*summary["strategies"], *PICKS]
    lines = [f"Strict F1 on the 200 Chen et al. items, mean ± sd over the seeds (GPT-4 zero-shot "
             f"{GPT4_ZERO_SHOT[corpus]:.3f}, published; goal at 100 annotations {GOALS[corpus]:.2f}); `default` is "
             "what the backend's default selection picks among these strategies, named in the last column, seed "
             "by seed:", "",
             "| pool | seeds | " + " | ".join(names) + " | default picked |", "|---" * (len(names) + 3) + "|"]
    for size in summary["sizes"]:
        row = summary["by_size"][size]
        cells = [mean_sd_text(row["strategies"][n]["f1"]) for n in names]
        seeds_run, picked = ", ".join(map(str, row["seeds"])), ", ".join(row["default"])
        lines.append(f"| {size} | {seeds_run} | " + " | ".join(cells) + f" | {picked} |")
    timed = [r for r in runs if "speed" in r]
    if not timed:
        return lines
    def every_run(key: str) -> list[str]:
        """The models every run timed under ``key`` (runs saved before a strategy was added lack it)."""
        return [n for n in timed[0]["speed"][key] if all(n in r["speed"][key] for r in timed)]

    served, taught = every_run("served_sentences_per_second"), every_run("taught_sentences")
    lines += ["", "Sentences per second served (one sentence per call), the teacher's seconds per 1,000 unannotated "
              "sentences (one LLM forward pass each), and the teacher's sentences each student kept; mean ± sd over "
              "the seeds, models fitted on the whole pool, in the same run:", "",
              "| pool | " + " | ".join(f"{n} sent./s" for n in served) + " | teacher s/1,000 | "
              + " | ".join(f"{n} kept" for n in taught) + " |", "|---" * (len(served) + len(taught) + 2) + "|"]
    for size in sorted({r["size"] for r in timed}):
        at = [r["speed"] for r in timed if r["size"] == size]
        cells = [mean_sd_text([s["served_sentences_per_second"][n] for s in at]) for n in served]
        cells.append(mean_sd_text([s["teacher_seconds_per_1000_sentences"] for s in at]))
        cells += [f"{statistics.fmean(s['taught_sentences'][n] for s in at):.0f} of "
                  f"{statistics.fmean(s['unannotated_sentences'] for s in at):.0f}" for n in taught]
        lines.append(f"| {size} | " + " | ".join(cells) + " |")
    return lines


def run_seed(corpus: str, seed: int, sizes: Sequence[int], strategies: Sequence[Strategy], args: argparse.Namespace,
             states: Callable[[], HiddenStates], cold: Callable[[], HiddenStates]) -> list[dict[str, Any]]:
    """The runs of one corpus and seed, largest pool first, each saved with its speeds."""
    fewshot = DATA / corpus / "fewshot"
    test = list(read_documents(fewshot / "chen2023_test_sample200.jsonl"))
    pool = list(read_documents(fewshot / f"gutierrez_train100_seed{seed}.jsonl"))
    unannotated = unannotated_sentences(list(read_documents(DATA / corpus / "train.jsonl")), [*pool, *test],
                                        args.unannotated, seed)
    build = StrategyBuilder([LabelSpec(LABELS[corpus])], states=states, unannotated=unannotated)
    runs_dir = args.out / corpus / "runs"
    runs = []
    for size in sizes:
        started = time.perf_counter()
        [run] = run_study(pool, test, [size], [seed], strategies, build, folds=args.folds,
                          max_llm_share=args.max_llm_share, runs_dir=runs_dir)
        saved = load_run(runs_dir, size, seed)  # the asked strategies and any a larger study left there
        if "speed" not in saved:
            students = [s for s in parse_strategies(",".join(saved["test"])) if s.kind.learns_from_unannotated]
            saved["speed"] = speeds(build, subsample(pool, size, seed), test, build.unannotated[:args.timed],
                                    students, cold)
            asked = args.strategies if list(saved["test"]) == [s.name for s in strategies] else ",".join(saved["test"])
            saved["command"] = (f"python -m bench.student --corpora {corpus} --sizes {size} --seeds {seed} "
                                f"--strategies {asked} --unannotated {args.unannotated}")
            save_run(runs_dir, saved)
        run["speed"] = saved["speed"]
        runs.append(run)
        f1 = {name: result["per_label"]["all"]["f1"] for name, result in run["test"].items()}
        print(f"{corpus} n={size} seed {seed}: selected {run['selected']}; "
              + ", ".join(f"{n} {v:.3f}" for n, v in f1.items())
              + f"; served/s {run['speed']['served_sentences_per_second']} [{time.perf_counter() - started:.0f} s]",
              flush=True)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpora", default="ncbi_disease,bc5cdr_chem")
    parser.add_argument("--sizes", default="25,50,100")
    parser.add_argument("--seeds", default="42,33,21")
    parser.add_argument("--strategies", default=STRATEGIES)
    parser.add_argument("--unannotated", type=int, default=2000, help="unannotated train-split sentences per seed")
    parser.add_argument("--timed", type=int, default=200, help="unannotated sentences the teacher is timed on")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--max-llm-share", type=float, default=1.0,
                        help="select among strategies sending at most this share of the sentences to the LLM")
    parser.add_argument("--feature-cache-gb", type=float, default=2.0,
                        help="the LLM features kept in memory (a seed's unannotated sentences should fit)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "student")
    parser.add_argument("--saved", action="store_true", help="run nothing: the tables of the runs saved so far")
    args = parser.parse_args()

    corpora, seeds = args.corpora.split(","), [int(s) for s in args.seeds.split(",")]
    sizes = sorted((int(s) for s in args.sizes.split(",")), reverse=True)
    strategies = parse_strategies(args.strategies)
    # the LLM twice, each loaded when first read: features kept for the study, none for timing
    states = functools.cache(lambda: HiddenStates(cache_bytes=int(args.feature_cache_gb * 2**30)))
    cold = functools.cache(lambda: HiddenStates(cache_bytes=0))
    for corpus in corpora:
        if args.saved:
            saved = (load_run(args.out / corpus / "runs", size, seed) for seed in seeds for size in sizes)
            runs = [run for run in saved if run]
        else:
            runs = [run for seed in seeds for run in run_seed(corpus, seed, sizes, strategies, args, states, cold)]
        if runs:
            print(f"\n{corpus}\n", *tables(corpus, runs), sep="\n")
            report = new_report(f"Teacher -> student: {corpus}", "fewshot", "python -m bench.student "
                                f"--corpora {corpus} --sizes {args.sizes} --seeds {args.seeds} "
                                f"--strategies {args.strategies} --unannotated {args.unannotated}")
            report["summary"] = [("corpus", corpus), ("pools", f"gutierrez_train100_seed{{{args.seeds}}}.jsonl"),
                                 ("unannotated", f"{args.unannotated} train-split sentences per seed, none of the "
                                                 "few-shot file or the test items"),
                                 ("test", "chen2023_test_sample200.jsonl (200 items)")]
            print(f"report: {write_report(study_report(runs, report), args.out / corpus)}")


if __name__ == "__main__":
    main()
