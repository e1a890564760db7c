"""A model version: what one training fitted, written once, never changed, and checked on every load.

A version is a directory — local, on a volume several machines share, or in an S3-compatible
bucket (any location ``fsspec`` opens: ``s3://bucket/models/…``). Each of its *parts* lies in a
directory of its own, named by the caller (``clinie.strategies.PARTS``: ``probe``, ``student``…;
the relation classifier's ``relations``), except the encoder's, which is the version's directory
itself: a version is also a Hugging Face model directory, as ``clinie train`` has always written.
``MANIFEST`` lists every file of every part with its SHA-256, and the version's metadata.

Why a manifest: a replica on another machine, a restored backup or a half-synced volume can hold
a file that is truncated or not the one trained; loading it would serve a model nobody trained,
or fail on every request. A part is loaded only once each of its files matches its checksum
(``DamagedModel`` otherwise). The manifest is written last, so a version without one was never
finished (a directory written before manifests existed loads as found: ``verified`` False).

Writing is staged in a local ``<name>.partial`` directory: renamed into place once flushed to disk
when the location is local (a crash leaves a ``.partial``, never half a version), uploaded with
the manifest last when it is remote. A remote version's part is downloaded once into a local
cache and checked there.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

MANIFEST = "clinie-version.json"
FORMAT = 1
#: The suffix of a directory a version is being written into.
PARTIAL = ".partial"
#: The part that is the version's directory itself.
MAIN_PART = ""


class DamagedModel(ValueError):
    """A version's files do not match its manifest (missing, truncated, altered), or it has no
    such part."""


class Saveable(Protocol):
    def save(self, directory: Path) -> Any: ...


def is_remote(location: str | Path) -> bool:
    """A location fsspec reaches over a network (``s3://…``), not a path of this machine."""
    return "://" in str(location) and not str(location).startswith("file://")


def _local_path(location: str | Path) -> Path:
    return Path(str(location).removeprefix("file://"))


@dataclass(frozen=True)
class ModelVersion:
    """One written version: where it lies, its parts' files and checksums, its metadata."""

    location: str
    parts: Mapping[str, Mapping[str, str]]  # part directory -> {path relative to it: sha256}
    info: Mapping[str, Any] = field(default_factory=dict)
    verified: bool = True  # False: written before manifests, loaded as found

    @property
    def name(self) -> str:
        return str(self.location).rstrip("/").rsplit("/", 1)[-1]

    def has(self, part: str) -> bool:
        return part in self.parts

    # --- writing ---------------------------------------------------------------------------

    @classmethod
    def write(cls, location: str | Path, parts: Mapping[str, Saveable], info: Mapping[str, Any] | None = None, *,
              carried: Mapping[str, tuple[ModelVersion, Path]] | None = None,
              staging: Path | None = None) -> ModelVersion:
        """Save ``parts`` (by directory; ``MAIN_PART`` for the encoder), and take each ``carried`` part
        from an earlier version (that version, and the checked local directory ``local`` gave of
        the part: hard-linked where the file system allows, since no file is ever changed), as
        the version at ``location``. ``staging``: the local directory a remote version is staged
        in (a local one is staged beside itself). Refuses a location already written."""
        location = str(location)
        if cls.exists(location):
            raise FileExistsError(f"model version {location} exists: versions are written once")
        name = location.rstrip("/").rsplit("/", 1)[-1]
        if is_remote(location) and staging is None:
            raise ValueError(f"a remote version ({location}) is staged in a local directory: pass staging")
        partial = (staging / name if is_remote(location) and staging is not None else _local_path(location)) \
            .with_name(name + PARTIAL)
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        try:
            # the root part first: saving a Hugging Face model into a directory may clear it
            for directory in sorted(parts, key=bool):
                (partial / directory).mkdir(parents=True, exist_ok=True)
                parts[directory].save(partial / directory)
            for directory, (source, local) in (carried or {}).items():
                _link(local, source.parts[directory], partial / directory)
            manifest: dict[str, Any] = {"format": FORMAT, "parts": _checksums(partial, [*parts, *(carried or {})]),
                        "info": dict(info or {})}
            (partial / MANIFEST).write_text(json.dumps(manifest, ensure_ascii=False, indent=1, sort_keys=True))
            if is_remote(location):
                cls.remove(location)  # what an upload cut off before its manifest left there
                _upload(partial, location)
                shutil.rmtree(partial, ignore_errors=True)
            else:
                _flush_tree(partial)
                os.replace(partial, location)
                _flush(Path(location).parent)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        return cls(location, manifest["parts"], manifest["info"])

    # --- reading ---------------------------------------------------------------------------

    @staticmethod
    def exists(location: str | Path) -> bool:
        """A version was written at ``location`` (remote: its manifest, which is uploaded last)."""
        fs, path = _fs(location)
        return fs.exists(f"{path}/{MANIFEST}" if is_remote(location) else path)

    @classmethod
    def open(cls, location: str | Path) -> ModelVersion:
        """The version at ``location`` (its manifest read); ``DamagedModel`` when there is none."""
        location = str(location)
        fs, path = _fs(location)
        try:
            manifest = json.loads(fs.cat_file(f"{path}/{MANIFEST}"))
        except FileNotFoundError:
            if not is_remote(location) and (_local_path(location) / "clinie.json").is_file():
                directory = _local_path(location)
                parts = _legacy_parts(directory)  # its files listed, not hashed: nothing to check them against
                return cls(location, {part: dict.fromkeys(map(str, _files(directory, part, parts)), "")
                                      for part in parts}, verified=False)
            raise DamagedModel(f"no model version at {location}") from None
        except ValueError as e:
            raise DamagedModel(f"{location}: its manifest cannot be read") from e
        if manifest.get("format") != FORMAT:
            raise DamagedModel(f"{location}: manifest format {manifest.get('format')!r}, this clinie reads {FORMAT}")
        return cls(location, manifest["parts"], manifest.get("info", {}))

    def local(self, part: str, cache: Path | None = None) -> Path:
        """A local directory holding ``part``, checked against the manifest: in place for a local
        version, else downloaded once into ``cache`` (the directory this version is cached in).
        ``DamagedModel`` when a file differs."""
        if part not in self.parts:
            raise DamagedModel(f"{self.location} has no part {part!r}")
        if not is_remote(self.location):
            directory = _local_path(self.location) / part
            if self.verified:
                _check(directory, self.parts[part], self.location)
            return directory
        if cache is None:
            raise ValueError(f"a remote version ({self.location}) is read through a local cache: pass cache")
        directory = cache / part
        try:
            _check(directory, self.parts[part], self.location)
        except DamagedModel:  # not cached yet, or the cached copy was damaged: fetch it again
            fs, path = _fs(self.location)
            for relative in self.parts[part]:
                target = directory / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                target.unlink(missing_ok=True)
                try:
                    fs.get_file(f"{path}/{part}/{relative}" if part else f"{path}/{relative}", str(target))
                except FileNotFoundError:
                    raise DamagedModel(f"{self.location}: {relative} is missing") from None
            _check(directory, self.parts[part], self.location)
        return directory

    def verify(self, cache: Path | None = None) -> None:
        """Check every part (``DamagedModel`` at the first file that differs)."""
        for part in self.parts:
            self.local(part, cache)

    # --- removing --------------------------------------------------------------------------

    @staticmethod
    def remove(location: str | Path) -> None:
        """Delete a version (its manifest first: a version half deleted is no version)."""
        fs, path = _fs(location)
        if not fs.exists(path):
            return
        if fs.exists(f"{path}/{MANIFEST}"):
            fs.rm_file(f"{path}/{MANIFEST}")
        fs.rm(path, recursive=True)


def _fs(location: str | Path) -> tuple[Any, str]:
    import fsspec

    return fsspec.core.url_to_fs(str(location))


def _legacy_parts(directory: Path) -> list[str]:
    """The parts of a directory written before manifests: the encoder, and each subdirectory
    holding a saved model."""
    return [MAIN_PART, *sorted(p.name for p in directory.iterdir() if (p / "clinie.json").is_file())]


def _files(directory: Path, part: str, parts: list[str]) -> Iterator[Path]:
    """The files of ``part`` (for ``MAIN_PART``: none inside another part's directory, nor the manifest)."""
    base = directory / part
    for path in sorted(base.rglob("*")):
        relative = path.relative_to(base)
        if path.is_file() and not (part == MAIN_PART and (relative.parts[0] in parts or relative.name == MANIFEST)):
            yield relative


def _checksums(directory: Path, parts: list[str]) -> dict[str, dict[str, str]]:
    return {part: {str(relative): _sha256(directory / part / relative) for relative in _files(directory, part, parts)}
            for part in parts}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _check(directory: Path, files: Mapping[str, str], location: str) -> None:
    for relative, expected in files.items():
        path = directory / relative
        if not path.is_file():
            raise DamagedModel(f"{location}: {relative} is missing")
        if _sha256(path) != expected:
            raise DamagedModel(f"{location}: {relative} does not match its checksum")


def _link(source: Path, files: Mapping[str, str], target: Path) -> None:
    for relative in files:
        (target / relative).parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source / relative, target / relative)
        except OSError:  # another file system, or one without hard links
            shutil.copy2(source / relative, target / relative)


def _upload(partial: Path, location: str) -> None:
    """Every file, then the manifest: a reader never finds a manifest before what it lists."""
    fs, path = _fs(location)
    for file in sorted(p for p in partial.rglob("*") if p.is_file() and p.name != MANIFEST):
        fs.put_file(str(file), f"{path}/{file.relative_to(partial)}")
    fs.put_file(str(partial / MANIFEST), f"{path}/{MANIFEST}")


def _flush_tree(directory: Path) -> None:
    for path in [*directory.rglob("*"), directory]:
        _flush(path)


def _flush(path: Path) -> None:
    """``fsync`` a file (its content) or a directory (its entries: a file created or renamed in it),
    before the version can be registered: after a power loss the store must not name a version
    the file system forgot or holds only in part."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
