"""clinie.labelstudio: configs, tasks, annotations and results, with adversarial input."""

from __future__ import annotations

from pathlib import Path

import pytest

from clinie.core import Document, Relation, Span, read_documents
from clinie.labelstudio import (LabelConfigError, UnknownLabelError, annotation_to_document,
                                document_to_result, parse_label_config, task_to_document)
from helpers import assert_spans_match_text

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"

NESTED = """<View>
  <Header value="Read the note"/>
  <View style="display: flex">
    <Labels name="meds" toName="note">
      <Label value="Medication" hint="a drug" background="red"/>
      <Label value="Dosage" description="amount per dose"/>
    </Labels>
    <View><Labels name="problems" toName="note" granularity="word"><Label value="Problem"/></Labels></View>
  </View>
  <Relations><Relation value="has_dosage" hint="dose of"/><Relation value="treats"/></Relations>
  <Text name="note" value="$clinical_note"/>
</View>"""


def test_nested_views_multiple_labels_any_data_key_and_descriptions():
    schema = parse_label_config(NESTED)
    meds, problems = schema.span_controls
    assert (meds.name, meds.to_name, meds.value_key, meds.granularity) == ("meds", "note", "clinical_note", "symbol")
    assert problems.granularity == "word" and problems.label_names == ("Problem",)
    assert schema.span_labels == ("Medication", "Dosage", "Problem")
    assert schema.description("Medication") == "a drug" and schema.description("Dosage") == "amount per dose"
    assert schema.relation_label_names == ("has_dosage", "treats")
    assert schema.control_for("Problem").name == "problems"


@pytest.mark.parametrize("xml, message", [
    ("<View><Labels", "well-formed"),
    ("<View><Text name='t' value='$t'/><Choices name='c' toName='t'><Choice value='a'/></Choices></View>",
     "nothing for clinie to predict"),
    ("<View><Labels name='l' toName='nope'><Label value='A'/></Labels><Text name='t' value='$t'/></View>",
     "not a <Text>"),
    ("<View><Labels name='l' toName='t'></Labels><Text name='t' value='$t'/></View>", "no <Label>"),
    ("<View><Labels name='l' toName='t'><Label value='A'/><Label value='A'/></Labels>"
     "<Text name='t' value='$t'/></View>", "repeats A"),
    ("<View><Labels name='l' toName='t'><Label value='A'/></Labels><Text name='t' value='t'/></View>", "$key"),
    ('<!DOCTYPE x [<!ENTITY a "aaaa">]><View/>', "DOCTYPE"),
])
def test_unusable_configs_are_refused_with_a_clear_reason(xml, message):
    with pytest.raises(LabelConfigError, match=message.replace("$", r"\$")):
        parse_label_config(xml)


def test_task_to_document_reads_the_controls_data_key():
    control = parse_label_config(NESTED).span_controls[0]
    doc = task_to_document({"id": 9, "data": {"clinical_note": ""}}, control)
    assert (doc.id, doc.text, doc.meta["to_name"]) == ("9", "", "note")
    with pytest.raises(ValueError, match="clinical_note"):
        task_to_document({"id": 9, "data": {"text": "x"}}, control)
    with pytest.raises(ValueError):
        task_to_document({"id": 9}, control)


TEXT = "Warfarin 5\u00a0mg\tPO\r\ndaily — café; métformine 500 mg"


def region(rid, start, end, label, from_name="meds", text=None):
    return {"id": rid, "from_name": from_name, "to_name": "note", "type": "labels",
            "value": {"start": start, "end": end, "text": TEXT[start:end] if text is None else text,
                      "labels": [label]}}


def test_annotations_become_documents_and_bad_regions_are_skipped():
    schema = parse_label_config(NESTED)
    task = {"id": 3, "data": {"clinical_note": TEXT}}
    result = [
        region("a", 0, 8, "Medication"),
        region("b", 9, 13, "Dosage", text="WRONG"),          # offsets win over value.text
        region("c", 0, 8, "Frequency"),                      # label not in the config
        region("d", 30, 999, "Medication"),                  # outside the text
        region("e", 0, 3, "Problem", from_name="problems"),  # another control
        {"from_id": "b", "to_id": "a", "type": "relation", "direction": "left", "labels": ["has_dosage"]},
        {"from_id": "a", "to_id": "c", "type": "relation", "direction": "right", "labels": ["has_dosage"]},
    ]
    doc = annotation_to_document(task, result, schema)
    assert [(s.id, s.text, s.label) for s in doc.entities] == [("a", "Warfarin", "Medication"),
                                                               ("b", "5\u00a0mg", "Dosage")]
    assert doc.relations == (Relation("a", "b", "has_dosage"),)
    assert_spans_match_text(doc.text, doc.entities)


