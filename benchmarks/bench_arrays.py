"""Big arrays: numpy arrays as argument and result (``x + 1``), 1 / 10 / 100 MB (issue 12, part 2).

Systems, each in a fresh child process, 2 workers: faasx.Executor, Parsl HTEX (``parsl.load``, called
directly) and Ray (``ray.init(num_cpus=2)`` on this host, its shared-memory object store; the peer to
beat).  ``floor`` measures what this machine can do at all: one numpy copy of the array, and the same
bytes through a Unix socketpair between two processes.

For each size, ``--window`` tasks are kept in flight (a new one submitted as each result arrives)
until N tasks ran (about ``--volume`` MB of arguments per size).  Reported:

* MB/s = (argument + result bytes) / wall time, every result checked (``y[0] == x[0] + 1``, shape);
* peak memory per in-flight MB ("copies held"): the highest total, sampled every 20 ms during the
  run, of the private resident memory (RSS minus shared-memory pages, ``RssShmem``) of the client,
  interchange, manager(s) and workers (Ray: driver, raylet, gcs, workers), plus the machine's
  shared memory (``Shmem`` in /proc/meminfo: faasx's payload files in /dev/shm, Ray's object store),
  counted once however many processes map it -- minus the same total before the run, divided by
  the MB of arguments in flight (window x size).  1.0 means one extra copy of every in-flight array
  is held somewhere; the split by role says where ("shm" is shared memory).  Another process's
  shared memory changing meanwhile would show up in "shm": compare systems of the same run.

    python benchmarks/bench_arrays.py [--sizes 1,10,100] [--systems faasx,htex,ray,floor] [--quick]
"""
from __future__ import annotations

import argparse
import os
import sys

try:
    from benchmarks import common as C
except ImportError:  # run as a script: python benchmarks/bench_arrays.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from benchmarks import common as C

SYSTEMS = {"faasx": "faasx.Executor", "htex": "Parsl HTEX", "ray": "Ray (object store)", "floor": "floor"}
MB = 1_000_000


def inc(x):
    return x + 1


class RaySystem:
    """Ray on this host with 2 CPUs, behind the harness's ``submit(fn, *args) -> Future`` convention."""

    def __init__(self, workers: int):
        import ray
        self._ray = ray
        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False,
                 _temp_dir=os.path.join(C.child_tmpdir(), "ray"))
        self._remote = {}

    def submit(self, fn, *args):
        if fn not in self._remote:
            self._remote[fn] = self._ray.remote(fn)
        return self._remote[fn].remote(*args).future()

    def close(self):
        self._ray.shutdown()


def open_system(name: str, workers: int):
    return RaySystem(workers) if name == "ray" else C.System(name, workers)


# ----------------------------------------------------------------------------------------------------
# child
# ----------------------------------------------------------------------------------------------------
class MemPeak(C.RssPeak):
    """``RssPeak`` counting shared memory once: each process's RSS without its shared-memory pages,
    and the machine's ``Shmem`` as the role "shm" (plain RSS counts a mapped shm page in every
    process that maps it, and a payload file nobody maps in none)."""

    def sample(self) -> dict:
        out: dict = {}
        for role, p in self._procs:
            try:
                out[role] = out.get(role, 0) + _private_rss(p.pid)
            except (OSError, ValueError):
                pass
        out["shm"] = _meminfo("Shmem")
        return out


def _private_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        fields = dict(line.split(":", 1) for line in f if line.startswith(("VmRSS", "RssShmem")))
    return (int(fields["VmRSS"].split()[0]) - int(fields.get("RssShmem", "0 kB").split()[0])) * 1024


