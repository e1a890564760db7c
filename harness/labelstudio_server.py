"""Run a real Label Studio 1.23.2 for end-to-end tests, and talk to it over its REST API.

Usage::

    with LabelStudio() as ls:
        api = ls.client
        project = api.create_project("demo", LABEL_CONFIG)
        task_ids = api.import_tasks(project, [{"text": "..."}])
        ml_id = api.connect_ml_backend(project, backend_url)
        api.retrieve_predictions(project, task_ids)
        api.predictions(task_ids[0])

Label Studio pins its own Django/Flask stack, so it runs from its own virtualenv
(:func:`ls_venv`; created by ``.ci/labelstudio-venv.sh`` if missing), never the project's.
Each :class:`LabelStudio` gets a fresh data dir (SQLite DB, uploads, ``.env`` with the
SECRET_KEY) under a temp folder, a free loopback port and a random legacy API token.

Measured on a 2-core machine (Python 3.11): 27-30 s from process start to ``GET /health/`` ==
``{"status": "UP"}`` on a fresh data dir (Django migrations run on every fresh DB; allow more on a
slow CI box, ``CLINIE_LS_START_TIMEOUT`` defaults to 180 s), ~400 MB RSS, <1 s to stop.

Protocol facts and surprises checked against the real server by tests/e2e/test_labelstudio_server.py
(see also the project's notes on the ML backend protocol):

- Project titles must have at least 3 characters (400 otherwise).
- Import: ``POST /api/projects/{id}/import?return_task_ids=true`` with a JSON list of
  ``{"text": ...}`` dicts (a dict without a ``data`` key is taken as the task's data). Without
  ``return_task_ids`` the answer only has counts; with it, ``task_ids`` lists the new ids in order.
- Annotations are created with ``POST /api/tasks/{id}/annotations/`` and changed/removed with
  ``PATCH``/``DELETE /api/annotations/{id}/``. ``GET /api/tasks/{id}/`` gives the region back
  exactly as sent (id, from_name, to_name, type, value.start/end/text/labels), nothing added.
- Connecting a backend (``POST /api/ml/``) calls ``GET /health`` + ``POST /setup`` TWICE on it
  before answering, and registers ``<backend url>/webhook`` as a project webhook. ``/setup`` gets
  ``{"project": "<id>.<created_at ts>", "schema", "hostname": "http://localhost:<LS port>",
  "access_token": <the legacy token>, "extra_params": null}``. Listing backends
  (``GET /api/ml/?project=``) calls /health + /setup again; ``GET /api/tasks/{id}/`` calls nothing.
- Annotation create/update/delete through the API send ``ANNOTATION_CREATED`` /
  ``ANNOTATION_UPDATED`` / ``ANNOTATIONS_DELETED`` (``annotations: [{"id": N}]``) to /webhook
  synchronously: the event has arrived by the time the API call returns.
- ``retrieve_tasks_predictions`` sends ``GET /health``, ``POST /setup`` then ONE ``POST /predict``
  with all selected tasks (``tasks`` are full task dicts with ``data``, ``annotations``,
  ``predictions``...; ``params`` is ``{"login": null, "password": null, "context": null}``). Each
  stored prediction keeps the result as sent (per-region ``score`` included), the per-task
  ``score`` and ``model_version``; its ``model`` field stays null. Running the action again sends
  no /predict: every task already has a prediction for that model version. The action answers
  ``{"processed_items": N, "detail": "Retrieved N predictions"}`` whatever the backend did.
- ``POST /api/ml/{id}/interactive-annotating {"task": N, "context": {...}}`` sends one /predict
  with ``params.context`` and answers ``{"data": <first entry of the backend's results>}``;
  nothing is stored.
- ``POST /api/ml/{id}/train`` answers 200 with an empty body; the backend only sees a
  ``START_TRAINING`` webhook (never ``/train``).
- Non-2xx answers raise :class:`LabelStudioError` carrying the status and body.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

from harness import ROOT as REPO_ROOT

LS_VERSION = "1.23.2"
VENV_SCRIPT = REPO_ROOT / ".ci" / "labelstudio-venv.sh"
DEFAULT_VENV = Path.home() / ".cache" / "clinie" / f"label-studio-{LS_VERSION}"


def ls_venv() -> Path:
    """The virtualenv holding Label Studio: ``$CLINIE_LS_VENV`` or ``~/.cache/clinie/label-studio-1.23.2``.

    Created with ``.ci/labelstudio-venv.sh`` (about a minute, ~1 GB) if it has no
    ``bin/label-studio`` yet, so the e2e tests also work from a fresh clone.
    """
    venv = Path(os.environ.get("CLINIE_LS_VENV") or DEFAULT_VENV)
    if not (venv / "bin" / "label-studio").exists():
        subprocess.run(["bash", str(VENV_SCRIPT)], check=True, stdout=subprocess.DEVNULL,
                       env={**os.environ, "CLINIE_LS_VENV": str(venv)})
    return venv


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LabelStudioError(RuntimeError):
    """A Label Studio API call answered with a non-2xx status."""

    def __init__(self, method: str, url: str, status: int, body: str) -> None:
        super().__init__(f"{method} {url} -> {status}: {body[:2000]}")
        self.status = status
        self.body = body


class LabelStudioClient:
    """A thin client for the few REST calls the e2e tests need (plain ``requests``, legacy token auth).

    Every call sends ``Authorization: Token <token>`` and raises :class:`LabelStudioError` on a
    non-2xx answer.
    """

    def __init__(self, url: str, token: str, timeout: float = 120.0) -> None:
        self.url = url.rstrip("/")
        self._personal_access_token: str | None = None
        self.timeout = timeout
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Token {token}"

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """Any API call: ``request("GET", "/api/projects/")``; returns the decoded JSON, or None for an empty body."""
        url = self.url + path
        kwargs.setdefault("timeout", self.timeout)
        response = self.session.request(method, url, **kwargs)
        if not 200 <= response.status_code < 300:
            raise LabelStudioError(method, url, response.status_code, response.text)
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            return response.text

    # projects and tasks

    def create_project(self, title: str, label_config: str) -> int:
        """``POST /api/projects/ {"title", "label_config"}`` -> 201 ``{"id": ..., ...}``; returns the id.

        The title needs at least 3 characters.
        """
        return self.request("POST", "/api/projects/", json={"title": title, "label_config": label_config})["id"]

    def import_tasks(self, project: int, tasks: list[dict[str, Any]]) -> list[int]:
        """Create tasks; returns their ids in the order given.

        ``POST /api/projects/{project}/import?return_task_ids=true`` with a JSON list: each item is
        either the task's data (``{"text": ...}``) or a full task (``{"data": {...}, "predictions": [...]}``).
        Answer: 201 ``{"task_count": N, ..., "task_ids": [...]}`` (synchronous import).
        """
        answer = self.request("POST", f"/api/projects/{project}/import", params={"return_task_ids": "true"},
                              json=tasks)
        ids = answer["task_ids"]
        if len(ids) != len(tasks):
            raise RuntimeError(f"imported {len(tasks)} tasks, Label Studio returned {answer}")
        return ids

    def task(self, task_id: int) -> dict[str, Any]:
        """``GET /api/tasks/{id}/``: the task with ``data``, ``annotations`` (full objects) and ``predictions``."""
        return self.request("GET", f"/api/tasks/{task_id}/")

    # annotations

    def create_annotation(self, task_id: int, result: list[dict[str, Any]], **fields: Any) -> int:
        """``POST /api/tasks/{task_id}/annotations/ {"result": [...], **fields}`` -> 201 annotation; returns its id.

        A region: ``{"id": "r1", "from_name": "label", "to_name": "text", "type": "labels",
        "value": {"start": 0, "end": 8, "text": "diabetes", "labels": ["Disease"]}}``.
        Sends the ``ANNOTATION_CREATED`` webhook to connected backends before answering.
        """
        return self.request("POST", f"/api/tasks/{task_id}/annotations/", json={"result": result, **fields})["id"]

    def annotation(self, annotation_id: int) -> dict[str, Any]:
        """``GET /api/annotations/{id}/``."""
        return self.request("GET", f"/api/annotations/{annotation_id}/")

    def update_annotation(self, annotation_id: int, result: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
        """``PATCH /api/annotations/{id}/ {"result": [...]}`` -> 200 annotation (sends ``ANNOTATION_UPDATED``)."""
        return self.request("PATCH", f"/api/annotations/{annotation_id}/", json={"result": result, **fields})

    def delete_annotation(self, annotation_id: int) -> None:
        """``DELETE /api/annotations/{id}/`` -> 204 (sends ``ANNOTATIONS_DELETED`` with ``annotations: [{"id"}]``)."""
        self.request("DELETE", f"/api/annotations/{annotation_id}/")

    def personal_access_token(self) -> str:
        """``POST /api/token/`` -> ``{"token": <JWT refresh token>}``: a personal access token, the
        default kind in Label Studio 1.23 (PATs enabled for the organisation first). A user holds
        one at a time (a second ``POST`` answers 409), so it is asked for once per client."""
        if self._personal_access_token is None:
            self.request("POST", "/api/jwt/settings",
                         json={"api_tokens_enabled": True, "legacy_api_tokens_enabled": True})
            self._personal_access_token = self.request("POST", "/api/token/")["token"]
        return self._personal_access_token

    # ML backends and predictions

    def connect_ml_backend(self, project: int, url: str, is_interactive: bool = True, title: str = "clinie") -> int:
        """``POST /api/ml/ {"url", "project", "is_interactive", "title"}`` -> 201; returns the backend id.

        Label Studio calls the backend's ``GET /health`` and ``POST /setup`` twice before answering
        (400 if they fail) and registers ``<url>/webhook`` as a project webhook.
        """
        return self.request("POST", "/api/ml/", json={"url": url, "project": project, "is_interactive": is_interactive,
                                                      "title": title})["id"]

    def ml_backends(self, project: int) -> list[dict[str, Any]]:
        """``GET /api/ml/?project=P`` (each listing calls /health and /setup on every backend)."""
        return self.request("GET", "/api/ml/", params={"project": project})

    def train(self, ml_id: int) -> None:
        """``POST /api/ml/{id}/train`` -> 200, empty body: the backend gets ``START_TRAINING`` on /webhook."""
        self.request("POST", f"/api/ml/{ml_id}/train")

    def interactive_annotating(self, ml_id: int, task_id: int, context: dict[str, Any] | None = None) -> Any:
        """``POST /api/ml/{id}/interactive-annotating {"task", "context"}`` -> 200 ``{"data": <backend answer>}``.

        The backend gets ``/predict`` with ``params.context``; nothing is stored.
        """
        return self.request("POST", f"/api/ml/{ml_id}/interactive-annotating",
                            json={"task": task_id, "context": context or {}})

    def retrieve_predictions(self, project: int, task_ids: list[int]) -> dict[str, Any]:
        """Run the data manager action "Retrieve predictions" on the given tasks.

        ``POST /api/dm/actions/?id=retrieve_tasks_predictions&project=P`` with
        ``{"selectedItems": {"all": false, "included": [ids]}}`` -> 200
        ``{"processed_items": N, "detail": "Retrieved N predictions"}`` (said even when the backend
        failed). The backend gets ONE ``/predict`` with all tasks that lack a prediction for the
        current model version.
        """
        # Label Studio answers only once the backend has: a first LLM call on a busy machine
        # (model loading included) can outlast the default timeout.
        return self.request("POST", "/api/dm/actions/",
                            params={"id": "retrieve_tasks_predictions", "project": project},
                            json={"selectedItems": {"all": False, "included": list(task_ids)}},
                            timeout=max(self.timeout, 600))

    def delete_tasks(self, project: int, task_ids: list[int]) -> dict[str, Any]:
        """Run the data manager action "Delete tasks": Label Studio deletes the tasks with their
        annotations and sends the project's webhooks ``TASKS_DELETED`` (no ``ANNOTATIONS_DELETED``)."""
        return self.request("POST", "/api/dm/actions/", params={"id": "delete_tasks", "project": project},
                            json={"selectedItems": {"all": False, "included": list(task_ids)}})

    def predictions(self, task_id: int) -> list[dict[str, Any]]:
        """``GET /api/predictions/?task=N``: stored predictions (``result``, ``score``, ``model_version``, ...)."""
        return self.request("GET", "/api/predictions/", params={"task": task_id})


