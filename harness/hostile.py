"""Hostile request bodies for ``/setup``, ``/predict`` and ``/webhook``: the one definition that the
fuzz tests (``tests/integration/test_fuzz_requests.py``) and the fault bench share, so that what the bench
counts against a live server is what the tests hold the app to — every answer JSON, none 5xx.

Bodies are shaped like Label Studio's, and anything may be wrong at any level: wrong types, ids
as odd strings, integers past SQLite's 64 bits, ``NaN`` and ``1e999``, dates outside what UTC
can hold, and text with lone surrogates (``"\\ud800"``), NULs, bidi marks and combining
characters. They go out as raw bytes (``encode``), so the server's own JSON parser reads
what no ``json.dumps`` writes: ``1e999``, ``"\\uD800"`` escapes, and surrogates as bytes.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import requests
from hypothesis import HealthCheck, Phase, given, seed as seeded, settings, strategies as st
from hypothesis.strategies import SearchStrategy

from harness.helpers import DISEASE_CONFIG

ACTIONS = ["ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED", "START_TRAINING", "PROJECT_UPDATED",
           "TASKS_DELETED", "PROJECT_DELETED"]
PATHS = ("/webhook", "/predict", "/setup")


@dataclass(frozen=True)
class Raw:
    """A JSON token sent as these bytes: what ``json.dumps`` never writes."""

    token: bytes

    def __repr__(self) -> str:  # a test report shows the token, not 5000 digits of it
        return f"Raw({self.token[:24]!r}{'…' if len(self.token) > 24 else ''})"


RAW_TOKENS = [Raw(t) for t in (
    b"1e999", b"-1e999", b"1E400", b"NaN", b"Infinity", b"-Infinity", b"-0", b"1e-400", b"9" * 5000,
    b'"\\ud800"', b'"\\uDFFF"', b'"a\\udc00b"', b'"\\ude00\\ud83d"', b'"\\ud83d\\ude00"',  # the last one valid
    b'"\xed\xa0\x80"',  # a surrogate as UTF-8 bytes, which Python's json.loads passes through
    b'"\xff"', b'"\\u0000"')]
HUGE_INTEGERS = [2**70, -(2**70), 2**63, 2**63 - 1, -(2**63), -(2**63) - 1, 2**64, -1]
ODD_STRINGS = ["", " ", "\x00", "\ud800", "\udfff", "a\ud800b", "\ud83d\ude00", "😀", "\u202eevil", "\ufeff",
               "\U0010ffff", "e\u0301", "٣", "Ⅻ", "\u00a0", "\r\n", "\\", '"', "</Labels>", "<!--", "null", "NaN",
               "1e999", "9" * 30, "-1", "0x10", " 3", "3.0", "3.1700000000", "7"]
ODD_DATES = ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00", "", 5, "garbage",
             "2024-02-30T00:00:00Z", "2024-01-01T00:00:00.123456789+00:00", "2024-01-01T25:00:00",
             "2024-01-01T00:00:00+24:00", "2024-06-01T12:00:00Z", "2024-06-01T12:00:00.000000+05:30"]

#: Characters that break naive code: surrogates (lone, and so invalid in UTF-8), NUL, bidi
#: overrides, byte-order marks, noncharacters, a combining mark and the last code point.
odd_characters = (st.characters(codec=None, exclude_categories=())
                  | st.sampled_from(["\ud800", "\udbff", "\udc00", "\udfff", "\x00", "\u202e", "\ufeff", "\uffff",
                                     "\ufffe", "\u0301", "\U0010ffff"]))


def _utf8(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def clean_text(max_size: int) -> SearchStrategy[str]:
    """Any text UTF-8 can hold, odd as it may be."""
    return st.text(max_size=max_size) | st.sampled_from([s for s in ODD_STRINGS if _utf8(s)])


def odd_text(max_size: int) -> SearchStrategy[str]:
    """Text that may hold lone surrogates, which no UTF-8 (and so no SQLite text) can."""
    return clean_text(max_size) | st.text(odd_characters, max_size=max_size) | st.sampled_from(ODD_STRINGS)


def _config(label: str, hint: str, key: str) -> str:
    """The disease config with a label value, a hint and a data key of one's own: text that
    reaches the label config's parser and, when it parses, the store."""
    return (DISEASE_CONFIG.replace('value="Disease"', f'value="{label}"').replace("A disease, disorder", hint)
            .replace("$text", "$" + key))


