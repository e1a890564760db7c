"""Extractors: taggers and relation extractors with one interface (``fit``, ``predict``)."""

from clinie.core import Extractor

__all__ = ["Extractor"]
