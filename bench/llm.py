"""LLM tagger on NCBI-disease: quality, speed and tokens of word/TAG prompting.

Demonstrations only from ``fewshot/gutierrez_train100_seed42.jsonl``; test items from
``fewshot/chen2023_test_sample200.jsonl`` (the first ``--n``). Configurations, named
``<mode>-k<demos>``, all on the same Gemma 3 270M GGUF:

- ``constrained``: in-process llama.cpp, every word forced, tags chosen from their logits;
- ``free``: in-process llama.cpp, free generation re-aligned to the words;
- ``server-free`` / ``server-guided``: llama.cpp's OpenAI-compatible server on loopback through
  the ``openai`` SDK, free or under the GBNF grammar the server enforces;
- ``transformers``: constrained decoding with the transformers provider (dequantized weights, CPU).

Also the floor: the model's raw time for the same number of prompt and generated tokens,
measured in-process with llama.cpp, and each configuration's time as a ratio of it.

    python -m bench.llm --n 40
    python -m bench.llm --n 40 --configs server-free-k5,server-guided-k5,transformers-k5
"""

from __future__ import annotations

import argparse
import contextlib
import time

from clinie.core import LabelSpec, read_documents
from clinie.embedded import llm_gguf
from clinie.evaluation import evaluate_spans
from clinie.extractors.llm import LLMTagger
from clinie.llm.base import LLM
from clinie.llm.llamacpp import LlamaCppLLM
from clinie.retrieval import Embedder
from harness import DATA, ROOT

NCBI = DATA / "ncbi_disease" / "fewshot"
LABELS = [LabelSpec("Disease", "a disease, disorder, syndrome or abnormal condition")]


def raw_rates(llm: LlamaCppLLM) -> tuple[float, float]:
    """Tokens/second of the bare model: batched prompt evaluation, and one-token decode steps."""
    engine = llm._llm
    tokens = [engine.token_bos()] + llm.tokenize("The patient was admitted with chest pain. " * 40)[:500]
    engine.n_tokens = 0
    started = time.perf_counter()
    engine.eval(tokens)
    prompt_rate = len(tokens) / (time.perf_counter() - started)
    step = llm.tokenize(" and")
    started = time.perf_counter()
    for _ in range(64):
        engine.eval(step)
    decode_rate = 64 / (time.perf_counter() - started)
    engine.n_tokens = 0
    return prompt_rate, decode_rate


class Providers:
    """The model each mode runs on; a server or a second runtime is started once, when first asked."""

    def __init__(self, in_process: LlamaCppLLM, stack: contextlib.ExitStack) -> None:
        self._stack = stack
        self._started: dict[str, LLM] = {"constrained": in_process, "free": in_process}

    def __call__(self, mode: str) -> LLM:
        runtime = "server" if mode.startswith("server-") else mode
        if runtime not in self._started:
            self._started[runtime] = self._start(runtime)
        return self._started[runtime]

    def _start(self, runtime: str) -> LLM:
        if runtime == "transformers":
            from clinie.llm.transformers_lm import TransformersLLM

            return TransformersLLM(device="cpu")
        if runtime != "server":
            raise SystemExit(f"unknown mode {runtime!r}")
        from clinie.llm.openai_compat import OpenAICompatibleLLM
        from harness.backend_server import LlamaServer  # the tests' harness: llama_cpp.server on a free port

        server = self._stack.enter_context(LlamaServer(llm_gguf(), ROOT / "bench" / "llama-server.log"))
        return OpenAICompatibleLLM("gemma", base_url=server.url + "/v1", timeout=600, logprobs=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=40, help="test items (from the start of the 200)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--configs", default="constrained-k0,constrained-k5,free-k5")
    args = parser.parse_args()

    demos = list(read_documents(NCBI / "gutierrez_train100_seed42.jsonl"))
    test = list(read_documents(NCBI / "chen2023_test_sample200.jsonl"))[: args.n]
    llm = LlamaCppLLM(n_threads=args.threads)
    embedder = Embedder()
    prompt_rate, decode_rate = raw_rates(llm)
    print(f"raw Gemma 3 270M Q4_K_M, {args.threads} threads: prompt {prompt_rate:.0f} tok/s, "
          f"decode {decode_rate:.1f} tok/s\n")
    print("| config | P | R | F1 | s/sentence | prompt tok/sent | generated tok/sent | time / raw-model floor |")
    print("|---|---|---|---|---|---|---|---|")
    with contextlib.ExitStack() as stack:
        providers = Providers(llm, stack)
        for config in args.configs.split(","):
            mode, k = config.rsplit("-k", 1)
            tagger = LLMTagger(LABELS, providers(mode), k=int(k), embedder=embedder,
                               constrained=mode in ("constrained", "transformers"),
                               guided=mode == "server-guided").fit(demos)
            started = time.perf_counter()
            predicted = tagger.predict(test)
            seconds = (time.perf_counter() - started) / len(test)
            scores = evaluate_spans(test, predicted)["strict"].micro
            prompt_tokens = tagger.usage.prompt_tokens / len(test)
            generated = tagger.usage.completion_tokens / len(test)
            floor = prompt_tokens / prompt_rate + generated / decode_rate
            print(f"| {config} | {scores.precision:.3f} | {scores.recall:.3f} | {scores.f1:.3f} | {seconds:.2f} | "
                  f"{prompt_tokens:.0f} | {generated:.0f} | {seconds / floor:.2f}x |", flush=True)
            if not tagger.constrained:
                print(f"  re-alignment of the generated text: {tagger.usage.parse}", flush=True)


if __name__ == "__main__":
    main()
