"""What prompting an LLM costs, counted by every extractor that prompts it (``Usage``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from clinie.prompting.wordtag import ParseStats


@dataclass
class Usage:
    """What the LLM cost: calls actually made, cache hits, tokens in and out."""

    calls: int = 0
    cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    parse: ParseStats = field(default_factory=ParseStats)

    def counts(self) -> dict[str, int]:
        return {"calls": self.calls, "cache_hits": self.cache_hits, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens}

    def since(self, before: dict[str, int]) -> dict[str, int]:
        """What was spent since ``before = usage.counts()``: a document's own cost."""
        return {name: value - before[name] for name, value in self.counts().items()}
