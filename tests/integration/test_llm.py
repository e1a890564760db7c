"""LLM providers against the real thing: llama.cpp in-process with the embedded Gemma 3 270M,
transformers running the same Gemma (dequantized from the GGUF), and the OpenAI SDK over HTTP
against llama.cpp's own OpenAI-compatible server (completions with Gemma, chat with the
SmolLM2-135M-Instruct GGUF, which has a chat template). vLLM cannot run on this machine: only
the form in which its grammar is sent is checked, against a recording HTTP server."""

from __future__ import annotations

import json
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from clinie.embedded import llm_gguf
from clinie.llm.base import LLM, LLMError, SupportsDecoding
from clinie.llm.llamacpp import LlamaCppLLM
from clinie.llm.openai_compat import OpenAICompatibleLLM
from clinie.llm.transformers_lm import TransformersLLM
from clinie.prompting.wordtag import decode_constrained
from harness.backend_server import LlamaServer, smollm2_gguf

PROMPT = "Q: What is the capital of France?\nA: The capital of France is"


@pytest.fixture(scope="module")
def gemma():
    return LlamaCppLLM(n_ctx=2048)


def test_the_embedded_model_is_a_real_gguf():
    path = llm_gguf()
    assert path.read_bytes()[:4] == b"GGUF" and path.stat().st_size > 100_000_000


def test_llama_cpp_completes_greedily_and_deterministically(gemma):
    assert isinstance(gemma, LLM) and isinstance(gemma, SupportsDecoding)
    first = gemma.complete(PROMPT, max_tokens=4, stop=["\n"])
    assert "Paris" in first.text and first.completion_tokens <= 4 and first.prompt_tokens > 5
    assert gemma.complete(PROMPT, max_tokens=4, stop=["\n"]).text == first.text
    yes_no = gemma.complete(PROMPT, max_tokens=4, grammar='root ::= "yes" | "no"')
    assert yes_no.text in ("yes", "no")


def assert_a_choice_joins_the_context(llm) -> None:
    """After choosing " Paris", the model goes on from " Paris", as if it had been forced."""
    follow = [".", ",", " and"]
    with llm.session(PROMPT) as session:
        assert session.choose([" Paris", " London"])[0] == 0
        chosen = session.choose(follow)
    with llm.session(PROMPT) as session:
        session.force(" Paris")
        forced = session.choose(follow)
    assert chosen[0] == forced[0] and math.isclose(chosen[1], forced[1], abs_tol=0.03), (chosen, forced)


def test_a_choice_joins_the_context_like_forced_text(gemma):
    assert_a_choice_joins_the_context(gemma)


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


TAG_PROMPT = ("Tag every word. Copy each word, then / and its tag (B-Disease, I-Disease or O).\n"
              "Sentence: Patients with cystic fibrosis\n"
              "Tagged: Patients/O with/O cystic/B-Disease fibrosis/I-Disease\n\n"
              "Sentence: Risk of breast cancer\nTagged:")


def test_constrained_word_tag_decoding_copies_every_word_and_reuses_the_prompt_cache(gemma):
    prompt, words = TAG_PROMPT, ["Risk", "of", "breast", "cancer"]
    with gemma.session(prompt) as session:
        tags, scores = decode_constrained(session, words, ["Disease"])
    assert len(tags) == 4 and all(0 < s <= 1 for s in scores)
    assert tags[0] != "I-Disease" and all(not (a == "O" and b.startswith("I-")) for a, b in zip(tags, tags[1:]))
    with gemma.session(prompt) as session:  # same prompt again: served from the KV cache, same answer
        assert decode_constrained(session, words, ["Disease"]) == (tags, scores)


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    with LlamaServer(llm_gguf(), tmp_path_factory.mktemp("llama") / "server.log") as server:
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


def test_an_error_names_the_endpoint_without_its_credentials():
    """Errors are logged and printed: the password in the URL stays out of them."""
    llm = OpenAICompatibleLLM("x", base_url="http://llm-user:s3cret@127.0.0.1:9/v1", timeout=2, max_retries=0)
    with pytest.raises(LLMError) as raised:
        llm.complete("hello", max_tokens=1)
    assert str(raised.value).startswith("http://127.0.0.1:9/v1: cannot connect")
    assert "s3cret" not in str(raised.value) and "llm-user" not in str(raised.value)


@pytest.fixture(scope="module")
def gemma_transformers():
    return TransformersLLM(llm_gguf(), device="cpu")  # about 50 s: the GGUF is dequantized


