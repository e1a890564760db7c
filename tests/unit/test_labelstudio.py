"""clinie.labelstudio: configs, tasks, annotations and results, with adversarial input."""

from __future__ import annotations

import json
import logging

import pytest
from hypothesis import given, settings, strategies as st

from clinie.core import Document, Relation, Span, read_documents, tokenize
from clinie.labelstudio import (
    LabelConfigError,
    UnknownLabelError,
    UnusableAnnotation,
    annotation_to_document,
    document_to_result,
    parse_label_config,
    task_to_document,
)
from harness import ROOT
from harness.helpers import assert_spans_match_text

NESTED = """<View>
  <Header value="Read the note"/>
  <View style="display: flex">
    <Labels name="meds" toName="note">
      <Label value="Medication" hint="a drug" background="red"/>
      <Label value="Dosage" description="amount per dose" background="#00ff00"/>
      <Label value="Frequency"/>
    </Labels>
    <View><View><Labels name="problems" toName="note" granularity="word"><Label value="Problem"/></Labels></View></View>
  </View>
  <Relations><Relation value="has_dosage" hint="dose of"/><Relation value="treats"/></Relations>
  <Text name="note" value="$clinical_note"/>
  <Labels name="other" toName="summary"><Label value="Medication"/></Labels>
  <Text name="summary" value="$summary" granularity="word"/>
</View>"""

SIMPLE = """<View><Labels name="label" toName="text"><Label value="Disease"/></Labels>
<Text name="text" value="$text"/></View>"""


# --- parse_label_config ---------------------------------------------------------------------


def test_nested_views_multiple_labels_any_data_key_and_descriptions():
    schema = parse_label_config(NESTED)
    meds, problems, other = schema.span_controls
    assert (meds.name, meds.to_name, meds.value_key, meds.granularity) == ("meds", "note", "clinical_note", "symbol")
    assert (problems.to_name, problems.granularity, problems.label_names) == ("note", "word", ("Problem",))
    assert (other.to_name, other.value_key, other.granularity) == ("summary", "summary", "word")  # from <Text>
    assert schema.span_labels == ("Medication", "Dosage", "Frequency", "Problem")
    assert [label.description for label in meds.labels] == ["a drug", "amount per dose", ""]
    assert schema.relation_label_names == ("has_dosage", "treats")
    assert [label.description for label in schema.relation_labels] == ["dose of", ""]


def test_text_may_come_before_labels_and_relations_are_optional():
    schema = parse_label_config('<View><Text name="t" value="$body"/>'
                                '<Labels name="l" toName="t"><Label value="A"/></Labels></View>')
    assert schema.span_controls[0].value_key == "body" and schema.relation_labels == ()


@pytest.mark.parametrize("xml, message", [
    ("", "empty"),
    ("<View><Labels", "well-formed"),
    ("<View><Text name='t' value='$t'/><Choices name='c' toName='t'><Choice value='a'/></Choices></View>",
     "nothing for clinie to predict"),
    ("<View><Labels name='l' toName='nope'><Label value='A'/></Labels><Text name='t' value='$t'/></View>",
     "no <Text name='nope'>.*'t'"),
    ("<View><Labels name='l' toName='h'><Label value='A'/></Labels><HyperText name='h' value='$h'/></View>",
     "no <Text name='h'>"),
    ("<View><Labels name='l' toName='t'></Labels><Text name='t' value='$t'/></View>", "no <Label"),
    ("<View><Labels name='l' toName='t'><Label value='A'/><Label value='A'/></Labels>"
     "<Text name='t' value='$t'/></View>", "repeats the label.* A"),
    ("<View><Labels name='l' toName='t'><Label value='A'/></Labels><Text name='t' value='$t'/>"
     "<Relations><Relation value='r'/></Relations><Relations><Relation value='r'/></Relations></View>",
     "<Relations> repeats"),
    ("<View><Labels name='l' toName='t'><Label hint='x'/></Labels><Text name='t' value='$t'/></View>", "no value"),
    ("<View><Labels toName='t'><Label value='A'/></Labels><Text name='t' value='$t'/></View>", "name and a toName"),
    ("<View><Labels name='l' toName='t'><Label value='A'/></Labels><Text name='t' value='t'/></View>", r"\$key"),
    ("<View><Labels name='l' toName='t'><Label value='A'/></Labels><Text name='t' value='$u' valueType='url'/>"
     "</View>", "valueType"),
    ('<!DOCTYPE x [<!ENTITY a "aaaa">]><View/>', "DOCTYPE"),
    ('<!ENTITY a "aaaa"><View/>', "ENTITY"),
])
def test_unusable_configs_are_refused_with_a_clear_reason(xml, message):
    with pytest.raises(LabelConfigError, match=message):
        parse_label_config(xml)


