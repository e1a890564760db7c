"""clinie: pre-annotation of clinical and biomedical text for Label Studio.

The few names a program needs to train a tagger and predict with it (the README's quickstart)
are importable from here; each is loaded on first use (PEP 562), so ``import clinie`` — and the
command line, which imports it first — loads neither torch nor transformers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: Each public name and the module that defines it.
_EXPORTS = {
    "Document": "clinie.core",
    "Span": "clinie.core",
    "Relation": "clinie.core",
    "read_documents": "clinie.core",
    "write_documents": "clinie.core",
    "EncoderTagger": "clinie.extractors.encoder",
}

__all__ = ["Document", "EncoderTagger", "Relation", "Span", "__version__", "read_documents", "write_documents"]

if TYPE_CHECKING:
    from clinie.core import Document, Relation, Span, read_documents, write_documents
    from clinie.extractors.encoder import EncoderTagger


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'clinie' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
