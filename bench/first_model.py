"""How long a project waits after *Start training*: for its first model, and for the strategy
selection picks; and how good that first model is.

A backend (``ml_backend.service.Backend``, a fresh store, the embedded models) receives
``--sizes`` NCBI-disease annotations by webhook (the first sentences of
``fewshot/gutierrez_train100_seed42.jsonl``), then trains as *Start training* asks: the encoder is
fine-tuned within ``CLINIE_FIRST_MODEL_STEPS`` optimiser steps and serves, then
``CLINIE_SELECT_STRATEGIES`` are cross-validated and the pick serves. Recorded per size and step
budget: seconds until the encoder served, its strict F1 on the 200 Chen et al. 2023 items (and
that of the encoder trained to its full budget after it, when the budget cut it short), and
seconds until the selected strategy served (both from the start of the training) — before
selection ran after the first model, a project waited for it, so that figure is also what a first
model used to cost. Run alone: llama.cpp and torch on 2 cores slow each other many-fold.

    python -m bench.first_model                       # 20 and 100 annotations, the default settings
    python -m bench.first_model --sizes 20,100 --first-model-steps 100,300 --strategies ""

Writes ``bench/results/first_model/ncbi_disease.json`` (kept in git; a run replaces the rows it
measured again and keeps the others, each row with the command that made it);
``python -m bench.results_doc`` puts it into docs/results.md.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from bench import command_line
from clinie.core import read_documents
from clinie.evaluation.metrics import evaluate_spans
from clinie.extractors.encoder import EncoderTagger
from clinie.labelstudio import document_to_result, parse_label_config
from clinie.settings import Settings
from ml_backend.app import create_app
from ml_backend.service import Backend
from tests.support import DATA, ROOT
from tests.support.helpers import webhook_event

OUT = ROOT / "bench" / "results" / "first_model"
CONFIG = (ROOT / "label_configs" / "disease_ner.xml").read_text()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="20,100")
    parser.add_argument("--strategies", default=Settings().selection_candidates,
                        help="CLINIE_SELECT_STRATEGIES; empty: no selection, the first model alone")
    parser.add_argument("--first-model-steps", default=str(Settings().first_model_steps),
                        help="CLINIE_FIRST_MODEL_STEPS, comma-separated to compare (0: the tagger's budget)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    command = command_line("bench.first_model")
    out = args.out / "ncbi_disease.json"
    control = parse_label_config(CONFIG).span_controls[0]
    docs = list(read_documents(DATA / "ncbi_disease" / "fewshot" / "gutierrez_train100_seed42.jsonl"))
    test = list(read_documents(DATA / "ncbi_disease" / "fewshot" / "chen2023_test_sample200.jsonl"))
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        for steps in (int(s) for s in args.first_model_steps.split(",")):
            with tempfile.TemporaryDirectory() as data_dir:
                settings = Settings(data_dir=Path(data_dir), train_every=0, select_strategies=args.strategies,
                                    first_model_steps=steps)
                backend = Backend(settings, start_worker=False)
                client = create_app(settings, backend).test_client()
                for i, doc in enumerate(docs[:size]):
                    result = document_to_result(doc, control)[0]
                    assert client.post("/webhook", json=webhook_event(i + 1, i + 1, doc.text, result,
                                                                      label_config=CONFIG)).status_code == 200
                record = backend.train("1")
                assert record is not None, "the training failed: see the log"
                latency = backend.metrics.snapshot()["latency_seconds"]
                encoder, selected = latency["training"]["sum"], latency.get("selection", {}).get("sum")
                versions = {m.version: m for m in backend.store.models("1")}
                [first] = [m for m in versions.values() if "first_model" not in m.info]
                # the version a selection or the full budget derived from a cut-short first: its encoder is the full one
                full = next((m for m in versions.values() if first.info["cut_short"]
                             and m.info.get("first_model") == first.version), None)
                rows.append({"annotations": size, "first_model_steps": steps, "strategies": args.strategies,
                             "encoder_served_seconds": round(encoder, 1),
                             "first_model_f1": f1(first.location, test),
                             "full_encoder_f1": full and f1(full.location, test),
                             "selection_served_seconds": None if selected is None else round(selected, 1),
                             "selected": (record.info.get("selection") or {}).get("strategy"), "command": command})
                print(rows[-1], flush=True)
    kept = json.loads(out.read_text())["runs"] if out.exists() else []
    measured = {key(r) for r in rows}
    args.out.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"corpus": "ncbi_disease", "test_items": len(test), "runs": sorted(
        [r for r in kept if key(r) not in measured] + rows, key=key)}, indent=2) + "\n")


def f1(model: str, test: list) -> float:
    """Strict entity F1 of the encoder saved at ``model`` on ``test``."""
    predicted = EncoderTagger.load(model).predict([d.with_annotations(()) for d in test])
    return round(evaluate_spans(test, predicted)["strict"].micro.f1, 4)


def key(row: dict) -> tuple[int, int, str]:
    """What a row measured: a later run of the same replaces it."""
    return row["annotations"], row["first_model_steps"], row["strategies"]


if __name__ == "__main__":
    main()
