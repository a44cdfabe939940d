"""Network partition and CurveZMQ, with a test host in its own network namespace (issue 4).

The test makes a host: a network namespace joined to this one by a veth pair with loopback-range
addresses (127.10.N.1 here, 127.10.N.2 there; ../shared/recipes/netns.md), so no traffic leaves the
machine.  The executor's interchange listens on 127.10.N.1 with CurveZMQ; a manager runs inside the
namespace.  Cutting the link (veth down) while that manager holds long tasks must re-dispatch them
to a manager on this host after heartbeat_threshold; healing it must get the stale manager refused
(it exits) without any task reporting twice.  A manager started without the run's keys can neither
register nor receive tasks.

Skipped, with the reason, only where network namespaces cannot be created (not root, no ``ip``);
with FAASX_REQUIRE_NETNS=1 (CI) that is a failure instead.
"""
from __future__ import annotations

import os
import random
import shutil
import stat
import subprocess
import time
import uuid

import psutil
import pytest

from faasx.providers import LocalProvider

from .conftest import interchange_log, log_text, wait_until

pytestmark = pytest.mark.netns

HB = dict(heartbeat_period=0.5, heartbeat_threshold=3.0)


def _ip(*args, check=True, ns=None):
    """``ip ARGS`` here, or ``ARGS`` (a whole command) inside namespace ``ns``."""
    argv = (["ip", "netns", "exec", ns] if ns else ["ip"]) + list(args)
    return subprocess.run(argv, capture_output=True, text=True, timeout=20, check=check)


def _sysctl_get(key: str) -> str:
    return subprocess.run(["sysctl", "-n", key], capture_output=True, text=True, timeout=10).stdout.strip()


def _unavailable(reason: str):
    if os.environ.get("FAASX_REQUIRE_NETNS") == "1":
        pytest.fail(f"FAASX_REQUIRE_NETNS=1 but network namespaces are unavailable: {reason}", pytrace=False)
    pytest.skip(f"network namespaces are unavailable: {reason}")


class NetnsHost:
    """A network namespace joined to ours by a veth pair; ``cut()``/``heal()`` toggle our end."""

    def __init__(self):
        tag = uuid.uuid4().hex[:6]
        self.ns = f"fxrel-{tag}"
        self.dev = f"fxr{tag}a"          # our end (interface names are at most 15 characters)
        self.peer = f"fxr{tag}b"
        used = {a.address for addrs in psutil.net_if_addrs().values() for a in addrs}
        subnet = random.choice([n for n in range(10, 250) if f"127.10.{n}.1" not in used])
        self.host_addr = f"127.10.{subnet}.1"
        self.ns_addr = f"127.10.{subnet}.2"
        self.created = []
        self.saved_sysctl = None

    def create(self):
        if shutil.which("ip") is None:
            _unavailable("the 'ip' command (iproute2) is not installed")
        if os.geteuid() != 0:
            _unavailable("not root")
        r = _ip("netns", "add", self.ns, check=False)
        if r.returncode != 0:
            _unavailable(f"'ip netns add' failed: {r.stderr.strip()}")
        self.created.append("ns")
        _ip("link", "add", self.dev, "type", "veth", "peer", "name", self.peer)
        self.created.append("link")
        _ip("link", "set", self.peer, "netns", self.ns)
        self.saved_sysctl = _sysctl_get("net.ipv4.conf.all.route_localnet")
        subprocess.run(["sysctl", "-q", "-w", "net.ipv4.conf.all.route_localnet=1",
                        f"net.ipv4.conf.{self.dev}.route_localnet=1"], check=True, timeout=10)
        _ip("addr", "add", f"{self.host_addr}/24", "dev", self.dev)
        _ip("link", "set", self.dev, "up")
        _ip("sysctl", "-q", "-w", "net.ipv4.conf.all.route_localnet=1",
            f"net.ipv4.conf.{self.peer}.route_localnet=1", ns=self.ns)
        _ip("ip", "addr", "add", f"{self.ns_addr}/24", "dev", self.peer, ns=self.ns)
        _ip("ip", "link", "set", self.peer, "up", ns=self.ns)
        _ip("ip", "link", "set", "lo", "up", ns=self.ns)
        return self

    def prefix(self):
        return ["ip", "netns", "exec", self.ns]

    def cut(self, side: str = "host"):
        """Take one end of the link down.  Our end ("host"): this kernel drops the route and the
        interchange's connection errors at once.  The far end ("remote"): nothing here notices --
        packets just vanish, as when a switch or a node dies -- so only heartbeats can tell."""
        if side == "host":
            _ip("link", "set", self.dev, "down")
        else:
            _ip("ip", "link", "set", self.peer, "down", ns=self.ns)

    def heal(self, side: str = "host"):
        if side == "host":
            _ip("link", "set", self.dev, "up")
        else:
            _ip("ip", "link", "set", self.peer, "up", ns=self.ns)

    def destroy(self):
        errors = []
        if "link" in self.created:
            r = _ip("link", "del", self.dev, check=False)   # removes the peer too
            if r.returncode != 0 and "Cannot find" not in r.stderr:
                errors.append(r.stderr)
        if "ns" in self.created:
            r = _ip("netns", "pids", self.ns, check=False)
            for pid in r.stdout.split():
                try:
                    os.kill(int(pid), 9)
                except ProcessLookupError:
                    pass
            r = _ip("netns", "del", self.ns, check=False)
            if r.returncode != 0:
                errors.append(r.stderr)
        if self.saved_sysctl not in (None, "1"):
            subprocess.run(["sysctl", "-q", "-w", f"net.ipv4.conf.all.route_localnet={self.saved_sysctl}"],
                           timeout=10)
        assert not errors, f"cleaning up the test host failed: {errors}"
        assert self.ns not in _ip("netns", "list").stdout
        assert self.dev not in _ip("link", "show", check=False).stdout


