"""Relation extraction stages that know no model: candidate pairs, their training labels, and
the marked text a model reads for a pair."""

from clinie.relations.candidates import (
                                       ENTITY_MARKERS,
                                       MAX_DISTANCE,
                                       Pair,
                                       PairTypes,
                                       candidate_pairs,
                                       labelled_pairs,
                                       mark,
                                       sample_at_shares,
                                       unlisted_pairs,
)

__all__ = ["ENTITY_MARKERS", "MAX_DISTANCE", "Pair", "PairTypes", "candidate_pairs", "labelled_pairs", "mark",
           "sample_at_shares", "unlisted_pairs"]
