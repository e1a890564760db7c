"""How long a project waits after *Start training*: for its first model, and for the strategy
selection picks.

A backend (``ml_backend.service.Backend``, a fresh store, the embedded models) receives
``--sizes`` NCBI-disease annotations by webhook (the first sentences of
``fewshot/gutierrez_train100_seed42.jsonl``), then trains as *Start training* asks: the encoder is
fine-tuned and serves, then ``CLINIE_SELECT_STRATEGIES`` are cross-validated and the pick
serves. Recorded per size: seconds until the encoder served, seconds until the selected strategy
served (both from the start of the training), and their ratio — before this change a project
waited for selection before its first model, so the second figure is also what the first model
used to cost. Run alone: llama.cpp and torch on 2 cores slow each other many-fold.

    python -m bench.first_model                       # 20 and 100 annotations, the default strategies
    python -m bench.first_model --sizes 20 --strategies encoder,gated,probe

Writes ``bench/results/first_model/ncbi_disease.json`` (kept in git); ``python -m bench.results_doc``
puts it into docs/results.md.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
from pathlib import Path

from clinie.core import read_documents
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
    parser.add_argument("--strategies", default=Settings().selection_candidates, help="CLINIE_SELECT_STRATEGIES")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    control = parse_label_config(CONFIG).span_controls[0]
    docs = list(read_documents(DATA / "ncbi_disease" / "fewshot" / "gutierrez_train100_seed42.jsonl"))
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        with tempfile.TemporaryDirectory() as data_dir:
            settings = Settings(data_dir=Path(data_dir), train_every=0, select_strategies=args.strategies)
            backend = Backend(settings, start_worker=False)
            client = create_app(settings, backend).test_client()
            for i, doc in enumerate(docs[:size]):
                event = webhook_event(i + 1, i + 1, doc.text, document_to_result(doc, control)[0], label_config=CONFIG)
                assert client.post("/webhook", json=event).status_code == 200
            record = backend.train("1")
            assert record is not None, "the training failed: see the log"
            latency = backend.metrics.snapshot()["latency_seconds"]
            encoder, selected = latency["training"]["sum"], latency.get("selection", {}).get("sum")
            selection = record.info.get("selection") or {}
            rows.append({"annotations": size, "encoder_served_seconds": round(encoder, 1),
                         "selection_served_seconds": None if selected is None else round(selected, 1),
                         "selected": selection.get("strategy")})
            print(rows[-1], flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    run = {"corpus": "ncbi_disease", "strategies": args.strategies,
           "command": "python -m bench.first_model " + " ".join(shlex.quote(a) for a in sys.argv[1:]), "runs": rows}
    (args.out / "ncbi_disease.json").write_text(json.dumps(run, indent=2) + "\n")


if __name__ == "__main__":
    main()
