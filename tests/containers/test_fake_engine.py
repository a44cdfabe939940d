"""The non-podman path end to end, with no container engine installed: a stand-in ``apptainer`` on PATH that
runs ``apptainer exec [options] IMAGE CMD...`` as CMD on the host (with the APPTAINERENV_* variables applied,
as Apptainer does).  The worker must reach its manager over the Unix socket channel (``--connect``), stay warm,
and leave nothing behind; the command construction itself is tested in tests/launchers/test_containers.py."""
from __future__ import annotations

import os

import psutil
import pytest

import faasx
from tests.support import alive, wait_until

FAKE_APPTAINER = r'''#!/bin/sh
[ "$1" = exec ] || exit 64
shift
while [ $# -gt 0 ]; do case "$1" in --*) shift;; *) break;; esac; done
echo "$1" >> "$FAKE_APPTAINER_LOG"
shift
for v in $(env | sed -n 's/^APPTAINERENV_\([A-Za-z_0-9]*\)=.*/\1/p'); do eval "export $v=\"\$APPTAINERENV_$v\""; done
exec "$@"
'''


def who():
    import os
    return os.getpid(), os.environ.get("FAASX_WORKER_ID")


@pytest.fixture
def fake_apptainer(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "apptainer"
    exe.write_text(FAKE_APPTAINER)
    exe.chmod(0o755)
    log = tmp_path / "apptainer.log"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_APPTAINER_LOG", str(log))
    # the stand-in runs the worker on the host: the host's interpreter is the "image's" python3
    monkeypatch.setenv("FAASX_CONTAINER_PYTHON", __import__("sys").executable)
    return log


def test_apptainer_style_workers_use_the_socket_channel_and_stay_warm(tmp_path, fake_apptainer):
    with faasx.Executor(max_workers_per_node=2, run_dir=str(tmp_path / "run"), heartbeat_period=0.5,
                        heartbeat_threshold=10) as ex:
        fid = ex.register_function(who, container={"type": "apptainer", "image": "/images/sci.sif"})
        pid, wid = ex.submit(fid).result(timeout=60)
        argv = psutil.Process(pid).cmdline()
        cmdline = " ".join(argv)
        assert "faasx-worker" in cmdline and "--connect" in argv and "--manager-pid 0" in cmdline
        sock_dir = os.path.dirname(argv[argv.index("--connect") + 1])
        assert [ex.submit(fid).result(timeout=30) for _ in range(5)] == [(pid, wid)] * 5
        assert fake_apptainer.read_text().split() == ["/images/sci.sif"], "one container start"
        plain_pid, _ = ex.submit(who).result(timeout=30)
        assert plain_pid != pid and "--connect" not in " ".join(psutil.Process(plain_pid).cmdline())
    wait_until(lambda: not alive(pid), 10, f"the container worker (pid {pid}) to exit")
    assert not os.path.exists(sock_dir), "the socket directory is removed"
