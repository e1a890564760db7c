"""A real S3 server for tests: moto's (``moto[server]``, a test extra) as a subprocess on a free
loopback port, any credentials accepted, every bucket in memory and gone when it stops.

    with MotoS3() as s3:
        s3.create_bucket("models")
        env = s3.environment()          # AWS_* for a client of this server
        s3.client().list_objects_v2(Bucket="models")

It is a separate process so that what the code under test does goes over HTTP as it would to a
bucket, through botocore, aiobotocore and s3fs (moto's in-process mocks patch botocore, which
aiobotocore's own HTTP client does not go through).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from typing import Any

import requests

from harness.labelstudio_server import free_port

KEY_ID = "testing-key"
SECRET = "testing-secret"
REGION = "us-east-1"


class MotoS3:
    def __init__(self, start_timeout: float = 60) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.startup_seconds = 0.0
        self._timeout = start_timeout
        self._process: subprocess.Popen | None = None
        self._log: Any = None

    def __enter__(self) -> MotoS3:
        self._log = tempfile.TemporaryFile()
        started = time.monotonic()
        # moto's own entry point (`moto_server`), run by this interpreter: no PATH lookup
        self._process = subprocess.Popen(
            [sys.executable, "-c", "from moto.server import main; main()", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, **self.environment()})
        try:
            while True:
                if self._process.poll() is not None:
                    raise RuntimeError(f"moto_server exited ({self._process.returncode}): {self.log()}")
                try:
                    if requests.get(f"{self.url}/moto-api/data.json", timeout=2).ok:
                        break
                except requests.ConnectionError:
                    pass
                if time.monotonic() - started > self._timeout:
                    raise RuntimeError(f"moto_server not up after {self._timeout:.0f} s: {self.log()}")
                time.sleep(0.1)
        except BaseException:
            self.__exit__()
            raise
        self.startup_seconds = time.monotonic() - started
        return self

    def __exit__(self, *exc: object) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def log(self) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-4000:]

    def environment(self) -> dict[str, str]:
        """What a client of this server is configured with: credentials, region, the endpoint
        (``AWS_ENDPOINT_URL``, which botocore — hence aiobotocore and s3fs — reads), and no
        configuration file of this machine's user."""
        return {"AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_DEFAULT_REGION": REGION,
                "AWS_ENDPOINT_URL": self.url, "AWS_CONFIG_FILE": os.devnull,
                "AWS_SHARED_CREDENTIALS_FILE": os.devnull}

    def client(self) -> Any:
        """A boto3 S3 client of this server (to look at or change a bucket behind the code's back)."""
        import boto3

        return boto3.client("s3", endpoint_url=self.url, region_name=REGION, aws_access_key_id=KEY_ID,
                            aws_secret_access_key=SECRET)

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every object's key under ``prefix``."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []))
