import os
import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).parent))

# transformers reports every fresh classifier head it initialises: noise in test logs
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


@pytest.fixture(scope="session")
def label_studio():
    """One real Label Studio for every test that needs one (each makes its own projects): its
    start, a fresh database through all of Label Studio's migrations, is the slow part."""
    from labelstudio_server import LabelStudio

    with LabelStudio() as server:
        print(f"Label Studio healthy after {server.startup_seconds:.1f} s at {server.url}")
        yield server
