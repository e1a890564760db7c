"""The time records carry: UTC, in ISO 8601, to the second.

    >>> len(utc_now()), utc_now().endswith("+00:00"), len(utc_now("milliseconds"))
    (25, True, 29)
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal


def utc_now(timespec: Literal["seconds", "milliseconds"] = "seconds") -> str:
    """Now, e.g. ``2026-12-07T23:19:17+00:00``: what models, selections and reports are stamped
    with; ``milliseconds`` only where events must keep their order within a second (the annotation
    store's rows, which sort and expire by it)."""
    return datetime.now(UTC).isoformat(timespec=timespec)