def _meminfo(name: str) -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(name + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _check(y, x) -> None:
    if y.shape != x.shape or y[0] != x[0] + 1 or y[-1] != x[-1] + 1:
        raise AssertionError(f"wrong result: shape {y.shape} vs {x.shape}, y[0]={y[0]!r}")


def _pipeline(system, x, n: int, window: int, timeout: float) -> None:
    """Run ``n`` tasks of ``inc(x)`` with ``window`` in flight; check every result."""
    import concurrent.futures as cf
    pending = {system.submit(inc, x) for _ in range(min(window, n))}
    submitted = len(pending)
    while pending:
        done, pending = cf.wait(pending, timeout=timeout, return_when=cf.FIRST_COMPLETED)
        if not done:
            raise TimeoutError(f"no result within {timeout:.0f}s ({len(pending)} in flight)")
        for f in done:
            _check(f.result(), x)
            if submitted < n:
                pending.add(system.submit(inc, x))
                submitted += 1


def _one_size(system, mb: float, args) -> dict:
    import numpy as np
    x = np.arange(int(mb * MB), dtype=np.uint8)
    n = max(args.min_tasks, int(args.volume / mb))
    _pipeline(system, x, min(n, args.window), args.window, timeout=120)  # warm-up at this size
    C.malloc_trim()
    with MemPeak() as mem:
        base = mem.sample()
        t = C.now()
        _pipeline(system, x, n, args.window, timeout=120 + mb)
        wall = C.now() - t
    in_flight = args.window * x.nbytes
    extra = {k: v - base.get(k, 0) for k, v in mem.peak_by_role.items()}
    return {"mb": mb, "tasks": n, "wall": wall, "mb_per_s": 2 * n * x.nbytes / MB / wall,
            "copies": (mem.peak_total - sum(base.values())) / in_flight,
            "copies_by_role": {k: round(v / in_flight, 2) for k, v in extra.items()}}


def _floor(sizes, args) -> dict:
    """One numpy copy, and a socketpair between two processes, at each size (MB/s)."""
    import numpy as np
    out = {}
    for mb in sizes:
        x = np.arange(int(mb * MB), dtype=np.uint8)
        reps = max(3, int(args.volume / mb / 4))
        t = C.now()
        for _ in range(reps):
            x.copy()
        copy = reps * x.nbytes / MB / (C.now() - t)
        out[str(mb)] = {"copy_mb_per_s": copy, "socketpair_mb_per_s": _socketpair_rate(x, reps)}
    return out


def _socketpair_rate(x, reps: int) -> float:
    import socket
    a, b = socket.socketpair()
    pid = os.fork()
    if pid == 0:  # the child drains the socket and acknowledges each array
        a.close()
        buf = bytearray(x.nbytes)
        for _ in range(reps):
            view, got = memoryview(buf), 0
            while got < x.nbytes:
                got += b.recv_into(view[got:])
            b.sendall(b"k")
        os._exit(0)
    b.close()
    t = C.now()
    for _ in range(reps):
        a.sendall(memoryview(x))
        a.recv(1)
    rate = reps * x.nbytes / MB / (C.now() - t)
    os.waitpid(pid, 0)
    a.close()
    return rate


def measure(args) -> dict:
    sizes = [float(s) for s in args.sizes.split(",")]
    if args.child == "floor":
        return {"system": "floor", "floor": _floor(sizes, args)}
    system = open_system(args.child, args.workers)
    try:
        return {"system": args.child, "sizes": {str(mb): _one_size(system, mb, args) for mb in sizes}}
    finally:
        system.close()


# ----------------------------------------------------------------------------------------------------
# parent
# ----------------------------------------------------------------------------------------------------
def _size_label(mb: float) -> str:
    return f"{mb:g} MB"


def _best(runs: list) -> dict:
    """Per size, the repetition with the highest MB/s (copies from that same run)."""
    best: dict = {}
    for r in runs:
        for size, s in ((r.get("result") or {}).get("sizes") or {}).items():
            if size not in best or s["mb_per_s"] > best[size]["mb_per_s"]:
                best[size] = s
    return best


def report(results: dict, sizes: list, systems: list) -> dict:
    best = {s: _best(results[s]) for s in systems if s != "floor"}
    rows = []
    for mb in sizes:
        key = str(float(mb))
        htex = (best.get("htex") or {}).get(key, {}).get("mb_per_s")
        ray = (best.get("ray") or {}).get(key, {}).get("mb_per_s")
        for s, per in best.items():
            v = per.get(key)
            if not v:
                continue
            roles = ", ".join(f"{k} {c:.1f}" for k, c in sorted(v["copies_by_role"].items()) if abs(c) >= 0.1)
            rows.append([_size_label(mb), SYSTEMS[s], v["tasks"], C.fmt_rate(v["mb_per_s"]).replace("/s", " MB/s"),
                         C.fmt_ratio(C.ratio(v["mb_per_s"], htex)), C.fmt_ratio(C.ratio(v["mb_per_s"], ray)),
                         f"{v['copies']:.1f}", roles])
    C.print_table(["size", "system", "tasks", "args+results", "vs HTEX", "vs Ray", "copies held",
                   "copies by role"], rows, title="\nnumpy x + 1, 2 workers (best of the repetitions)")
    floor = next(((r.get("result") or {}).get("floor") for r in results.get("floor", []) if r.get("ok")), None)
    if floor:
        C.print_table(["size", "one numpy copy", "socketpair, 2 processes"],
                      [[_size_label(float(k)), f"{v['copy_mb_per_s']:,.0f} MB/s", f"{v['socketpair_mb_per_s']:,.0f} MB/s"]
                       for k, v in floor.items()], title="\nthis machine's floor")
    return best


def plot(best: dict, sizes: list, out_dir: str | None) -> None:
    from benchmarks.harness import plots
    keys = [str(float(mb)) for mb in sizes]
    plots.grouped_bars("bench_arrays.png", "numpy x + 1 through each system, 2 workers", "MB/s (arguments + results)",
                       [_size_label(mb) for mb in sizes],
                       {SYSTEMS[s]: [(per.get(k) or {}).get("mb_per_s") for k in keys] for s, per in best.items()},
                       out_dir=out_dir)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    C.add_common_args(p)
    p.add_argument("--sizes", default="1,10,100", help="array sizes in MB (default 1,10,100)")
    p.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma list of {', '.join(SYSTEMS)}")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--window", type=int, default=4, help="tasks in flight (default 4: 2 per worker)")
    p.add_argument("--volume", type=float, default=800, help="MB of arguments per size (default 800)")
    p.add_argument("--min-tasks", type=int, default=8)
    p.add_argument("--repeat", type=int, default=1, help="fresh-process runs per system; the best is reported")
    p.add_argument("--plots", default=None, metavar="DIR", help="write the PNG here (default docs/img/)")
    p.add_argument("--no-plots", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.volume, args.min_tasks = "1,10", 40, 4
    if args.child:
        C.child_main(args, measure)
        return 0
    C.parse_common(args)
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    if any(s not in SYSTEMS for s in systems):
        p.error(f"unknown system in {systems}")
    sizes = [float(s) for s in args.sizes.split(",")]
    info = C.machine_info()
    print(f"bench_arrays: {args.workers} workers, sizes {args.sizes} MB, window {args.window}, ~{args.volume:g} MB "
          f"of arguments per size; load {info['loadavg'][0]:.2f}; numpy {info.get('numpy')}, ray {info.get('ray')}, "
          f"parsl {info.get('parsl')}, faasx {info.get('faasx')} ({info.get('git')})", flush=True)
    child_args = ["--sizes", args.sizes, "--workers", str(args.workers), "--window", str(args.window),
                  "--volume", str(args.volume), "--min-tasks", str(args.min_tasks)]
    results, errors = C.run_systems(os.path.abspath(__file__), systems, child_args, timeout=600, names=SYSTEMS,
                                    reps=args.repeat)
    best = report(results, sizes, systems)
    note = C.busy_note(r for rs in results.values() for r in rs)
    if note:
        print(note)
    if not args.no_plots and not args.quick:
        plot(best, sizes, args.plots)
    return C.finish("bench_arrays", args, {"bench": "arrays", "machine": info, "best": best,
                                           "runs": {s: [r.get("result") for r in rs] for s, rs in results.items()}},
                    errors)


if __name__ == "__main__":
    sys.exit(main())