@pytest.fixture
def test_host():
    host = NetnsHost()
    try:
        yield host.create()
    finally:
        host.destroy()


def manager_pids(ex):
    return {m["pid"] for m in ex.executor.connected_managers()}


def start_remote_manager(ex, start_manager, test_host, tmp_path):
    """The manager on the other side of the link to be cut, registered.

    It gets a long heartbeat_threshold of its own, so that it is still alive when the link heals and must
    be refused by the interchange (instead of exiting itself).  No --ipc: the interchange's Unix socket is
    a file, reachable from a network namespace of this host though not from another host, which the
    namespace stands in for."""
    remote = start_manager(ex, "remote", prefix=test_host.prefix(), replace={"--heartbeat-threshold": 120},
                           drop=["--ipc"], log=str(tmp_path / "remote.out"))
    wait_until(lambda: remote.pid in manager_pids(ex), 30, what="the manager in the namespace to register")
    m = [m for m in ex.executor.connected_managers() if m["pid"] == remote.pid][0]
    assert m["block_id"] == "remote"
    return remote


def cut_and_check_redispatch(ex, test_host, side: str, long_tasks, remote, local, before: dict) -> dict:
    """Cut the link: the interchange declares the remote manager lost and its two tasks run on ``local``."""
    test_host.cut(side)
    t_cut = time.monotonic()
    wait_until(lambda: ex.executor.interchange_stats()["managers_lost"] > before["managers_lost"],
               HB["heartbeat_threshold"] + 10, what="the interchange to declare the cut-off manager lost")
    t_lost = time.monotonic() - t_cut
    results = [f.result(timeout=60) for f in long_tasks]
    t_done = time.monotonic() - t_cut
    assert results == [(i * 1000 + 7, local.pid) for i in range(2)], "re-dispatched tasks ran on the local manager"
    after = ex.executor.interchange_stats()
    assert after["retried"] - before["retried"] == 2
    assert remote.poll() is None, "the remote manager is still alive on the other side of the partition"
    removal = [line for line in interchange_log(ex).splitlines() if "(block remote) removed" in line]
    assert len(removal) == 1, removal
    if side == "remote":
        # nothing on this host saw the link break: the heartbeat threshold found it.  The silence began at
        # the manager's last heartbeat before the cut, up to a period earlier (two under load), not at the cut
        assert "no heartbeat for more than" in removal[0], removal[0]
        assert t_lost >= HB["heartbeat_threshold"] - 2 * HB["heartbeat_period"], t_lost
    return dict(detected_by=removal[0].split("removed: ")[1].split(";")[0],
                seconds_cut_to_declared_lost=round(t_lost, 2), seconds_cut_to_tasks_done=round(t_done, 2))


def heal_and_check_refusal(ex, test_host, side: str, remote) -> float:
    """Heal: the stale manager talks again (heartbeats, and the results of the tasks it finished meanwhile);
    it is refused and exits, and nothing reaches a future twice.  Returns the seconds until it exited."""
    test_host.heal(side)
    t_heal = time.monotonic()
    remote.wait(timeout=60)
    t_refused = time.monotonic() - t_heal
    log = interchange_log(ex)
    assert "came back after it was declared lost" in log and "refusing it" in log, log[-3000:]
    mlogs = "".join(log_text(os.path.join(ex.executor.logdir, f)) for f in os.listdir(ex.executor.logdir)
                    if f.startswith("manager_remote_"))
    assert "declared lost" in mlogs, mlogs[-2000:]
    final = ex.executor.interchange_stats()
    assert ex.executor._client.stats["duplicates"] == 0
    assert final["duplicates_dropped"] == 0
    assert final["managers"] == 1
    return t_refused


