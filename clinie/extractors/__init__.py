"""Extractors: taggers and relation extractors with one interface (``fit``, ``predict``)."""

from clinie.extractors.base import Extractor

__all__ = ["Extractor"]
