"""Fixtures for the Cobalt and Kubernetes provider tests.

``fake_cobalt``  the Cobalt stand-in (tests/fakes/cobalt): its qsub/qstat/qdel first on PATH, its state in
                 a fresh directory (FAASX_FAKE_COBALT_DIR); every job is deleted and every process it
                 started is gone when the test ends.
``kube_api``     the fake Pods API (tests/fakes/kube_api.py) on 127.0.0.1, and ``kubeconfig``, a file that
                 names it, for the real ``kubernetes`` client.
``wait_for``     poll a function until it returns something truthy, or fail at a deadline.
"""
from __future__ import annotations

import os

import pytest

from tests import support

# _cobalt and kube_api are on sys.path through the repository's conftest.py
from _cobalt import BIN_DIR, ENV_DIR, FakeCobalt  # noqa: E402
from kube_api import FakeKubeAPI  # noqa: E402


@pytest.fixture
def wait_for():
    return support.wait_until


@pytest.fixture
def fake_cobalt(tmp_path, monkeypatch):
    state = tmp_path / "cobalt-state"
    monkeypatch.setenv(ENV_DIR, str(state))
    monkeypatch.setenv("PATH", BIN_DIR + os.pathsep + os.environ.get("PATH", ""))
    monkeypatch.chdir(tmp_path)
    cobalt = FakeCobalt(str(state))
    yield cobalt
    cobalt.shutdown()
    leftovers = cobalt.job_processes()
    assert not leftovers, f"Cobalt stand-in jobs left processes behind: {leftovers}"


@pytest.fixture
def kube_api():
    with FakeKubeAPI() as api:
        yield api


@pytest.fixture
def kubeconfig(kube_api, tmp_path):
    return kube_api.write_kubeconfig(str(tmp_path / "kubeconfig"))
