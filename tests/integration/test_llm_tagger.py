"""The LLM tagger end to end on real NCBI-disease sentences, with the embedded Gemma model:
constrained in-process decoding, and free generation through the OpenAI-compatible path."""

from __future__ import annotations

import pytest

from clinie.core import Document, LabelSpec, read_documents, tokenize
from clinie.embedded import llm_gguf
from clinie.extractors.llm import LLMTagger
from clinie.llm.cache import CallCache
from clinie.llm.llamacpp import LlamaCppLLM
from clinie.llm.openai_compat import OpenAICompatibleLLM
from clinie.retrieval import Embedder
from harness import DATA
from harness.backend_server import LlamaServer, smollm2_gguf
from harness.helpers import assert_spans_match_text

NCBI = DATA / "ncbi_disease" / "fewshot"
LABELS = [LabelSpec("Disease", "a disease, disorder or syndrome")]


@pytest.fixture(scope="module")
def data():
    return (list(read_documents(NCBI / "gutierrez_train100_seed42.jsonl")),
            list(read_documents(NCBI / "chen2023_test_sample200.jsonl"))[:3])


@pytest.fixture(scope="module")
def embedder():
    return Embedder()


@pytest.mark.slow
def test_constrained_tagging_with_retrieved_demos_and_a_call_cache(data, embedder, tmp_path):
    train, test = data
    cache = CallCache(tmp_path / "calls.sqlite3")
    tagger = LLMTagger(LABELS, LlamaCppLLM(), k=3, embedder=embedder, cache=cache).fit(train)
    assert tagger.constrained
    predicted = tagger.predict(test)
    assert tagger.usage.calls == 3 and tagger.usage.prompt_tokens > 3 * 200
    for doc in predicted:
        assert_spans_match_text(doc.text, doc.entities)
        assert all(s.label == "Disease" and 0 < s.score <= 1 for s in doc.entities)
    assert any(doc.entities for doc in predicted)
    # the same inputs again: every answer comes from the cache, identical, with no model call
    again = LLMTagger(LABELS, tagger.llm, k=3, embedder=embedder, cache=cache).fit(train)
    assert again.predict(test) == predicted
    assert again.usage.calls == 0 and again.usage.cache_hits == 3


@pytest.mark.slow
def test_long_notes_are_chunked_and_offsets_map_back(embedder):
    text = ("Patient\twith cystic fibrosis.\r\n" * 30) + "Café-au-lait spots; no diabetes."
    tagger = LLMTagger(LABELS, LlamaCppLLM(), k=0, max_words=40)
    [doc] = tagger.predict([Document("n", text)])
    assert tagger.usage.calls > 1  # more than one chunk
    assert_spans_match_text(text, doc.entities)


@pytest.mark.heavy
@pytest.mark.slow
def test_free_generation_through_an_openai_compatible_server_is_realigned(data, embedder, tmp_path):
    """One short sentence and one demonstration: llama-cpp-python's server ranks the whole
    vocabulary (262,144 tokens) in Python for every generated token's logprob."""
    train, test = data
    sentence = test[:1]
    with LlamaServer(llm_gguf(), tmp_path / "server.log") as server:
        llm = OpenAICompatibleLLM("gemma", base_url=server.url + "/v1", timeout=300)
        tagger = LLMTagger(LABELS, llm, k=1, embedder=embedder).fit(train)
        assert not tagger.constrained
        predicted = tagger.predict(sentence)
        # the server's guided decoding: the grammar makes the model copy every word
        guided = LLMTagger(LABELS, llm, k=1, embedder=embedder, guided=True).fit(train)
        guided_predicted = guided.predict(sentence)
    words = len(tokenize(sentence[0].text))
    assert guided.usage.parse.dropped == 0 and guided.usage.parse.extra == 0
    assert guided.usage.parse.aligned == guided.usage.parse.source_words == words
    for doc in guided_predicted:
        assert_spans_match_text(doc.text, doc.entities)
    for doc in predicted:
        assert_spans_match_text(doc.text, doc.entities)
        assert all(s.label == "Disease" for s in doc.entities)
    parse = tagger.usage.parse
    assert parse.source_words == words
    assert parse.aligned + parse.dropped == parse.source_words


@pytest.mark.heavy
@pytest.mark.slow
def test_a_chat_model_tags_through_the_chat_api_under_the_servers_grammar(data, embedder, tmp_path):
    """SmolLM2-135M-Instruct left free only echoes the sentence (no word is tagged); under the
    server's grammar, sent with the chat request, it must copy every word and tag it."""
    train, test = data
    with LlamaServer(smollm2_gguf(), tmp_path / "server.log") as server:
        llm = OpenAICompatibleLLM("smollm2", base_url=server.url + "/v1", chat=True, timeout=300)
        free = LLMTagger(LABELS, llm, k=1, embedder=embedder).fit(train)
        free.predict(test[:1])
        guided = LLMTagger(LABELS, llm, k=1, embedder=embedder, guided=True).fit(train)
        predicted = guided.predict(test[:1])
    words = len(tokenize(test[0].text))
    assert free.usage.parse.source_words == words
    assert free.usage.parse.aligned + free.usage.parse.dropped == words
    assert guided.usage.parse.aligned == words and guided.usage.parse.dropped == 0
    for doc in predicted:
        assert_spans_match_text(doc.text, doc.entities)
        assert all(s.label == "Disease" for s in doc.entities)