def _bodies(text: Callable[[int], SearchStrategy[str]]) -> dict[str, SearchStrategy[Any]]:
    """The bodies of each endpoint, every string drawn from ``text``."""
    integers = st.integers(min_value=-(2**70), max_value=2**70) | st.sampled_from(HUGE_INTEGERS)
    scalars = (st.none() | st.booleans() | integers | st.floats(allow_nan=True, allow_infinity=True) | text(20)
               | st.sampled_from(RAW_TOKENS))
    json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                               | st.dictionaries(text(8), inner, max_size=4), max_leaves=12)
    ids = (integers | text(12) | st.booleans() | st.none() | st.floats() | st.sampled_from(RAW_TOKENS)
           | st.sampled_from(["7", "٣", "1.5", " 3", "3.1700000000", "9" * 30]))
    dates = (st.sampled_from(ODD_DATES) | st.builds(lambda t, offset: t.isoformat() + offset, st.datetimes(),
                                                    st.sampled_from(["", "+01:00", "-01:00", "Z", "+23:59", "-23:59"]))
             | json_values)
    configs = (st.just(DISEASE_CONFIG) | st.builds(_config, text(8), text(20), text(6)) | text(40) | json_values)
    labels = st.sampled_from(["Disease", "Other"]) | text(10) | json_values
    regions = st.fixed_dictionaries(
        {"from_name": st.sampled_from(["label", "nope"]) | json_values, "to_name": st.just("text") | json_values,
         "type": st.sampled_from(["labels", "relation", "choices"]) | json_values,
         "value": st.fixed_dictionaries({"start": ids, "end": ids, "text": text(10),
                                         "labels": st.lists(labels, max_size=2) | json_values}) | json_values},
        optional={"id": ids, "from_id": ids, "to_id": ids})
    annotations = st.fixed_dictionaries({}, optional={
        "id": ids, "result": st.lists(regions | json_values, max_size=3) | json_values, "was_cancelled": json_values,
        "completed_by": ids | json_values, "updated_at": dates, "created_at": dates})
    tasks = st.fixed_dictionaries({}, optional={
        "id": ids, "data": st.fixed_dictionaries({}, optional={"text": text(200) | json_values}) | json_values,
        "updated_at": dates, "created_at": dates})
    projects = ids | st.fixed_dictionaries({}, optional={"id": ids, "label_config": configs})
    webhooks = st.fixed_dictionaries(
        {"action": st.sampled_from(ACTIONS) | json_values},
        optional={"project": projects, "annotation": annotations | json_values, "task": tasks | json_values,
                  "annotations": st.lists(st.fixed_dictionaries({}, optional={"id": ids}) | json_values, max_size=3)
                  | json_values,
                  "tasks": st.lists(st.fixed_dictionaries({}, optional={"id": ids}) | json_values, max_size=3)
                  | json_values})
    # Shaped like Label Studio's, every id, text, date and region drawn: these reach the store.
    near_valid_webhooks = st.builds(
        lambda action, annotation_id, task_id, project, text_, result, cancelled, completed_by, updated_at, config: {
            "action": action, "project": {"id": project, "label_config": config},
            "annotation": {"id": annotation_id, "result": result, "was_cancelled": cancelled,
                           "completed_by": completed_by, "updated_at": updated_at, "created_at": updated_at},
            "task": {"id": task_id, "data": {"text": text_}}, "annotations": [{"id": annotation_id}],
            "tasks": [{"id": task_id}]},
        st.sampled_from(ACTIONS[:3] + ACTIONS[5:]), ids, ids, ids, text(200), st.lists(regions, max_size=3),
        json_values, ids, dates, st.just(DISEASE_CONFIG) | configs)
    predicts = st.fixed_dictionaries({}, optional={
        "tasks": st.lists(tasks | json_values, max_size=4) | json_values, "project": projects,
        "label_config": configs, "params": json_values})
    setups = st.fixed_dictionaries({}, optional={"project": projects, "schema": configs})
    return {"/webhook": webhooks | near_valid_webhooks, "/predict": predicts, "/setup": setups}


