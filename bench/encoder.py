"""Encoder tagger on NCBI-disease, true few-shot: quality over seeds, and predict-path speed.

Trains on each ``fewshot/gutierrez_train100_seed*.jsonl`` (100 sentences) and reports strict
entity F1 (exact span and label) on the 200 items of Chen et al. 2023 and on the full test set
(mean and sample standard deviation over seeds). Then, on the first seed's saved model and the
200 sentences, in the same process: sentences/second of clinie's predict path against
``transformers.pipeline("token-classification", aggregation_strategy="first")``, and the F1 of
the pipeline's own spans as a cross-check of clinie's aggregation.

    python -m bench.encoder                  # 3 seeds, full test set included
    python -m bench.encoder --seeds 42 --no-full-test
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from clinie.core import Document, Span, read_documents
from clinie.evaluation import evaluate_spans
from clinie.extractors.encoder import EncoderTagger
from harness import DATA

NCBI = DATA / "ncbi_disease"


def speed(model_dir: Path, docs: list[Document], repeats: int = 3) -> dict[str, float]:
    """Best-of-``repeats`` sentences/second of both predict paths, and the pipeline's F1."""
    from transformers import pipeline

    tagger = EncoderTagger.load(model_dir)
    hf = pipeline("token-classification", model=str(model_dir), aggregation_strategy="first", device="cpu")
    texts = [d.text for d in docs]
    tagger.predict(docs[:8]), hf(texts[:8])  # warm-up
    ours, theirs = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        tagger.predict(docs, batch_size=32)
        ours.append(len(docs) / (time.perf_counter() - started))
        started = time.perf_counter()
        found = hf(texts, batch_size=32)
        theirs.append(len(docs) / (time.perf_counter() - started))
    pipeline_docs = [d.with_annotations([Span.from_text(d.text, e["start"], e["end"], e["entity_group"])
                                         for e in entities])
                     for d, entities in zip(docs, found)]
    return {"clinie": max(ours), "pipeline": max(theirs),
            "pipeline_f1": evaluate_spans(docs, pipeline_docs)["strict"].micro.f1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="42,33,21")
    parser.add_argument("--epochs", type=int, help="default: the tagger's")
    parser.add_argument("--learning-rate", type=float, help="default: the tagger's")
    parser.add_argument("--batch-size", type=int, help="default: the tagger's")
    parser.add_argument("--full-test", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()

    options = {k: v for k, v in (("epochs", args.epochs), ("learning_rate", args.learning_rate),
                                 ("batch_size", args.batch_size)) if v is not None}
    seeds = args.seeds.split(",")
    sample = list(read_documents(NCBI / "fewshot" / "chen2023_test_sample200.jsonl"))
    full = list(read_documents(NCBI / "test.jsonl")) if args.full_test else []
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            train = list(read_documents(NCBI / "fewshot" / f"gutierrez_train100_seed{seed}.jsonl"))
            started = time.perf_counter()
            tagger = EncoderTagger(["Disease"], **options).fit(train)
            row = {"seed": seed, "train_s": time.perf_counter() - started,
                   "sample": evaluate_spans(sample, tagger.predict(sample))["strict"].micro}
            if full:
                row["full"] = evaluate_spans(full, tagger.predict(full))["strict"].micro
            rows.append(row)
            print(f"seed {seed}: trained in {row['train_s']:.0f} s; 200-item F1 {row['sample'].f1:.3f}"
                  + (f"; full test F1 {row['full'].f1:.3f}" if full else ""), flush=True)
            if seed == seeds[0]:
                speeds = speed(tagger.save(Path(tmp) / "model"), sample)
                hyperparameters = tagger.hyperparameters

    print(f"\nNCBI-disease, embedded MiniLM fine-tuned on gutierrez_train100 seeds {args.seeds}; "
          f"hyper-parameters {hyperparameters}; torch threads {torch.get_num_threads()}\n")
    print("| test set | P | R | F1 mean ± sd | F1 per seed |\n|---|---|---|---|---|")
    for key, name in (("sample", "chen2023 200-item sample"), ("full", f"full test ({len(full)} sentences)")):
        if key in rows[0]:
            f1 = [r[key].f1 for r in rows]
            sd = statistics.stdev(f1) if len(f1) > 1 else 0.0
            print(f"| {name} | {statistics.mean(r[key].precision for r in rows):.3f} "
                  f"| {statistics.mean(r[key].recall for r in rows):.3f} "
                  f"| {statistics.mean(f1):.3f} ± {sd:.3f} | {', '.join(f'{x:.3f}' for x in f1)} |")
    print(f"\n| predict path (seed {seeds[0]} model, 200 sentences, batch 32) | sentences/s |\n|---|---|")
    print(f"| clinie `EncoderTagger.predict` | {speeds['clinie']:.0f} |")
    print(f"| transformers pipeline, aggregation 'first' | {speeds['pipeline']:.0f} |")
    print(f"| ratio clinie / pipeline | {speeds['clinie'] / speeds['pipeline']:.2f} |")
    print(f"\nthe pipeline's own spans on the 200 items: F1 {speeds['pipeline_f1']:.3f} "
          f"(clinie {rows[0]['sample'].f1:.3f}); fine-tuning time per seed "
          f"{statistics.mean(r['train_s'] for r in rows):.0f} s")


if __name__ == "__main__":
    main()
