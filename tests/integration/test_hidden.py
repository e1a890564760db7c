"""Batched reading of the embedded Gemma's hidden states (real model): a padded row reads what the
sentence alone reads, the pass stops at the deepest layer read, and the usage counts passes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from clinie.core import read_documents, tokenize
from clinie.llm.hidden import HiddenStates
from harness import DATA


@pytest.fixture(scope="module")
def states() -> HiddenStates:
    return HiddenStates.shared()


@pytest.fixture(scope="module")
def texts() -> list[str]:
    """Sentences of unlike length, so that most rows of a batch are padded."""
    docs = read_documents(DATA / "ncbi_disease" / "fewshot" / "gutierrez_train100_seed42.jsonl")
    return sorted((d.text for d in list(docs)[:7]), key=len)


def close(batched: np.ndarray, alone: np.ndarray) -> bool:
    """Equal to float rounding: a batch's matrix products sum in another order. Gemma's states
    reach 1e5 in a few dimensions and are near 1 in most, hence a relative bound and a small
    absolute one."""
    return batched.shape == alone.shape and np.allclose(batched, alone, rtol=2e-3, atol=2e-2)


def test_a_padded_batch_reads_what_each_sentence_alone_reads_and_counts_its_passes(states, texts):
    states.forget()
    alone = [states.words(text, tokenize(text)) for text in texts]
    states.forget()
    items = [(text, tokenize(text)) for text in texts]
    items.insert(2, items[-1])  # asked for twice in one call: read once
    items.insert(0, ("", []))
    before = dict(states.usage)
    readings = states.many(items, batch_size=3)
    spent = {k: v - before[k] for k, v in states.usage.items()}
    assert spent["calls"] == math.ceil(len(texts) / 3) == sum(r.calls for r in readings)  # a pass per batch
    assert spent["cache_hits"] == 1 == readings[-1].cache_hits  # the repeated sentence
    assert spent["prompt_tokens"] == sum(r.prompt_tokens for r in readings) > 2 * sum(len(t.split()) for t in texts)
    assert readings[0].features.shape == (0, states.dim) and readings[3].features is readings[-1].features
    for (text, _), reading in zip(items[1:], readings[1:]):
        assert close(reading.features, alone[texts.index(text)])
    assert states.many(items[1:2])[0].features is readings[1].features  # cached per text and words
    assert sum(reading.seconds for reading in readings) > 0


def test_the_pass_stops_at_the_deepest_layer_read_and_reads_what_the_whole_model_gives(states, texts):
    text = texts[0]
    ids, rows = states._prompt(text, tokenize(text))
    with torch.inference_mode():
        hidden = states._lm.model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
    whole = torch.cat([hidden[layer][0] for layer in states.layers], dim=-1).numpy()[rows]
    above = []  # the first layer past the deepest read must not run
    hook = states._lm.model.layers[states.layers[-1]].register_forward_hook(lambda *_: above.append(1))
    try:
        states.forget()
        assert np.array_equal(states.words(text, tokenize(text)), whole)
    finally:
        hook.remove()
    assert not above