def test_config_errors_are_value_errors():
    assert issubclass(LabelConfigError, ValueError) and issubclass(UnknownLabelError, ValueError)


# --- task_to_document -------------------------------------------------------------------------


def test_task_to_document_reads_the_controls_data_key():
    meds, _, other = parse_label_config(NESTED).span_controls
    doc = task_to_document({"id": 9, "data": {"clinical_note": "", "summary": "s"}}, meds)
    assert (doc.id, doc.text, doc.entities, doc.meta) == ("9", "", (), {"task_id": 9, "to_name": "note"})
    assert task_to_document({"id": 9, "data": {"clinical_note": "", "summary": "s"}}, other).text == "s"
    with pytest.raises(ValueError, match="clinical_note"):
        task_to_document({"id": 9, "data": {"text": "x"}}, meds)
    with pytest.raises(ValueError, match="not a string"):
        task_to_document({"id": 9, "data": {"clinical_note": 42}}, meds)
    with pytest.raises(ValueError, match="'data'"):
        task_to_document({"id": 9}, meds)


# --- annotation_to_document -------------------------------------------------------------------

# CRLF, a tab, a no-break space, an em dash, accents and an astral-plane emoji before a span.
TEXT = "Warfarin 5\u00a0mg\tPO\r\ndaily — café; 💊 métformine 500 mg"


def region(rid, start, end, label, from_name="meds", text=None, to_name="note"):
    return {"id": rid, "from_name": from_name, "to_name": to_name, "type": "labels",
            "value": {"start": start, "end": end, "text": TEXT[start:end] if text is None else text,
                      "labels": [label]}}


def arrow(head, tail, *labels, direction="right"):
    return {"from_id": head, "to_id": tail, "type": "relation", "direction": direction, "labels": list(labels)}


def annotate(result, config=NESTED):
    return annotation_to_document({"id": 3, "data": {"clinical_note": TEXT, "summary": "x", "text": TEXT}},
                                  result, parse_label_config(config))


def test_regions_of_every_control_on_the_first_text_become_spans_with_exact_offsets():
    met = TEXT.index("métformine")
    doc = annotate([
        region("a", 0, 8, "Medication"),
        region("b", 9, 13, "Dosage", text="WRONG"),                  # offsets win over value.text
        region("c", met, met + 10, "Medication"),                     # after an emoji: code points
        region("d", TEXT.index("PO\r\n") + 4, TEXT.index(" —"), "Frequency"),
        region("e", 0, 3, "Problem", from_name="problems"),           # another control, same text
        region("f", 0, 1, "Medication", from_name="other", to_name="summary"),  # another text
    ])
    assert [(s.id, s.text, s.label) for s in doc.entities] == [
        ("a", "Warfarin", "Medication"), ("b", "5\u00a0mg", "Dosage"), ("c", "métformine", "Medication"),
        ("d", "daily", "Frequency"), ("e", "War", "Problem")]
    assert doc.id == "3" and doc.text == TEXT
    assert_spans_match_text(doc.text, doc.entities)


