"""A throwaway PostgreSQL cluster from Debian's packages (``apt-get install postgresql``, which
``.ci/run`` does when it is missing): ``initdb`` into a temporary directory, a server on a free
loopback port, trust authentication, gone on exit. PostgreSQL refuses to run as root, so under
root (CI, containers) it runs as Debian's ``postgres`` account.

    with PostgresServer() as server:
        url = server.database("test_store")   # a fresh database, its URL

``disk_mb`` puts the data directory on a filesystem of its own, that small (a tmpfs; needs root),
so that a bench can fill it for real: ``resize`` is then the operator freeing space (or, before a
test, leaving only a few MB free), and ``ensure_running`` starts the server again if the full
disk stopped it. The server's log stays outside it, so that what PostgreSQL said is kept.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from harness.labelstudio_server import free_port


def bin_dir() -> Path | None:
    """Where ``initdb`` and ``pg_ctl`` are (Debian keeps them off PATH, per major version)."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(versions[-1]).parent if versions else None


class PostgresServer:
    def __init__(self, disk_mb: int | None = None) -> None:
        self.port = free_port()
        self._bin = bin_dir()
        self._tmp: str | None = None
        self._as_postgres = os.geteuid() == 0
        self.disk_mb = disk_mb
        self._mounted = False

    def _run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        command = [str(self._bin / argv[0]), *argv[1:]]
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(command, check=check, capture_output=True, timeout=120)

    @property
    def data_dir(self) -> Path:
        """The cluster's data directory (the mount point of its disk, with ``disk_mb``)."""
        if self._tmp is None:
            raise RuntimeError("the server is not started")
        return Path(self._tmp) / "data"

    @property
    def log_path(self) -> Path:
        """The server's log (beside the data directory, not on its disk)."""
        return self.data_dir.parent / "server.log"

    def _start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_path), "-w", "-t", "60", "start", "-o",
                  f"-p {self.port} -k {self._tmp} -c listen_addresses=127.0.0.1")

    def __enter__(self) -> PostgresServer:
        if self._bin is None:
            raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql; .ci/run does it)")
        self._tmp = tempfile.mkdtemp(prefix="clinie-postgres-")
        if self._as_postgres:
            shutil.chown(self._tmp, "postgres", "postgres")
        initdb = ["initdb", "-D", str(self.data_dir), "-A", "trust", "-U", "postgres", "--no-sync"]
        try:
            if self.disk_mb is not None:
                self._mount()
                initdb.append("--wal-segsize=1")  # WAL grows by 1 MB files, not 16 MB: the disk fills by small steps
            self._run(*initdb)
            self._start()
        except BaseException:
            self._remove(check=False)
            raise
        return self

    def _mount(self) -> None:
        """A tmpfs of ``disk_mb`` at the data directory, the server's (its owner, mode 0700, as initdb wants)."""
        if os.geteuid() != 0:
            raise RuntimeError("PostgresServer(disk_mb=...) mounts a filesystem: it needs root")
        self.data_dir.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.disk_mb}m,mode=0700", "tmpfs", str(self.data_dir)],
                       check=True, capture_output=True, timeout=60)
        self._mounted = True
        shutil.chown(self.data_dir, "postgres", "postgres")

    def resize(self, mb: int) -> None:
        """The data directory's filesystem now ``mb`` MB (more: the operator freed space; less, down to
        what is used: little room left)."""
        subprocess.run(["mount", "-o", f"remount,size={mb}m", str(self.data_dir)], check=True, capture_output=True,
                       timeout=60)
        self.disk_mb = mb

    def ensure_running(self, timeout: float = 120) -> bool:
        """Start the server if it is not running (a PANIC it could not recover from, on a full disk,
        stops it), then wait until it takes connections (it may be recovering after a crash). Whether
        it had to be started."""
        import psycopg

        stopped = self._run("pg_ctl", "-D", str(self.data_dir), "status", check=False).returncode != 0
        if stopped:
            self._start()
        deadline = time.monotonic() + timeout
        while True:
            try:
                psycopg.connect(self.url, connect_timeout=5).close()
                return stopped
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def __exit__(self, *exc: object) -> None:
        self._remove(check=not self._mounted)  # on a disk of its own, a full disk may have stopped it already

    def _remove(self, check: bool) -> None:
        """Stop the server (``check``: a failure to is an error), unmount its disk, remove its files."""
        if self._tmp is None:
            return
        try:
            self._run("pg_ctl", "-D", str(self.data_dir), "-m", "immediate", "-w", "stop", check=check)
        finally:
            if self._mounted:  # lazily: gone from the tree even if a process that outlived the stop holds a file
                subprocess.run(["umount", "--lazy", str(self.data_dir)], check=True, capture_output=True, timeout=60)
                self._mounted = False
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
