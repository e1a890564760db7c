"""The shipped labeling configs parse, describe every label, and match the corpora they serve."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

from clinie.labelstudio import parse_label_config
from harness import ROOT

CONFIGS = sorted((ROOT / "label_configs").glob("*.xml"))


def schema_of(stem: str):
    return parse_label_config((ROOT / "label_configs" / f"{stem}.xml").read_text(encoding="utf-8"))


def test_the_four_configs_are_shipped():
    assert {p.stem for p in CONFIGS} >= {"disease_ner", "chemical_ner", "drug_interactions", "medication_attributes"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_label_and_relation_has_a_one_line_description(path):
    schema = parse_label_config(path.read_text(encoding="utf-8"))
    specs = [*(label for control in schema.span_controls for label in control.labels), *schema.relation_labels]
    for spec in specs:
        assert spec.description.strip() and "\n" not in spec.description, spec.name
    assert schema.span_controls[0].value_key == "text"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_label_has_its_own_colour(path):
    root = ET.fromstring(path.read_text(encoding="utf-8"))
    assert root.tag == "View"
    colours = [label.get("background") for label in root.iter("Label")]
    assert all(colours) and len(set(colours)) == len(colours)


@pytest.mark.parametrize("stem, granularity", [("disease_ner", "word"), ("chemical_ner", "word"),
                                               ("drug_interactions", "symbol"),
                                               ("medication_attributes", "symbol")])
def test_granularity(stem, granularity):
    assert schema_of(stem).span_controls[0].granularity == granularity


def test_medication_attributes_link_a_medication_to_each_attribute():
    schema = schema_of("medication_attributes")
    assert schema.span_labels == ("Medication", "Dosage", "Route", "Frequency", "Reason", "Duration")
    assert schema.relation_label_names == ("has_dosage", "has_route", "has_frequency", "has_reason", "has_duration")


@pytest.mark.parametrize("config, corpus", [("disease_ner", "ncbi_disease"), ("chemical_ner", "bc5cdr_chem"),
                                            ("drug_interactions", "ddi")])
def test_labels_match_the_corpus(config, corpus, data_dir):
    schema = schema_of(config)
    entities, relations = set(), set()
    paths = sorted((data_dir / corpus / "fewshot").glob("*.jsonl"))
    assert paths
    for path in paths:
        for line in path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            entities |= {e["label"] for e in record["entities"]}
            relations |= {r["label"] for r in record["relations"]} - {"false"}  # DDI's negative pairs
    assert set(schema.span_labels) == entities
    assert set(schema.relation_label_names) == relations