@pytest.mark.parametrize("side", ["host", "remote"])
def test_partitioned_manager_tasks_redispatched_and_stale_manager_refused(side, make_executor, start_manager,
                                                                        test_host, report, tmp_path):
    ex = make_executor(provider=LocalProvider(init_blocks=0, min_blocks=0, max_blocks=0), strategy="none",
                       address=test_host.host_addr, encrypted=True, max_workers_per_node=2,
                       max_retries_on_system_failure=2, **HB)
    cert_dir = os.path.join(ex.executor.logdir, "certs")
    assert stat.S_IMODE(os.stat(cert_dir).st_mode) == 0o700
    assert "--cert-dir" in ex.executor._get_launch_command("x")
    remote = start_remote_manager(ex, start_manager, test_host, tmp_path)

    def where(i, seconds):
        import os
        import time
        time.sleep(seconds)
        return i * 1000 + 7, os.getppid()     # the value, and the manager that ran it

    quick = [ex.submit(where, i, 0) for i in range(50)]
    assert [f.result(timeout=60) for f in quick] == [(i * 1000 + 7, remote.pid) for i in range(50)]
    long_tasks = [ex.submit(where, i, 6) for i in range(2)]
    wait_until(lambda: any(m["tasks"] == 2 for m in ex.executor.connected_managers() if m["pid"] == remote.pid),
               30, what="the remote manager to hold both long tasks")
    # capacity elsewhere, with the run's keys: a manager on this host
    local = start_manager(ex, "local", log=str(tmp_path / "local.out"))
    wait_until(lambda: local.pid in manager_pids(ex), 30, what="the local manager to register")
    cut = cut_and_check_redispatch(ex, test_host, side, long_tasks, remote, local, ex.executor.interchange_stats())
    t_refused = heal_and_check_refusal(ex, test_host, side, remote)
    # the executor goes on serving on the local manager
    more = [ex.submit(where, i, 0) for i in range(20)]
    assert [f.result(timeout=60) for f in more] == [(i * 1000 + 7, local.pid) for i in range(20)]
    report(f"network_partition_{side}_end_down", partitions=1, tasks_held_by_cut_manager=2, redispatched=2, lost=0,
           duplicated=0, heartbeat_threshold=HB["heartbeat_threshold"], **cut,
           seconds_heal_to_stale_manager_exit=round(t_refused, 2))


def test_manager_without_the_run_keys_cannot_register(make_executor, start_manager, test_host, tmp_path, report):
    ex = make_executor(provider=LocalProvider(init_blocks=0, min_blocks=0, max_blocks=0), strategy="none",
                       address=test_host.host_addr, encrypted=True, max_workers_per_node=1, **HB)
    fut = ex.submit(pow, 3, 4)
    # no --cert-dir at all: a plain-text client cannot complete the CURVE handshake
    no_keys = start_manager(ex, "nokeys", prefix=test_host.prefix(), drop=["--cert-dir"])
    # keys of another run: the handshake fails the ZAP check
    from faasx.executor.security import create_keys
    other = create_keys(str(tmp_path / "other-run"))
    wrong_keys = start_manager(ex, "wrongkeys", prefix=test_host.prefix(), replace={"--cert-dir": other})
    t0 = time.monotonic()
    for proc in (no_keys, wrong_keys):
        proc.wait(timeout=HB["heartbeat_threshold"] + 20)
        assert proc.returncode != 0
    took = time.monotonic() - t0
    stats = ex.executor.interchange_stats()
    assert stats["managers_registered"] == 0 and ex.executor.connected_managers() == []
    assert not fut.done(), "no task may reach a manager without the keys"
    logs = "".join(log_text(os.path.join(ex.executor.logdir, f)) for f in os.listdir(ex.executor.logdir)
                   if f.startswith("manager_"))
    assert logs.count("did not answer the registration") == 2, logs
    # the same command with the keys works, from the other host
    good = start_manager(ex, "good", prefix=test_host.prefix())
    assert fut.result(timeout=60) == 81
    wait_until(lambda: good.pid in manager_pids(ex), 10, what="the manager with keys to be listed")
    report("curve_without_keys", managers_without_keys=2, registered=0, tasks_received=0,
           seconds_until_they_gave_up=round(took, 2))
