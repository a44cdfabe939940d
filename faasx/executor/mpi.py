"""MPI tasks: a block's nodes as a pool shared by multi-node tasks (Parsl's MPIExecutor semantics).

In MPI mode (``faasx.MPIExecutor``) a block runs one manager, on the node that runs the job script
(``SimpleLauncher``).  Its workers do not compute themselves: each runs one task at a time that starts
an MPI application on some of the block's nodes through ``$PARSL_MPI_PREFIX``.  This module is the
pure part of that, with no processes or sockets:

``parse_mpi_spec``    a task's ``num_nodes`` / ``ranks_per_node`` / ``num_ranks`` / ``launcher_options``
                      checked and completed (submit side and manager side use the same rules).
``compose_prefixes``  the environment a task gets: ``PARSL_MPI_PREFIX`` (the chosen launcher's),
                      ``PARSL_MPIEXEC_PREFIX`` / ``PARSL_SRUN_PREFIX`` / ``PARSL_APRUN_PREFIX``,
                      ``PARSL_NUM_NODES``, ``PARSL_RANKS_PER_NODE``, ``PARSL_NUM_RANKS``,
                      ``PARSL_MPI_NODELIST``, ``PARSL_LAUNCHER_OPTIONS``.
``expand_hostlist``, ``block_nodes``
                      the nodes of the batch job the manager runs in.
``NodePool``          which nodes are free and which task holds which.
``MpiWorkerTable``    the manager's ``WorkerTable`` with placement: a task enters the worker queue
                      only once it holds its nodes; it gives them back when its result arrives or its
                      worker dies.  Strictly first come, first served: a task waiting for two nodes
                      is not overtaken by later one-node tasks, so it cannot starve.

The manager owns its table (one thread); nothing here is shared between threads.
"""
from __future__ import annotations

import contextlib
import os
import re
import socket
from collections import deque
from typing import Deque, Dict, Iterator, List, Mapping, Optional, Tuple

from faasx.errors import FaaSXError
from faasx.executor.worker_table import Task, WorkerTable

MPI_LAUNCHERS = ("mpiexec", "srun", "aprun")
MPI_RESOURCE_KEYS = frozenset({"num_nodes", "ranks_per_node", "num_ranks", "launcher_options"})
PREFIX_VARS = ("PARSL_MPIEXEC_PREFIX", "PARSL_SRUN_PREFIX", "PARSL_APRUN_PREFIX")

#: Where the manager of an MPI block finds its nodes when no scheduler variable names them (a local
#: block, or a site faasx does not know): a comma-separated list of host names.
NODELIST_VAR = "FAASX_MPI_NODELIST"


class MPIPlacementError(FaaSXError, RuntimeError):
    """An MPI task asked for more nodes than its block has; it can never run there."""


def _positive_int(key: str, value) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{key} must be a positive integer, got {value!r}")
    try:
        number = int(value)   # Parsl's own examples pass strings ("2") as well as ints
    except (TypeError, ValueError):
        raise ValueError(f"{key} must be a positive integer, got {value!r}") from None
    if number < 1 or (isinstance(value, float) and value != number):
        raise ValueError(f"{key} must be a positive integer, got {value!r}")
    return number


