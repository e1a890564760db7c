"""Any OpenAI-compatible endpoint through the ``openai`` SDK: the OpenAI API, vLLM, llama.cpp's
server, Ollama. Text is sent to ``base_url``: only ever one the deployment configured.

Greedy decoding (temperature 0). The completions API is the default (word/TAG prompts are
continuations); ``chat=True`` for chat-only models. A GBNF ``grammar`` is passed the way the
server takes it (``grammar_style``): llama.cpp's server reads ``grammar``, vLLM (0.12 and later;
xgrammar reads GBNF) ``structured_outputs.grammar``. Token log-probabilities are read back when
the server gives them.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from clinie.llm.base import Completion, LLMError
from clinie.llm.providers import LLMOptions, register
from clinie.logs import without_credentials

#: How each kind of server takes a grammar, as extra fields of the request body.
GRAMMAR_FIELDS = {
    "llama.cpp": lambda grammar: {"grammar": grammar},
    "vllm": lambda grammar: {"structured_outputs": {"grammar": grammar}},
}


class OpenAICompatibleLLM:
    provider = "openai-compatible"

    def __init__(self, model: str, *, base_url: str | None = None, api_key: str | None = None, chat: bool = False,
                 timeout: float = 60.0, max_retries: int = 3, concurrency: int = 4, logprobs: bool = True,
                 grammar_style: str = "llama.cpp") -> None:
        import openai

        if grammar_style not in GRAMMAR_FIELDS:
            raise ValueError(f"grammar_style must be one of {', '.join(GRAMMAR_FIELDS)}, not {grammar_style!r}")
        self._grammar_fields = GRAMMAR_FIELDS[grammar_style]

        self.model = model
        self.base_url = base_url or "https://api.openai.com/v1"
        #: How errors name the endpoint: without the ``user:password@`` a URL may carry (errors
        #: are logged, and shown by the command line).
        self.endpoint = without_credentials(self.base_url)
        self.chat = chat
        self.logprobs = logprobs
        # The SDK retries connection errors, 408/409/429 and 5xx with exponential backoff.
        self._client = openai.OpenAI(base_url=self.base_url, api_key=api_key or "not-needed",
                                     timeout=timeout, max_retries=max_retries)
        self._slots = threading.BoundedSemaphore(concurrency)

    def complete(self, prompt: str, *, max_tokens: int, stop: Sequence[str] = (),
                 grammar: str | None = None) -> Completion:
        import openai

        extra = self._grammar_fields(grammar) if grammar else None
        try:
            with self._slots:
                if self.chat:
                    response = self._client.chat.completions.create(
                        model=self.model, messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens,
                        temperature=0.0, stop=list(stop) or None, logprobs=self.logprobs or None,
                        top_logprobs=1 if self.logprobs else None, extra_body=extra)
                    choice = response.choices[0]
                    text = choice.message.content or ""
                    logprobs = tuple(t.logprob for t in choice.logprobs.content) \
                        if choice.logprobs and choice.logprobs.content else None
                else:
                    response = self._client.completions.create(
                        model=self.model, prompt=prompt, max_tokens=max_tokens, temperature=0.0,
                        stop=list(stop) or None, logprobs=1 if self.logprobs else None, extra_body=extra)
                    choice = response.choices[0]
                    text = choice.text
                    logprobs = tuple(lp for lp in choice.logprobs.token_logprobs if lp is not None) \
                        if choice.logprobs and choice.logprobs.token_logprobs else None
        except openai.APITimeoutError as e:
            raise LLMError(f"{self.endpoint}: no answer in time ({e.__class__.__name__})") from e
        except openai.APIConnectionError as e:
            raise LLMError(f"{self.endpoint}: cannot connect; is the model server running?") from e
        except openai.APIStatusError as e:
            raise LLMError(f"{self.endpoint}: HTTP {e.status_code} for model {self.model!r}") from e
        usage = response.usage
        return Completion(text, usage.prompt_tokens if usage else 0, usage.completion_tokens if usage else 0,
                          logprobs)


@register("openai", reads=("model", "base_url", "api_key", "chat", "guided", "timeout_seconds"),
          requires=("base_url", "model"), remote=True)
def make(options: LLMOptions) -> OpenAICompatibleLLM:
    """Any OpenAI-compatible endpoint: note text IS sent to ``base_url``."""
    return OpenAICompatibleLLM(options.model, base_url=options.base_url, api_key=options.api_key or None,
                               chat=options.chat, timeout=options.timeout_seconds,
                               grammar_style=options.guided or "llama.cpp")
