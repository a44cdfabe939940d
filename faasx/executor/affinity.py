"""Where the engine's own threads run: one CPU per host for the whole chain (``engine_cpu``).

A no-op task's round trip is a relay of wake-ups: caller -> interchange -> (ZeroMQ I/O threads) ->
manager -> worker and back.  The engine's processes do a few microseconds of work per hop; what
costs is the hand-off itself.  When the thread being woken sleeps on another CPU, the waker sends an
inter-processor interrupt and the target CPU leaves its idle state.  On a 2-vCPU virtual machine
this measures ~23 us per wake-up against ~3 us on the same CPU (``benchmarks/bench_floor.py
--wakeups``), and Linux's scheduler, which prefers an idle CPU for a woken thread, sends most
hand-offs across.  Keeping the engine's threads of one host -- the client's I/O thread, the
interchange, the managers on that host, and the ZeroMQ I/O thread of each -- on one CPU turns their
hand-offs into plain context switches.

Workers are not pinned (they get back the CPUs the manager had: ``--cpus``); user code keeps every
CPU it was given.  The engine's threads are idle between messages, so sharing one CPU with a busy
worker costs the worker little, and the engine's CPU use per task is measured in microseconds
(``benchmarks/README.md``).

``engine_cpu`` (an option of ``FaaSExecutor`` and ``faasx.Executor``):

* ``"auto"`` (default): the client picks the CPU it is running on when the executor starts (a CPU
  the kernel found free, so several executors on a shared login node spread out), and every engine
  process of that host uses it; a manager on another host uses the same number if it is among its
  CPUs, else its last CPU.  On the client's host the pin adapts (``Governor``): while the client's
  I/O thread and the interchange need more than that one CPU (a throughput-bound run, or a CPU that
  other processes keep busy) they are spread over every allowed CPU, and pinned again once their
  demand has stayed low for a while.
* an ``int``: that CPU (or, where it is not allowed, as for ``"auto"``), always.
* ``None``: no pinning at all.

Everything here is best effort: where the platform has no ``sched_setaffinity`` (macOS) or a cgroup
forbids the CPU, nothing is pinned and nothing fails.
"""
from __future__ import annotations

import logging
import os
from typing import Iterable, Optional, Set, Tuple, Union

logger = logging.getLogger("faasx.affinity")

EngineCPU = Union[int, str, None]


def supported() -> bool:
    return hasattr(os, "sched_setaffinity") and hasattr(os, "sched_getaffinity")


def allowed_cpus() -> Set[int]:
    """The CPUs this thread may run on (all CPUs where affinity is not supported)."""
    if supported():
        return set(os.sched_getaffinity(0))
    return set(range(os.cpu_count() or 1))


def current_cpu() -> Optional[int]:
    """The CPU this thread last ran on (Linux), else None."""
    try:
        with open("/proc/thread-self/stat", "rb") as f:
            stat = f.read()
        return int(stat.rsplit(b")", 1)[1].split()[36])
    except (OSError, IndexError, ValueError):
        return None


def validate(value: EngineCPU) -> EngineCPU:
    """The option's value, or ValueError naming what is accepted."""
    if value is None or value == "auto":
        return value
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"engine_cpu must be 'auto', None or a CPU number >= 0, not {value!r}")
    return value


def choose(value: EngineCPU, allowed: Optional[Iterable[int]] = None) -> Optional[int]:
    """The CPU the engine threads of this host should use for option ``value``, or None (no pinning).

    ``"auto"`` is the CPU the calling thread is on; a number is used when it is allowed; otherwise the
    highest allowed CPU."""
    if value is None or not supported():
        return None
    cpus = set(allowed) if allowed is not None else allowed_cpus()
    if not cpus:
        return None
    if value == "auto":
        here = current_cpu()
        return here if here in cpus else max(cpus)
    return value if value in cpus else max(cpus)


def pin_this_thread(cpu: Optional[int], who: str) -> bool:
    """Pin the calling thread (only it: Linux affinity is per thread) to ``cpu``; False if not done."""
    if cpu is None or not supported():
        return False
    try:
        os.sched_setaffinity(0, {cpu})
        return True
    except OSError as e:
        logger.warning("%s: could not pin to CPU %d (%s); running unpinned", who, cpu, e)
        return False


def restore(cpus: Optional[str]) -> None:
    """Give this process back the CPU list ``"0,1,5"`` (a worker undoing its manager's pinning)."""
    if not cpus or not supported():
        return
    try:
        os.sched_setaffinity(0, {int(c) for c in cpus.split(",") if c})
    except (OSError, ValueError) as e:
        logger.warning("could not restore the CPU affinity %s: %s", cpus, e)


def format_cpus(cpus: Iterable[int]) -> str:
    return ",".join(str(c) for c in sorted(cpus))


# ---- "auto" adapts: one CPU while the engine fits on it, every allowed CPU when it does not ------------
def thread_ids(pid: int) -> list:
    """The thread ids of process ``pid`` (Linux ``/proc``), or [] if it is gone."""
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except (OSError, ValueError):
        return []


def thread_times_ns(pid: int, tid: int) -> Tuple[int, int]:
    """(CPU time, time spent runnable but waiting for a CPU) of a thread, ns (``/proc/.../schedstat``);
    (0, 0) if it is gone."""
    try:
        with open(f"/proc/{pid}/task/{tid}/schedstat", "rb") as f:
            fields = f.read().split()
        return int(fields[0]), int(fields[1])
    except (OSError, IndexError, ValueError):
        return 0, 0


def _load_average() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return 0.0


