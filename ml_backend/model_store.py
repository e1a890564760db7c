"""Where a backend's model versions lie: ``CLINIE_MODELS_URL``, one directory per project.

The location is a directory (``<data dir>/models`` by default, or a volume every replica and
worker mounts) or an S3-compatible bucket (``s3://bucket/prefix``, through fsspec; credentials
from the usual ``AWS_*`` variables). Versions are ``clinie.model_version.ModelVersion``s: written
once by a training, read by any replica. What a replica read of a remote version is cached under
its data directory, and a version's manifest is read once per process: nothing in a version
changes after it is written.
"""

from __future__ import annotations

import re
import shutil
import threading
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from clinie.model_version import PARTIAL, ModelVersion, Saveable, is_remote


def project_dir_name(project: str) -> str:
    """A project's directory under the models location: one per project, so that purging the
    project removes them all (and nothing outside the location)."""
    name = re.sub(r"[^\w.-]", "_", project)
    if name.strip(".") == "":
        raise ValueError(f"{project!r} cannot name a project's model directory")
    return name


class ModelStore:
    def __init__(self, root: str | Path, data_dir: Path) -> None:
        self.root = str(root).rstrip("/")
        self.cache = data_dir / "model-cache"  # what was read of remote versions
        self.staging = data_dir / "model-staging"  # remote versions being written
        self._opened: dict[str, ModelVersion] = {}
        self._lock = threading.Lock()

    def location(self, project: str, version: str) -> str:
        return f"{self.project_location(project)}/{version}"

    def project_location(self, project: str) -> str:
        return f"{self.root}/{project_dir_name(project)}"

    def write(self, project: str, version: str, parts: Mapping[str, Saveable], info: Mapping[str, Any], *,
              carried: Mapping[str, ModelVersion] | None = None) -> ModelVersion:
        """Write a version of ``project`` (``ModelVersion.write``), staged under the data directory;
        each ``carried`` part is taken from the version named."""
        sources = {part: (source, self.local(source, part)) for part, source in (carried or {}).items()}
        written = ModelVersion.write(self.location(project, version), parts, info, carried=sources,
                                     staging=self.staging)
        with self._lock:
            self._opened[written.location] = written
        return written

    def open(self, location: str) -> ModelVersion:
        """The version at ``location``, its manifest read once (``DamagedModel`` when it has none)."""
        with self._lock:
            if (opened := self._opened.get(location)) is not None:
                return opened
        opened = ModelVersion.open(location)
        with self._lock:
            return self._opened.setdefault(location, opened)

    def local(self, version: ModelVersion, part: str) -> Path:
        """``part`` of ``version`` as a checked local directory (``ModelVersion.local``)."""
        return version.local(part, self._cached(version.location))

    def _cached(self, location: str) -> Path:
        """Where a remote version is cached: under its project's directory, as in the location."""
        return self.cache / location.removeprefix(self.root + "/")

    def remove(self, location: str) -> None:
        """Delete a version, and what this process cached of it."""
        with self._lock:
            self._opened.pop(location, None)
        ModelVersion.remove(location)
        shutil.rmtree(self._cached(location), ignore_errors=True)

    def remove_project(self, project: str) -> None:
        """Delete every version of ``project`` (the project's directory), cached copies included."""
        location = self.project_location(project)
        with self._lock:
            for opened in [opened for opened in self._opened if opened.startswith(location + "/")]:
                del self._opened[opened]
        ModelVersion.remove(location)
        shutil.rmtree(self._cached(location), ignore_errors=True)

    def sweep_cache(self, registered: Collection[str]) -> list[Path]:
        """Remove the cached copies of versions no longer ``registered`` (pruned, or their project
        purged through another replica, which alone received the webhook): they were learned from
        notes, and this replica holds them only as long as the store names them."""
        if not self.cache.is_dir():
            return []
        stale = [version for project in self.cache.iterdir() for version in project.iterdir()
                 if f"{self.root}/{version.relative_to(self.cache).as_posix()}" not in registered]
        for path in stale:
            shutil.rmtree(path, ignore_errors=True)
        for project in self.cache.iterdir():
            if not any(project.iterdir()):
                project.rmdir()
        return stale

    def remove_partials(self) -> list[Path]:
        """Remove what a crash left half-written (``PARTIAL`` directories) in the local models
        directory and the staging directory: nothing reads them and each can be the size of a
        model. Only at start-up, when no training of this process can be writing one."""
        roots = [self.staging] + ([] if is_remote(self.root) else [Path(self.root.removeprefix("file://"))])
        stale = sorted(p for root in roots if root.is_dir() for p in root.rglob("*" + PARTIAL) if p.is_dir())
        for path in stale:
            shutil.rmtree(path, ignore_errors=True)
        return stale
