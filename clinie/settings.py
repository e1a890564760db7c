"""The one settings object: read once at start-up, passed down, never looked up again.

Values come from an optional TOML file (``CLINIE_CONFIG=/path/clinie.toml``, keys named as the
fields below) and are overridden by environment variables ``CLINIE_<FIELD>`` in upper case.

Example:
    >>> s = Settings.load({"CLINIE_DATA_DIR": "/srv/clinie", "CLINIE_TRAIN_EVERY": "20"})
    >>> (str(s.data_dir), s.train_every, s.port)
    ('/srv/clinie', 20, 9090)
"""

from __future__ import annotations

import inspect
import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, get_type_hints

from clinie.embedded import EMBEDDED_LLM_NAME
from clinie.llm.hidden import DEFAULT_CACHE_MB
from clinie.llm.providers import LLMOptions, provider, providers

PREFIX = "CLINIE_"
#: The longest one request may run before gunicorn kills its worker.
WORKER_TIMEOUT_SECONDS = 600


@dataclass(frozen=True)
class Settings:
    #: Where the annotation store (``clinie.sqlite3``) and the model versions (``models/``) live.
    data_dir: Path = Path("clinie-data")
    #: The annotation store in a PostgreSQL database (``postgresql://user:password@host/db``), for
    #: processes and machines that share it, trainings then running on ``clinie worker``
    #: (docs/deploying.md, *Beyond one machine*); empty = the SQLite file in ``data_dir``.
    database_url: str = ""
    #: Where model versions are written and read: a directory every process shares, or an
    #: S3-compatible bucket (``s3://bucket/prefix``, credentials from ``AWS_*``); empty = ``models/``
    #: in ``data_dir``.
    models_url: str = ""
    #: Address ``clinie serve`` listens on; the container sets 0.0.0.0. Any but loopback requires
    #: basic auth (or ``allow_unauthenticated``): see ``validate_serving``.
    host: str = "127.0.0.1"
    #: Port ``clinie serve`` listens on: the one in the backend URL Label Studio is given.
    port: int = 9090
    #: Encoder to fine-tune: a local directory or a Hugging Face name available offline (e.g. a
    #: PubMedBERT directory); empty = embedded MiniLM.
    encoder_model: str = ""
    #: Fine-tuning epochs of the encoder; 0 = the tagger's default.
    encoder_epochs: int = 0
    #: Optimiser steps of a project's first encoder, served before strategy selection and the
    #: encoder trained to its full budget (docs/learning-loop.md: a model within a minute, better
    #: ones after); later trainings, a model serving meanwhile, train to the full budget at once.
    #: 0 = the full budget for the first too.
    first_model_steps: int = 100
    #: Retrain a project's encoder after this many new or changed annotations; 0 = only on
    #: Label Studio's "Start training".
    train_every: int = 10
    #: Fewest usable annotations a project needs before an encoder is trained.
    min_annotations: int = 5
    #: Which extractor pre-annotates: ``auto`` (the strategy true few-shot selection chose for
    #: the project; before any selection, its trained encoder once there is one, the LLM
    #: before), ``llm`` or ``encoder``.
    strategy: str = "auto"
    #: What pre-annotates under ``auto`` before a project's first trained model: ``none`` (no
    #: regions), ``llm`` (the LLM, zero-shot, then with the annotations as demonstrations),
    #: ``verified`` (the LLM's spans it confirms on a second look, each scored by that answer);
    #: ``auto`` = with the embedded Gemma 3 270M ``none`` until the project has ``min_annotations``
    #: (zero-shot, its spans are noise), then ``verified`` (docs/results.md, cold start); else ``llm``.
    cold_start: str = "auto"
    #: What selection compares after each training, by cross-validation over the project's
    #: annotations: ``encoder``, ``probe`` (a tagger on the frozen local LLM's hidden states),
    #: ``llm`` (``llm_k`` demos), ``llm-kN``, ``verified``, ``verified-kN``, ``rerank``
    #: (filter-then-rerank, bands 0.7/0.8/0.9), ``rerank-0.NN``, ``gated`` (filter-then-probe: the
    #: probe reads only the sentences the encoder is unsure of, same bands), ``gated-0.NN``,
    #: ``student`` (an encoder also trained on the unannotated sentences the probe labels at least
    #: 0.90 sure), ``student-0.NN``, ``distilled`` (on every unannotated sentence, each word as the
    #: probe's tag distribution); empty = no selection (the encoder serves); ``auto`` =
    #: ``encoder,gated,probe`` with the embedded LLM (its prompted answers never beat the encoder,
    #: and cost most of a selection's time), else ``encoder,gated,probe,llm,rerank``.
    select_strategies: str = "auto"
    #: The strategy selection keeps unless another beats its cross-validated F1 by more than one
    #: standard error (folds of a few sentences cannot rank close strategies; measured, the probe
    #: is best at every pool size from 10 to 100); empty = the best mean F1.
    select_prefer: str = "probe"
    #: Folds of that cross-validation (leave-one-out below 10 annotations).
    select_folds: int = 5
    #: The largest share of sentences the selected strategy may send to the LLM (as measured in
    #: the cross-validation; e.g. 0.25); 1 = no limit.
    select_max_llm_share: float = 1.0
    #: Precision first: per label, regions are shown only from the score on at which at least
    #: this share of the selected strategy's cross-validated regions were right (the lowest such
    #: score); a label none reaches is not shown until the model improves; 0 = every region.
    #: Thresholds are chosen at each training: a new value takes effect from the next one (0 at once).
    min_precision: float = 0.5
    #: The causal LM whose hidden states the ``probe`` strategy reads, in-process (transformers, on
    #: ``llm_device``; always local): a GGUF path, a model directory or an HF name available
    #: offline; empty = embedded Gemma 3 270M.
    probe_model: str = ""
    #: ``llama.cpp`` (in-process on the CPU), ``transformers`` (in-process, a Hugging Face causal
    #: LM, on the GPU when there is one) — nothing leaves the machine — or ``openai`` (any
    #: OpenAI-compatible endpoint — vLLM, llama.cpp's server, Ollama: note text IS sent to
    #: ``llm_base_url``), or one another package registers (``clinie.llm.providers``).
    llm_provider: str = "llama.cpp"
    #: llama.cpp: a GGUF path; transformers: a model directory, HF name or GGUF path (empty, for
    #: both: the embedded Gemma 3 270M); openai: the model name the endpoint serves.
    llm_model: str = ""
    #: The OpenAI-compatible endpoint; required with ``llm_provider=openai`` — never implied.
    #: ``/health`` lists it under ``remote_endpoints``.
    llm_base_url: str = ""
    #: openai: the API key the endpoint asks for, if any (a local server usually asks none).
    llm_api_key: str = ""
    #: openai: 1 = use the chat API (for chat-only models) instead of plain completions.
    llm_chat: int = 0
    #: openai: ask the server for guided decoding that forces every word to be copied — a GBNF
    #: grammar in the form ``llama.cpp``'s server or ``vllm`` takes it; empty = free generation,
    #: re-aligned afterwards.
    llm_guided: str = ""
    #: openai: seconds one request may take before it is retried (3 retries, with backoff); a
    #: prediction whose LLM fails is answered by the trained encoder where there is one (counted
    #: as ``llm_failures`` in /metrics).
    llm_timeout_seconds: float = 60.0
    #: transformers: the torch device (``cuda``, ``cuda:1``, ``cpu``); empty = CUDA when available.
    llm_device: str = ""
    #: Demonstrations retrieved per sentence, the most similar annotations by MiniLM sentence
    #: embeddings (0 = zero-shot from the label descriptions).
    llm_k: int = 5
    #: CPU threads for llama.cpp (0 = its default).
    llm_threads: int = 0
    #: Label Studio to re-sync annotations from (webhooks can be lost): its URL and an API key —
    #: a personal access token or a legacy token. Both unset = no re-sync.
    label_studio_url: str = ""
    #: The API key for ``label_studio_url``. Re-sync only reads: nothing is written to Label
    #: Studio, no note text is sent there.
    label_studio_api_key: str = ""
    #: Re-sync every known project at start, then this often, and before each training (a
    #: "Start training" included); 0 = at start and before trainings only.
    sync_every_minutes: int = 10
    #: Basic auth required on every endpoint when both are set (put them in the backend URL
    #: that Label Studio calls: http://user:password@host:port); one without the other is refused.
    basic_auth_user: str = ""
    #: The password of ``basic_auth_user``: pass it as a secret, not in a file others can read.
    basic_auth_password: str = ""
    #: Serve on an address other than loopback without basic auth (refused unless this is set:
    #: every endpoint hands out or takes in patient text).
    allow_unauthenticated: bool = False
    #: Seconds a /predict batch may take (Label Studio waits 100 s, ``ML_TIMEOUT_PREDICT``): when
    #: spent, the backend answers the first task only and Label Studio asks for the rest one
    #: task per request; 0 = no limit.
    predict_budget_seconds: float = 60.0
    #: Largest request body accepted, in megabytes (Label Studio sends whole batches); a larger
    #: one is refused (413).
    max_request_mb: int = 100
    #: Days a superseded version of an annotation (its text and result before an update) is
    #: kept, for audit; 0 = none is kept. Deleted annotations, tasks and projects keep nothing.
    keep_history: int = 30
    #: Webhooks arriving together are stored in one transaction (one fsync) by one writer thread,
    #: each answered once its batch is committed; 0 = each in its own transaction, committed by
    #: the thread answering it (slower under concurrent annotators: bench/webhooks.py).
    webhook_group_commit: bool = True

    # --- bounds on disk and on requests (issue 22) ---
    #: Model versions kept per project after each training, newest first (each is about 90 MB);
    #: the serving version is always kept. 0 = keep all.
    keep_models: int = 3
    #: Size in megabytes the LLM call cache (``data_dir/llm_cache.sqlite3``) is kept under: the
    #: oldest calls are evicted beyond it. 0 = no bound.
    llm_cache_mb: int = 100
    #: Most tasks one /predict may carry; more are refused (413) before anything is predicted.
    #: 0 = no limit.
    max_tasks_per_request: int = 1000
    #: Most characters of one task's text; a longer task gets an empty result (counted as a
    #: prediction error) while the rest of its batch is predicted. 0 = no limit.
    max_task_chars: int = 1_000_000

    # --- the project's unannotated text (issue 23) ---
    #: Tasks whose data is kept per project, the newest by Label Studio's task id: those sent to
    #: /predict and, with re-sync, the project's unannotated tasks listed. The text a student
    #: strategy learns from, kept and deleted as annotated task data is (0600, purged when Label
    #: Studio deletes the task). 0 = none stored (and those stored are purged at start).
    unannotated_tasks: int = 5000
    #: The most unannotated tasks (the newest stored) one training reads for the student
    #: strategy: its teacher labels each, so this bounds that time. 0 = every stored one.
    student_pool: int = 2000
    #: Megabytes of the LLM's hidden states the probe keeps in memory (about 10 KB a word): a
    #: training reads each sentence once, when this holds the student pool's and the annotations'
    #: (each fold's teacher then labels from memory, and the next training reads only new tasks).
    feature_cache_mb: int = DEFAULT_CACHE_MB

    #: Note text is never logged at INFO; above DEBUG, exception messages (they may quote note
    #: text) are redacted to their length too.
    log_level: str = "INFO"
    #: ``text`` (one line per record) or ``json`` (one JSON object per line, for a log collector).
    log_format: str = "text"

    @property
    def shutdown_grace_seconds(self) -> float:
        """How long SIGTERM leaves requests in flight to finish. A /predict batch takes no new
        task once its budget is spent, so the budget and 30 s for the task under way (an LLM
        sentence on a busy CPU); with no budget, as long as a request may run at all.

        >>> Settings().shutdown_grace_seconds, Settings(predict_budget_seconds=0).shutdown_grace_seconds
        (90.0, 600.0)
        """
        return self.predict_budget_seconds + 30.0 if self.predict_budget_seconds > 0 else float(WORKER_TIMEOUT_SECONDS)

    def llm_options(self) -> LLMOptions:
        """The ``CLINIE_LLM_*`` settings, as what a provider is made from."""
        return LLMOptions(provider=self.llm_provider, model=self.llm_model, base_url=self.llm_base_url,
                          api_key=self.llm_api_key, chat=bool(self.llm_chat), guided=self.llm_guided,
                          timeout_seconds=self.llm_timeout_seconds, device=self.llm_device, threads=self.llm_threads)

    @property
    def llm_remote(self) -> bool:
        """The LLM provider sends text off the machine (to ``llm_base_url``)."""
        return provider(self.llm_provider).remote

    @property
    def llm_name(self) -> str:
        """How model versions name the LLM: its provider and model (a local file by its name)."""
        if not self.llm_model:
            model = EMBEDDED_LLM_NAME
        elif self.llm_remote:
            model = self.llm_model
        else:
            model = Path(self.llm_model).name.removesuffix(".gguf")
        return f"{self.llm_provider}-{model}"

    @property
    def embedded_llm(self) -> bool:
        """The LLM is the embedded Gemma 3 270M (by default, or named by its path as in the image)."""
        return not self.llm_remote and self.llm_name == f"{self.llm_provider}-{EMBEDDED_LLM_NAME}"

    def cold_start_policy(self, annotations: int) -> str:
        """``cold_start`` for a project with that many annotations, ``auto`` resolved: with the
        embedded LLM ``none`` below ``min_annotations``, then ``verified``; else ``llm``."""
        if self.cold_start != "auto":
            return self.cold_start
        if not self.embedded_llm:
            return "llm"
        return "verified" if annotations >= max(1, self.min_annotations) else "none"

    @property
    def selection_candidates(self) -> str:
        """``select_strategies`` with ``auto`` resolved (see there)."""
        if self.select_strategies != "auto":
            return self.select_strategies
        from clinie.strategies import default_candidates  # the registry reads the settings' module

        return default_candidates(prompted=not self.embedded_llm)

    @property
    def requires_auth(self) -> bool:
        """Every request must carry the basic-auth credentials (``validate`` refuses half of them)."""
        return bool(self.basic_auth_user and self.basic_auth_password)

    @property
    def llm_cache_path(self) -> Path:
        return self.data_dir / "llm_cache.sqlite3"

    @property
    def store_path(self) -> Path:
        return self.data_dir / "clinie.sqlite3"

    @property
    def store_location(self) -> str:
        """Where ``AnnotationStore`` opens the store: ``database_url``, else the SQLite file."""
        return self.database_url or str(self.store_path)

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def models_location(self) -> str:
        """Where ``ModelStore`` keeps model versions: ``models_url``, else ``models_dir``."""
        return self.models_url or str(self.models_dir)

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Settings from ``CLINIE_CONFIG`` (TOML) and ``CLINIE_*`` variables; errors name the key."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        if config := environ.get(PREFIX + "CONFIG"):
            with open(config, "rb") as file:
                values.update(tomllib.load(file))
        for f in fields(cls):
            if (raw := environ.get(PREFIX + f.name.upper())) is not None:
                values[f.name] = raw
        unknown = set(values) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown clinie settings: {', '.join(sorted(unknown))}")
        settings = replace(cls(), **{name: _convert(cls, name, v) for name, v in values.items()})
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.strategy not in ("auto", "llm", "encoder"):
            raise ValueError(f"{PREFIX}STRATEGY must be auto, llm or encoder, not {self.strategy!r}")
        if self.cold_start not in ("auto", "none", "llm", "verified"):
            raise ValueError(f"{PREFIX}COLD_START must be auto, none, llm or verified, not {self.cold_start!r}")
        if self.select_strategies not in ("", "auto"):
            from clinie.strategies import parse_strategies

            try:
                parse_strategies(self.select_strategies)
            except ValueError as e:
                raise ValueError(f"{PREFIX}SELECT_STRATEGIES: {e}") from e
        if self.log_format not in ("text", "json"):
            raise ValueError(f"{PREFIX}LOG_FORMAT must be text or json, not {self.log_format!r}")
        if self.select_folds < 2:
            raise ValueError(f"{PREFIX}SELECT_FOLDS must be at least 2")
        if not 0 <= self.select_max_llm_share <= 1:
            raise ValueError(f"{PREFIX}SELECT_MAX_LLM_SHARE must be between 0 and 1")
        if not 0 <= self.min_precision <= 1:
            raise ValueError(f"{PREFIX}MIN_PRECISION must be a precision between 0 and 1, not {self.min_precision}")
        if self.llm_provider not in providers():
            raise ValueError(f"{PREFIX}LLM_PROVIDER must be one of {', '.join(sorted(providers()))} "
                             f"(clinie.llm_providers), not {self.llm_provider!r}")
        llm = provider(self.llm_provider)
        if self.llm_guided not in ("", "llama.cpp", "vllm"):
            raise ValueError(f"{PREFIX}LLM_GUIDED must be empty, llama.cpp or vllm, not {self.llm_guided!r}")
        if bool(self.label_studio_url) != bool(self.label_studio_api_key):
            raise ValueError(f"{PREFIX}LABEL_STUDIO_URL and {PREFIX}LABEL_STUDIO_API_KEY go together "
                             "(re-sync needs both)")
        if bool(self.basic_auth_user) != bool(self.basic_auth_password):
            missing = "BASIC_AUTH_PASSWORD" if self.basic_auth_user else "BASIC_AUTH_USER"
            raise ValueError(f"{PREFIX}{missing} is not set: basic auth needs both {PREFIX}BASIC_AUTH_USER and "
                             f"{PREFIX}BASIC_AUTH_PASSWORD (with one alone, every endpoint would be open)")
        options = self.llm_options()
        if unset := [f"{PREFIX}LLM_{name.upper()}" for name in llm.requires if not getattr(options, name)]:
            raise ValueError(f"{PREFIX}LLM_PROVIDER={llm.name} needs {' and '.join(unset)}"
                             + (": clinie sends note text to no endpoint that was not named explicitly"
                                if llm.remote else ""))

    def validate_serving(self) -> None:
        """Before the backend answers anyone: the settings are valid, and patient text is not
        served without credentials to any address but this machine's, unless explicitly allowed.

        >>> Settings(host="0.0.0.0").validate_serving()  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ValueError: refusing to serve on 0.0.0.0 without authentication: set CLINIE_BASIC_AUTH_USER and ...
        """
        self.validate()
        if not (self.requires_auth or self.allow_unauthenticated or is_loopback(self.host)):
            raise ValueError(f"refusing to serve on {self.host or 'every address'} without authentication: set "
                             f"{PREFIX}BASIC_AUTH_USER and {PREFIX}BASIC_AUTH_PASSWORD (Label Studio then connects "
                             f"at http://user:password@host:port), or {PREFIX}ALLOW_UNAUTHENTICATED=1 when "
                             "something in front of clinie authenticates")


