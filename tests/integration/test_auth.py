"""Patient text is never reachable without credentials: authentication fails closed, malformed
credentials are a 401, and neither /health, the access log nor the store repeats a secret or a
message that may quote note text. Real Flask app, real store, real ``clinie serve``."""

from __future__ import annotations

import base64
import sqlite3
import subprocess
import sys

import pytest
import requests

from clinie.settings import Settings
from harness import ROOT
from harness.backend_server import BackendServer
from harness.helpers import webhook_event
from harness.labelstudio_server import free_port
from ml_backend.app import create_app
from ml_backend.service import Backend

AUTH = {"basic_auth_user": "ls", "basic_auth_password": "s3cret"}


def basic(credentials: bytes) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(credentials).decode()}


@pytest.mark.parametrize("given, missing", [({"basic_auth_user": "ls"}, "CLINIE_BASIC_AUTH_PASSWORD"),
                                            ({"basic_auth_password": "s3cret"}, "CLINIE_BASIC_AUTH_USER")])
def test_half_configured_auth_refuses_to_start_and_names_what_is_missing(tmp_path, given, missing):
    with pytest.raises(ValueError, match=f"{missing} is not set"):
        create_app(Settings(data_dir=tmp_path / "data", **given))
    assert not (tmp_path / "data").exists(), "refused before anything is stored"


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "clinie", ""])
def test_serving_beyond_loopback_without_auth_is_refused(tmp_path, host):
    with pytest.raises(ValueError, match="CLINIE_BASIC_AUTH_USER and CLINIE_BASIC_AUTH_PASSWORD .* "
                                         "CLINIE_ALLOW_UNAUTHENTICATED=1"):
        create_app(Settings(data_dir=tmp_path / "data", host=host))


@pytest.mark.parametrize("settings", [{"host": "127.0.0.1"}, {"host": "::1"}, {"host": "localhost"},
                                      {"host": "0.0.0.0", **AUTH}, {"host": "0.0.0.0", "allow_unauthenticated": True}])
def test_loopback_credentials_or_the_explicit_override_serve(tmp_path, settings):
    client = create_app(Settings(data_dir=tmp_path / "data", **settings)).test_client()
    assert client.get("/health", headers=basic(b"ls:s3cret")).status_code == 200


def test_the_override_is_read_from_the_environment():
    Settings.load({"CLINIE_HOST": "0.0.0.0", "CLINIE_ALLOW_UNAUTHENTICATED": "1"}).validate_serving()
    with pytest.raises(ValueError, match="CLINIE_ALLOW_UNAUTHENTICATED"):
        Settings.load({"CLINIE_HOST": "0.0.0.0", "CLINIE_ALLOW_UNAUTHENTICATED": "0"}).validate_serving()
    with pytest.raises(ValueError, match="CLINIE_ALLOW_UNAUTHENTICATED"):
        Settings.load({"CLINIE_ALLOW_UNAUTHENTICATED": "maybe"})


def test_clinie_serve_on_every_address_without_auth_exits_with_one_clear_line(tmp_path):
    """``--host`` counts as much as ``CLINIE_HOST``; refused before gunicorn binds the port."""
    env = {"PATH": "/usr/bin:/bin", "CLINIE_DATA_DIR": str(tmp_path / "data")}
    done = subprocess.run([sys.executable, "-m", "clinie.cli", "serve", "--host", "0.0.0.0",
                           "--port", str(free_port())],
                          env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 2
    assert done.stderr.startswith("clinie serve: refusing to serve on 0.0.0.0 without authentication")
    assert "CLINIE_ALLOW_UNAUTHENTICATED=1" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("header", [
    "Basic é", "Basic \x80\xff", "Basic !!!not-base64", "Basic " + base64.b64encode(b"no colon").decode(),
    "Basic " + base64.b64encode(b"\xff\xfe:s3cret").decode(), "Basic", "Bearer s3cret", "",
])
def test_malformed_credentials_are_a_401_never_a_500(tmp_path, header):
    client = create_app(Settings(data_dir=tmp_path / "data", **AUTH)).test_client()
    answer = client.get("/health", headers={"Authorization": header})
    assert answer.status_code == 401 and answer.json == {"error": "authentication required"}
    assert answer.headers["WWW-Authenticate"] == 'Basic realm="clinie"'


def test_health_names_the_endpoints_without_their_credentials(tmp_path):
    settings = Settings(data_dir=tmp_path / "data", llm_provider="openai", llm_model="m",
                        llm_base_url="https://llm-user:llm-pass@llm.example:8000/v1",
                        label_studio_url="http://admin:ls-pass@label-studio:8080", label_studio_api_key="k")
    health = create_app(settings, Backend(settings, start_worker=False)).test_client().get("/health")
    assert health.json["remote_endpoints"] == ["https://llm.example:8000/v1"]
    assert health.json["label_studio"] == "http://label-studio:8080"
    assert b"pass" not in health.data


def test_a_failed_training_stores_the_exception_type_not_its_message(tmp_path):
    """An exception message may quote the note text a tokenizer or a model choked on."""
    missing_model = tmp_path / "no-such-model"
    settings = Settings(data_dir=tmp_path / "data", min_annotations=1, train_every=0, strategy="encoder",
                        encoder_model=str(missing_model))
    backend = Backend(settings, start_worker=False)
    result = [{"id": "r1", "from_name": "label", "to_name": "text", "type": "labels",
               "value": {"start": 0, "end": 13, "text": "breast cancer", "labels": ["Disease"]}}]
    create_app(settings, backend).test_client().post("/webhook", json=webhook_event(1, 1, "breast cancer", result))
    assert backend.train("1") is None
    with sqlite3.connect(settings.store_path) as db:
        [(status, error)] = db.execute("SELECT status, error FROM trainings").fetchall()
    assert status == "failed" and error.isidentifier(), error  # e.g. OSError, nothing after it
    assert str(missing_model) not in error


def test_the_access_log_does_not_record_the_user_name(tmp_path):
    with BackendServer(tmp_path / "data", CLINIE_BASIC_AUTH_USER="annotator-jane", CLINIE_BASIC_AUTH_PASSWORD="pw",
                       CLINIE_LOG_LEVEL="INFO") as server:
        assert requests.get(server.url + "/versions", auth=server.auth, timeout=30).status_code == 200
        assert requests.get(server.url + "/versions", timeout=30).status_code == 401
    log = server.log_path.read_text()
    assert '"GET /versions HTTP/1.1" 200' in log and '"GET /versions HTTP/1.1" 401' in log, log[-2000:]
    assert "annotator-jane" not in log