_clean, _odd = _bodies(clean_text), _bodies(odd_text)
#: Half the bodies draw their strings from text UTF-8 can carry, so that most of them get past the
#: parser to validation and the store; the other half may hold a lone surrogate in any string (a
#: hand-made ``Raw`` token may hold one in either).
bodies: dict[str, SearchStrategy[Any]] = {path: _clean[path] | _odd[path] for path in PATHS}


def encode(body: Any, ascii_only: bool) -> bytes:
    """``body`` as the bytes of a JSON document: a ``Raw`` token as it is; any other string
    escaped (``ascii_only``: ``"\\ud800"``) or as UTF-8 with lone surrogates passed through as
    bytes; floats as ``json.dumps(allow_nan=True)`` writes them (``NaN``, ``Infinity``)."""
    if isinstance(body, Raw):
        return body.token
    if isinstance(body, dict):
        return b"{" + b",".join(encode(k, ascii_only) + b":" + encode(v, ascii_only) for k, v in body.items()) + b"}"
    if isinstance(body, list):
        return b"[" + b",".join(encode(v, ascii_only) for v in body) + b"]"
    return json.dumps(body, ensure_ascii=ascii_only, allow_nan=True).encode("utf-8", "surrogatepass")


def encoded(strategy: SearchStrategy[Any]) -> SearchStrategy[bytes]:
    """What ``strategy`` draws, as raw request bytes."""
    return st.builds(encode, strategy, st.booleans())


#: Bytes no endpoint can read as a request: binary, text, and nesting deep enough to overflow a
#: recursive parser.
raw_bodies = (st.binary(max_size=300)
              | st.text(odd_characters, max_size=300).map(lambda text: text.encode("utf-8", "surrogatepass"))
              | st.integers(1, 64).map(lambda depth: b"[" * (depth * 1000) + b"]" * (depth * 1000)))
#: One hostile request: a path and the raw body posted to it as ``application/json``.
hostile_request: SearchStrategy[tuple[str, bytes]] = (
    st.one_of(*(st.tuples(st.just(path), encoded(bodies[path])) for path in PATHS))
    | st.tuples(st.sampled_from(PATHS), raw_bodies))


def hostile_requests(seed: int, n: int) -> list[tuple[str, bytes]]:
    """``n`` hostile requests (path, raw body), the same for the same ``seed``, ``n`` and hypothesis
    version: drawn by a ``@given`` run seeded with ``seed`` (no example database, no shrinking),
    since ``strategy.example()`` cannot be seeded."""
    drawn: list[tuple[str, bytes]] = []
    attempt = 0
    while len(drawn) < n:  # hypothesis may stop a run short of max_examples; another seed tops it up

        @seeded(seed * 1000 + attempt)
        @settings(database=None, max_examples=n - len(drawn), phases=[Phase.generate], deadline=None,
                  suppress_health_check=list(HealthCheck))
        @given(request=hostile_request)
        def collect(request: tuple[str, bytes]) -> None:
            drawn.append(request)

        collect()
        attempt += 1
    return drawn[:n]


class HostileTally(NamedTuple):
    """What ``send_hostile`` saw: how many requests got each answer (a status code, ``not JSON``,
    or ``none`` when no answer came) and the first few failures described."""

    answers: dict[str, int]
    failures: tuple[str, ...]

    @property
    def tried(self) -> int:
        return sum(self.answers.values())

    @property
    def failed(self) -> int:
        """Answered 5xx, not in JSON, or not at all."""
        return sum(n for answer, n in self.answers.items() if not answer.isdigit() or answer.startswith("5"))


def send_hostile(url: str, seed: int, n: int, auth: tuple[str, str] | None = None,
                 timeout: float = 60) -> HostileTally:
    """Post ``hostile_requests(seed, n)`` to a live backend at ``url``, one after another."""
    answers: Counter[str] = Counter()
    failures: list[str] = []
    with requests.Session() as session:
        for path, body in hostile_requests(seed, n):
            try:
                response = session.post(url + path, data=body, headers={"Content-Type": "application/json"},
                                        auth=auth, timeout=timeout)
                answer = str(response.status_code) if response.status_code >= 500 or \
                    response.headers.get("Content-Type", "").startswith("application/json") else "not JSON"
            except requests.RequestException:
                answer = "none"
            answers[answer] += 1
            if (not answer.isdigit() or answer.startswith("5")) and len(failures) < 5:
                failures.append(f"POST {path} {answer}: {body[:200]!r}")
    return HostileTally(dict(sorted(answers.items())), tuple(failures))
