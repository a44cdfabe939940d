"""Fixtures for the launcher and container tests.

``shims``          a directory of recording stand-ins for srun, aprun, mpiexec, podman, docker, apptainer,
                   singularity and shifter (``launch_shims``), first on PATH: a fragment is executed end to
                   end by bash, and the test sees both what each tool was asked and what the command did.
``run_fragment``   run a launcher's fragment with bash in a directory, with a deadline.
``podman_image``   (session) a real podman image built without any registry: a busybox-static rootfs
                   with a marker file, ``podman import``-ed; containers.conf per the recipe (runc, lowered
                   ulimits) in a temp dir, CONTAINERS_CONF pointing at it.  Removed at the end.
``wait_for``       poll a function until it returns something truthy, or fail at a deadline.
``image_marker``   what /etc/faasx-marker holds in that image.
``python_binds``   bind specs that make the host's Python run inside the busybox image.
``podman_containers``  list the containers of an image (to prove none is left behind).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

import pytest

from tests import support

import launch_shims  # noqa: E402  (on sys.path: the repository's conftest.py)

MARKER = "faasx-test-image-marker"
@pytest.fixture
def shims(tmp_path, monkeypatch):
    return launch_shims.install_on_path(tmp_path, monkeypatch)


@pytest.fixture
def run_fragment():
    """``run_fragment(fragment, cwd, env=None, timeout=30) -> CompletedProcess`` (bash, new session)."""

    def run(fragment: str, cwd, env: dict | None = None, timeout: float = 30.0):
        # a job's FAASX_*/PARSL_* variables are exactly what the launchers pass through, so the
        # runner's own (CI sets FAASX_REQUIRE_*) must not leak in: the test's env is the job's
        full_env = {k: v for k, v in os.environ.items() if not k.startswith(("FAASX_", "PARSL_"))}
        full_env.update(env or {})
        proc = subprocess.Popen(["bash", "-c", fragment], cwd=str(cwd), env=full_env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.communicate()
            raise AssertionError(f"fragment did not finish within {timeout}s")
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    return run


@pytest.fixture
def wait_for():
    return support.wait_until


# -- podman ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def podman_image():
    """``(image_name, env)``: a local image whose /etc/faasx-marker holds MARKER; env has CONTAINERS_CONF."""
    support.require_podman()
    work = tempfile.mkdtemp(prefix="faasx-podman-")
    conf = support.write_podman_conf(work)
    image = support.build_busybox_image(
        work, "faasx-test-launchers", "/etc/faasx-marker", MARKER,
        ("sh", "cat", "echo", "sleep", "kill", "env", "ls", "pwd", "nc", "printf", "id"), {"CONTAINERS_CONF": conf})
    env = dict(os.environ, CONTAINERS_CONF=conf)
    try:
        yield image, {"CONTAINERS_CONF": conf}
    finally:
        # containers of this image first (a failed test may have left one), then the image
        ids = subprocess.run(["podman", "ps", "-aq", "--filter", f"ancestor={image}"], env=env,
                             capture_output=True, text=True, timeout=60).stdout.split()
        if ids:
            subprocess.run(["podman", "rm", "-f", *ids], env=env, capture_output=True, timeout=120)
        subprocess.run(["podman", "rmi", "-f", image], env=env, capture_output=True, timeout=120)
        shutil.rmtree(work, ignore_errors=True)


def _podman_containers(image: str, env: dict) -> list:
    """IDs of all containers (running or not) made from ``image``."""
    out = subprocess.run(["podman", "ps", "-aq", "--filter", f"ancestor={image}"], env=dict(os.environ, **env),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


@pytest.fixture
def image_marker():
    """The content of /etc/faasx-marker in ``podman_image`` (and nowhere on the host)."""
    return MARKER


@pytest.fixture
def python_binds():
    """Bind specs that make the host's Python usable inside the busybox test image."""
    return [f"{d}:{d}:ro" for d in support.python_bind_dirs()]


@pytest.fixture
def podman_containers():
    """``podman_containers(image, env) -> [ids]``."""
    return _podman_containers