def test_a_region_without_an_id_gets_a_stable_id_from_what_it_is():
    doc = annotate([region(None, 0, 8, "Medication"), region(None, 9, 13, "Dosage"),
                    {"type": "choices", "value": {"choices": ["x"]}}])
    assert [(s.text, s.label) for s in doc.entities] == [("Warfarin", "Medication"), ("5\u00a0mg", "Dosage")]
    assert [s.id for s in doc.entities] == [s.id for s in annotate([region(None, 0, 8, "Medication"),
                                                                     region(None, 9, 13, "Dosage")]).entities]
    assert len({s.id for s in doc.entities}) == 2


def _bad_value():
    bad = region("g", 0, 8, "Medication")
    bad["value"]["start"] = "zero"
    return bad


def _several_labels():
    several = region("h", 0, 8, "Medication")
    several["value"]["labels"] = ["Medication", "Dosage"]
    return several


@pytest.mark.parametrize("bad, reason", [
    (region("a", 9, 13, "Dosage"), "region id repeated"),
    (region("c", 0, 8, "Route"), "label not in the config"),
    (region("d", 30, 999, "Medication"), "region offsets unusable"),
    (region("e", 5, 5, "Medication"), "region offsets unusable"),
    (region("f", 0, 3, "Medication", from_name="problems"), "label not in the config"),
    (_bad_value(), "region offsets unusable"),
    (_several_labels(), "region without exactly one label"),
])
def test_a_region_clinie_cannot_use_makes_the_whole_annotation_unusable_and_says_why_without_the_text(bad, reason):
    # learning the rest of the annotation would teach "no entity" where the region is
    with pytest.raises(UnusableAnnotation) as raised:
        annotate([region("a", 0, 8, "Medication"), bad])
    assert raised.value.reason == reason and "Warfarin" not in str(raised.value)


def test_the_same_region_twice_is_one_span():
    assert len(annotate([region("a", 0, 8, "Medication"), region("a", 0, 8, "Medication")]).entities) == 1


def test_relations_follow_direction_and_arrows_to_missing_regions_are_skipped_and_counted(caplog):
    spans = [region("a", 0, 8, "Medication"), region("b", 9, 13, "Dosage"), region("c", 14, 16, "Frequency")]
    with caplog.at_level(logging.WARNING, logger="clinie.labelstudio"):
        doc = annotate(spans + [
            arrow("b", "a", "has_dosage", direction="left"),   # drawn backwards: a -> b
            arrow("a", "b", "has_dosage"),                     # the same link again: kept once
            arrow("a", "c", "has_dosage", "treats", direction="bi"),  # two labels, kept as drawn
            arrow("a", "z", "has_dosage"),                     # unknown region: no pair to learn
        ])
    assert doc.relations == (Relation("a", "b", "has_dosage"), Relation("a", "c", "has_dosage"),
                             Relation("a", "c", "treats"))
    assert doc.meta["skipped_relations"] == 1 and len(caplog.records) == 1


@pytest.mark.parametrize("bad, reason", [(arrow("a", "c", "causes"), "relation label not in the config"),
                                         (arrow("c", "a"), "relation without a label")])
def test_an_arrow_whose_label_cannot_be_learned_makes_the_annotation_unusable(bad, reason):
    # its pair would otherwise be taught as unrelated
    spans = [region("a", 0, 8, "Medication"), region("c", 14, 16, "Frequency")]
    with pytest.raises(UnusableAnnotation) as raised:
        annotate([*spans, bad])
    assert raised.value.reason == reason


def test_without_relations_in_the_config_every_arrow_is_an_untyped_link():
    config = SIMPLE.replace('"Disease"', '"Medication"')
    result = [region("a", 0, 8, "Medication", from_name="label"),
              region("b", 21, 26, "Medication", from_name="label"),
              arrow("a", "b"), arrow("b", "a", "anything")]
    doc = annotate(result, config)
    assert doc.relations == (Relation("a", "b", ""), Relation("b", "a", ""))


def test_an_empty_text_gives_an_empty_document():
    schema = parse_label_config(SIMPLE)
    doc = annotation_to_document({"id": 1, "data": {"text": ""}}, [], schema)
    assert (doc.text, doc.entities, doc.relations) == ("", (), ())
    with pytest.raises(UnusableAnnotation, match="outside a text of 0 chars"):  # a region it cannot hold
        annotation_to_document({"id": 1, "data": {"text": ""}}, [region("a", 0, 1, "Disease", from_name="label")],
                               schema)


