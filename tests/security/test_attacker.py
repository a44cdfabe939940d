"""Issue 10, section 1: another user on the same host gets none of the run's tasks and runs no code in
the client.  A real attacker process (``attacker.py``, as user ``nobody``) against a live executor whose
run directory sits in a world-traversable directory, with umask 0, so that only faasx's own modes,
keys and checks stand in its way."""
from __future__ import annotations

import os

import pytest
import zmq

import faasx

from .conftest import run_attacker

HB = dict(heartbeat_period=0.5, heartbeat_threshold=10)


def slow(i):
    import time
    time.sleep(0.1)
    return i * 3


def manager_pid_of(i):
    import os
    return i, os.getppid()


@pytest.mark.parametrize("encrypted", [None, False], ids=["default", "encrypted=False"])
def test_another_local_user_gets_no_task_and_runs_no_code(encrypted, attacker_ready, umask_zero, open_dir,
                                                         tmp_path):
    """The attacker reads what it can (run dir, every /proc/*/cmdline), then registers on every endpoint
    of the interchange with every token and identity it found -- the manager's identity included, which
    is public -- while 60 tasks wait in the queue, and sends canary results for every task id.  With the
    default settings CurveZMQ stops it at the handshake; with ``encrypted=False`` it still has no token
    and cannot take over the real manager's connection."""
    run_dir = os.path.join(open_dir, "run")
    canary = str(tmp_path / "canary")          # tmp_path is root's: only the client could create it
    with faasx.Executor(max_workers_per_node=1, prefetch_capacity=0, run_dir=run_dir, encrypted=encrypted,
                        **HB) as ex:
        assert ex.submit(pow, 2, 5).result(timeout=60) == 32     # the manager and its worker are up
        token = ex.executor._token
        futures = [ex.submit(slow, i) for i in range(60)]        # ~6 s of queued work to steal
        report = run_attacker(ex, run_dir, canary)
        results = [f.result(timeout=120) for f in futures]
        stats = ex.executor.interchange_stats()
    summary = {k: report[k] for k in ("uid", "endpoints", "identities", "tokens", "files_readable",
                                      "registered", "tasks_received", "messages")}
    assert report["uid"] != 0
    # the attack was real: it found the interchange's endpoints and the manager's (public) identity
    assert any(e.startswith("tcp://") for e in report["endpoints"]), summary
    # the same-host sockets (ZeroMQ's ipc one and the managers' direct one) are found but not reachable
    local = {e: reach for e, reach in report["endpoints"].items() if e.startswith("ipc://")}
    assert any(e.endswith(".link") for e in local) and any(e.endswith(".sock") for e in local), summary
    assert all("PermissionError" in reach for reach in local.values()), summary
    assert report["identities"], summary
    assert report["sent_register"] >= len(report["endpoints"]) * 2, summary
    # ... and it got nothing
    assert report["files_listed"] == [] and report["files_readable"] == [], summary
    assert token not in report["tokens"], summary
    assert report["registered"] == 0 and report["tasks_received"] == 0, summary
    assert not any(name in ("TASKS", "FUNCS", "REGISTERED") for _, _, name in report["messages"]), summary
    assert not os.path.exists(canary), "the client unpickled the attacker's payload"
    assert results == [i * 3 for i in range(60)]
    assert stats["managers_registered"] == 1, stats
    if encrypted is None:   # CurveZMQ: the handshake fails, so no frame of the attacker reaches faasx
        assert report["messages"] == [] and stats["managers_refused"] == 0, (summary, stats)


def test_a_second_connection_with_a_managers_identity_does_not_take_it_over(umask_zero, open_dir):
    """Even a peer holding the run's keys and token (the strongest impostor: say, a compromised node of
    the same run) cannot take over a registered manager's connection by presenting its identity: the real
    manager is on its direct link (a same-host socket), so the interchange drops any ZeroMQ message naming
    it (and between ZeroMQ connections router handover is off); every task still runs on the real manager."""
    run_dir = os.path.join(open_dir, "run")
    with faasx.Executor(max_workers_per_node=1, prefetch_capacity=0, run_dir=run_dir, encrypted=True,
                        **HB) as ex:
        _, real_pid = ex.submit(manager_pid_of, 0).result(timeout=60)
        mid = _manager_identity(real_pid)
        from faasx.executor import protocol as P
        from faasx.executor.security import configure_client
        ctx = zmq.Context()
        impostor = ctx.socket(zmq.DEALER)
        impostor.setsockopt(zmq.LINGER, 0)
        impostor.setsockopt(zmq.IDENTITY, mid.encode())
        configure_client(impostor, os.path.join(ex.executor.logdir, "certs"))
        impostor.connect(f"tcp://127.0.0.1:{ex.executor._client.ports['manager_port']}")
        try:
            impostor.send_multipart(P.pack(P.HEARTBEAT, {"capacity": 64}), flags=zmq.NOBLOCK)
        except zmq.Again:
            pass
        futures = [ex.submit(manager_pid_of, i) for i in range(40)]
        got = impostor.poll(3000)
        results = [f.result(timeout=60) for f in futures]
        impostor.close(0)
        ctx.term()
    assert got == 0, "the impostor received a message meant for the real manager"
    assert results == [(i, real_pid) for i in range(40)]


def _manager_identity(pid: int) -> str:
    """The manager's identity, as anyone can read it: from its workers' command lines (log file names)."""
    import psutil
    import re
    for p in psutil.Process(pid).children():
        m = re.search(r"worker_(\S+?)_\d+\.log", " ".join(p.cmdline()))
        if m:
            return m.group(1)
    raise AssertionError(f"no worker of manager {pid} names it")
