"""LLM providers, registered by name next to the class each makes (``@register``); a package
outside clinie adds one through the ``clinie.llm_providers`` entry-point group (a module whose
import registers it: see docs/extending.md). ``CLINIE_LLM_PROVIDER`` names the one that serves.

A provider says which of the ``CLINIE_LLM_*`` settings it reads (``LLMOptions``' fields), which it
cannot do without, and whether it sends text off the machine (``remote``: /health lists where
to, and clinie sends nothing to an endpoint that was not named explicitly).

    >>> sorted(providers())
    ['llama.cpp', 'openai', 'transformers']
    >>> provider("openai").remote, provider("openai").requires
    (True, ('base_url', 'model'))
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points

from clinie.llm.base import LLM

#: The entry-point group of providers from other packages.
ENTRY_POINTS = "clinie.llm_providers"

#: clinie's own providers (modules: importing one registers it).
BUILT_IN = ("clinie.llm.llamacpp", "clinie.llm.transformers_lm", "clinie.llm.openai_compat")


@dataclass(frozen=True)
class LLMOptions:
    """What a provider is made from: ``CLINIE_LLM_<FIELD>`` (``clinie.settings``), plain values."""

    provider: str = "llama.cpp"
    model: str = ""  # a local file or directory, or the name an endpoint serves; empty: the embedded LLM
    base_url: str = ""
    api_key: str = ""
    chat: bool = False
    guided: str = ""  # the guided decoding an endpoint takes: "llama.cpp" or "vllm"; empty: free generation
    timeout_seconds: float = 60.0
    device: str = ""
    threads: int = 0


@dataclass(frozen=True)
class Provider:
    name: str
    make: Callable[[LLMOptions], LLM]
    reads: tuple[str, ...]  # the ``LLMOptions`` fields it reads
    requires: tuple[str, ...] = ()  # those it cannot do without
    remote: bool = False  # sends text off the machine (to ``base_url``)


_PROVIDERS: dict[str, Provider] = {}
_lock = threading.RLock()  # a module an entry point names may look providers up as it registers
_loaded = False


def register(name: str, *, reads: tuple[str, ...] = ("model",), requires: tuple[str, ...] = (),
             remote: bool = False) -> Callable[[Callable[[LLMOptions], LLM]], Callable[[LLMOptions], LLM]]:
    """Register the decorated ``make(options) -> LLM`` as provider ``name``."""
    fields = set(LLMOptions.__dataclass_fields__)
    if unknown := set(reads) - fields or set(requires) - set(reads):
        raise ValueError(f"provider {name!r}: {sorted(unknown)} are not options it reads (of {sorted(fields)})")

    def add(make: Callable[[LLMOptions], LLM]) -> Callable[[LLMOptions], LLM]:
        if name in _PROVIDERS and _PROVIDERS[name].make is not make:
            raise ValueError(f"LLM provider {name!r} is registered already")
        _PROVIDERS[name] = Provider(name, make, tuple(reads), tuple(requires), remote)
        return make

    return add


def providers() -> dict[str, Provider]:
    """Every provider: clinie's own and those the installed packages' entry points add (loaded
    once, at the first call: a provider's heavy libraries load only when it makes an LLM)."""
    global _loaded
    with _lock:
        if not _loaded:
            _loaded = True
            for module in BUILT_IN:
                importlib.import_module(module)
            for entry in entry_points(group=ENTRY_POINTS):
                entry.load()
        return dict(_PROVIDERS)


def provider(name: str) -> Provider:
    """The provider registered as ``name``; ``ValueError`` naming those there are."""
    found = providers()
    if name not in found:
        raise ValueError(f"unknown LLM provider {name!r}: use {', '.join(sorted(found))}")
    return found[name]


def make_llm(options: LLMOptions) -> LLM:
    """The LLM of ``options.provider``, made from the options it reads."""
    return provider(options.provider).make(options)
