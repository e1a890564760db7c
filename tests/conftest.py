import os
import pathlib

import pytest

from harness import DATA

# transformers reports every fresh classifier head it initialises: noise in test logs
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--full", action="store_true",
                     help="also run the tests marked heavy (the whole suite: about 85 minutes on 2 cores)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The default run keeps one real-model test per capability and stays well under CI's half
    hour; the heavy variants (several minutes each on 2 cores) run with --full."""
    if config.getoption("--full"):
        return
    skip = pytest.mark.skip(reason="heavy: runs with --full")
    for item in items:
        if "heavy" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def data_dir() -> pathlib.Path:
    """The corpora, in the repository's ``data/`` (``harness.DATA``; see data/README.md)."""
    return DATA


@pytest.fixture(scope="session")
def label_studio():
    """One real Label Studio for every test that needs one (each makes its own projects): its
    start, a fresh database through all of Label Studio's migrations, is the slow part."""
    from harness.labelstudio_server import LabelStudio

    with LabelStudio() as server:
        print(f"Label Studio healthy after {server.startup_seconds:.1f} s at {server.url}")
        yield server


@pytest.fixture(scope="session")
def postgres_server():
    """One throwaway PostgreSQL cluster for the session (``harness.postgres_server``): each
    test that needs one makes its own database in it."""
    from harness.postgres_server import PostgresServer, bin_dir

    if bin_dir() is None:
        pytest.skip("PostgreSQL is not installed: .ci/run installs it (apt-get install postgresql)")
    with PostgresServer() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def store_location(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> str:
    """Where a store lives, once per engine: a SQLite file, or a new PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "store.sqlite3")
    return request.getfixturevalue("postgres_server").database(f"test_{abs(hash(request.node.nodeid))}")
