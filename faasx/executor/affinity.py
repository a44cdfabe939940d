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
  CPUs, else its last CPU.
* an ``int``: that CPU (or, where it is not allowed, as for ``"auto"``).
* ``None``: no pinning at all.

Everything here is best effort: where the platform has no ``sched_setaffinity`` (macOS) or a cgroup
forbids the CPU, nothing is pinned and nothing fails.
"""
from __future__ import annotations

import logging
import os
from typing import Iterable, Optional, Set, Union

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
