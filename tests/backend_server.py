"""Run the real backend (``clinie serve``: gunicorn) as a subprocess on a free loopback port."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from labelstudio_server import free_port


class BackendServer:
    """``with BackendServer(data_dir, CLINIE_TRAIN_EVERY="0") as b: requests.get(b.url + "/health")``"""

    def __init__(self, data_dir: Path, **settings: str) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = data_dir / "backend.log"
        self._env = {**os.environ, "CLINIE_DATA_DIR": str(data_dir), **settings}
        self._process: subprocess.Popen | None = None

    def __enter__(self) -> BackendServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self._process = subprocess.Popen(
            [sys.executable, "-m", "clinie.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port)],
            env=self._env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"backend exited with {self._process.returncode}:\n{self.log_tail()}")
            try:
                if requests.get(self.url + "/health", timeout=2).ok:
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.5)
        self.__exit__(None, None, None)
        raise TimeoutError(f"backend did not answer /health in 120 s:\n{self.log_tail()}")

    def __exit__(self, *exc: object) -> None:
        if self._process and self._process.poll() is None:
            os.killpg(self._process.pid, signal.SIGTERM)
            try:
                self._process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self._process.pid, signal.SIGKILL)
                self._process.wait()

    def log_tail(self, n: int = 40) -> str:
        lines = self.log_path.read_text(errors="replace").splitlines() if self.log_path.exists() else []
        return "\n".join(lines[-n:])
