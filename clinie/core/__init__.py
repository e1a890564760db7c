"""Pure data and pure functions; imports nothing else of clinie."""

from clinie.core.bio import bio_labels, bio_to_spans, number_spans, spans_to_bio, word_ranges
from clinie.core.chunking import (
                                  chunk,
                                  mark_spans,
                                  sentence_documents,
                                  sentence_of,
                                  split_document,
                                  split_sentences,
                                  word_pieces,
)
from clinie.core.extractor import Extractor
from clinie.core.jsonl import document_from_dict, document_to_dict, read_documents, write_documents
from clinie.core.tokenize import Token, tokenize
from clinie.core.types import NO_RELATION, Document, LabelSpec, Relation, RelationSpec, Schema, Span, SpanControl

__all__ = [
    "NO_RELATION", "Document", "Extractor", "LabelSpec", "Relation", "RelationSpec", "Schema", "Span", "SpanControl",
    "Token", "bio_labels", "bio_to_spans", "chunk", "mark_spans", "number_spans", "split_document",
    "document_from_dict", "document_to_dict", "read_documents", "sentence_documents", "sentence_of", "spans_to_bio",
    "split_sentences", "tokenize", "word_pieces", "word_ranges", "write_documents",
]
