"""Does annotating in clinie's order teach the model faster than annotating in random order?

Label Studio's data manager sorts tasks by the prediction score; clinie's task score is how sure
the model is of its whole reading (``clinie.labelstudio.task_score``), so sorting ascending puts
first the tasks the model is least sure of. This bench simulates two annotation teams on the same
unannotated pool — ``--pool`` sentences drawn with the seed from a corpus's *train* split — who
both annotate the same ``--start`` random sentences first (before a first model there is no
order). Then:

- **random order**: the next sentences in the pool's random order;
- **clinie's order**: at each size, the encoder trained on what is annotated so far predicts the
  rest of the pool, and the team annotates the lowest-scored sentences up to the next size (a
  project retraining as it goes, in steps of the sizes).

At each of ``--sizes`` the encoder (the backend's first model: ``EncoderTagger`` with its default
step budget) is trained on the annotated sentences and scored, strict entity F1, on the 200 items of
``fewshot/chen2023_test_sample200.jsonl``. Recorded too: the words annotated (a sentence clinie
picks may be longer than a random one, and annotators pay by the word), and how well the scores
separate right from wrong on the test items — spans (right: exact span and label) and tasks
(right: every span exact, none missing) — as AUROC, Brier score and expected calibration error,
raw scores.

    python -m bench.active                                  # both corpora, 3 seeds, 25/50/100
    python -m bench.active --corpora ncbi_disease --seeds 42 --sizes 25

Writes ``bench/results/active/<corpus>.json`` (kept in git; runs of other seeds are kept), and
``python -m bench.results_doc`` puts it into docs/results.md. Training dominates: about 7 encoder
trainings per corpus and seed.
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Sequence
from pathlib import Path

from bench import command_line
from bench.loop import LABELS
from clinie.core import Document, read_documents
from clinie.evaluation.calibration import auroc, brier, expected_calibration_error, span_outcomes
from clinie.evaluation.metrics import evaluate_spans
from clinie.extractors.encoder import EncoderTagger
from clinie.labelstudio import task_score
from harness import DATA, ROOT

OUT = ROOT / "bench" / "results" / "active"


def scored(values: Sequence[float], correct: Sequence[int]) -> dict[str, float | None]:
    """How well ``values`` separate right (1) from wrong (0)."""
    if not values:
        return {"n": 0, "auroc": None, "brier": None, "ece": None}
    rank = auroc(values, correct)
    return {"n": len(values), "right": sum(correct), "auroc": None if rank is None else round(rank, 4),
            "brier": round(brier(values, correct), 4), "ece": round(expected_calibration_error(values, correct), 4)}


def evaluate(model: EncoderTagger, test: Sequence[Document]) -> dict[str, object]:
    """Strict F1 on ``test``, and how well span and task scores tell right from wrong."""
    predicted = model.predict([d.with_annotations(()) for d in test])
    strict = evaluate_spans(test, predicted)["strict"].micro
    spans, span_right = span_outcomes(test, predicted)
    tasks = [task_score([p], []) for p in predicted]
    task_right = [int({(s.start, s.end, s.label) for s in g.entities}
                      == {(s.start, s.end, s.label) for s in p.entities})
                  for g, p in zip(test, predicted)]
    kept = [(s, r) for s, r in zip(tasks, task_right) if s is not None]
    return {"f1": round(strict.f1, 4), "precision": round(strict.precision, 4), "recall": round(strict.recall, 4),
            "span_scores": scored(spans, span_right),
            "task_scores": scored([s for s, _ in kept], [r for _, r in kept])}


def words(docs: Sequence[Document]) -> int:
    return sum(len(d.text.split()) for d in docs)


def simulate(corpus: str, seed: int, pool_size: int, start: int, sizes: Sequence[int],
             test: Sequence[Document]) -> dict[str, object]:
    """Both teams' curves on one pool."""
    labels = [LABELS[corpus]]
    train = list(read_documents(DATA / corpus / "train.jsonl"))
    pool = random.Random(seed).sample(train, min(pool_size, len(train)))

    def fit(docs: Sequence[Document]) -> EncoderTagger:
        return EncoderTagger(labels, seed=seed).fit(docs)

    curves: dict[str, list[dict[str, object]]] = {"random": [], "clinie": []}
    for size in sizes:
        annotated = pool[:size]
        curves["random"].append({"annotations": size, "words": words(annotated), **evaluate(fit(annotated), test)})
        print(corpus, seed, "random", curves["random"][-1]["annotations"], curves["random"][-1]["f1"], flush=True)
    annotated, rest = pool[:start], pool[start:]
    model = fit(annotated)
    for size in sizes:
        scores = [task_score([p], []) for p in model.predict([d.with_annotations(()) for d in rest])]
        order = sorted(range(len(rest)), key=lambda i: 1.0 if scores[i] is None else scores[i])  # least sure first
        chosen = set(order[:size - len(annotated)])
        annotated = annotated + [rest[i] for i in sorted(chosen)]
        rest = [d for i, d in enumerate(rest) if i not in chosen]
        model = fit(annotated)
        curves["clinie"].append({"annotations": size, "words": words(annotated), **evaluate(model, test)})
        print(corpus, seed, "clinie", size, curves["clinie"][-1]["f1"], flush=True)
    return {"seed": seed, "pool": len(pool), "start": start, "curves": curves}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpora", default="ncbi_disease,bc5cdr_chem")
    parser.add_argument("--seeds", default="42,33,21")
    parser.add_argument("--sizes", default="25,50,100")
    parser.add_argument("--start", type=int, default=10, help="random annotations before the first model")
    parser.add_argument("--pool", type=int, default=2000, help="unannotated train sentences drawn per seed")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    sizes = sorted(int(s) for s in args.sizes.split(","))
    if sizes[0] <= args.start:
        raise SystemExit(f"--sizes must all exceed --start ({args.start})")
    command = command_line("bench.active")
    args.out.mkdir(parents=True, exist_ok=True)
    for corpus in args.corpora.split(","):
        test = list(read_documents(DATA / corpus / "fewshot" / "chen2023_test_sample200.jsonl"))
        out = args.out / f"{corpus}.json"
        runs = {r["seed"]: r for r in json.loads(out.read_text())["runs"]} if out.exists() else {}
        for seed in (int(s) for s in args.seeds.split(",")):
            runs[seed] = {**simulate(corpus, seed, args.pool, args.start, sizes, test), "command": command}
            out.write_text(json.dumps({"corpus": corpus, "test_items": len(test),
                                       "runs": [runs[s] for s in sorted(runs, reverse=True)]}, indent=2) + "\n")


if __name__ == "__main__":
    main()