def is_loopback(host: str) -> bool:
    """Only this machine can connect to ``host``: ``localhost`` or a loopback address.

    >>> [is_loopback(h) for h in ("127.0.0.1", "[::1]", "localhost", "0.0.0.0", "", "10.0.0.5", "clinie")]
    [True, True, True, False, False, False, False]
    """
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name other than localhost may resolve to anything
        return False


def _convert(cls: type, name: str, value: Any) -> Any:
    kind = get_type_hints(cls)[name]
    try:
        if kind is Path:
            return Path(value)
        if kind is bool:
            return _flag(value)
        if kind in (int, float):
            number = kind(value)
            if number < 0:
                raise ValueError("must not be negative")
            return number
        return str(value)
    except ValueError as e:
        raise ValueError(f"setting {PREFIX}{name.upper()}={value!r}: {e}") from e


def _flag(value: Any) -> bool:
    """``1``/``true``/``yes``/``on`` or ``0``/``false``/``no``/``off``/empty (a TOML boolean too)."""
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("must be 1 or 0 (true or false)")


# --- the settings reference (docs/configuration.md) ---

#: The command that writes docs/configuration.md.
REFERENCE_COMMAND = "python -m clinie.settings > docs/configuration.md"

#: The sections of docs/configuration.md, in order: each claims the fields it names, or those a
#: name ending in ``_`` begins (an exact name wins over a prefix, a longer prefix over a shorter).
#: A field none claims is listed under *Other settings*: add it to a section.
SECTIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Where data lives", ("data_dir", "database_url", "models_url")),
    ("Serving and security", ("host", "port", "basic_auth_", "allow_unauthenticated", "webhook_group_commit")),
    ("Bounds on requests", ("predict_budget_seconds", "max_")),
    ("Training", ("encoder_", "first_model_steps", "train_every", "min_annotations")),
    ("What pre-annotates: strategies and their selection", ("strategy", "cold_start", "select_", "min_precision")),
    ("The probe and the student", ("probe_model", "feature_cache_mb", "unannotated_tasks", "student_pool")),
    ("The LLM", ("llm_",)),
    ("Re-sync from Label Studio", ("label_studio_", "sync_every_minutes")),
    ("What is kept on disk", ("keep_", "llm_cache_mb")),
    ("Logs", ("log_",)),
)