class LabelStudio:
    """A real Label Studio server on a free loopback port with a fresh data dir.

    ``with LabelStudio() as ls: ls.client.create_project(...)``. Attributes: ``url``, ``token``
    (legacy API token), ``username`` (an email), ``password``, ``data_dir``, ``log_path``,
    ``client`` (:class:`LabelStudioClient`), ``startup_seconds``.

    The data dir is deleted on exit unless ``keep_data=True`` or ``CLINIE_KEEP_LS_DATA=1``.
    """

    def __init__(self, venv: Path | None = None, start_timeout: float | None = None,
                 keep_data: bool | None = None, **extra_env: str) -> None:
        self.venv = Path(venv) if venv else None
        self.start_timeout = start_timeout or float(os.environ.get("CLINIE_LS_START_TIMEOUT", "180"))
        self.keep_data = keep_data if keep_data is not None else os.environ.get("CLINIE_KEEP_LS_DATA") == "1"
        self.extra_env = extra_env
        self.port = 0
        self.url = ""
        self.username = "admin@example.com"
        self.password = secrets.token_urlsafe(12)
        self.token = secrets.token_hex(20)
        self.data_dir = Path()
        self.log_path = Path()
        self.client: LabelStudioClient | None = None
        self.startup_seconds: float | None = None
        self._process: subprocess.Popen | None = None
        self._log = None

    def __enter__(self) -> LabelStudio:
        venv = self.venv or ls_venv()
        self.data_dir = Path(tempfile.mkdtemp(prefix="clinie-ls-"))
        self.log_path = self.data_dir / "label-studio.log"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "LABEL_STUDIO_BASE_DATA_DIR": str(self.data_dir),
            "ML_BLOCK_LOCAL_IP": "false",
            "SSRF_PROTECTION_ENABLED": "false",
            "LATEST_VERSION_CHECK": "false",
            "SENTRY_DSN": "",
            "FRONTEND_SENTRY_DSN": "",
            "LABEL_STUDIO_USERNAME": self.username,
            "LABEL_STUDIO_PASSWORD": self.password,
            "LABEL_STUDIO_USER_TOKEN": self.token,
            "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
            "PYTHONUNBUFFERED": "1",
            **self.extra_env,
        }
        # Keep the project's venv off Label Studio's path.
        env.pop("VIRTUAL_ENV", None)
        env.pop("PYTHONPATH", None)
        self._log = open(self.log_path, "ab")
        started = time.monotonic()
        self._process = subprocess.Popen(
            [str(venv / "bin" / "label-studio"), "start", "--no-browser",
             "--internal-host", "127.0.0.1", "--port", str(self.port)],
            cwd=self.data_dir, env=env, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True)
        try:
            self._wait_healthy(started)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        self.startup_seconds = time.monotonic() - started
        self.client = LabelStudioClient(self.url, self.token)
        return self

    def _wait_healthy(self, started: float) -> None:
        deadline = started + self.start_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"Label Studio exited with {self._process.returncode}:\n{self.log_tail()}")
            try:
                answer = requests.get(self.url + "/health/", timeout=5)
                if answer.ok and answer.json() == {"status": "UP"}:
                    return
            except (requests.RequestException, ValueError):
                pass
            time.sleep(1)
        raise TimeoutError(f"Label Studio did not answer /health/ in {self.start_timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __exit__(self, *exc_info: object) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 10)):
                try:
                    os.killpg(process.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    process.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        if process is not None:
            # The server may leave children (workers) behind in its group even after it exited.
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if self.client is not None:
            self.client.session.close()
        if self._log is not None:
            self._log.close()
            self._log = None
        if not self.keep_data and self.data_dir != Path() and self.data_dir.exists():
            shutil.rmtree(self.data_dir, ignore_errors=True)


def main() -> None:  # pragma: no cover - manual use
    """``python -m harness.labelstudio_server``: start one, print url/credentials, run until Ctrl-C."""
    with LabelStudio(keep_data=True) as ls:
        print(json.dumps({"url": ls.url, "username": ls.username, "password": ls.password, "token": ls.token,
                          "data_dir": str(ls.data_dir), "startup_seconds": round(ls.startup_seconds, 1)}), flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":  # pragma: no cover
    main()
