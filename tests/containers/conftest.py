"""Fixtures for per-function container tests (real podman, rootful, runc: ``/work/shared/recipes/podman.md``).

``podman_env``     (session) containers.conf per the recipe (runc, lowered ulimits); its CONTAINERS_CONF.
``test_image``     (session) a local image without any registry: a static busybox rootfs with
                   /etc/faasx-test-marker, ``podman import``-ed.  It has no Python: ``image_spec`` binds the
                   host's interpreter and this checkout in read-only, as a real image would have them installed.
``image_spec``     ``image_spec(**extra)`` -> a container spec for that image that runs faasx workers.
``podman_counter`` podman shim first on PATH that logs every ``podman run``; ``.runs()`` counts them.
``containers_of``  ``containers_of(image)`` -> ids of the image's containers (running or not).

Without podman the podman tests skip, or fail when FAASX_REQUIRE_PODMAN=1.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from tests import support

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MARKER = "faasx-container-test-marker"


@pytest.fixture(scope="session")
def podman_env():
    support.require_podman()
    work = tempfile.mkdtemp(prefix="faasx-ctest-conf-")
    yield {"CONTAINERS_CONF": support.write_podman_conf(work)}
    shutil.rmtree(work, ignore_errors=True)


def _podman(args, env, **kw):
    return subprocess.run(["podman", *args], env=dict(os.environ, **env), capture_output=True, text=True,
                          timeout=kw.pop("timeout", 120), **kw)


@pytest.fixture(scope="session")
def test_image(podman_env):
    work = tempfile.mkdtemp(prefix="faasx-ctest-image-")
    image = support.build_busybox_image(work, "faasx-test-containers", "/etc/faasx-test-marker", MARKER,
                                        ("sh", "cat", "echo", "sleep", "kill", "env", "ls"), podman_env)
    try:
        yield image
    finally:
        ids = _podman(["ps", "-aq", "--filter", f"ancestor={image}"], podman_env).stdout.split()
        if ids:
            _podman(["rm", "-f", "-t", "0", *ids], podman_env)
        _podman(["rmi", "-f", image], podman_env)
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture
def image_spec(test_image):
    def make(image=None, extra=()):
        pybin = os.path.dirname(sys.executable)
        return {"type": "podman", "image": image or test_image,
                "options": [f"--volume={d}:{d}:ro" for d in support.python_bind_dirs() + [ROOT]]
                + [f"--env=PYTHONPATH={ROOT}", f"--env=PATH={pybin}:/usr/bin:/bin", *extra]}
    return make


class PodmanCounter:
    def __init__(self, log):
        self.log = log

    def runs(self):
        try:
            with open(self.log) as f:
                return sum(1 for line in f if line.strip() == "run")
        except FileNotFoundError:
            return 0


@pytest.fixture
def podman_counter(tmp_path, monkeypatch, podman_env):
    """A ``podman`` first on PATH that logs each ``podman run`` and execs the real one; the executor's
    manager inherits PATH and CONTAINERS_CONF from this process."""
    real = shutil.which("podman")
    bin_dir = tmp_path / "podman-shim"
    bin_dir.mkdir()
    log = tmp_path / "podman-runs.log"
    shim = bin_dir / "podman"
    shim.write_text(f'#!/bin/sh\n[ "$1" = run ] && echo run >> {log}\nexec {real} "$@"\n')
    shim.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    for k, v in podman_env.items():
        monkeypatch.setenv(k, v)
    return PodmanCounter(str(log))


@pytest.fixture
def containers_of(podman_env):
    def ids(image):
        out = _podman(["ps", "-aq", "--filter", f"ancestor={image}"], podman_env, timeout=60)
        assert out.returncode == 0, out.stderr
        return out.stdout.split()
    return ids


@pytest.fixture
def marker():
    return MARKER
