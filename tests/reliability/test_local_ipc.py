"""Managers on the interchange's own host reach the manager port over ZeroMQ's ipc transport (a Unix
socket in the run's 0700 directory, never the abstract namespace other users can reach) instead of TCP: the same ROUTER socket, so registration, tokens and CurveZMQ
apply unchanged.  A manager that cannot connect to the endpoint (another network namespace, a
container, another host) uses TCP.  Real processes, real sockets; the encryption case starts
managers by hand with the executor's own launch command.

A manager on the interchange's host uses its direct link first (``faasx.executor.direct``,
``tests/engine/test_direct_link.py``); these tests turn direct links off (``FAASX_DIRECT_LINKS=0``)
to test the ipc transport that the direct link otherwise replaces."""
from __future__ import annotations

import os

import pytest

from faasx.providers import LocalProvider

from .conftest import log_text, wait_until

HB = dict(heartbeat_period=0.5, heartbeat_threshold=4)


@pytest.fixture(autouse=True)
def no_direct_links(monkeypatch):
    monkeypatch.setenv("FAASX_DIRECT_LINKS", "0")      # read by each interchange these tests start


def manager_logs(ex) -> str:
    d = ex.executor.logdir
    return "".join(log_text(os.path.join(d, f)) for f in sorted(os.listdir(d)) if f.startswith("manager_"))


def test_a_local_block_registers_over_ipc(make_executor):
    ex = make_executor(max_workers_per_node=2, **HB)
    assert [f.result(timeout=60) for f in [ex.submit(pow, i, 2) for i in range(50)]] == [i * i for i in range(50)]
    path = ex.executor._client.ports["manager_ipc"]
    assert path and f"--ipc {path}" in ex.executor._get_launch_command("0")
    assert os.path.dirname(path) == ex.executor.logdir
    assert f"registering with the interchange at ipc://{path}" in manager_logs(ex)


def test_a_manager_that_cannot_reach_the_ipc_endpoint_uses_tcp(make_executor, start_manager):
    ex = make_executor(provider=LocalProvider(init_blocks=0, min_blocks=0, max_blocks=0), strategy="none",
                       max_workers_per_node=1, **HB)
    fut = ex.submit(pow, 5, 2)
    start_manager(ex, "elsewhere", replace={"--ipc": "/nonexistent/faasx.sock"})
    assert fut.result(timeout=60) == 25
    port = ex.executor._client.ports["manager_port"]
    assert f"registering with the interchange at tcp://127.0.0.1:{port}" in manager_logs(ex)


def test_curvezmq_guards_the_ipc_endpoint_too(make_executor, start_manager):
    """encrypted=True on a loopback executor: a same-host manager without the run's keys reaches the ipc
    endpoint but cannot complete the CURVE handshake; with the keys it registers there."""
    ex = make_executor(provider=LocalProvider(init_blocks=0, min_blocks=0, max_blocks=0), strategy="none",
                       encrypted=True, max_workers_per_node=1, **HB)
    fut = ex.submit(pow, 3, 4)
    no_keys = start_manager(ex, "nokeys", drop=["--cert-dir"])
    no_keys.wait(timeout=HB["heartbeat_threshold"] + 25)
    assert no_keys.returncode != 0
    assert ex.executor.interchange_stats()["managers_registered"] == 0 and not fut.done()
    logs = manager_logs(ex)
    assert "the interchange at ipc:///" in logs and "did not answer the registration" in logs, logs
    start_manager(ex, "withkeys")
    assert fut.result(timeout=60) == 81
    wait_until(lambda: ex.executor.interchange_stats()["managers_registered"] == 1, 10, what="one registration")
    assert manager_logs(ex).count("registering with the interchange at ipc:///") >= 1