def parse_mpi_spec(spec: Optional[Mapping]) -> Dict[str, object]:
    """The complete MPI request of a task: {num_nodes, ranks_per_node, num_ranks, launcher_options}.

    As in Parsl: ``num_ranks`` defaults to ``num_nodes * ranks_per_node`` and ``ranks_per_node`` to
    ``num_ranks / num_nodes``.  Unlike Parsl, a task that gives none of the keys is not an error (nor
    a hang, Parsl #3427): it takes one node and runs one rank.  ``num_nodes`` defaults to 1.  Raises
    ValueError (the caller turns it into its own error) for values that cannot be right.
    """
    spec = spec or {}
    nodes = _positive_int("num_nodes", spec.get("num_nodes", 1))
    rpn = spec.get("ranks_per_node")
    ranks = spec.get("num_ranks")
    rpn = None if rpn in (None, "") else _positive_int("ranks_per_node", rpn)
    ranks = None if ranks in (None, "") else _positive_int("num_ranks", ranks)
    if rpn is None and ranks is None:
        rpn, ranks = 1, nodes
    elif ranks is None:
        ranks = nodes * rpn
    elif rpn is None:
        rpn = -(-ranks // nodes)   # ceil: Parsl would write "2.5" into the command line
    if ranks > nodes * rpn:
        raise ValueError(f"num_ranks={ranks} do not fit on num_nodes={nodes} with ranks_per_node={rpn}")
    if ranks < nodes:
        raise ValueError(f"num_ranks={ranks} leaves some of the num_nodes={nodes} nodes without a rank")
    options = spec.get("launcher_options", "") or ""
    if not isinstance(options, str):
        raise ValueError(f"launcher_options must be a string of launcher flags, got {options!r}")
    return {"num_nodes": nodes, "ranks_per_node": rpn, "num_ranks": ranks, "launcher_options": options}


def _join(*parts: object) -> str:
    return " ".join(str(p) for p in parts if p != "")


def compose_prefixes(launcher: str, mpi: Mapping, nodes: List[str]) -> Dict[str, str]:
    """The environment of an MPI task placed on ``nodes`` (``mpi`` as ``parse_mpi_spec`` returns it).

    The flags are those Parsl's MPIExecutor uses, so an application run as ``$PARSL_MPI_PREFIX ./app``
    is started the same way: ``mpiexec -n R -ppn P -hosts a,b`` (MPICH, Cray PALS, Intel MPI),
    ``srun --ntasks R --ntasks-per-node P --nodelist a,b --nodes N``, ``aprun -n R -N P -node-list a,b``;
    ``launcher_options`` come last.
    """
    if launcher not in MPI_LAUNCHERS:
        raise ValueError(f"unknown MPI launcher {launcher!r}: use one of {', '.join(MPI_LAUNCHERS)}")
    hosts = ",".join(nodes)
    ranks, rpn, opts = mpi["num_ranks"], mpi["ranks_per_node"], mpi["launcher_options"]
    prefixes = {
        "mpiexec": _join("mpiexec", "-n", ranks, "-ppn", rpn, "-hosts", hosts, opts),
        "srun": _join("srun", "--ntasks", ranks, "--ntasks-per-node", rpn, "--nodelist", hosts,
                      "--nodes", len(nodes), opts),
        "aprun": _join("aprun", "-n", ranks, "-N", rpn, "-node-list", hosts, opts),
    }
    env = {f"PARSL_{name.upper()}_PREFIX": prefix for name, prefix in prefixes.items()}
    env["PARSL_MPI_PREFIX"] = prefixes[launcher]
    env["PARSL_NUM_NODES"] = str(len(nodes))
    env["PARSL_RANKS_PER_NODE"] = str(rpn)
    env["PARSL_NUM_RANKS"] = str(ranks)
    env["PARSL_MPI_NODELIST"] = hosts
    env["PARSL_LAUNCHER_OPTIONS"] = opts
    return env


# ---- the nodes of a batch job ---------------------------------------------------------------------
def _split_top_level(text: str) -> List[str]:
    """Split a Slurm hostlist at the commas that are not inside brackets."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p for p in parts if p]


def _expand_range(body: str) -> List[str]:
    out = []
    for item in body.split(","):
        lo, _, hi = item.partition("-")
        if not hi:
            out.append(lo)
            continue
        width = len(lo) if lo.startswith("0") else 0   # node[01-10] keeps the padding
        out.extend(str(n).zfill(width) for n in range(int(lo), int(hi) + 1))
    return out


def expand_hostlist(hostlist: str) -> List[str]:
    """Slurm's compressed host list (``SLURM_JOB_NODELIST``) as names: ``nid[001-003,7],login1`` ->
    nid001, nid002, nid003, nid7, login1.  Several bracket groups in one name multiply out, as in Slurm."""
    names: List[str] = []
    for part in _split_top_level(hostlist.strip()):
        expanded = [""]
        for literal, body in re.findall(r"([^\[]*)(?:\[([^\]]*)\])?", part):
            if not literal and not body:
                continue
            suffixes = _expand_range(body) if body else [""]
            expanded = [e + literal + s for e in expanded for s in suffixes]
        names.extend(expanded)
    return names


def block_nodes(environ: Mapping[str, str] = os.environ) -> List[str]:
    """The nodes of the job this process runs in, first the one it runs on when the scheduler says so.

    ``FAASX_MPI_NODELIST`` (comma-separated) wins; then PBS's ``PBS_NODEFILE`` or Cobalt's
    ``COBALT_NODEFILE`` (a line per node or per rank slot: each node once, in order), then Slurm's
    ``SLURM_JOB_NODELIST`` / ``SLURM_NODELIST``; otherwise this host alone (a local block is one node).
    """
    given = environ.get(NODELIST_VAR)
    if given:
        return [n.strip() for n in given.split(",") if n.strip()]
    nodefile = environ.get("PBS_NODEFILE") or environ.get("COBALT_NODEFILE")
    if nodefile:
        with open(nodefile) as f:
            return list(dict.fromkeys(line.strip() for line in f if line.strip()))
    slurm = environ.get("SLURM_JOB_NODELIST") or environ.get("SLURM_NODELIST")
    if slurm:
        return expand_hostlist(slurm)
    return [socket.gethostname()]


# ---- placement ----------------------------------------------------------------------------------
class NodePool:
    """The free nodes of one block and the nodes each running task holds."""

    def __init__(self, nodes: List[str]):
        if len(set(nodes)) != len(nodes):
            raise ValueError(f"duplicate node names in {nodes}")
        self.nodes = list(nodes)
        self.free: List[str] = list(nodes)        # kept in the block's order: the lowest-numbered first
        self.held: Dict[int, List[str]] = {}      # tid -> its nodes

    @property
    def size(self) -> int:
        return len(self.nodes)

    def acquire(self, tid: int, count: int) -> Optional[List[str]]:
        """``count`` free nodes for task ``tid``, or None when fewer are free now."""
        if count > len(self.free):
            return None
        taken, self.free = self.free[:count], self.free[count:]
        self.held[tid] = taken
        return taken

    def release(self, tid: int) -> bool:
        """Return the nodes of ``tid`` (done, failed, or its worker lost); False if it held none."""
        nodes = self.held.pop(tid, None)
        if nodes is None:
            return False
        order = {n: i for i, n in enumerate(self.nodes)}
        self.free = sorted(self.free + nodes, key=order.__getitem__)
        return True


class MpiWorkerTable(WorkerTable):
    """A ``WorkerTable`` whose tasks first wait for nodes of the block (``NodePool``).

    A task from the interchange either takes its nodes at once and joins the worker queue with its
    environment added to its spec (``spec["mpi"]["env"]``, applied by the worker around the call),
    or waits here in arrival order.  At most ``max_running`` tasks hold nodes (one per worker: a task
    never holds nodes while no worker can start it).  A task that asks for more nodes than the block
    has joins the queue at once with ``spec["mpi"]["error"]`` instead, so its worker fails it with
    ``MPIPlacementError`` rather than it waiting for ever.
    """

    def __init__(self, launcher: str, nodes: List[str], max_running: int,
                 prefetch_capacity: Optional[int] = None):
        super().__init__(prefetch_capacity)
        if launcher not in MPI_LAUNCHERS:
            raise ValueError(f"unknown MPI launcher {launcher!r}: use one of {', '.join(MPI_LAUNCHERS)}")
        self.launcher = launcher
        self.pool = NodePool(nodes)
        self.max_running = max(1, max_running)
        self.waiting: Deque[Task] = deque()

    def _with_mpi(self, task: Task, mpi: dict) -> Task:
        return task._replace(spec=dict(task.spec or {}, mpi=mpi))

    def _admit(self, task: Task) -> Optional[Task]:
        """The task ready for the worker queue, or None if it must wait for nodes."""
        try:
            mpi = parse_mpi_spec((task[3] or {}).get("mpi"))
        except ValueError as e:
            return self._with_mpi(task, {"error": f"task {task[0]}: invalid MPI resource specification: {e}"})
        if mpi["num_nodes"] > self.pool.size:
            return self._with_mpi(task, {"error": (
                f"task {task[0]} asks for num_nodes={mpi['num_nodes']} but this block has {self.pool.size} "
                f"node(s) ({','.join(self.pool.nodes)}); ask for fewer nodes or give the provider "
                f"nodes_per_block >= {mpi['num_nodes']}")})
        if len(self.pool.held) >= self.max_running:
            return None
        nodes = self.pool.acquire(task[0], int(mpi["num_nodes"]))
        if nodes is None:
            return None
        return self._with_mpi(task, dict(mpi, nodes=nodes, env=compose_prefixes(self.launcher, mpi, nodes)))

    def _place_waiting(self) -> None:
        ready = []
        while self.waiting:
            placed = self._admit(self.waiting[0])
            if placed is None:
                break     # first come, first served: nothing overtakes the head of the line
            self.waiting.popleft()
            ready.append(placed)
        if ready:
            super().enqueue(ready)

    # ---- WorkerTable overrides --------------------------------------------------------------------
    def enqueue(self, tasks: List[Task]) -> None:
        self.waiting.extend(tasks)
        self._place_waiting()

    def done(self, wid: int, tids: List[int], now: float) -> None:
        super().done(wid, tids, now)
        if any([self.pool.release(tid) for tid in tids]):
            self._place_waiting()

    def remove(self, wid: int) -> List[Task]:
        """A worker is gone: the nodes of what it held go back -- its lost tasks, and a task the manager
        took off it before stopping it (a walltime or ``terminate()``), which is in no queue or slot now."""
        lost = super().remove(wid)
        live = {t[0] for t in self.queue} | {tid for s in self.slots.values() for tid in s.tasks}
        orphans = [tid for tid in self.pool.held if tid not in live]
        if [self.pool.release(tid) for tid in orphans]:
            self._place_waiting()
        return lost

    def withdraw(self, tids) -> List[Task]:
        """Cancelled tasks that no worker has taken: those waiting for nodes, and those holding nodes in
        the worker queue (their nodes go back to the pool)."""
        out = super().withdraw(tids)
        freed = any([self.pool.release(task[0]) for task in out])
        if any(task[0] in tids for task in self.waiting):
            out.extend(task for task in self.waiting if task[0] in tids)
            self.waiting = deque(task for task in self.waiting if task[0] not in tids)
            freed = True     # the head of the line may have gone
        if freed:
            self._place_waiting()
        return out

    def held(self) -> int:
        return super().held() + len(self.waiting)

    def all_tids(self) -> List[int]:
        return super().all_tids() + [t[0] for t in self.waiting]


# ---- the worker's side ----------------------------------------------------------------------------
@contextlib.contextmanager
def task_environment(mpi: Mapping) -> Iterator[None]:
    """Set the task's ``PARSL_*`` variables in this process for the duration of the call (a bash app's
    shell and any subprocess inherit them), then restore what was there.  Raises
    ``MPIPlacementError`` when the manager could not place the task."""
    error = mpi.get("error")
    if error:
        raise MPIPlacementError(error)
    env = mpi.get("env") or {}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def run_in_environment(mpi: Mapping, call) -> Tuple[int, bytes]:
    """``call()`` (the worker's execute of one task) inside ``task_environment``; a placement error
    becomes the task's exception."""
    from faasx.executor import protocol as P
    from faasx.executor.serialization import serialize_exception
    try:
        with task_environment(mpi):
            return call()
    except MPIPlacementError as e:
        return P.EXCEPTION, serialize_exception(e, socket.gethostname())
