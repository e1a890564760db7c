"""Encoder tagger on NCBI-disease, true few-shot: quality over seeds, and predict-path speed.

Trains on each ``fewshot/gutierrez_train100_seed*.jsonl`` (100 sentences) and reports strict
entity F1 on the 200 items of Chen et al. 2023 and on the full test set (mean and spread over
seeds); then sentences/second of clinie's predict path against
``transformers.pipeline("token-classification", aggregation_strategy="first")`` on the same
saved model and the same sentences, in the same process.

    python bench/encoder.py                  # 3 seeds, full test set included
    python bench/encoder.py --seeds 42 --no-full-test
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from clinie.core import read_documents
from clinie.evaluation import evaluate_spans
from clinie.extractors.encoder import EncoderTagger

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "ncbi_disease"


def speed(model_dir: Path, texts: list[str], repeats: int = 3) -> tuple[float, float]:
    """Best-of-``repeats`` sentences/second: clinie's predict path, then the HF pipeline."""
    from transformers import pipeline

    from clinie.core import Document

    tagger = EncoderTagger.load(model_dir)
    hf = pipeline("token-classification", model=str(model_dir), aggregation_strategy="first", device="cpu")
    docs = [Document(str(i), t) for i, t in enumerate(texts)]
    tagger.predict(docs[:8]), hf(texts[:8])  # warm-up
    ours, theirs = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        tagger.predict(docs, batch_size=32)
        ours.append(len(texts) / (time.perf_counter() - started))
        started = time.perf_counter()
        hf(texts, batch_size=32)
        theirs.append(len(texts) / (time.perf_counter() - started))
    return max(ours), max(theirs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="42,33,21")
    parser.add_argument("--epochs", type=int, help="default: the tagger's")
    parser.add_argument("--full-test", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()

    sample = list(read_documents(DATA / "fewshot" / "chen2023_test_sample200.jsonl"))
    full = list(read_documents(DATA / "test.jsonl")) if args.full_test else []
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds.split(","):
            train = list(read_documents(DATA / "fewshot" / f"gutierrez_train100_seed{seed}.jsonl"))
            options = {"epochs": args.epochs} if args.epochs else {}
            started = time.perf_counter()
            tagger = EncoderTagger(["Disease"], **options).fit(train)
            train_s = time.perf_counter() - started
            row = {"seed": seed, "train_s": train_s,
                   "sample": evaluate_spans(sample, tagger.predict(sample))["strict"].micro}
            if full:
                row["full"] = evaluate_spans(full, tagger.predict(full))["strict"].micro
            rows.append(row)
            print(f"seed {seed}: trained in {train_s:.0f} s; 200-item F1 {row['sample'].f1:.3f}"
                  + (f"; full test F1 {row['full'].f1:.3f}" if full else ""), flush=True)
            if seed == args.seeds.split(",")[0]:
                model_dir = tagger.save(Path(tmp) / "model")
                ours, theirs = speed(model_dir, [d.text for d in sample])

    print(f"\nNCBI-disease, MiniLM (embedded), trained on gutierrez_train100 seeds {args.seeds}, "
          f"torch threads {torch.get_num_threads()}\n")
    print("| test set | P | R | F1 (mean ± sd over seeds) |\n|---|---|---|---|")
    for key, name in (("sample", "chen2023 200-item sample"), ("full", f"full test ({len(full)} sentences)")):
        if key in rows[0]:
            f1 = [r[key].f1 for r in rows]
            sd = statistics.stdev(f1) if len(f1) > 1 else 0.0
            print(f"| {name} | {statistics.mean(r[key].precision for r in rows):.3f} | "
                  f"{statistics.mean(r[key].recall for r in rows):.3f} | {statistics.mean(f1):.3f} ± {sd:.3f} |")
    print(f"\npredict path, 200 sentences, batch 32: clinie {ours:.0f} sent/s, "
          f"transformers pipeline (aggregation 'first') {theirs:.0f} sent/s, ratio {ours / theirs:.2f}x")
    print(f"fine-tuning time per seed: {statistics.mean(r['train_s'] for r in rows):.0f} s")


if __name__ == "__main__":
    main()
