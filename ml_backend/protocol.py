"""What Label Studio's calls name, read one way by the HTTP layer and every component.

A project's key, a database id, a labeling config: ``ml_backend.app`` validates requests with
these, the /predict loop (``ml_backend.predicting``) and the webhooks (``ml_backend.webhooks``)
act on them; one reading of each, so that what was validated is what is acted on.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from clinie.core import Schema
from clinie.labelstudio import parse_label_config


def project_key(project: Any) -> str:
    """Label Studio names a project ``"<id>.<created_at>"`` in /setup and /predict, and as an
    object or an int in webhooks; the store keys it by the id alone."""
    if isinstance(project, dict):
        project = project.get("id")
    key = str(project).split(".", 1)[0].strip() if isinstance(project, (int, str)) and \
        not isinstance(project, bool) else ""
    if not (key.isascii() and key.isdigit()):
        raise ValueError("project is missing or not an id")
    return key


def is_id(value: Any) -> bool:
    """A database id as Label Studio sends it: an int, or ASCII digits, that fits SQLite's INTEGER."""
    if isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value)
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63


@lru_cache(maxsize=64)
def label_config_schema(label_config: str) -> Schema:
    """``parse_label_config``, once per config: a project's every /predict and annotation
    webhook carries the same one. ``LabelConfigError`` for a config clinie cannot use."""
    return parse_label_config(label_config)
