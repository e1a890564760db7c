"""The shipped labeling configs parse, describe every label, and match the corpora they serve."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clinie.labelstudio import parse_label_config

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
CONFIGS = sorted((ROOT / "label_configs").glob("*.xml"))


def test_the_four_configs_are_shipped():
    assert {p.stem for p in CONFIGS} >= {"disease_ner", "chemical_ner", "drug_interactions", "medication_attributes"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_label_and_relation_has_a_description(path):
    schema = parse_label_config(path.read_text())
    for control in schema.span_controls:
        assert all(label.description for label in control.labels)
    assert all(label.description for label in schema.relation_labels)


def test_medication_attributes_link_a_medication_to_each_attribute():
    schema = parse_label_config((ROOT / "label_configs" / "medication_attributes.xml").read_text())
    assert set(schema.span_labels) == {"Medication", "Dosage", "Route", "Frequency", "Reason", "Duration"}
    assert len(schema.relation_labels) == 5


@pytest.mark.skipif(not SHARED.exists(), reason="shared corpora not present")
@pytest.mark.parametrize("config, corpus", [("disease_ner", "ncbi_disease"), ("chemical_ner", "bc5cdr_chem"),
                                            ("drug_interactions", "ddi")])
def test_labels_match_the_corpus(config, corpus):
    schema = parse_label_config((ROOT / "label_configs" / f"{config}.xml").read_text())
    entities, relations = set(), set()
    for path in (SHARED / corpus / "fewshot").glob("*.jsonl"):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            entities |= {e["label"] for e in record["entities"]}
            relations |= {r["label"] for r in record["relations"]} - {"false"}
    assert set(schema.span_labels) == entities
    assert set(schema.relation_label_names) == relations
