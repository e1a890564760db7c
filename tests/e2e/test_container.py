"""The Dockerfile and docker-compose.yml, exercised without a Docker engine (none runs here): the
image's install and model-assembly steps, its command with its environment, its health check,
and the compose file's wiring — each run or checked against the real thing, so the image
cannot rot unseen."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import requests
import yaml
from werkzeug.serving import make_server

from clinie.settings import Settings
from harness import ROOT
from harness.backend_server import ServerProcess
from harness.labelstudio_server import LS_VERSION, free_port
from ml_backend.app import create_app

#: What a deployment sets: the image listens on every address, so it requires them.
CREDENTIALS = {"CLINIE_BASIC_AUTH_USER": "label-studio", "CLINIE_BASIC_AUTH_PASSWORD": "s3cret:with a colon"}


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` per logical line: comments dropped, continuations joined."""
    logical, current = [], ""
    for line in dockerfile.read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        current += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            logical.append(current.strip())
            current = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in logical]


DOCKERFILE = instructions(ROOT / "Dockerfile")
RUNTIME = DOCKERFILE[max(i for i, (op, _) in enumerate(DOCKERFILE) if op == "FROM"):]  # the last stage


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for op, args in RUNTIME:
        if op == "ENV":
            env.update(pair.split("=", 1) for pair in shlex.split(args))
    return env


def test_the_build_runs_the_install_script_ci_runs():
    runs = [args for op, args in DOCKERFILE if op == "RUN"]
    assert any(r.startswith("bash .ci/install") for r in runs)
    assert "bash .ci/install" in (ROOT / ".ci" / "run").read_text()
    assert ("USER", "clinie") in RUNTIME, "the image runs as a non-root user"
    assert not any("build-essential" in args for op, args in RUNTIME), "no compilers in the runtime image"


@pytest.fixture(scope="module")
def app_dir(tmp_path_factory) -> Path:
    """What /app holds in the image: this checkout, its .venv, and the GGUF the build assembled
    (by the Dockerfile's own command, run here)."""
    app = tmp_path_factory.mktemp("app")
    [assemble] = [args for op, args in DOCKERFILE if op == "RUN" and "assemble(" in args]
    code = re.search(r'-c "([^"]+)"', assemble).group(1).replace("/app/", f"{app}/")
    subprocess.run([sys.executable, "-c", code], check=True)
    return app


def test_the_image_command_serves_with_the_image_settings_and_its_health_check_passes(app_dir, tmp_path):
    def in_checkout(text: str) -> str:  # /app/models -> the assembled file; /app/... -> this checkout
        return text.replace("/app/models/", f"{app_dir}/models/").replace("/app/", f"{ROOT}/")

    port = free_port()
    env = {k: in_checkout(v) for k, v in image_env().items()}
    # CLINIE_COLD_START=llm: the embedded LLM pre-annotates before any model (by default it shows nothing)
    env |= {"CLINIE_DATA_DIR": str(tmp_path / "data"), "CLINIE_PORT": str(port),
            "CLINIE_COLD_START": "llm"} | CREDENTIALS
    assert Path(env["CLINIE_LLM_MODEL"]).read_bytes()[:4] == b"GGUF"
    assert env["CLINIE_PROBE_MODEL"] == env["CLINIE_LLM_MODEL"]  # the probe reads the same assembled file
    [cmd] = [json.loads(args) for op, args in RUNTIME if op == "CMD"]
    auth = (CREDENTIALS["CLINIE_BASIC_AUTH_USER"], CREDENTIALS["CLINIE_BASIC_AUTH_PASSWORD"])
    with ServerProcess([in_checkout(a) for a in cmd], tmp_path / "serve.log", "/health", env, port=port,
                       auth=auth) as server:
        probe = in_checkout(health_check()).replace("9090", str(port))
        assert subprocess.run(probe, shell=True, timeout=30, env=os.environ | env).returncode == 0
        # the embedded LLM, from the path the image sets, pre-annotates a project with no model yet
        config = (ROOT / "label_configs" / "disease_ner.xml").read_text()
        answer = requests.post(server.url + "/predict", auth=auth, json={
            "tasks": [{"id": 1, "data": {"text": "Familial breast cancer."}}], "project": "1",
            "label_config": config}, timeout=120).json()
        assert answer["model_version"].startswith("clinie-llm-llama.cpp-gemma-3-270m-q4_k_m-")
    assert subprocess.run(probe, shell=True, timeout=30, env=os.environ | env,
                          stderr=subprocess.DEVNULL).returncode != 0, "the health check fails once the backend is down"


def health_check() -> str:
    """The HEALTHCHECK's command (shell form, as Docker runs it)."""
    [health] = [args for op, args in RUNTIME if op == "HEALTHCHECK"]
    return health.split(" CMD ", 1)[1]


def test_the_image_refuses_to_serve_without_credentials_or_the_explicit_override():
    """It listens on every address of its network (CLINIE_HOST=0.0.0.0)."""
    with pytest.raises(ValueError, match="CLINIE_BASIC_AUTH_USER and CLINIE_BASIC_AUTH_PASSWORD"):
        Settings.load(image_env()).validate_serving()
    Settings.load(image_env() | CREDENTIALS).validate_serving()
    Settings.load(image_env() | {"CLINIE_ALLOW_UNAUTHENTICATED": "1"}).validate_serving()


