"""Losing one node of a multi-node block, and cancelling one, on the real multi-node Slurm cluster.

A 3-node block with one worker per node runs one held task per node (``hold``: it records the attempt
and waits for a release file).  Then one node is lost -- its manager killed with SIGKILL, or its network
cut (``ip -n fxnI link set eth0 down``: packets vanish, nothing on this host notices but the heartbeats)
-- and only that node's task may be affected; the other two managers stay registered and their tasks
finish where they started.  Cancelling the block's job must leave no faasx process on any node.
"""
from __future__ import annotations

import os
import signal
import time

import psutil
import pytest

from faasx.errors import ManagerLost, WorkerLost
from tests.support import wait_until

from mn_support import block_output, managers_of, wait_for_managers

pytestmark = pytest.mark.multinode

NODES = 3


def hold(marker_dir: str, index: int, release: str) -> str:
    """Record this attempt (node name) in ``marker_dir/index``, wait for ``release``, return the node."""
    import os
    import socket
    import time
    host = socket.gethostname()
    with open(os.path.join(marker_dir, str(index)), "a") as f:
        f.write(host + "\n")
    deadline = time.monotonic() + 120
    while not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.05)
    return host


def attempts(marker_dir: str, index: int) -> list:
    path = os.path.join(marker_dir, str(index))
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return f.read().split()


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class HeldBlock:
    """One 3-node block, each node's manager running one held task."""

    def __init__(self, ex, tmp_path):
        self.ex = ex
        self.markers = tmp_path / "attempts"
        self.markers.mkdir()
        self.release = str(tmp_path / "release")
        self.managers = wait_for_managers(ex, NODES, block_id=0)
        self.futures = [ex.submit(hold, str(self.markers), i, self.release) for i in range(NODES)]
        wait_until(lambda: all(attempts(str(self.markers), i) for i in range(NODES)), timeout=30,
                 what=lambda: f"every held task to start: {self.where()} {block_output(ex)}")
        self.started_on = {i: attempts(str(self.markers), i)[0] for i in range(NODES)}
        assert sorted(self.started_on.values()) == sorted(m["hostname"] for m in self.managers), \
            f"the held tasks did not spread one per node: {self.started_on}"

    def where(self) -> dict:
        return {i: attempts(str(self.markers), i) for i in range(NODES)}

    def victim(self) -> tuple:
        """(task index, manager record) on the block's last node -- not the batch script's node."""
        host = sorted(m["hostname"] for m in self.managers)[-1]
        index = next(i for i, h in self.started_on.items() if h == host)
        return index, next(m for m in self.managers if m["hostname"] == host)

    def survivors_still_registered(self, victim_manager) -> bool:
        now = {m["manager"] for m in managers_of(self.ex, 0)}
        return now == {m["manager"] for m in self.managers} - {victim_manager["manager"]}


# ---- 1. a manager killed ----------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["srun", "mpich"])
def test_a_killed_manager_costs_only_its_own_task(kind, multinode, tmp_path):
    """SIGKILL one node's manager (with ``max_retries_on_system_failure=0``): that node's task fails with
    ``ManagerLost`` within a few heartbeats; the other two managers -- started by the same srun or mpiexec
    -- keep running and registered, and their tasks finish on their own nodes, run once."""
    launcher, init = multinode.launcher(kind)
    provider = multinode.provider(nodes_per_block=NODES, init_blocks=1, launcher=launcher, worker_init=init)
    with multinode.executor(provider, prefetch_capacity=0, max_retries_on_system_failure=0) as ex:
        block = HeldBlock(ex, tmp_path)
        index, manager = block.victim()
        t0 = time.monotonic()
        os.kill(manager["pid"], signal.SIGKILL)
        with pytest.raises(ManagerLost):
            block.futures[index].result(timeout=30)
        print(f"{kind}: the killed manager's task failed {time.monotonic() - t0:.1f}s after SIGKILL")
        assert block.survivors_still_registered(manager), managers_of(ex, 0)

        open(block.release, "w").close()
        for i, f in enumerate(block.futures):
            if i != index:
                assert f.result(timeout=30) == block.started_on[i]
                assert attempts(str(block.markers), i) == [block.started_on[i]], "a surviving task ran twice"
        # still serving after the loss: the launcher did not take the other nodes down with it
        assert block.survivors_still_registered(manager), managers_of(ex, 0)
        assert {ex.submit(hold, str(block.markers), 9, block.release).result(timeout=30)} <= \
            set(block.started_on.values()) - {manager["hostname"]}


