"""Direct links (``faasx.executor.direct``): a manager on the interchange's host skips ZeroMQ.

Real executors with a local block, real processes and sockets.  A process of the run's own user (this
test) plays the impostor: another user cannot even connect (the socket is in the run's 0700 directory;
``tests/security/test_attacker.py`` checks that with a real ``nobody``).
"""
import glob
import os
import signal
import socket
import time

import pytest

import faasx
from faasx.executor import protocol as P
from faasx.executor.channel import Channel, ChannelClosed
from faasx.executor.direct import direct_path

from .conftest import faasx_processes, wait_until

HB = dict(heartbeat_period=0.5, heartbeat_threshold=120.0)   # liveness by heartbeat would take 2 minutes


def manager_pid(i):
    import os
    return i, os.getppid()


def nap(seconds):
    import time
    time.sleep(seconds)
    return seconds


def manager_logs(ex) -> str:
    return "".join(open(f).read() for f in glob.glob(os.path.join(ex.executor.worker_logdir, "manager_*.log")))


def interchange_log(ex) -> str:
    return open(os.path.join(ex.executor.logdir, "interchange.log")).read()


def the_link(ex) -> str:
    return direct_path(ex.executor._client.ports["manager_ipc"])


def connect(path: str) -> Channel:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(path)
    return Channel(s)


def registration(token: str, mid: str) -> list:
    return P.pack_register(P.Registration(manager_id=mid, block_id="x", hostname="impostor", pid=os.getpid(),
                                          workers=4, prefetch=0, versions=P.versions(), token=token,
                                          accelerators=[], containers=False, container_runtimes=[]))


def reply_or_eof(chan: Channel):
    """The interchange's answer: (message type, body), or 'closed' once it has closed the link."""
    try:
        msg_type, body, _ = P.unpack(chan.recv())
    except ChannelClosed:
        return "closed"
    return P.type_name(msg_type), body


@pytest.fixture
def ex(run_dir):
    with faasx.Executor(max_workers_per_node=2, run_dir=run_dir, **HB) as executor:
        assert executor.submit(pow, 2, 3).result(timeout=60) == 8
        yield executor


def test_a_local_manager_uses_its_direct_link_and_the_socket_is_private(ex):
    path = the_link(ex)
    assert f"registering with the interchange at direct:{path}" in manager_logs(ex)
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert os.stat(os.path.dirname(path)).st_mode & 0o777 == 0o700
    assert sorted(ex.map(pow, range(200), [2] * 200)) == sorted(i * i for i in range(200))


def test_with_direct_links_off_the_manager_uses_zeromqs_ipc(run_dir, monkeypatch):
    monkeypatch.setenv("FAASX_DIRECT_LINKS", "0")
    with faasx.Executor(max_workers_per_node=1, run_dir=run_dir, **HB) as ex:
        assert ex.submit(pow, 3, 2).result(timeout=60) == 9
        assert not os.path.exists(the_link(ex))
        assert "registering with the interchange at ipc://" in manager_logs(ex)


def test_a_registration_with_the_wrong_token_is_refused_and_nothing_else_changes(ex):
    chan = connect(the_link(ex))
    chan.send(registration("0" * 32, "impostor-1"))
    kind, body = reply_or_eof(chan)
    assert kind == "REFUSED" and "wrong run token" in P.parse_reason(body), body
    assert [ex.submit(pow, 2, k).result(timeout=30) for k in range(10)] == [2 ** k for k in range(10)]
    stats = ex.executor.interchange_stats()
    assert stats["managers_registered"] == 1 and stats["managers_refused"] == 1, stats
    chan.close()


def test_a_connection_claiming_a_connected_managers_id_is_refused_even_with_the_token(ex):
    """The strongest impostor (the run's own user, with its token) presenting the real manager's id on a
    second direct connection: refused and closed; every task still runs on the real manager."""
    _, real = ex.submit(manager_pid, 0).result(timeout=30)
    [manager] = ex.executor.connected_managers()
    assert manager["link"] == "direct", manager
    mid = manager["manager"]
    chan = connect(the_link(ex))
    chan.send(registration(ex.executor._token, mid))
    kind, body = reply_or_eof(chan)
    assert kind == "REFUSED" and "already connected" in P.parse_reason(body), body
    assert reply_or_eof(chan) == "closed"
    assert [ex.submit(manager_pid, i).result(timeout=30) for i in range(20)] == [(i, real) for i in range(20)]


@pytest.mark.parametrize("first", ["corrupt framing", "a heartbeat"])
def test_a_first_message_that_is_not_a_registration_closes_that_link_only(ex, first):
    chan = connect(the_link(ex))
    if first == "a heartbeat":
        chan.send(P.pack_manager_heartbeat(0))
        kind, body = reply_or_eof(chan)
        assert kind == "REFUSED" and "must be REGISTER" in P.parse_reason(body), body
    else:
        chan.sock.sendall(b"\x00\x00\x00\x00")      # a message of zero frames: the stream is corrupt
    assert reply_or_eof(chan) == "closed"
    assert ex.submit(pow, 7, 2).result(timeout=30) == 49
    assert ex.executor.interchange_stats()["direct_refused"] == 1
    assert ex.executor.connected_managers()[0]["link"] == "direct"


def test_a_manager_killed_is_removed_at_once_not_after_the_heartbeat_threshold(ex, run_dir):
    """SIGKILL leaves no BYE; the link's end of file tells the interchange within a moment, where the
    heartbeat threshold (120 s here) would have taken two minutes."""
    fut = ex.submit(nap, 30)
    wait_until(lambda: fut.running(), 30, "the task to start")
    [manager] = [p for p in faasx_processes(run_dir) if p.name() == "faasx-manager"]
    killed = time.monotonic()
    os.kill(manager.pid, signal.SIGKILL)
    wait_until(lambda: ex.executor.interchange_stats()["managers_lost"] == 1, 10, "the manager to be removed")
    assert time.monotonic() - killed < 10
    assert "removed: its connection closed (the manager exited or died); 1 task(s) re-queued" in interchange_log(ex)
    fut.cancel()


def test_a_manager_whose_interchange_dies_exits_at_once(ex, run_dir):
    [manager] = [p for p in faasx_processes(run_dir) if p.name() == "faasx-manager"]
    os.kill(ex.executor._client.ic_proc.pid, signal.SIGKILL)
    manager.wait(timeout=20)      # the heartbeat threshold is 120 s
    assert "the interchange is gone" in manager_logs(ex)