def test_the_health_check_sends_the_containers_credentials(tmp_path):
    """The HEALTHCHECK against the real app with basic auth on: healthy with the container's
    credentials in its environment, unhealthy without them (a 401)."""
    settings = Settings.load(CREDENTIALS | {"CLINIE_DATA_DIR": str(tmp_path / "data")})
    server = make_server("127.0.0.1", 0, create_app(settings), threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        probe = health_check().replace("/app/.venv/bin/python", shlex.quote(sys.executable)) \
            .replace("9090", str(server.server_port))
        def run(env: dict[str, str]) -> int:
            return subprocess.run(probe, shell=True, timeout=60, env=env, stderr=subprocess.DEVNULL).returncode
        bare = {k: v for k, v in os.environ.items() if not k.startswith("CLINIE_")}
        assert run(bare | CREDENTIALS) == 0
        assert run(bare) != 0
        assert run(bare | CREDENTIALS | {"CLINIE_BASIC_AUTH_PASSWORD": "wrong"}) != 0
    finally:
        server.shutdown()


def substitute(value: str, variables: dict[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?error}``."""
    def one(match: re.Match) -> str:
        name, op, rest = match.group(1), match.group(2), match.group(3)
        if variables.get(name):
            return variables[name]
        assert op != ":?", f"compose refuses to start without {name}: {rest}"
        return rest if op == ":-" else ""
    return re.sub(r"\$\{(\w+)(:-|:\?)?([^}]*)\}", one, str(value))


def test_compose_runs_label_studio_and_clinie_with_the_settings_each_needs():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    label_studio, clinie = compose["services"]["label-studio"], compose["services"]["clinie"]
    dot_env = dict(line.split("=", 1) for line in (ROOT / ".env.example").read_text().splitlines()
                   if line and not line.startswith("#"))
    filled = {k: v or "value" for k, v in dot_env.items()} | {"LABEL_STUDIO_USERNAME": "admin@example.com"}

    assert label_studio["image"] == f"heartexlabs/label-studio:{LS_VERSION}", "the version the e2e tests run"
    ls_env = {k: substitute(v, filled) for k, v in label_studio["environment"].items()}
    assert ls_env["ML_BLOCK_LOCAL_IP"] == ls_env["SSRF_PROTECTION_ENABLED"] == "false"

    clinie_env = {k: substitute(v, filled) for k, v in clinie["environment"].items()}
    settings = Settings.load(image_env() | clinie_env)  # valid, as the container will read them
    settings.validate_serving()
    for required in ("CLINIE_BASIC_AUTH_USER", "CLINIE_BASIC_AUTH_PASSWORD"):
        assert required in dot_env, f".env.example names {required}"
        with pytest.raises(AssertionError, match=f"compose refuses to start without {required}"):
            substitute(clinie["environment"][required], filled | {required: ""})
    assert settings.label_studio_api_key == ls_env["LABEL_STUDIO_USER_TOKEN"] != ""
    assert settings.label_studio_url == "http://label-studio:8080"
    assert clinie["build"] == "."
    assert [v.split(":")[1] for v in clinie["volumes"]] == [image_env()["CLINIE_DATA_DIR"]]
    assert clinie["expose"] == [args for op, args in RUNTIME if op == "EXPOSE"] == [str(settings.port)]
    assert "ports" not in clinie, "only Label Studio reaches clinie"
    assert int(clinie["stop_grace_period"].rstrip("s")) > settings.shutdown_grace_seconds, \
        "docker must not kill what the grace lets finish"


def test_the_scaled_profile_runs_replicas_and_a_worker_on_one_postgresql_and_one_model_volume():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    dot_env = dict(line.split("=", 1) for line in (ROOT / ".env.example").read_text().splitlines()
                   if line and not line.startswith("#"))
    filled = {k: v or "value" for k, v in dot_env.items()}
    web, worker, postgres = services["clinie-web"], services["clinie-worker"], services["postgres"]
    assert {s.get("profiles", [None])[0] for s in (web, worker, postgres)} == {"scaled"}
    assert web["deploy"]["replicas"] == 2 and worker["command"][-1] == "worker"
    for service in (web, worker):
        env = {k: substitute(v, filled) for k, v in service["environment"].items()}
        settings = Settings.load(image_env() | env)
        assert settings.database_url == f"postgresql://clinie:{filled['CLINIE_DATABASE_PASSWORD']}@postgres/clinie"
        assert service["volumes"] == services["clinie"]["volumes"], "one model volume for every process"
    with pytest.raises(AssertionError, match="compose refuses to start without CLINIE_DATABASE_PASSWORD"):
        substitute(postgres["environment"]["POSTGRES_PASSWORD"], filled | {"CLINIE_DATABASE_PASSWORD": ""})


def test_both_stages_take_their_base_from_one_build_argument():
    """No registry is reachable from every machine that builds the image: its base is a build
    argument (a Debian image made with debootstrap where python:3.11-slim cannot be pulled)."""
    [(_, default)] = [(op, args) for op, args in DOCKERFILE if op == "ARG" and args.startswith("BASE_IMAGE=")]
    assert default == "BASE_IMAGE=python:3.11-slim"
    assert [args.split()[0] for op, args in DOCKERFILE if op == "FROM"] == ["${BASE_IMAGE}", "${BASE_IMAGE}"]