_TYPES = {Path: "path", str: "text", int: "integer ≥ 0", float: "number ≥ 0", bool: "flag (1 or 0)"}


def field_docs(cls: type | None = None) -> dict[str, str]:
    """Each field's documentation: the ``#:`` comment lines right above it in the class's source,
    joined into one paragraph (empty for a field without them).

    >>> field_docs()["min_annotations"]
    'Fewest usable annotations a project needs before an encoder is trained.'
    """
    cls = cls or Settings
    names = {f.name for f in fields(cls)}
    docs: dict[str, str] = {}
    comment: list[str] = []
    for line in inspect.getsource(cls).splitlines():
        stripped = line.strip()
        if stripped.startswith("#:"):
            comment.append(stripped[2:].strip())
            continue
        if (match := re.match(r"(\w+)\s*:", stripped)) and match[1] in names and match[1] not in docs:
            docs[match[1]] = " ".join(comment)
        comment = []
    return {f.name: docs.get(f.name, "") for f in fields(cls)}


def sections(cls: type | None = None) -> list[tuple[str, list[str]]]:
    """The fields of ``cls`` by section of ``SECTIONS`` (in source order within each; sections
    with none left out), those no section claims last, under *Other settings*."""
    claimed: dict[str, list[str]] = {title: [] for title, _ in SECTIONS}
    other: list[str] = []
    for f in fields(cls or Settings):
        exact = [title for title, keys in SECTIONS if f.name in keys]
        prefixes = sorted(((len(k), title) for title, keys in SECTIONS for k in keys
                           if k.endswith("_") and f.name.startswith(k)), reverse=True)
        title = exact[0] if exact else prefixes[0][1] if prefixes else None
        (claimed[title] if title else other).append(f.name)
    found = [(title, names) for title, names in claimed.items() if names]
    return found + ([("Other settings", other)] if other else [])


