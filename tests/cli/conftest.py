"""Fixtures for the ``faasx`` command, progress, notebook and interpreter tests.

``slurm_cluster``, ``slurm_provider``  the real local Slurm cluster and a provider factory on it (the
                                        provider tests' fixtures, reused).
``other_python``    an interpreter of another Python major.minor than this one, with faasx's
                    dependencies: ``FAASX_OTHER_PYTHON`` (``ci/test.sh`` sets it to one of its
                    per-version venvs).  Unset: the test is skipped, unless
                    ``FAASX_REQUIRE_OTHER_PYTHON=1`` (CI), where it fails.
``executor``        factory for a ``faasx.Executor`` on a local block in a fresh run directory; every
                    one it made is shut down at teardown.
"""
from __future__ import annotations

import os
import subprocess

import pytest

import faasx
from tests.providers.conftest import slurm_cluster, slurm_provider  # noqa: F401  (fixtures reused)

FAST_HEARTBEATS = dict(heartbeat_period=0.5, heartbeat_threshold=3.0)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="session")
def other_python():
    path = os.environ.get("FAASX_OTHER_PYTHON")
    if not path:
        reason = "FAASX_OTHER_PYTHON is not set (ci/test.sh points it at a venv of another Python version)"
        if os.environ.get("FAASX_REQUIRE_OTHER_PYTHON") == "1":
            pytest.fail(f"FAASX_REQUIRE_OTHER_PYTHON=1 but {reason}", pytrace=False)
        pytest.skip(reason)
    out = subprocess.run([path, "-c", "import sys, zmq, msgpack, dill, psutil; print('%d.%d' % sys.version_info[:2])"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"{path} cannot import faasx's dependencies: {out.stderr}"
    return path, out.stdout.strip()


@pytest.fixture
def executor(tmp_path):
    made = []

    def make(**options):
        opts = dict(max_workers_per_node=2, run_dir=str(tmp_path / f"run{len(made)}"), **FAST_HEARTBEATS)
        opts.update(options)
        ex = faasx.Executor(**opts)
        made.append(ex)
        return ex

    yield make
    for ex in made:
        if any(not f.done() for f in list(ex.executor.tasks.values())):
            ex._teardown()
        ex.shutdown()


def child_env(**extra) -> dict:
    """The environment for a Python child that must run this worktree's faasx."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.update(extra)
    return env