# --- document_to_result -----------------------------------------------------------------------


def controls():
    meds, problems, other = parse_label_config(NESTED).span_controls
    return meds, problems


def test_results_have_unique_stable_ids_scores_and_relations_pointing_at_regions():
    meds, _ = controls()
    met = TEXT.index("métformine")
    spans = (Span.from_text(TEXT, 0, 8, "Medication", id="T1", score=0.9),
             Span.from_text(TEXT, 9, 13, "Dosage", id="T2", score=0.5),
             Span.from_text(TEXT, met, met + 10, "Medication", id="T3"))
    doc = Document("1", TEXT, spans, (Relation("T1", "T2", "has_dosage", 0.7), Relation("T3", "T2", "")))
    result, score = document_to_result(doc, meds, ("has_dosage", "treats", ""))
    regions = [r for r in result if r["type"] == "labels"]
    ids = [r["id"] for r in regions]
    assert len(set(ids)) == 3 and all(isinstance(i, str) and i for i in ids)
    assert score == 0.5 and [r.get("score") for r in regions] == [0.9, 0.5, None]
    for r, span in zip(regions, spans):
        assert (r["from_name"], r["to_name"]) == ("meds", "note")
        assert r["value"] == {"start": span.start, "end": span.end, "text": span.text, "labels": [span.label]}
    relations = [r for r in result if r["type"] == "relation"]
    assert relations == [
        {"from_id": ids[0], "to_id": ids[1], "type": "relation", "direction": "right", "labels": ["has_dosage"],
         "score": 0.7},
        {"from_id": ids[2], "to_id": ids[1], "type": "relation", "direction": "right", "labels": []}]
    assert document_to_result(doc, meds, ("has_dosage", "treats", "")) == (result, score)  # stable
    reordered = doc.with_annotations(spans[::-1], doc.relations)
    assert {r["id"] for r in document_to_result(reordered, meds)[0] if "id" in r} == set(ids)
    json.dumps(result)  # what Label Studio receives must be plain JSON


def test_region_ids_differ_between_controls_on_the_same_text():
    config = ('<View><Labels name="a" toName="t"><Label value="X"/></Labels>'
              '<Labels name="b" toName="t"><Label value="X"/></Labels><Text name="t" value="$t"/></View>')
    first, second = parse_label_config(config).span_controls
    doc = Document("1", "xx", (Span.from_text("xx", 0, 2, "X"),))
    assert document_to_result(doc, first)[0][0]["id"] != document_to_result(doc, second)[0][0]["id"]


def test_a_document_without_spans_gives_an_empty_result_and_no_score():
    meds, problems = controls()
    assert document_to_result(Document("1", TEXT), meds) == ([], None)
    assert document_to_result(Document("1", ""), problems) == ([], None)


def test_unknown_labels_and_dangling_relations_are_refused_not_sent():
    meds, _ = controls()
    doc = Document("1", TEXT, (Span.from_text(TEXT, 0, 8, "Drug"),))
    with pytest.raises(UnknownLabelError, match="'Drug'.*Medication, Dosage, Frequency"):
        document_to_result(doc, meds)
    ok = (Span.from_text(TEXT, 0, 8, "Medication", id="a"), Span.from_text(TEXT, 9, 13, "Dosage", id="b"))
    with pytest.raises(UnknownLabelError, match="'causes'.*has_dosage"):
        document_to_result(Document("1", TEXT, ok, (Relation("a", "b", "causes"),)), meds, ("has_dosage",))
    with pytest.raises(ValueError, match="span id"):
        document_to_result(Document("1", TEXT, ok, (Relation("a", "zz", "has_dosage"),)), meds)
    with pytest.raises(ValueError, match="outside"):
        document_to_result(Document("1", "short", (Span(0, 50, "Dosage", "x" * 50),)), meds)


