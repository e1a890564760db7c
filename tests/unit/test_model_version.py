"""A model version is written once, immutable, and checked before it is loaded: on a local
directory and on a location fsspec reaches remotely (its in-memory file system: the same calls as
a bucket's), cached locally."""

from __future__ import annotations

import json
import os
from pathlib import Path

import fsspec
import pytest

from clinie.model_version import MAIN_PART, MANIFEST, PARTIAL, DamagedModel, ModelVersion
from harness.helpers import Files
from ml_backend.model_store import ModelStore

ENCODER = {"config.json": b'{"a": 1}', "model.safetensors": b"\x00" * 4096, "clinie.json": b"{}"}
PROBE = {"head.pt": b"probe weights", "clinie.json": b"{}"}


@pytest.fixture(params=["local", "remote"])
def store(request, tmp_path) -> ModelStore:
    if request.param == "local":
        yield ModelStore(tmp_path / "models", tmp_path / "data")
        return
    root = f"memory://clinie-test-{os.getpid()}-{tmp_path.name}"
    yield ModelStore(root, tmp_path / "data")
    fsspec.filesystem("memory").rm(root.removeprefix("memory://"), recursive=True)


def read(version: ModelVersion, store: ModelStore, part: str) -> dict[str, bytes]:
    directory = store.local(version, part)
    return {str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*")
            if p.is_file() and p.name != MANIFEST and (part or p.relative_to(directory).parts[0] not in ("probe",))}


def test_a_version_is_written_once_and_read_back_part_by_part(store):
    written = store.write("p 1", "v1", {MAIN_PART: Files(ENCODER), "probe": Files(PROBE)}, {"labels": ["Disease"]})
    assert written.location == f"{store.root}/p_1/v1" and written.name == "v1"
    opened = ModelVersion.open(written.location)
    assert opened.parts == written.parts and opened.info == {"labels": ["Disease"]} and opened.verified
    assert set(opened.parts[MAIN_PART]) == set(ENCODER), "the encoder's part holds no other part's file"
    assert read(opened, store, MAIN_PART) == ENCODER and read(opened, store, "probe") == PROBE
    with pytest.raises(FileExistsError, match="written once"):
        store.write("p 1", "v1", {MAIN_PART: Files(ENCODER)}, {})
    with pytest.raises(DamagedModel, match="no part 'student'"):
        store.local(opened, "student")
    assert not any(store.staging.rglob("*" + PARTIAL)) if store.staging.exists() else True


def test_a_later_version_carries_an_earlier_ones_part_without_changing_it(store):
    first = store.write("1", "v1", {MAIN_PART: Files(ENCODER)}, {})
    second = store.write("1", "v1-probe", {"probe": Files(PROBE)}, {}, carried={MAIN_PART: first})
    assert second.parts[MAIN_PART] == first.parts[MAIN_PART]
    assert read(store.open(second.location), store, MAIN_PART) == ENCODER
    store.remove(first.location)
    assert read(ModelVersion.open(second.location), store, MAIN_PART) == ENCODER, "the carried part is its own copy"
    with pytest.raises(DamagedModel, match="no model version"):
        ModelVersion.open(first.location)


def test_a_file_that_differs_from_its_checksum_is_never_loaded(tmp_path):
    store = ModelStore(tmp_path / "models", tmp_path / "data")
    version = store.write("1", "v1", {MAIN_PART: Files(ENCODER), "probe": Files(PROBE)}, {})
    directory = Path(version.location)
    (directory / "model.safetensors").write_bytes(b"\x00" * 100)  # truncated: a full disk, a bad restore
    with pytest.raises(DamagedModel, match="model.safetensors does not match its checksum"):
        store.local(version, MAIN_PART)
    assert store.local(version, "probe") == directory / "probe", "another part is still whole"
    (directory / "model.safetensors").write_bytes(ENCODER["model.safetensors"])
    version.verify()
    (directory / "probe" / "head.pt").unlink()
    with pytest.raises(DamagedModel, match="head.pt is missing"):
        version.verify()
    (directory / MANIFEST).write_text("{ half")
    with pytest.raises(DamagedModel, match="manifest cannot be read"):
        ModelVersion.open(directory)


def test_a_remote_versions_damaged_cached_copy_is_fetched_again(tmp_path):
    root = f"memory://clinie-cache-{os.getpid()}"
    store = ModelStore(root, tmp_path / "data")
    try:
        version = store.write("1", "v1", {MAIN_PART: Files(ENCODER)}, {})
        cached = store.local(version, MAIN_PART)
        assert cached.is_relative_to(store.cache) and read(version, store, MAIN_PART) == ENCODER
        (cached / "config.json").write_text("altered")
        assert (store.local(version, MAIN_PART) == cached
                and (cached / "config.json").read_bytes() == ENCODER["config.json"])
        store.remove_project("1")
        assert not cached.exists() and not fsspec.filesystem("memory").exists(root.removeprefix("memory://") + "/1")
    finally:
        fsspec.filesystem("memory").rm(root.removeprefix("memory://"), recursive=True)


def test_a_crash_leaves_a_partial_directory_never_half_a_version(tmp_path):
    store = ModelStore(tmp_path / "models", tmp_path / "data")

    class Crashing:
        def save(self, directory: Path) -> None:
            (directory / "weights").write_bytes(b"half")
            raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        store.write("1", "v1", {MAIN_PART: Files(ENCODER), "probe": Crashing()}, {})
    assert not ModelVersion.exists(store.location("1", "v1")) and store.remove_partials() == []
    (tmp_path / "models" / "1" / ("v2" + PARTIAL)).mkdir(parents=True)  # what a SIGKILL leaves
    assert store.remove_partials() == [tmp_path / "models" / "1" / ("v2" + PARTIAL)]


def test_a_directory_written_before_manifests_loads_as_found(tmp_path):
    legacy = tmp_path / "old-version"
    Files(ENCODER).save(legacy)
    Files(PROBE).save(legacy / "probe")
    version = ModelVersion.open(legacy)
    assert not version.verified and set(version.parts) == {MAIN_PART, "probe"}
    assert version.local("probe") == legacy / "probe"
    assert json.loads((legacy / "clinie.json").read_text()) == {}


def test_a_replica_sweeps_its_cached_copies_of_versions_no_longer_registered(tmp_path):
    """A project deleted through another replica: this one's cached copy goes at its next sweep."""
    root = f"memory://clinie-sweep-{os.getpid()}"
    store = ModelStore(root, tmp_path / "data")
    try:
        kept, purged = (store.write(project, "v1", {MAIN_PART: Files(ENCODER)}, {}) for project in ("1", "2"))
        cached = {version.location: store.local(version, MAIN_PART) for version in (kept, purged)}
        assert store.sweep_cache({kept.location, purged.location}) == []
        assert store.sweep_cache({kept.location}) == [cached[purged.location]]
        assert not (store.cache / "2").exists() and read(kept, store, MAIN_PART) == ENCODER
    finally:
        fsspec.filesystem("memory").rm(root.removeprefix("memory://"), recursive=True)