# ---- 2. a node cut off ------------------------------------------------------------------------------
def test_a_node_cut_off_costs_only_its_task_which_runs_again_elsewhere(multinode, tmp_path):
    """Cut one node's link.  After ``heartbeat_threshold`` the interchange declares that manager lost and
    re-queues its task (retries on, the default); the other managers keep theirs.  Released, the two
    survivors finish their own tasks and one of them then runs the re-queued task, which succeeds.  The
    cut-off manager, hearing nothing from the interchange, exits by itself; its result never counts."""
    from faasx.launchers import SrunLauncher
    cluster = multinode.cluster
    provider = multinode.provider(nodes_per_block=NODES, init_blocks=1, launcher=SrunLauncher())
    with multinode.executor(provider, prefetch_capacity=0) as ex:
        block = HeldBlock(ex, tmp_path)
        index, manager = block.victim()
        t0 = time.monotonic()
        cluster.set_link(manager["hostname"], up=False)
        wait_until(lambda: block.survivors_still_registered(manager), timeout=20, interval=0.1,
                 what=lambda: f"the interchange to drop the cut-off manager only: {managers_of(ex, 0)}")
        print(f"cut-off manager declared lost {time.monotonic() - t0:.1f}s after the cut")
        assert not block.futures[index].done(), "the lost task was failed instead of re-queued"

        open(block.release, "w").close()
        survivors = set(block.started_on.values()) - {manager["hostname"]}
        for i, f in enumerate(block.futures):
            if i != index:
                assert f.result(timeout=30) == block.started_on[i]
        rerun_on = block.futures[index].result(timeout=30)
        assert rerun_on in survivors
        assert attempts(str(block.markers), index) == [manager["hostname"], rerun_on]
        for i in set(range(NODES)) - {index}:
            assert attempts(str(block.markers), i) == [block.started_on[i]]
        stats = ex.executor.interchange_stats()
        assert stats["retried"] == 1 and stats["failed_system"] == 0, stats

        # the manager on the cut-off node gives up by itself; only then is the node reconnected
        wait_until(lambda: not alive(manager["pid"]), timeout=30, what="the cut-off manager to exit")
        cluster.set_link(manager["hostname"], up=True)
        assert block.survivors_still_registered(manager)


# ---- 3. cancel ------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["srun", "mpich"])
def test_cancelling_a_multi_node_block_leaves_no_faasx_process_on_any_node(kind, multinode, tmp_path,
                                                                           faasx_processes):
    """While each node runs a held task, ``provider.cancel()`` the block's job (scancel): within seconds no
    manager or worker of the run is left on any node (the nodes share this host's PID space, and each
    process is attributed to its node by its network namespace), the running tasks fail (no retries
    left) with ``WorkerLost`` or ``ManagerLost`` -- whichever of a node's worker and manager Slurm's
    SIGTERM ends first -- and the job leaves the queue."""
    launcher, init = multinode.launcher(kind)
    provider = multinode.provider(nodes_per_block=NODES, init_blocks=1, launcher=launcher, worker_init=init)
    with multinode.executor(provider, prefetch_capacity=0, max_retries_on_system_failure=0) as ex:
        block = HeldBlock(ex, tmp_path)
        run_dir = multinode.run_dirs[-1]
        on_nodes = lambda: [p for p in faasx_processes(run_dir) if p[1] != "host"]  # noqa: E731
        before = on_nodes()
        assert {node for _, node, _ in before} == set(block.started_on.values()), before
        assert sum("faasx-worker" in cmd for _, _, cmd in before) >= NODES, before

        job = ex.executor.blocks_to_job_id["0"]
        t0 = time.monotonic()
        provider.cancel([job])
        wait_until(lambda: not on_nodes(), timeout=20, interval=0.1,
                 what=lambda: f"no faasx process of the run on any node: {on_nodes()}")
        print(f"{kind}: every manager and worker gone {time.monotonic() - t0:.1f}s after cancel")
        for f in block.futures:
            with pytest.raises((ManagerLost, WorkerLost)):
                f.result(timeout=20)
        wait_until(lambda: job not in multinode.cluster.active_jobs(), timeout=30, what="the job to leave squeue")
