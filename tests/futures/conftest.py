"""Fixtures for the concurrent.futures contract tests: real interchange, manager and worker processes."""
import pytest

from tests.engine.conftest import FAST_HEARTBEATS, faasx_processes, run_dir  # noqa: F401  (fixtures)


@pytest.fixture
def release(tmp_path):
    """A path that tasks wait for (``gate``) and the test creates to let them finish (``open()``)."""
    class Gate:
        path = str(tmp_path / "release")

        def open(self):
            with open(self.path, "w"):
                pass
    return Gate()
