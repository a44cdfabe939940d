"""The processes a benchmark child started, by role, and what they cost (CPU seconds, RSS).

Roles come from command lines, so the same code counts faasx, HTEX and Ray alike: ``client`` (this
process), ``interchange``, ``manager``, ``worker``, ``raylet``/``gcs`` (Ray's daemons) and ``other``
(shell wrappers).  Processes are found as descendants and, since a provider may detach them (HTEX's
workers end up re-parented), by the run's environment tag.
"""
from __future__ import annotations

import os

from .child import TAG_ENV, tagged_processes

_RAY_ROLES = (("raylet", "raylet"), ("gcs_server", "gcs"), ("ray::", "worker"), ("default_worker.py", "worker"))


def _role(cmd: str, parent_role: str | None) -> str:
    # workers and managers first: a faasx manager's command line names the interchange's ipc socket
    # (``--ipc .../interchange-<pid>.sock``), which made it count as the interchange
    if "faasx-worker" in cmd or "worker import main" in cmd:
        return "worker"
    if "faasx-manager" in cmd or "process_worker_pool" in cmd:
        return "worker" if parent_role == "manager" else "manager"
    if "interchange" in cmd:
        return "interchange"
    for needle, role in _RAY_ROLES:
        if needle in cmd:
            return role
    return "worker" if parent_role == "manager" else "other"


def _our_processes() -> dict:
    """pid -> psutil.Process for every descendant of this process and every process with our tag."""
    import psutil
    me = psutil.Process()
    procs = {}
    try:
        procs = {c.pid: c for c in me.children(recursive=True)}
    except psutil.Error:
        pass
    tag = os.environ.get(TAG_ENV)
    for c in tagged_processes(tag) if tag else []:
        procs.setdefault(c.pid, c)
    procs.pop(me.pid, None)
    return procs


def process_roles() -> list[tuple[str, object]]:
    """``[(role, psutil.Process)]`` for this process (``client``) and all it started, parents first so
    that a child of a manager is a worker."""
    import psutil
    me = psutil.Process()
    procs = _our_processes()
    roles = {me.pid: "client"}
    out = [("client", me)]
    pending = list(procs)
    for _ in range(12):  # tree depth bound: resolve parents before children
        rest = []
        for pid in pending:
            try:
                ppid, cmd = procs[pid].ppid(), " ".join(procs[pid].cmdline())
            except psutil.Error:
                continue
            if ppid in procs and ppid not in roles:
                rest.append(pid)
                continue
            roles[pid] = _role(cmd, roles.get(ppid))
            out.append((roles[pid], procs[pid]))
        if not rest or len(rest) == len(pending):
            break
        pending = rest
    return out


def _sum_by_role(measure) -> dict:
    import psutil
    out: dict = {}
    for role, p in process_roles():
        try:
            out[role] = out.get(role, 0) + measure(p)
        except psutil.Error:
            pass
    return out


def process_cpu(p) -> float:
    """CPU seconds (user+system) ``p`` has used: from the scheduler's nanosecond counters of each of
    its threads (``/proc/<pid>/task/*/schedstat``) where there are, else ``cpu_times()``, whose
    10 ms ticks are too coarse for a cell of a thousand tasks (one tick = 9.8 us per task).  Threads
    that ended are not in the first (the engine's threads live as long as their process)."""
    import os
    total, found = 0, False
    try:
        tids = os.listdir(f"/proc/{p.pid}/task")
    except OSError:
        tids = []
    for tid in tids:
        try:
            with open(f"/proc/{p.pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
            found = True
        except (OSError, ValueError, IndexError):
            continue
    return total / 1e9 if found else sum(p.cpu_times()[:2])


def tree_cpu() -> dict:
    """CPU seconds (user+system) used so far by this process and by each role among those it started."""
    return _sum_by_role(process_cpu)


def tree_rss() -> dict:
    """Resident bytes now, by role (this process is ``client``)."""
    return _sum_by_role(lambda p: p.memory_info().rss)


def cpu_delta(before: dict, after: dict, per: int) -> dict:
    """Microseconds of CPU per task (``per`` tasks) for each role, and ``total``."""
    out = {k: (after.get(k, 0.0) - before.get(k, 0.0)) / per * 1e6 for k in after}
    out = {k: v for k, v in out.items() if v > 0.05}
    out["total"] = sum(out.values())
    return out


class RssPeak:
    """Samples the RSS of this process and all it started, by role, in a daemon thread, and keeps the
    sample with the highest total: ``peak_total`` and ``peak_by_role`` (bytes).

    The process list is taken once, at ``__enter__`` (after warm-up, when every process is up), so a
    sample costs one ``memory_info()`` per process.  The sampler thread owns the peak fields while it
    runs; read them after ``__exit__``."""

    def __init__(self, interval: float = 0.02):
        import threading
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-peak", daemon=True)
        self._procs: list = []
        self.peak_total = 0
        self.peak_by_role: dict = {}

    def sample(self) -> dict:
        import psutil
        out: dict = {}
        for role, p in self._procs:
            try:
                out[role] = out.get(role, 0) + p.memory_info().rss
            except psutil.Error:
                pass
        return out

    def _record(self) -> None:
        s = self.sample()
        if sum(s.values()) > self.peak_total:
            self.peak_total, self.peak_by_role = sum(s.values()), s

    def _run(self):
        while not self._stop.wait(self._interval):
            self._record()

    def __enter__(self):
        self._procs = process_roles()
        self._record()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=2)
        self._record()
