"""Issue 10, section 1, for container workers: another local user cannot pose as a container worker.

Engines that cannot pass a descriptor into a container (docker, apptainer/singularity, shifter, and podman
with ``FAASX_CONTAINER_CHANNEL=socket``) have the manager listen on a Unix socket whose path is on the
worker's command line.  A real attacker (``tests/security/socket_attacker.py``, as ``nobody`` through
``setpriv``) reads that path from ``ps`` and ``/proc/net/unix`` and keeps connecting while the container
starts, ready to say READY and answer tasks with a pickle that would run code in the client.  It must get
no connection, no task, and run nothing; the real worker must still connect and run every task.

podman runs for real (a worker whose interpreter sleeps before it connects, so the socket listens for a
while).  docker, apptainer and shifter are not installed here: a stand-in engine on PATH parses each
engine's real command line (``faasx.containers.engines.container_command``) and runs the command on the
host after a delay, as the engine would inside the container, with the same bind-mounted socket path.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile

import pytest

import faasx
from faasx.containers.links import peer_refusal, private_socket_dir
from tests.security.conftest import AS_NOBODY, ATTACKER_PYTHON, ROOT, attacker_ready, socket_inodes  # noqa: F401
from tests.support import wait_until

SOCKET_ATTACKER = os.path.join(ROOT, "tests", "security", "socket_attacker.py")
START_DELAY = 4.0      # seconds between the manager's listen() and the real worker's connect()
HB = dict(heartbeat_period=0.5, heartbeat_threshold=10)

# A stand-in for docker / apptainer / shifter (chosen by its file name): it reads the engine's own command
# line as faasx builds it, applies the variables the engine would set in the container, waits, and runs the
# command on the host.  `docker rm -f NAME` (the manager's clean-up) is a no-op.
FAKE_ENGINE = r'''#!{python}
import os, sys, time
engine, args = os.path.basename(sys.argv[0]), sys.argv[1:]
env = {{}}
if engine == "docker":
    if args[:1] != ["run"]:
        sys.exit(0)
    args = args[1:]
    while args[0].startswith("-"):
        opt = args.pop(0)
        if opt.startswith("--env="):
            k, v = opt[len("--env="):].split("=", 1)
            env[k] = v
    args = args[1:]                                      # the image
elif engine == "apptainer":
    assert args.pop(0) == "exec", args
    while args[0].startswith("-"):
        args.pop(0)
    args = args[1:]                                      # the image
    env = {{k[len("APPTAINERENV_"):]: v for k, v in os.environ.items() if k.startswith("APPTAINERENV_")}}
elif engine == "shifter":
    args = args[args.index("--") + 1:]
with open(os.environ["FAKE_ENGINE_LOG"], "a") as f:
    f.write(engine + "\n")
time.sleep(float(os.environ["FAKE_ENGINE_DELAY"]))
os.environ.update(env)
os.execvp(args[0], args)
'''


def triple(x):
    return 3 * x


def manager_listeners(pid: int) -> list:
    """Listening Unix sockets of process ``pid`` in a faasx socket directory (read as root)."""
    inodes = set(socket_inodes(pid))
    with open("/proc/net/unix") as f:
        rows = [line.split() for line in f.read().splitlines()[1:]]
    return [r[7] for r in rows if len(r) >= 8 and r[6] in inodes and r[3] == "00010000" and "faasx-sock-" in r[7]]


def run_socket_attacker(manager_pid: int, canary: str, seconds: float = 2.0) -> dict:
    from faasx.executor import protocol as P
    argv = AS_NOBODY + [ATTACKER_PYTHON, SOCKET_ATTACKER, "--scope-inodes", ",".join(socket_inodes(manager_pid)),
                        "--versions", json.dumps(P.versions()), "--canary", canary, "--seconds", str(seconds)]
    out = subprocess.run(argv, capture_output=True, text=True, cwd="/", timeout=60,
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": ROOT})
    assert out.returncode == 0, f"the attacker itself failed:\n{out.stderr[-3000:]}"
    return json.loads(out.stdout)


def attack_while_the_container_starts(ex, fid, canary: str) -> tuple:
    """Submit tasks of container function ``fid``; while its worker's socket listens, attack it; return
    (the attacker's report, the tasks' results)."""
    futures = [ex.submit(fid, i) for i in range(5)]
    manager_pid = wait_until(lambda: [m["pid"] for m in ex.executor.connected_managers()], 60, "a manager")[0]
    listening = wait_until(lambda: manager_listeners(manager_pid), 60, "the manager to listen for its worker")
    report = run_socket_attacker(manager_pid, canary)
    report["expected"] = listening
    return report, [f.result(timeout=120) for f in futures]


def check_the_attack_failed(report: dict, results: list, canary: str) -> None:
    summary = {k: report[k] for k in ("uid", "expected", "listening", "paths_in_cmdlines", "attempts", "connected",
                                      "errors", "tasks_received", "messages")}
    assert report["uid"] != 0
    # the attack was real: it saw the socket listen, and its path on the worker's command line
    assert set(report["expected"]) <= set(report["listening"]), summary
    assert set(report["listening"]) & set(report["paths_in_cmdlines"]), summary
    # ... and it got nothing: the kernel refused every connect (a 0700 directory of the run's user)
    assert report["connected"] == 0 and report["tasks_received"] == 0 and report["messages"] == [], summary
    assert report["attempts"] >= len(report["listening"]) * 5, summary
    assert all("PermissionError" in e for e in report["errors"].values()), summary
    assert not os.path.exists(canary), "the client unpickled the attacker's payload"
    assert results == [3 * i for i in range(5)]


@pytest.fixture
def fake_engines(tmp_path, monkeypatch):
    """docker, apptainer and shifter stand-ins first on PATH; their starts are logged."""
    bin_dir = tmp_path / "engines"
    bin_dir.mkdir()
    for name in ("docker", "apptainer", "shifter"):
        exe = bin_dir / name
        exe.write_text(FAKE_ENGINE.format(python=sys.executable))
        exe.chmod(0o755)
    log = tmp_path / "engine.log"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_ENGINE_LOG", str(log))
    monkeypatch.setenv("FAKE_ENGINE_DELAY", str(START_DELAY))
    monkeypatch.setenv("FAASX_CONTAINER_PYTHON", sys.executable)   # the "image's" python is the host's
    return log


@pytest.mark.parametrize("engine", ["docker", "apptainer", "shifter"])
def test_another_user_cannot_pose_as_a_container_worker_stand_in_engines(engine, fake_engines, attacker_ready,
                                                                        tmp_path):
    """Stand-in engines (not installed here; see the module docstring)."""
    canary = str(tmp_path / "canary")
    with faasx.Executor(max_workers_per_node=1, run_dir=str(tmp_path / "run"), **HB) as ex:
        fid = ex.register_function(triple, container={"type": engine, "image": "/images/sci.sif"
                                                      if engine == "apptainer" else "example/sci:1"})
        report, results = attack_while_the_container_starts(ex, fid, canary)
    check_the_attack_failed(report, results, canary)
    assert fake_engines.read_text().split() == [engine], "one container start: the worker was never replaced"


@pytest.mark.podman
def test_another_user_cannot_pose_as_a_podman_worker_on_the_socket_channel(tmp_path, image_spec, podman_env,
                                                                          attacker_ready, monkeypatch):
    """Real podman (rootful: the worker is root in the container, and so, to the kernel, on the host)."""
    slow = tmp_path / "slowpy"
    slow.mkdir()
    (slow / "python3").write_text(f'#!/bin/sh\nsleep {START_DELAY}\nexec python3 "$@"\n')
    (slow / "python3").chmod(0o755)
    for k, v in podman_env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("FAASX_CONTAINER_CHANNEL", "socket")
    monkeypatch.setenv("FAASX_CONTAINER_PYTHON", str(slow / "python3"))
    canary = str(tmp_path / "canary")
    spec = image_spec(extra=[f"--volume={slow}:{slow}:ro"])
    with faasx.Executor(max_workers_per_node=1, run_dir=str(tmp_path / "run"), **HB) as ex:
        fid = ex.register_function(triple, container=spec)
        report, results = attack_while_the_container_starts(ex, fid, canary)
    check_the_attack_failed(report, results, canary)


def test_the_manager_refuses_a_peer_of_another_uid(attacker_ready):
    """The second lock (``links.peer_refusal``, SO_PEERCRED), on its own: were the directory open, a
    connection from another user (a real ``nobody`` process) is named and refused, one from us is taken."""
    open_dir = tempfile.mkdtemp(prefix="faasx-sec-", dir="/tmp")
    os.chmod(open_dir, 0o755)
    path = os.path.join(open_dir, "w.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    os.chmod(path, 0o666)
    listener.listen(2)
    listener.settimeout(30)
    script = f"import socket, time; s = socket.socket(socket.AF_UNIX); s.connect({path!r}); time.sleep(5)"
    intruder = subprocess.Popen(AS_NOBODY + [ATTACKER_PYTHON, "-c", script], cwd="/")
    try:
        conn, _ = listener.accept()
        refusal = peer_refusal(conn)
        conn.close()
        ours = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        ours.connect(path)
        mine, _ = listener.accept()
        assert peer_refusal(mine) is None
        mine.close()
        ours.close()
    finally:
        intruder.kill()
        intruder.wait(10)
        listener.close()
        shutil.rmtree(open_dir, ignore_errors=True)
    assert refusal is not None and "uid 65534" in refusal and f"pid {intruder.pid}" in refusal, refusal


def test_a_worker_running_as_another_uid_exits_with_the_fix(attacker_ready):
    """An image that runs as a uid other than the run's (a docker image with a ``USER`` line, say) cannot
    reach the private socket: its worker (``links.connect_to_manager``, here in a real ``nobody`` process)
    exits at once saying whose socket it is and which ``--user`` option fixes it -- the text that the
    manager's ContainerStartError quotes from the worker's output."""
    sock_dir = private_socket_dir()
    path = os.path.join(sock_dir, "w1-test.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(path)
        listener.listen(1)
        assert os.stat(sock_dir).st_mode & 0o777 == 0o700
        code = f"from faasx.containers.links import connect_to_manager; connect_to_manager({path!r})"
        out = subprocess.run(AS_NOBODY + [ATTACKER_PYTHON, "-c", code], capture_output=True, text=True, cwd="/",
                             timeout=60, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": ROOT})
    finally:
        listener.close()
        shutil.rmtree(sock_dir, ignore_errors=True)
    assert out.returncode == 1, out
    assert "Permission denied" in out.stderr and "runs as uid 65534" in out.stderr, out.stderr
    assert f"--user={os.geteuid()}:{os.getegid()}" in out.stderr and "Traceback" not in out.stderr, out.stderr
