"""Fixtures for the security tests: a world-traversable place for run directories, a umask of 0, and a
real unprivileged attacker process (``setpriv --reuid=nobody``).

The tests run the executor as root (CI does) and the attacker as ``nobody``, with the system's
``/usr/bin/python3`` (pyzmq and msgpack from Debian's ``python3-zmq``/``python3-msgpack``, which
``ci/test.sh`` installs): root's own interpreter lives under ``/root``, which ``nobody`` cannot enter.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

ATTACKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "attacker.py")
ATTACKER_PYTHON = "/usr/bin/python3"
AS_NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]


@pytest.fixture
def umask_zero():
    """umask 0 for the test (and every process the executor starts): only faasx's own modes protect."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture
def open_dir():
    """A fresh 0755 directory under /tmp: anyone may list and enter it, as /tmp or a project directory
    on a shared file system; a run directory inside it is guarded by its own mode and nothing else."""
    path = tempfile.mkdtemp(prefix="faasx-sec-", dir="/tmp")
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def attacker_ready():
    if os.geteuid() != 0:
        pytest.skip("the attacker tests switch to user nobody with setpriv: run them as root (ci/test.sh does)")
    probe = subprocess.run(AS_NOBODY + [ATTACKER_PYTHON, "-c", "import zmq, msgpack"], capture_output=True,
                           text=True, env={"PATH": "/usr/bin:/bin"}, timeout=60)
    if probe.returncode != 0:
        pytest.fail("cannot run the attacker as nobody: " + probe.stderr.strip()[-500:] +
                    " Fix: apt-get install util-linux python3-zmq python3-msgpack (ci/test.sh does)")


def socket_inodes(pid: int) -> list:
    """Inodes of the sockets process ``pid`` holds (root may read its /proc/<pid>/fd)."""
    found = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            found.append(target[8:-1])
    return found


def run_attacker(ex, run_dir: str, canary: str, seconds: float = 4.0) -> dict:
    """Run ``attacker.py`` as nobody against executor ``ex``; returns its JSON report."""
    from faasx.executor import protocol as P
    argv = AS_NOBODY + [ATTACKER_PYTHON, ATTACKER, "--run-dir", run_dir, "--scope-dir", run_dir,
                        "--scope-inodes", ",".join(socket_inodes(ex.executor._client.ic_proc.pid)),
                        "--versions", json.dumps(P.versions()), "--canary", canary, "--seconds", str(seconds)]
    out = subprocess.run(argv, capture_output=True, text=True, cwd="/", timeout=120,
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": ROOT})
    assert out.returncode == 0, f"the attacker itself failed:\n{out.stderr[-3000:]}"
    return json.loads(out.stdout)