class Governor:
    """Keeps the engine's threads of this host on one CPU while they fit there, and spreads them over
    every allowed CPU while they do not (``engine_cpu="auto"``).

    One CPU wins on a quiet machine (hand-offs are same-CPU context switches, module docstring) and
    loses once that CPU cannot serve the threads promptly: a client submitting 30,000 tasks/s, the
    interchange at 131,072 workers, or other processes keeping the CPU busy, behind which every
    pinned thread queues while another CPU may be free.  What shows it is ``schedstat``: per second of
    wall time, the time the threads spent runnable but waiting for the CPU (``wait``), and that plus
    their CPU time (``demand``).  Pinned, they spread over every allowed CPU when they want more than
    the whole CPU (``demand > SPREAD_AT``) or wait for it more than ``WAIT_AT`` of the time; spread,
    they come back once both stay below ``PIN_AT`` and ``QUIET_WAIT`` for ``hold`` seconds (doubled,
    up to ``MAX_HOLD``, each time they had to spread again soon after, so that a load that comes and
    goes does not make them flap).  On a machine whose load average already exceeds its CPUs they
    start spread.  Measured here (2 CPUs): a sequential round-trip loop, the case
    the pin is for, has a demand of 0.2-0.4 CPU on a quiet machine; a submit loop of no-op tasks
    0.9-1.9.  With other processes at load 8, ``bench_engine``'s p99 was 4.0 ms pinned and 0.4 ms
    unpinned (p50 alike): that is what ``WAIT_AT`` is for.

    ``members()`` names the threads governed, as (pid, tid) pairs, listed afresh at each measurement
    (the client's I/O thread and every thread of its interchange).  Owned by the client's I/O thread:
    ``tick()`` is called from its loop, nothing else touches it.  Managers pin themselves and are not
    governed.
    """

    PERIOD = 0.25         # seconds between two measurements (reading ~5 schedstat files: ~50 us)
    SPREAD_AT = 1.0       # demand, in CPUs, above which the one CPU is saturated
    WAIT_AT = 0.25        # ... or wait, in CPUs, above which its run queue is too long
    PIN_AT = 0.5          # demand below which one CPU is enough again
    QUIET_WAIT = 0.1      # and wait below which it is quiet enough
    HOLD = 2.0            # seconds below PIN_AT before pinning again (at first)
    MAX_HOLD = 60.0

    def __init__(self, cpu: int, members, who: str, now: float, allowed: Iterable[int]):
        self.cpu = cpu
        self.members = members
        self.who = who
        self.allowed = set(allowed)        # the CPUs to spread over (the process's, from before pinning)
        self.pinned = True
        self.demand = self.wait = 0.0      # the last measurement: CPU used + run-queue wait, and the wait alone
        self.hold = self.HOLD
        self._last = now
        self._last_ns = self._totals()
        self._quiet_since: Optional[float] = None
        self._pinned_at = float("-inf")    # when it last pinned them again (never, so far)

    def spread_if_busy(self, now: float) -> None:
        """At start: on a machine already busier than its CPUs, spread now (the first measurement
        would come only after a PERIOD of queueing) and pin once it is quiet."""
        load = _load_average()
        if self.pinned and load >= len(self.allowed):
            self._spread(now, f"the load average is {load:.1f} on {len(self.allowed)} CPUs")

    def _totals(self) -> Tuple[int, int]:
        cpu = wait = 0
        for pid, tid in self.members():
            c, w = thread_times_ns(pid, tid)
            cpu, wait = cpu + c, wait + w
        return cpu, wait

    def tick(self, now: float) -> None:
        """Measure once per PERIOD and spread or pin if the demand says so."""
        if now - self._last < self.PERIOD:
            return
        totals, elapsed = self._totals(), (now - self._last) * 1e9
        # a thread that ended takes its times with it: never a negative demand
        self.wait = max(0.0, (totals[1] - self._last_ns[1]) / elapsed)
        self.demand = max(0.0, (totals[0] - self._last_ns[0]) / elapsed) + self.wait
        self._last, self._last_ns = now, totals
        if self.pinned:
            if self.demand > self.SPREAD_AT or self.wait > self.WAIT_AT:
                self._spread(now)
        elif self.demand >= self.PIN_AT or self.wait >= self.QUIET_WAIT:
            self._quiet_since = None
        elif self._quiet_since is None:
            self._quiet_since = now
        elif now - self._quiet_since >= self.hold:
            self._pin(now)

    def _spread(self, now: float, why: Optional[str] = None) -> None:
        # pinned again only a little while ago: wait longer before the next try
        self.hold = min(self.MAX_HOLD, self.hold * 2) if now - self._pinned_at < 4 * self.hold else self.HOLD
        if self._apply(self.allowed):
            self.pinned, self._quiet_since = False, None
            why = why or f"the engine's threads wanted {self.demand:.2f} of CPU {self.cpu} ({self.wait:.2f} waiting)"
            logger.info("%s: %s; spread over CPUs %s (back to one CPU after %.0f s below %.2f)", self.who, why,
                        format_cpus(self.allowed), self.hold, self.PIN_AT)

    def _pin(self, now: float) -> None:
        if self._apply({self.cpu}):
            self.pinned, self._pinned_at = True, now
            logger.info("%s: the engine's threads need %.2f CPU; back on CPU %d", self.who, self.demand, self.cpu)

    def _apply(self, cpus: Set[int]) -> bool:
        """Set every member thread's CPUs; False (and nothing more tried) if the platform refuses."""
        for _pid, tid in self.members():
            try:
                os.sched_setaffinity(tid, cpus)
            except ProcessLookupError:
                continue                   # a thread that just ended
            except OSError as e:
                logger.warning("%s: could not set the CPUs of thread %d to %s (%s); leaving the placement as "
                               "it is", self.who, tid, format_cpus(cpus), e)
                return False
        return True
