"""The test harness (real Label Studio, backend and llama.cpp servers, a headless browser, the
invariant checks every test uses) and the one definition of where the corpora are: ``DATA``, the
repository's ``data/`` folder (see ``data/README.md``). The tests take it from the ``data_dir``
fixture or import it from here; the bench scripts import it from here too."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
"""The repository's root."""

DATA = ROOT / "data"
"""The corpora: ``ncbi_disease``, ``bc5cdr_chem``, ``ddi``, each with ``{train,dev,test}.jsonl``
and ``fewshot/*.jsonl``."""
