"""The Docker image built and run for real: ``.ci/image.sh`` builds the Dockerfile with podman (on a
Debian base made with debootstrap where no registry is reachable: ../shared/CONTAINERS.md), then
the scaled deployment runs from it — a web container (``clinie serve``) and a worker container
(``clinie worker``) on one PostgreSQL and one data volume shared as the model volume. Through the
web container, with basic auth: /health, a 401 without credentials, the image's HEALTHCHECK, the
embedded LLM's cold-start prediction; then annotations sent as Label Studio's webhooks, a
training the worker container runs, and /predict answering with the model it trained."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time

import pytest
import requests

from clinie.core import read_documents
from clinie.labelstudio import document_to_result, parse_label_config
from harness import DATA, ROOT
from harness.helpers import DISEASE_CONFIG, assert_regions_match_tasks, webhook_event
from harness.labelstudio_server import free_port

pytestmark = [pytest.mark.heavy, pytest.mark.slow]

IMAGE = "localhost/clinie:test"
CREDENTIALS = {"CLINIE_BASIC_AUTH_USER": "label-studio", "CLINIE_BASIC_AUTH_PASSWORD": "s3cret:with a colon"}
AUTH = (CREDENTIALS["CLINIE_BASIC_AUTH_USER"], CREDENTIALS["CLINIE_BASIC_AUTH_PASSWORD"])
DOCS = list(read_documents(DATA / "ncbi_disease" / "fewshot" / "gutierrez_train100_seed42.jsonl"))[:11]
CONTROL = parse_label_config(DISEASE_CONFIG).span_controls[0]
#: The LLM pre-annotates until a model is trained (``auto`` + ``llm`` cold start); trainings only
#: on "Start training", the encoder alone (no selection), two epochs: a model in about a minute.
SETTINGS = {"CLINIE_COLD_START": "llm", "CLINIE_TRAIN_EVERY": "0", "CLINIE_MIN_ANNOTATIONS": "5",
            "CLINIE_SELECT_STRATEGIES": "", "CLINIE_ENCODER_EPOCHS": "2", "CLINIE_FIRST_MODEL_STEPS": "0",
            "CLINIE_SYNC_EVERY_MINUTES": "0"}


@pytest.fixture(scope="module")
def podman() -> list[str]:
    """``.ci/image.sh``'s podman command prefix, once it has built the image (cached after the first
    build: seconds unless the checkout changed)."""
    if os.geteuid() != 0:
        pytest.skip(".ci/image.sh installs podman and builds a base with debootstrap: it needs root")
    if not (shutil.which("podman") or shutil.which("apt-get")):
        pytest.skip("neither podman nor apt-get (to install it) is on this machine")
    started = time.monotonic()
    built = subprocess.run(["bash", str(ROOT / ".ci" / "image.sh")], stdout=subprocess.PIPE, text=True)
    assert built.returncode == 0, "bash .ci/image.sh failed (its output is above)"
    print(f"bash .ci/image.sh: {time.monotonic() - started:.0f} s")
    return shlex.split(built.stdout.strip().splitlines()[-1])


def wait_for(condition, timeout: float, what: str, alive=lambda: None):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        alive()
        assert time.monotonic() < deadline, f"no {what} after {timeout:.0f} s"
        time.sleep(1)
    return value


@pytest.mark.timeout(3600)  # a first build, without podman's layer cache, takes most of it
def test_the_image_serves_and_trains_on_postgresql_with_a_web_and_a_worker_container(
        podman, postgres_server, tmp_path):
    data = tmp_path / "data"  # the volume both containers share (the models the worker trains)
    data.mkdir()
    os.chown(data, 1000, 1000)  # the image's clinie user
    port = free_port()
    env = SETTINGS | CREDENTIALS | {"CLINIE_DATABASE_URL": postgres_server.database("image"),
                                    "CLINIE_PORT": str(port)}
    names = {role: f"clinie-test-{role}-{os.getpid()}" for role in ("web", "worker")}

    def run(role: str, *command: str) -> None:
        variables = [a for k, v in env.items() for a in ("--env", f"{k}={v}")]
        subprocess.run([*podman, "run", "-d", "--name", names[role], "--network", "host", "-v", f"{data}:/data",
                        *variables, IMAGE, *command], check=True, stdout=subprocess.DEVNULL, timeout=120)

    def running(role: str) -> None:
        state = subprocess.run([*podman, "inspect", "-f", "{{.State.Status}}", names[role]],
                               capture_output=True, text=True).stdout.strip()
        assert state == "running", f"the {role} container is {state or 'gone'}"

    url = f"http://127.0.0.1:{port}"
    try:
        run("web")  # the image's own command: clinie serve
        started = time.monotonic()

        def healthy() -> bool:
            try:
                return requests.get(url + "/health", auth=AUTH, timeout=5).status_code == 200
            except requests.RequestException:
                return False
        wait_for(healthy, 180, "answer from /health", lambda: running("web"))
        print(f"web container healthy after {time.monotonic() - started:.1f} s")
        assert requests.get(url + "/health", timeout=5).status_code == 401
        assert requests.post(url + "/predict", json={"tasks": []}, timeout=5).status_code == 401
        # the image's HEALTHCHECK, run in the container on its CLINIE_PORT with its credentials
        assert subprocess.run([*podman, "healthcheck", "run", names["web"]], timeout=60).returncode == 0

        run("worker", "/app/.venv/bin/clinie", "worker")  # after the web one has made the queue's tables

        setup = requests.post(url + "/setup", auth=AUTH, json={"project": "1", "schema": DISEASE_CONFIG},
                              timeout=60)
        assert setup.status_code == 200, setup.text
        task = [{"id": 1000, "data": {"text": DOCS[-1].text}}]
        query = {"tasks": task, "project": "1", "label_config": DISEASE_CONFIG}
        started = time.monotonic()
        cold = requests.post(url + "/predict", auth=AUTH, json=query, timeout=300)
        assert cold.status_code == 200, cold.text
        assert cold.json()["model_version"].startswith("clinie-llm-llama.cpp-gemma-3-270m-q4_k_m-")
        assert_regions_match_tasks(task, cold.json())
        print(f"cold-start /predict (embedded LLM) in {time.monotonic() - started:.1f} s")

        # Label Studio's webhooks: ten annotations, then "Start training"; the worker trains
        for n, doc in enumerate(DOCS[:-1], start=1):
            result, _ = document_to_result(doc, CONTROL)
            answer = requests.post(url + "/webhook", auth=AUTH, json=webhook_event(n, n, doc.text, result),
                                   timeout=30)
            assert answer.status_code == 200 and answer.json()["stored"] is True, answer.text
        started = time.monotonic()
        start = {"action": "START_TRAINING", "project": {"id": 1, "label_config": DISEASE_CONFIG}}
        assert requests.post(url + "/webhook", auth=AUTH, json=start, timeout=30).status_code == 200

        def versions() -> list[str]:
            return requests.get(url + "/versions", auth=AUTH, timeout=10).json()["versions"]

        def both_running() -> None:
            running("web")
            running("worker")
        [version] = wait_for(versions, 600, "trained model version", both_running)
        print(f"model {version} trained by the worker container in {time.monotonic() - started:.1f} s")
        metrics = requests.get(url + "/metrics?format=json", auth=AUTH, timeout=10).json()
        assert metrics["store"]["trainings"] == {"succeeded": 1}, metrics["store"]
        assert list((data / "models").iterdir()), "the model lies on the shared volume"
        trained = requests.post(url + "/predict", auth=AUTH, json=query, timeout=120)
        assert trained.status_code == 200, trained.text
        assert trained.json()["model_version"] == version and not version.startswith("clinie-llm-")
        assert_regions_match_tasks(task, trained.json())
    finally:
        for role, name in names.items():
            logs = subprocess.run([*podman, "logs", name], capture_output=True, text=True)
            print(f"----- {role} container ({name}) log -----\n{logs.stdout}{logs.stderr}")
            subprocess.run([*podman, "rm", "-f", "-t", "10", name], capture_output=True)