def _markdown(doc: str, names: set[str]) -> str:
    """A ``#:`` comment as Markdown: ``code`` in single backticks, a field's name (alone or as
    ``name=value``) as its variable."""

    def code(match: re.Match[str]) -> str:
        name, sep, value = match[1].partition("=")
        return f"`{PREFIX}{name.upper()}{sep}{value}`" if name in names else f"`{match[1]}`"

    return re.sub(r"``(.+?)``", code, doc).replace("|", "\\|")


def _default(value: Any) -> str:
    if isinstance(value, bool):
        return "`1`" if value else "`0`"
    return f"`{value}`" if value != "" else "empty"


def reference(cls: type | None = None) -> str:
    """docs/configuration.md: every setting of ``cls`` with its variable, type, default and the
    ``#:`` documentation above its field, by section. A field without documentation is refused,
    so that no setting ships undocumented."""
    cls = cls or Settings
    docs = field_docs(cls)
    if missing := [name for name, doc in docs.items() if not doc]:
        raise ValueError(f"settings without a #: comment above their field in clinie/settings.py: {', '.join(missing)}")
    kinds = get_type_hints(cls)
    defaults = {f.name: getattr(cls(), f.name) for f in fields(cls)}
    lines = [
        "# Configuration",
        "",
        f"<!-- generated by `{REFERENCE_COMMAND}` from clinie/settings.py; do not edit by hand -->",
        "",
        "Every setting of clinie, generated from the `Settings` class in "
        "[`clinie/settings.py`](../clinie/settings.py): each setting's text is the `#:` comment above its field. "
        f"To change one, edit the comment there and run `{REFERENCE_COMMAND}` from the repository's root "
        "(`tests/unit/test_configuration_doc.py` fails until this page matches).",
        "",
        "## How settings are given",
        "",
        "One settings object is read once, at start-up (`Settings.load`), and passed down; changing a setting "
        "takes a restart. Each setting comes from, in order of precedence:",
        "",
        f"1. an environment variable, `{PREFIX}` followed by the setting's name in upper case "
        f"(`{PREFIX}TRAIN_EVERY=20`);",
        f"2. a TOML file named by `{PREFIX}CONFIG` (`{PREFIX}CONFIG=/etc/clinie.toml`), whose keys are the "
        "settings' names in lower case without the prefix (`train_every = 20`); a key that names no setting "
        "is refused;",
        "3. the default below.",
        "",
        "Flags take `1`, `true`, `yes` or `on` and `0`, `false`, `no`, `off` or empty (a TOML boolean too); "
        "numbers must not be negative. A value that does not fit, or settings that contradict each other, "
        "stop clinie at start with a message naming the variable.",
    ]
    for title, names in sections(cls):
        lines += ["", f"## {title}", "", "| variable | type | default | what it does |", "|---|---|---|---|"]
        for name in names:
            lines.append(f"| `{PREFIX}{name.upper()}` | {_TYPES.get(kinds[name], kinds[name].__name__)} "
                         f"| {_default(defaults[name])} | {_markdown(docs[name], set(docs))} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    import sys

    from clinie.settings import reference as _reference  # the module as the rest of clinie imports it

    sys.stdout.write(_reference())
