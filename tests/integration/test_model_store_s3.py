"""Model versions in an S3-compatible bucket (``CLINIE_MODELS_URL=s3://bucket/prefix``), on a real
S3 server (moto's, a subprocess: ``harness.s3_server``) reached over HTTP through s3fs,
configured as a deployment is: the ``AWS_*`` variables only, the endpoint from ``AWS_ENDPOINT_URL``.
test_model_version.py covers the same code on fsspec's in-memory file system; here it is the
bucket's own semantics (no directories, only keys under a prefix; listings; deletes in batches)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import fsspec
import pytest
import s3fs

from clinie.model_version import MAIN_PART, MANIFEST, PARTIAL, DamagedModel, ModelVersion
from harness.helpers import Files
from harness.s3_server import MotoS3
from ml_backend.model_store import ModelStore

BUCKET = "clinie-models"
ROOT_URL = f"s3://{BUCKET}/models"

ENCODER = {"config.json": b'{"a": 1}', "model.safetensors": b"\x00" * 4096, "clinie.json": b"{}"}
PROBE = {"head.pt": b"probe weights", "clinie.json": b"{}", "sub/extra.bin": b"\x01\x02"}


@pytest.fixture(scope="module")
def s3():
    """One moto S3 server for the module, a bucket in it, and this process configured for it
    through the environment alone (restored afterwards)."""
    with MotoS3() as server, pytest.MonkeyPatch.context() as env:
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_REGION",
                     "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "AWS_ENDPOINT_URL_S3"):
            env.delenv(name, raising=False)
        for name, value in server.environment().items():
            env.setenv(name, value)
        s3fs.S3FileSystem.clear_instance_cache()  # none made for another endpoint or credentials
        server.create_bucket(BUCKET)
        try:
            yield server
        finally:
            s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture
def bucket(s3):
    """The server, its bucket emptied after each test."""
    yield s3
    client = s3.client()
    for key in s3.keys(BUCKET):
        client.delete_object(Bucket=BUCKET, Key=key)
    fsspec.filesystem("s3").invalidate_cache()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def files(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_the_endpoint_comes_from_aws_endpoint_url_alone(bucket):
    fs = fsspec.filesystem("s3")
    assert fs.endpoint_url is None, "s3fs was given no endpoint: botocore read AWS_ENDPOINT_URL"
    fs.pipe_file(f"{BUCKET}/probe-of-endpoint", b"x")
    assert bucket.keys(BUCKET) == ["probe-of-endpoint"]


def test_a_version_is_written_to_the_bucket_and_read_back_through_the_cache(bucket, tmp_path):
    store = ModelStore(ROOT_URL, tmp_path / "data")
    written = store.write("p 1", "v1", {MAIN_PART: Files(ENCODER), "probe": Files(PROBE)}, {"labels": ["Disease"]})
    assert written.location == f"{ROOT_URL}/p_1/v1"
    assert bucket.keys(BUCKET) == sorted(
        [f"models/p_1/v1/{name}" for name in ENCODER] + [f"models/p_1/v1/probe/{name}" for name in PROBE]
        + [f"models/p_1/v1/{MANIFEST}"])
    assert not any(store.staging.rglob("*" + PARTIAL)) and not any(p.is_file() for p in store.staging.rglob("*")), \
        "nothing staged is left once uploaded"
    assert ModelVersion.exists(written.location)

    opened = ModelVersion.open(written.location)
    assert opened.parts == written.parts and opened.info == {"labels": ["Disease"]} and opened.verified
    assert opened.parts[MAIN_PART] == {name: sha256(data) for name, data in ENCODER.items()}
    assert opened.parts["probe"] == {name: sha256(data) for name, data in PROBE.items()}

    encoder, probe = store.local(opened, MAIN_PART), store.local(opened, "probe")
    assert encoder == store.cache / "p_1" / "v1" and probe == encoder / "probe"
    assert {k: v for k, v in files(encoder).items() if not k.startswith("probe/")} == ENCODER
    assert files(probe) == PROBE
    opened.verify(store._cached(opened.location))  # every part against its checksums, from the cache
    with pytest.raises(DamagedModel, match="no part 'student'"):
        store.local(opened, "student")


def test_a_version_is_written_once(bucket, tmp_path):
    store = ModelStore(ROOT_URL, tmp_path / "data")
    first = store.write("1", "v1", {MAIN_PART: Files(ENCODER)}, {"run": 1})
    with pytest.raises(FileExistsError, match="written once"):
        store.write("1", "v1", {MAIN_PART: Files({"config.json": b"other"})}, {"run": 2})
    with pytest.raises(FileExistsError, match="written once"):  # nor by another replica
        ModelStore(ROOT_URL, tmp_path / "other").write("1", "v1", {MAIN_PART: Files(ENCODER)}, {"run": 3})
    assert bucket.client().get_object(Bucket=BUCKET, Key="models/1/v1/config.json")["Body"].read() == b'{"a": 1}'
    assert ModelVersion.open(first.location).info == {"run": 1}


def test_an_object_altered_in_the_bucket_is_never_loaded(bucket, tmp_path):
    writer = ModelStore(ROOT_URL, tmp_path / "writer")
    version = writer.write("1", "v1", {MAIN_PART: Files(ENCODER), "probe": Files(PROBE)}, {})
    # a bad restore, a partial sync, someone's hand: the object is no longer the one trained
    bucket.client().put_object(Bucket=BUCKET, Key="models/1/v1/model.safetensors", Body=b"\x00" * 100)

    reader = ModelStore(ROOT_URL, tmp_path / "reader")  # a fresh replica: nothing cached
    opened = reader.open(version.location)
    with pytest.raises(DamagedModel, match="model.safetensors does not match its checksum"):
        reader.local(opened, MAIN_PART)
    assert files(reader.local(opened, "probe")) == PROBE, "another part is still whole"


def test_an_object_missing_from_the_bucket_is_a_damaged_version(bucket, tmp_path):
    version = ModelStore(ROOT_URL, tmp_path / "writer").write("1", "v1", {"probe": Files(PROBE)}, {})
    bucket.client().delete_object(Bucket=BUCKET, Key="models/1/v1/probe/head.pt")
    with pytest.raises(DamagedModel, match="head.pt is missing"):
        ModelStore(ROOT_URL, tmp_path / "reader").local(version, "probe")


def test_an_upload_cut_off_before_its_manifest_is_no_version_and_can_be_written_again(bucket, tmp_path):
    store = ModelStore(ROOT_URL, tmp_path / "data")
    store.write("1", "v1", {MAIN_PART: Files(ENCODER), "probe": Files({"stale.bin": b"from the cut-off upload"})}, {})
    # what a worker killed between the last part and the manifest leaves: every file, no manifest
    bucket.client().delete_object(Bucket=BUCKET, Key=f"models/1/v1/{MANIFEST}")
    with pytest.raises(DamagedModel, match="no model version"):
        ModelStore(ROOT_URL, tmp_path / "reader").open(store.location("1", "v1"))
    written = store.write("1", "v1", {MAIN_PART: Files(ENCODER), "probe": Files(PROBE)}, {"retried": True})
    assert ModelVersion.open(written.location).info == {"retried": True}
    assert "models/1/v1/probe/stale.bin" not in bucket.keys(BUCKET), "nothing of the cut-off upload is left"


def test_removing_a_project_deletes_every_object_under_its_prefix_and_its_cache(bucket, tmp_path):
    store = ModelStore(ROOT_URL, tmp_path / "data")
    first = store.write("1", "v1", {MAIN_PART: Files(ENCODER), "probe": Files(PROBE)}, {})
    second = store.write("1", "v2", {"probe": Files(PROBE)}, {}, carried={MAIN_PART: first})
    other = store.write("10", "v1", {MAIN_PART: Files(ENCODER)}, {})  # a prefix of "1/" by its text
    cached = [store.local(first, MAIN_PART), store.local(second, MAIN_PART), store.local(other, MAIN_PART)]
    assert all(directory.is_dir() for directory in cached)

    store.remove_project("1")
    assert bucket.keys(BUCKET, "models/1/") == []
    assert bucket.keys(BUCKET) == sorted([f"models/10/v1/{name}" for name in ENCODER] + [f"models/10/v1/{MANIFEST}"])
    assert not (store.cache / "1").exists() and cached[2].is_dir()
    assert not ModelVersion.exists(first.location) and not ModelVersion.exists(store.project_location("1"))
    with pytest.raises(DamagedModel, match="no model version"):
        ModelStore(ROOT_URL, tmp_path / "fresh").open(second.location)
    assert files(store.local(store.open(other.location), MAIN_PART)) == ENCODER
    store.remove_project("1")  # nothing left to remove: no error

    store.remove(other.location)
    assert bucket.keys(BUCKET) == [] and not cached[2].exists()


def test_another_replica_reads_the_version_the_first_wrote(bucket, tmp_path):
    trainer = ModelStore(ROOT_URL, tmp_path / "trainer")
    first = trainer.write("p", "v1", {MAIN_PART: Files(ENCODER)}, {"labels": ["Chemical"]})
    written = trainer.write("p", "v2", {"probe": Files(PROBE)}, {"labels": ["Chemical"]}, carried={MAIN_PART: first})

    replica = ModelStore(ROOT_URL, tmp_path / "replica")
    opened = replica.open(written.location)
    assert opened.parts == written.parts and opened.info == {"labels": ["Chemical"]}
    assert replica.open(written.location) is opened, "a manifest is read once per process"
    encoder, probe = replica.local(opened, MAIN_PART), replica.local(opened, "probe")
    assert encoder.is_relative_to(tmp_path / "replica" / "model-cache") and files(probe) == PROBE
    assert {k: v for k, v in files(encoder).items() if not k.startswith("probe/")} == ENCODER
    assert not (tmp_path / "trainer" / "model-cache" / "p" / "v2").exists(), "each replica caches its own"
    # read again: from the cache, with the bucket gone
    bucket.client().delete_object(Bucket=BUCKET, Key="models/p/v2/config.json")
    assert replica.local(opened, MAIN_PART) == encoder
