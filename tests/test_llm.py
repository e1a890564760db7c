"""LLM providers against the real thing: llama.cpp in-process with the embedded Gemma 3 270M,
and the OpenAI SDK over HTTP against llama.cpp's own OpenAI-compatible server."""

from __future__ import annotations

import math

import pytest

from backend_server import LlamaServer
from clinie.llm.base import LLM, LLMError, SupportsDecoding
from clinie.llm.llamacpp import LlamaCppLLM, default_gguf
from clinie.llm.openai_compat import OpenAICompatibleLLM
from clinie.prompting.wordtag import decode_constrained

PROMPT = "Q: What is the capital of France?\nA: The capital of France is"


@pytest.fixture(scope="module")
def gemma():
    return LlamaCppLLM(n_ctx=2048)


def test_the_embedded_model_is_a_real_gguf():
    path = default_gguf()
    assert path.read_bytes()[:4] == b"GGUF" and path.stat().st_size > 100_000_000


def test_llama_cpp_completes_greedily_and_deterministically(gemma):
    assert isinstance(gemma, LLM) and isinstance(gemma, SupportsDecoding)
    first = gemma.complete(PROMPT, max_tokens=4, stop=["\n"])
    assert "Paris" in first.text and first.completion_tokens <= 4 and first.prompt_tokens > 5
    assert gemma.complete(PROMPT, max_tokens=4, stop=["\n"]).text == first.text
    yes_no = gemma.complete(PROMPT, max_tokens=4, grammar='root ::= "yes" | "no"')
    assert yes_no.text in ("yes", "no")


def test_choices_are_scored_from_the_logits_and_sum_to_one(gemma):
    with gemma.session(PROMPT) as session:
        index, p = session.choose([" Paris", " London", " Berlin"])
    assert index == 0 and 0.5 < p <= 1.0
    # the scores of two options that share no first token are a softmax over those tokens
    with gemma.session(PROMPT) as session:
        i, p_paris = session.choose([" Paris", " London"])
    with gemma.session(PROMPT) as session:
        j, p_other = session.choose([" London", " Paris"])
    assert i == 0 and j == 1 and math.isclose(p_paris, p_other, rel_tol=1e-4)


def test_constrained_word_tag_decoding_copies_every_word_and_reuses_the_prompt_cache(gemma):
    prompt = ("Tag every word. Copy each word, then / and its tag (B-Disease, I-Disease or O).\n"
              "Sentence: Patients with cystic fibrosis\nTagged: Patients/O with/O cystic/B-Disease fibrosis/I-Disease\n\n"
              "Sentence: Risk of breast cancer\nTagged:")
    words = ["Risk", "of", "breast", "cancer"]
    with gemma.session(prompt) as session:
        tags, scores = decode_constrained(session, words, ["Disease"])
    assert len(tags) == 4 and all(0 < s <= 1 for s in scores)
    assert tags[0] != "I-Disease" and all(not (a == "O" and b.startswith("I-")) for a, b in zip(tags, tags[1:]))
    with gemma.session(prompt) as session:  # same prompt again: served from the KV cache, same answer
        assert decode_constrained(session, words, ["Disease"]) == (tags, scores)


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    with LlamaServer(default_gguf(), tmp_path_factory.mktemp("llama") / "server.log") as server:
        yield server


@pytest.mark.slow
def test_openai_sdk_against_llama_cpp_server_reads_text_and_logprobs(llama_server, gemma):
    llm = OpenAICompatibleLLM("gemma", base_url=llama_server.url + "/v1", timeout=120)
    completion = llm.complete(PROMPT, max_tokens=4, stop=["\n"])
    assert completion.text == gemma.complete(PROMPT, max_tokens=4, stop=["\n"]).text  # same model, same greedy answer
    assert completion.token_logprobs and all(lp <= 0 for lp in completion.token_logprobs)
    assert completion.prompt_tokens > 5 and completion.completion_tokens >= 1
    # the server's guided decoding: llama.cpp's GBNF grammar passed through
    assert llm.complete(PROMPT, max_tokens=4, grammar='root ::= "yes" | "no"').text in ("yes", "no")


def test_a_server_that_is_down_gives_a_clear_error_fast():
    llm = OpenAICompatibleLLM("x", base_url="http://127.0.0.1:9/v1", timeout=2, max_retries=0)
    with pytest.raises(LLMError, match="cannot connect"):
        llm.complete("hello", max_tokens=1)
