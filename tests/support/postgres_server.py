"""A throwaway PostgreSQL cluster from Debian's packages (``apt-get install postgresql``, which
``.ci/run`` does when it is missing): ``initdb`` into a temporary directory, a server on a free
loopback port, trust authentication, gone on exit. PostgreSQL refuses to run as root, so under
root (CI, containers) it runs as Debian's ``postgres`` account.

    with PostgresServer() as server:
        url = server.database("test_store")   # a fresh database, its URL
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from tests.support.labelstudio_server import free_port


def bin_dir() -> Path | None:
    """Where ``initdb`` and ``pg_ctl`` are (Debian keeps them off PATH, per major version)."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(versions[-1]).parent if versions else None


class PostgresServer:
    def __init__(self) -> None:
        self.port = free_port()
        self._bin = bin_dir()
        self._tmp: str | None = None
        self._as_postgres = os.geteuid() == 0

    def _run(self, *argv: str) -> None:
        command = [str(self._bin / argv[0]), *argv[1:]]
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=120)

    def __enter__(self) -> PostgresServer:
        if self._bin is None:
            raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql; .ci/run does it)")
        self._tmp = tempfile.mkdtemp(prefix="clinie-postgres-")
        if self._as_postgres:
            shutil.chown(self._tmp, "postgres", "postgres")
        data = f"{self._tmp}/data"
        self._run("initdb", "-D", data, "-A", "trust", "-U", "postgres", "--no-sync")
        self._run("pg_ctl", "-D", data, "-l", f"{self._tmp}/server.log", "-w", "-t", "60", "start", "-o",
                  f"-p {self.port} -k {self._tmp} -c listen_addresses=127.0.0.1")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._tmp is None:
            return
        try:
            self._run("pg_ctl", "-D", f"{self._tmp}/data", "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    @property
    def url(self) -> str:
        """The ``postgres`` database, to create others in."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def database(self, name: str) -> str:
        """A new, empty database ``name`` (dropped first if a test made it before): its URL."""
        import psycopg

        deadline = time.monotonic() + 30
        with psycopg.connect(self.url, autocommit=True) as db:
            while True:  # a backend still connected to the old one (a killed server's) holds the drop
                try:
                    db.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                    break
                except psycopg.errors.ObjectInUse:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            db.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"