@pytest.mark.heavy
@pytest.mark.slow
def test_transformers_runs_the_same_model_with_the_same_answers(gemma_transformers, gemma):
    hf = gemma_transformers
    assert isinstance(hf, LLM) and isinstance(hf, SupportsDecoding) and hf.model == llm_gguf().name
    completion = hf.complete(PROMPT, max_tokens=4, stop=["\n"])
    reference = gemma.complete(PROMPT, max_tokens=4, stop=["\n"])
    assert completion.text == reference.text and "\n" not in completion.text
    assert completion.prompt_tokens == reference.prompt_tokens  # BOS counted by both
    with hf.session(PROMPT) as session:
        index, p = session.choose([" Paris", " London", " Berlin"])
    with gemma.session(PROMPT) as session:
        index_llama, p_llama = session.choose([" Paris", " London", " Berlin"])
    assert index == index_llama == 0 and math.isclose(p, p_llama, abs_tol=0.02)
    assert_a_choice_joins_the_context(hf)
    # constrained word/TAG decoding: same tags, close probabilities (Q4 arithmetic in llama.cpp,
    # float32 over the dequantized weights here)
    words = ["Risk", "of", "breast", "cancer"]
    with hf.session(TAG_PROMPT) as session:
        tags, scores = decode_constrained(session, words, ["Disease"])
        assert session.forced_tokens > 0 and session.prompt_tokens > 40
    with gemma.session(TAG_PROMPT) as session:
        tags_llama, scores_llama = decode_constrained(session, words, ["Disease"])
    assert tags == tags_llama
    assert all(math.isclose(a, b, abs_tol=0.15) for a, b in zip(scores, scores_llama))


@pytest.mark.heavy
def test_transformers_refuses_a_grammar_and_a_model_it_cannot_find(gemma_transformers, tmp_path):
    with pytest.raises(LLMError, match="GBNF"):
        gemma_transformers.complete(PROMPT, max_tokens=2, grammar='root ::= "yes"')
    with pytest.raises(LLMError, match="no GGUF model"):
        TransformersLLM(tmp_path / "missing.gguf")
    with pytest.raises(LLMError, match="cannot load"):
        TransformersLLM(str(tmp_path / "no-such-model-dir"))


@pytest.mark.slow
def test_chat_mode_against_a_chat_model_on_llama_cpp_server(tmp_path):
    with LlamaServer(smollm2_gguf(), tmp_path / "server.log") as server:
        llm = OpenAICompatibleLLM("smollm2", base_url=server.url + "/v1", chat=True, timeout=120)
        completion = llm.complete("What is the capital of France? Answer in one word.", max_tokens=8)
        assert "paris" in completion.text.lower()
        assert completion.token_logprobs and all(lp <= 0 for lp in completion.token_logprobs)
        # the prompt went through the model's chat template: more tokens than the question alone
        assert completion.prompt_tokens > len(llm.model) + 12
        guided = llm.complete("Is Paris in France?", max_tokens=4, grammar='root ::= "yes" | "no"')
        assert guided.text in ("yes", "no")


class _Recorder(BaseHTTPRequestHandler):
    """Answers every POST like an OpenAI completions endpoint and keeps the request bodies."""

    bodies: list[dict] = []

    def do_POST(self) -> None:
        self.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        answer = json.dumps({"id": "c", "object": "text_completion", "created": 0, "model": "m",
                             "choices": [{"index": 0, "text": " yes", "finish_reason": "stop", "logprobs": None}],
                             "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize("style, expected", [
    ("llama.cpp", {"grammar": 'root ::= "yes"'}),
    ("vllm", {"structured_outputs": {"grammar": 'root ::= "yes"'}}),
])
def test_the_grammar_is_sent_in_the_form_the_server_takes(style, expected):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Recorder.bodies.clear()
    try:
        llm = OpenAICompatibleLLM("m", base_url=f"http://127.0.0.1:{server.server_port}/v1", grammar_style=style)
        assert llm.complete("Q", max_tokens=2, grammar='root ::= "yes"').text == " yes"
        llm.complete("Q", max_tokens=2)
    finally:
        server.shutdown()
    guided, free = _Recorder.bodies
    assert {k: guided[k] for k in expected} == expected and guided["temperature"] == 0
    assert "grammar" not in free and "structured_outputs" not in free
    with pytest.raises(ValueError, match="grammar_style"):
        OpenAICompatibleLLM("m", base_url="http://127.0.0.1:9/v1", grammar_style="outlines")