def test_results_have_unique_stable_ids_scores_and_relations_pointing_at_regions():
    control = parse_label_config(NESTED).span_controls[0]
    spans = (Span.from_text(TEXT, 0, 8, "Medication", id="T1", score=0.9),
             Span.from_text(TEXT, 9, 13, "Dosage", id="T2", score=0.5),
             Span.from_text(TEXT, TEXT.index("métformine"), TEXT.index(" 500"), "Medication", id="T3"))
    doc = Document("1", TEXT, spans, (Relation("T1", "T2", "has_dosage", 0.7),))
    result, score = document_to_result(doc, control, ("has_dosage", "treats"))
    regions = [r for r in result if r["type"] == "labels"]
    assert len({r["id"] for r in regions}) == 3 and score == pytest.approx(0.7)
    assert [r.get("score") for r in regions] == [0.9, 0.5, None]
    for r in regions:
        assert TEXT[r["value"]["start"]:r["value"]["end"]] == r["value"]["text"]
        assert (r["from_name"], r["to_name"]) == ("meds", "note")
    [relation] = [r for r in result if r["type"] == "relation"]
    assert (relation["from_id"], relation["to_id"]) == (regions[0]["id"], regions[1]["id"])
    assert relation["labels"] == ["has_dosage"] and relation["direction"] == "right"
    assert document_to_result(doc, control)[0] == result  # stable ids


def test_unknown_labels_are_refused_not_sent():
    control = parse_label_config(NESTED).span_controls[0]
    doc = Document("1", TEXT, (Span.from_text(TEXT, 0, 8, "Drug"),))
    with pytest.raises(UnknownLabelError, match="Drug"):
        document_to_result(doc, control)
    ok = Document("1", TEXT, (Span.from_text(TEXT, 0, 8, "Medication", id="a"),
                              Span.from_text(TEXT, 9, 13, "Dosage", id="b")), (Relation("a", "b", "causes"),))
    with pytest.raises(UnknownLabelError, match="causes"):
        document_to_result(ok, control, ("has_dosage",))


def test_word_granularity_snaps_spans_to_whole_words_and_merges_duplicates():
    control = parse_label_config(NESTED).span_controls[1]
    text = "non-Hodgkin lymphoma\r\nin remission"
    doc = Document("1", text, (Span.from_text(text, 4, 14, "Problem"), Span.from_text(text, 0, 20, "Problem")))
    result, _ = document_to_result(doc, control)
    assert [r["value"]["text"] for r in result] == ["non-Hodgkin lymphoma"]


@pytest.mark.skipif(not SHARED.exists(), reason="shared corpora not present")
def test_real_corpus_round_trips_through_label_studio_results():
    schema = parse_label_config((ROOT / "label_configs" / "drug_interactions.xml").read_text())
    control = schema.span_controls[0]
    for doc in list(read_documents(SHARED / "ddi" / "fewshot" / "chen2023_test_sample200.jsonl"))[:50]:
        positive = [r for r in doc.relations if r.label != "false"]  # "false" marks a negative pair
        result, _ = document_to_result(doc.with_annotations(doc.entities, positive), control,
                                       schema.relation_label_names)
        back = annotation_to_document({"id": 1, "data": {"text": doc.text}}, result, schema)
        assert sorted((s.start, s.end, s.label) for s in back.entities) == \
            sorted((s.start, s.end, s.label) for s in doc.entities)

        def links(d):
            where = {s.id: (s.start, s.end) for s in d.entities}
            return sorted((where[r.head], where[r.tail], r.label) for r in d.relations)

        assert links(back) == links(doc.with_annotations(doc.entities, positive))
        assert_spans_match_text(back.text, back.entities)