def test_word_granularity_snaps_spans_to_whole_words_and_merges_duplicates():
    _, problems = controls()
    text = "non-Hodgkin lymphoma\r\nin remission"
    spans = (Span.from_text(text, 6, 14, "Problem", id="p1", score=0.4),   # "dgkin ly": starts mid-word
             Span.from_text(text, 0, 20, "Problem", id="p2", score=0.8),   # the same words exactly
             Span.from_text(text, 22, 23, "Problem", id="p3"))             # "i" of "in"
    doc = Document("1", text, spans, (Relation("p3", "p1", "treats"), Relation("p3", "p2", "treats")))
    result, score = document_to_result(doc, problems)
    regions = [r for r in result if r["type"] == "labels"]
    assert [(r["value"]["start"], r["value"]["end"], r["value"]["text"]) for r in regions] == [
        (0, 20, "non-Hodgkin lymphoma"), (22, 24, "in")]
    assert regions[0]["score"] == 0.8 and score == 0.8
    assert [(r["from_id"], r["to_id"]) for r in result if r["type"] == "relation"] == [
        (regions[1]["id"], regions[0]["id"])]
    words = {(w.start, w.end) for w in tokenize(text)}
    for r in regions:
        assert r["value"]["text"] == text[r["value"]["start"]:r["value"]["end"]]
        assert any(s == r["value"]["start"] for s, _ in words) and any(e == r["value"]["end"] for _, e in words)


def test_symbol_granularity_keeps_offsets_as_they_are():
    meds, _ = controls()
    doc = Document("1", TEXT, (Span.from_text(TEXT, 2, 5, "Medication"),))
    assert document_to_result(doc, meds)[0][0]["value"]["text"] == "rfa"


# --- round trips ------------------------------------------------------------------------------


def test_round_trip_preserves_spans_and_relations_on_tricky_text():
    schema = parse_label_config(NESTED)
    meds = schema.span_controls[0]
    met = TEXT.index("métformine")
    spans = (Span.from_text(TEXT, 0, 8, "Medication", id="w"), Span.from_text(TEXT, 9, 13, "Dosage", id="d"),
             Span.from_text(TEXT, met, met + 10, "Medication", id="m"),
             Span.from_text(TEXT, TEXT.index("daily"), TEXT.index("daily") + 5, "Frequency", id="f"))
    doc = Document("3", TEXT, spans, (Relation("w", "d", "has_dosage"),))
    result, _ = document_to_result(doc, meds, schema.relation_label_names)
    back = annotate(result)
    assert [(s.start, s.end, s.label, s.text) for s in back.entities] == \
        [(s.start, s.end, s.label, s.text) for s in spans]
    where = {s.id: (s.start, s.end) for s in back.entities}
    assert [(where[r.head], where[r.tail], r.label) for r in back.relations] == [((0, 8), (9, 13), "has_dosage")]
    assert_spans_match_text(back.text, back.entities)


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=40).flatmap(
    lambda text: st.tuples(st.just(text), st.lists(
        st.tuples(st.integers(0, len(text) - 1), st.integers(1, len(text)), st.sampled_from(["Disease"])),
        max_size=6))))
def test_round_trip_property_any_text_any_spans(case):
    text, raw = case
    spans = {(s, e, label) for s, e, label in raw if s < e}
    schema = parse_label_config(SIMPLE)
    doc = Document("1", text, tuple(Span.from_text(text, s, e, label) for s, e, label in sorted(spans)))
    result, _ = document_to_result(doc, schema.span_controls[0])
    back = annotation_to_document({"id": 1, "data": {"text": text}}, json.loads(json.dumps(result)), schema)
    assert {(s.start, s.end, s.label) for s in back.entities} == spans
    assert_spans_match_text(text, back.entities)


def test_real_corpus_round_trips_through_label_studio_results(data_dir):
    schema = parse_label_config((ROOT / "label_configs" / "drug_interactions.xml").read_text())
    control = schema.span_controls[0]
    for doc in list(read_documents(data_dir / "ddi" / "fewshot" / "chen2023_test_sample200.jsonl"))[:50]:
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
