"""How busy the machine is: other agents' tests share these 2 cores and make every number noisy, so each
run says how much CPU others used before and while it ran."""
from __future__ import annotations

import os

from .stats import now

BUSY_CPU_PERCENT = 25.0


def _top_processes(procs: list, min_percent: float = 5.0) -> list:
    import psutil
    top = []
    for p in procs:
        try:
            c = p.cpu_percent(None)
            if c >= min_percent:
                top.append((c, p.pid, " ".join(p.cmdline())[:80] or p.name()))
        except psutil.Error:
            pass
    return sorted(top, reverse=True)[:5]


def machine_load(interval: float = 1.0) -> dict:
    """Whole-machine CPU use over ``interval`` seconds, and the busiest processes."""
    try:
        import psutil
    except ImportError:
        return {"cpu_percent": None}
    procs = []
    for p in psutil.process_iter(["pid"]):
        try:
            p.cpu_percent(None)  # primes the per-process counter
            procs.append(p)
        except psutil.Error:
            pass
    cpu = psutil.cpu_percent(interval=interval)
    return {"cpu_percent": cpu, "loadavg": os.getloadavg(), "top": _top_processes(procs)}


def machine_busy_cpu_s() -> float | None:
    """CPU seconds the whole machine has spent busy since boot (all CPUs)."""
    try:
        import psutil
    except ImportError:
        return None
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)


def other_cpu_percent(busy0: float | None, busy1: float | None, own_cpu_s: float | None, wall: float) -> float | None:
    """Share of the machine (percent of all CPUs) that processes other than ours used over ``wall`` s."""
    if busy0 is None or busy1 is None or own_cpu_s is None or wall <= 0:
        return None
    return max(0.0, (busy1 - busy0) - own_cpu_s) / (wall * (os.cpu_count() or 1)) * 100.0


def _warn_busy(load: dict, label: str) -> None:
    tops = "; ".join(f"{c:.0f}% {cmd}" for c, _, cmd in load.get("top", [])[:3]) or "short-lived processes"
    print(f"  [{label}] WARNING: machine busy before this run ({load['cpu_percent']:.0f}% CPU in use, "
          f"load {load['loadavg'][0]:.1f}): numbers will be noisy. Busiest: {tops}", flush=True)


def wait_for_quiet(max_wait: float, label: str = "", verbose: bool = True) -> dict:
    """Sample the machine's CPU use; if it is busy, wait (up to ``max_wait`` s) for 3 quiet seconds in a
    row.  Returns the last sample, with ``busy`` set when it is still above ``BUSY_CPU_PERCENT``."""
    deadline = now() + max_wait
    load = machine_load()
    quiet_streak = 0
    while now() < deadline and quiet_streak < 3:
        quiet = (load.get("cpu_percent") or 0) <= BUSY_CPU_PERCENT
        quiet_streak = quiet_streak + 1 if quiet else 0
        if quiet_streak < 3:
            load = machine_load()
    load["busy"] = (load.get("cpu_percent") or 0) > BUSY_CPU_PERCENT
    if load["busy"] and verbose:
        _warn_busy(load, label)
    return load
