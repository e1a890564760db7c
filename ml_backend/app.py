"""The HTTP surface Label Studio 1.23 talks to (docs/label-studio-protocol.md: the protocol, as measured).

Requests are validated completely before anything is stored, so a malformed body gets a 4xx
that says what is wrong and leaves no trace; errors are JSON, never an HTML page.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from typing import Any

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from clinie.labelstudio import LabelConfigError
from clinie.private import restrict_umask
from clinie.settings import Settings
from ml_backend.metrics import render_prometheus
from ml_backend.protocol import is_id, project_key
from ml_backend.service import Backend
from ml_backend.webhooks import ANNOTATION_ACTIONS

log = logging.getLogger(__name__)


class BadRequest(ValueError):
    """A request that cannot be served as sent; its message goes back to the caller."""


def _json_object() -> dict[str, Any]:
    """The body as a JSON object, or the 4xx that says why it is not one. Read before it is
    parsed, so that a body over ``CLINIE_MAX_REQUEST_MB`` is a 413 however it was sent, and
    checked for lone surrogates (``"\\ud800"``), which JSON escapes allow but no UTF-8 can hold:
    SQLite could not store such a text, so the request is refused before anything is."""
    data = request.get_data()  # a Content-Length over the limit: 413 here
    limit = request.max_content_length
    if limit is not None and request.content_length is None and len(data) >= limit:
        # a chunked body is cut at the limit without an error (werkzeug's LimitedStream), so one that
        # reaches the limit is taken as over it: parsing what was cut would answer 400, not 413
        raise RequestEntityTooLarge(f"the body is larger than the limit of {limit} bytes (CLINIE_MAX_REQUEST_MB)")
    try:
        body = request.get_json(silent=True)
        json.dumps(body, ensure_ascii=False).encode()
    except RecursionError:  # hostile nesting ([[[[...]]]]) overflows the parser's stack
        raise BadRequest("the body nests too deeply to be a Label Studio request") from None
    except UnicodeEncodeError:
        raise BadRequest("the body is not valid Unicode: it holds a lone surrogate (\\ud800-\\udfff) "
                         "that no UTF-8 text can store") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object (Content-Type: application/json)")
    return body


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise BadRequest(message)


def _project(body: dict[str, Any]) -> str:
    """The key of the project ``body`` names (``project_key``), or the 400 that says why it names none."""
    try:
        return project_key(body.get("project"))
    except ValueError as e:
        raise BadRequest(f"'project': {e}") from None


def validate_webhook(body: dict[str, Any]) -> None:
    """Everything the store will need is present and well-typed, or nothing is stored."""
    action = body.get("action")
    _require(isinstance(action, str) and action != "", "'action' must be a non-empty string")
    project = body.get("project")
    _require(not isinstance(project, dict) or isinstance(project.get("label_config", ""), str),
             "'project.label_config' must be a string")
    if action in ANNOTATION_ACTIONS or action in ("ANNOTATIONS_DELETED", "PROJECT_DELETED", "START_TRAINING") \
            or (action == "TASKS_DELETED" and project is not None):
        _project(body)
    if action in ANNOTATION_ACTIONS:
        annotation, task = body.get("annotation"), body.get("task")
        if not (isinstance(annotation, dict) and is_id(annotation.get("id"))):
            raise BadRequest("'annotation' must be an object with an integer 'id'")
        _require(isinstance(annotation.get("result", []), list), "'annotation.result' must be a list")
        _require(all(isinstance(r, dict) for r in annotation.get("result") or []),
                 "'annotation.result' items must be objects")
        _require(isinstance(task, dict) and is_id(task.get("id")) and isinstance(task.get("data"), dict),
                 "'task' must be an object with an integer 'id' and a 'data' object")
    elif action == "ANNOTATIONS_DELETED":
        annotations = body.get("annotations")
        _require(isinstance(annotations, list) and all(isinstance(a, dict) and is_id(a.get("id"))
                                                       for a in annotations),
                 "'annotations' must be a list of objects with an integer 'id'")
    elif action == "TASKS_DELETED":
        tasks = body.get("tasks")
        _require(isinstance(tasks, list) and all(isinstance(t, dict) and is_id(t.get("id")) for t in tasks),
                 "'tasks' must be a list of objects with an integer 'id'")


def _within_task_limit(count: int, limit: int) -> None:
    """One /predict holds at most ``limit`` tasks (``CLINIE_MAX_TASKS_PER_REQUEST``): a larger
    batch would hold a worker thread for longer than anyone waits for its answer."""
    if limit and count > limit:
        raise RequestEntityTooLarge(f"{count} tasks in one /predict; at most {limit} are accepted "
                                    "(CLINIE_MAX_TASKS_PER_REQUEST): send fewer at a time")


def create_app(settings: Settings | None = None, backend: Backend | None = None) -> Flask:
    """The WSGI app. Refuses settings that would serve patient text to the network without
    credentials (``Settings.validate_serving``), and makes what the process writes private
    (``clinie.private``) before the backend opens its store."""
    settings = settings or Settings.load()
    settings.validate_serving()
    restrict_umask()
    backend = backend or Backend(settings)
    app = Flask("clinie")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_mb * 1024 * 1024
    app.extensions["clinie"] = backend

    @app.before_request
    def authenticate() -> Response | None:
        if not settings.requires_auth:
            return None
        if _credentials_ok(settings):
            return None
        response = jsonify(error="authentication required")
        response.status_code = 401
        response.headers["WWW-Authenticate"] = 'Basic realm="clinie"'
        return response

    @app.errorhandler(BadRequest)
    def bad_request(e: BadRequest) -> tuple[Response, int]:
        return jsonify(error=str(e)), 400

    @app.errorhandler(LabelConfigError)
    def bad_config(e: LabelConfigError) -> tuple[Response, int]:
        return jsonify(error=f"labeling config: {e}"), 422

    @app.errorhandler(HTTPException)
    def http_error(e: HTTPException) -> tuple[Response, int]:
        return jsonify(error=e.description), e.code or 500

    @app.errorhandler(Exception)
    def unexpected(e: Exception) -> tuple[Response, int]:
        backend.metrics.count("server_errors")
        log.error("%s %s failed: %s", request.method, request.path, type(e).__name__)
        log.debug("unhandled error", exc_info=e)
        return jsonify(error=f"internal error ({type(e).__name__}); see the backend log"), 500

    @app.get("/")
    @app.get("/health")
    def health() -> Response:
        return jsonify(backend.health())

    @app.post("/setup")
    def setup() -> Response:
        body = _json_object()
        schema = body.get("schema")
        if not (isinstance(schema, str) and schema.strip() != ""):
            raise BadRequest("'schema' must be the labeling config XML")
        project = _project(body)
        return jsonify(model_version=backend.setup(project, schema))

    @app.post("/predict")
    def predict() -> Response:
        body = _json_object()
        tasks = body.get("tasks")
        if not isinstance(tasks, list):
            raise BadRequest("'tasks' must be a list")
        _within_task_limit(len(tasks), settings.max_tasks_per_request)
        label_config = body.get("label_config")
        _require(label_config is None or isinstance(label_config, str), "'label_config' must be a string")
        project = _project(body)
        try:
            return jsonify(backend.predict(project, tasks, label_config))
        except LabelConfigError:
            raise
        except ValueError as e:
            raise BadRequest(str(e)) from None

    @app.post("/webhook")
    def webhook() -> Response:
        started = time.perf_counter()
        body = _json_object()
        validate_webhook(body)
        answer = backend.webhook(body)
        backend.metrics.observe("webhook", time.perf_counter() - started)
        return jsonify(answer)

    @app.get("/versions")
    def versions() -> Response:
        return jsonify(versions=backend.versions())

    @app.get("/metrics")
    def metrics() -> Response:
        snapshot = backend.metrics_snapshot()
        if request.args.get("format") == "json":
            return jsonify(snapshot)
        return Response(render_prometheus(snapshot), mimetype="text/plain; version=0.0.4; charset=utf-8")

    return app


def _credentials_ok(settings: Settings) -> bool:
    """Whether the request's ``Authorization`` carries the configured user and password. A header
    werkzeug cannot read as ``Basic base64(user:password)`` is simply not them: a 401, never a
    500 (bytes outside ASCII reach ``b64decode`` as a ValueError werkzeug lets through)."""
    try:
        given = request.authorization
    except ValueError:
        return False
    if given is None or given.type != "basic":
        return False
    # Both compared, always: no early exit that would time the user name.
    return hmac.compare_digest((given.username or "").encode(), settings.basic_auth_user.encode()) & \
        hmac.compare_digest((given.password or "").encode(), settings.basic_auth_password.encode())
