"""Logging for a process that handles patient text: structured when asked, redacted always.

clinie's own messages never carry note text at INFO (they name tasks, projects and exception
types). What it cannot vouch for are exception *messages* — a tokenizer or an HTTP client may
quote the text it choked on — so above DEBUG a traceback keeps its frames and exception types
and drops the messages. ``CLINIE_LOG_FORMAT=json`` writes one JSON object per line for a log
collector.

Example:
    >>> import sys
    >>> formatter = RedactingFormatter(json_lines=True)
    >>> note = "patient has breast cancer"
    >>> try:
    ...     raise ValueError(f"cannot tag {note!r}")
    ... except ValueError:
    ...     record = logging.LogRecord("x", logging.ERROR, __file__, 1, "task %s failed", (7,), sys.exc_info())
    >>> line = json.loads(formatter.format(record))
    >>> line["message"], "breast cancer" in line["exception"], line["exception"].splitlines()[-1]
    ('task 7 failed', False, 'ValueError: <message redacted: 38 chars>')
"""

from __future__ import annotations

import json
import logging
import re
import traceback
from datetime import UTC, datetime


class RedactingFormatter(logging.Formatter):
    """Plain ``time level logger: message`` lines, or JSON lines; exception messages redacted
    unless the record is DEBUG (DEBUG is for a developer at a machine allowed to see the text)."""

    def __init__(self, json_lines: bool = False) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.json_lines = json_lines

    def format(self, record: logging.LogRecord) -> str:
        exception = None
        if record.exc_info and record.exc_info[1] is not None:
            exception = "".join(traceback.format_exception(record.exc_info[1])).rstrip() \
                if record.levelno <= logging.DEBUG else redacted_traceback(record.exc_info[1])
        if self.json_lines:
            line = {"time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
                    "level": record.levelname, "logger": record.name, "message": record.getMessage()}
            if exception:
                line["exception"] = exception
            return json.dumps(line, ensure_ascii=False)
        record.exc_text = None
        saved, record.exc_info = record.exc_info, None
        try:
            text = super().format(record)
        finally:
            record.exc_info = saved
        return f"{text}\n{exception}" if exception else text


def redacted_traceback(error: BaseException) -> str:
    """The traceback, causes included, with each exception message replaced by its length.

    Frames show source lines of code, never data, so they stay.
    """
    parts, seen = [], set()
    exc: BaseException | None = error
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        frames = "".join(traceback.format_tb(exc.__traceback__))
        parts.append(f"Traceback (most recent call last):\n{frames}{type(exc).__qualname__}: "
                     f"<message redacted: {len(str(exc))} chars>")
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    return "\n\nThe above led to:\n\n".join(reversed(parts))


def without_credentials(url: str) -> str:
    """``url`` with any ``user:password@`` removed, for showing where clinie connects (``/health``)
    without the secret that lets it in. Never fails: what is not a URL comes back unchanged.

    >>> without_credentials("http://ls:s3cret@label-studio:8080/x?y=1"), without_credentials("http://llm:8000/v1")
    ('http://label-studio:8080/x?y=1', 'http://llm:8000/v1')
    """
    return re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/?#]*@", r"\1", url)


def dict_config(level: str, log_format: str = "text") -> dict:
    """One redacting handler on stderr for every logger, gunicorn's included (``logging.config``
    form, which gunicorn takes as ``logconfig_dict``)."""
    return {
        "version": 1, "disable_existing_loggers": False,
        "formatters": {"clinie": {"()": RedactingFormatter, "json_lines": log_format == "json"}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "clinie", "stream": "ext://sys.stderr"}},
        "root": {"level": level, "handlers": ["stderr"]},
        "loggers": {name: {"level": level, "handlers": [], "propagate": True}
                    for name in ("gunicorn.error", "gunicorn.access")},
    }
