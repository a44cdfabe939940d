"""The funcX paper's scaling study on one machine: a real interchange, a swarm of simulated managers.

One fresh child process per scale runs a real ``faasx.Executor`` (real client, real interchange) whose
provider, ``SwarmProvider`` (a ``faasx.providers.LocalProvider``), starts each block as a swarm of
simulated managers (``benchmarks/swarm.py``) instead of one ``faasx-manager``: the swarm gets the very
launch command the executor built (addresses, port, ipc socket, cert dir with the token and keys)
and speaks the real protocol, each simulated manager with ``--workers`` simulated workers (default 64).  Scales: 4 -> 2,048
managers x 64 = 256 -> 131,072 workers; task durations 0, 10 ms, 100 ms, 1 s (``sleep_task(d)``: the
swarm holds each task d seconds).  Measured per scale:

* registration: executor construction -> every manager registered (``interchange_stats()``);
* p50 of sequential no-op round trips (and 10 ms ones, minus the 10 ms);
* per duration: N tasks submitted one by one, all awaited; tasks/s, utilisation = N x d / (workers x
  makespan), tasks per TASKS message to the managers (the swarm counts them), CPU per task of the
  interchange, of the swarm (it must stay below the interchange's: it is printed) and of the client,
  interchange RSS afterwards.

    python benchmarks/bench_scale.py [--managers 4,16,64,256,1024,2048] [--workers 64] [--quick]

Traffic stays on this host (``ipc://``, a socket file in the run directory, as same-host managers use); every
run is bounded (per-cell task counts, ``--max-tasks``, the child's wall-clock bound).
"""
from __future__ import annotations

import argparse
import glob
import json
import math
import os
import shlex
import sys
import time

try:
    from benchmarks import common as C
except ImportError:  # run as a script: python benchmarks/bench_scale.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from benchmarks import common as C

SWARM = os.path.join(os.path.dirname(os.path.abspath(__file__)), "swarm.py")
DURATIONS = (0.0, 0.01, 0.1, 1.0)
PAPER = "funcX paper: 1,694 tasks/s on 65,536 workers"


def sleep_task(d):
    """What the tasks would run on real workers; the swarm holds each for ``d`` s instead."""
    import time
    time.sleep(d)


# ----------------------------------------------------------------------------------------------------
# the provider: a block is a swarm process
# ----------------------------------------------------------------------------------------------------
def _swarm_provider_class():
    from faasx.providers import LocalProvider

    class SwarmProvider(LocalProvider):
        """faasx's LocalProvider whose blocks run ``swarm.py`` with the manager options of the launch
        command the executor hands to ``submit`` (the public provider interface)."""

        def __init__(self, blocks: int, managers_per_block: int, workers: int, prefetch: int, stats_dir: str):
            super().__init__(init_blocks=blocks, min_blocks=blocks, max_blocks=blocks)
            self.swarm = [sys.executable, SWARM, "--managers", str(managers_per_block), "--sim-workers",
                          str(workers), "--prefetch", str(prefetch), "--stats-dir", stats_dir]

        def submit(self, command: str, tasks_per_node: int, job_name: str = "swarm") -> str:
            argv = shlex.split(command)
            manager_opts = argv[argv.index("--addresses"):]
            return super().submit(" ".join(shlex.quote(a) for a in self.swarm + manager_opts), tasks_per_node,
                                  job_name)

    return SwarmProvider


# ----------------------------------------------------------------------------------------------------
# child: one scale
# ----------------------------------------------------------------------------------------------------
def _processes():
    """(interchange, [swarm processes]) among this child's descendants."""
    import psutil
    ic, swarms = None, []
    for p in psutil.Process().children(recursive=True):
        try:
            cmd = " ".join(p.cmdline())
        except psutil.Error:
            continue
        if "faasx-interchange" in cmd or "interchange import main" in cmd:
            ic = p
        elif "swarm.py" in cmd and "python" in p.name():
            swarms.append(p)
    return ic, swarms


def _cpu(procs) -> float:
    import psutil
    total = 0.0
    for p in procs:
        try:
            total += C.process_cpu(p)
        except psutil.Error:
            pass
    return total


def _swarm_counters(stats_dir: str) -> dict:
    out: dict = {}
    for path in glob.glob(os.path.join(stats_dir, "swarm-*.json")):
        try:
            with open(path) as f:
                for k, v in json.load(f).items():
                    if isinstance(v, (int, float)) and k != "pid":
                        out[k] = out.get(k, 0) + v
        except (OSError, ValueError):
            pass
    return out


def _wait_registered(ex, managers: int, timeout: float) -> float:
    t0 = C.now()
    deadline = t0 + timeout
    while C.now() < deadline:
        if ex.executor.interchange_stats().get("managers", 0) >= managers:
            return C.now()
        time.sleep(0.1)
    raise TimeoutError(f"only {ex.executor.interchange_stats().get('managers')} of {managers} managers "
                       f"registered within {timeout:.0f}s")


def _round_trips(ex, d: float, n: int) -> dict:
    lat = []
    for _ in range(n):
        t = C.now()
        ex.submit(sleep_task, d).result(timeout=60)
        lat.append(C.now() - t - d)
    return C.summarize_latencies(lat)


def _tasks_for(d: float, workers: int, args) -> int:
    """Enough tasks for ~``--seconds`` of ideal makespan at this duration, within the bounds."""
    if d <= 0:
        return args.tasks
    return int(max(min(args.max_tasks, workers * args.seconds / d), min(workers, args.max_tasks)))


def _submit_each(ex, d: float, n: int, timeout: float):
    """``n`` tasks submitted one by one; returns a callable that waits for them all."""
    futs = [ex.submit(sleep_task, d) for _ in range(n)]
    return lambda: C.wait_all(futs, timeout=timeout)


def _submit_map(chunksize: int):
    def submit(ex, d: float, n: int, timeout: float):
        """``map(sleep_task, [d] * n, chunksize)``: n calls in n / chunksize tasks (all submitted
        before ``map`` returns); the callable consumes the results."""
        it = ex.map(sleep_task, [d] * n, timeout=timeout, chunksize=chunksize)
        return lambda: sum(1 for _ in it)
    return submit


def _cell(ex, d: float, n: int, workers: int, stats_dir: str, submit=_submit_each, mode: str = "submit") -> dict:
    """One cell: ``n`` calls of ``d`` s through ``submit``; rates count calls (a map chunk has several)."""
    ic, swarms = _processes()
    time.sleep(0.3)  # the swarm's counters file is at most 0.25 s old
    c0, ic0, sw0, cl0 = _swarm_counters(stats_dir), _cpu([ic]), _cpu(swarms), sum(os.times()[:2])
    t = C.now()
    wait = submit(ex, d, n, 120 + 4 * n * d / workers + n / 2000)
    t_sub = C.now() - t
    wait()
    wall = C.now() - t
    ic1, sw1, cl1 = _cpu([ic]), _cpu(swarms), sum(os.times()[:2])
    time.sleep(0.3)
    c1 = _swarm_counters(stats_dir)
    msgs = c1.get("task_msgs", 0) - c0.get("task_msgs", 0)
    tasks_in = c1.get("tasks_in", 0) - c0.get("tasks_in", 0)
    return {"d": d, "mode": mode, "tasks": n, "engine_tasks": tasks_in, "wall": wall, "rate": n / wall,
            "submit_rate": n / t_sub, "utilisation": n * d / (workers * wall) if d > 0 else None,
            "ideal_wall": max(n * d / workers, d), "tasks_per_msg": tasks_in / msgs if msgs else None,
            "ic_us": (ic1 - ic0) / n * 1e6, "swarm_us": (sw1 - sw0) / n * 1e6, "client_us": (cl1 - cl0) / n * 1e6,
            "ic_rss": ic.memory_info().rss if ic else None}


def _map_cells(ex, workers: int, stats_dir: str, args) -> list:
    """Sustained load through ``map``: ``--map-seconds`` of work for every worker, in chunks."""
    cells = []
    for d in [float(x) for x in args.map_durations.split(",") if x]:
        n = int(workers * args.map_seconds / d)
        cells.append(_cell(ex, d, n, workers, stats_dir, _submit_map(args.map_chunksize),
                           f"map/{args.map_chunksize}"))
    return cells


def measure(args) -> dict:
    import resource

    import faasx
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the interchange inherits it: a fd per manager
    managers = int(args.child)
    blocks = math.ceil(managers / args.per_process)
    per_block = math.ceil(managers / blocks)
    stats_dir = os.path.join(C.child_tmpdir(), "swarm-stats")
    os.makedirs(stats_dir, exist_ok=True)
    provider = _swarm_provider_class()(blocks, per_block, args.workers, args.prefetch, stats_dir)
    workers = blocks * per_block * args.workers
    res = {"managers": blocks * per_block, "workers": workers, "swarm_processes": blocks, "cells": []}
    t0 = C.now()
    ex = faasx.Executor(provider, strategy=None, max_workers_per_node=args.workers,
                        run_dir=os.path.join(C.child_tmpdir(), "run"))
    try:
        res["register_s"] = _wait_registered(ex, blocks * per_block, timeout=60 + managers / 20) - t0
        res["latency_0"] = _round_trips(ex, 0.0, args.round_trips)
        res["latency_10ms"] = _round_trips(ex, 0.01, max(10, args.round_trips // 4))
        for d in [float(x) for x in args.durations.split(",")]:
            res["cells"].append(_cell(ex, d, _tasks_for(d, workers, args), workers, stats_dir))
        res["map_cells"] = _map_cells(ex, workers, stats_dir, args)
        res["swarm"] = _swarm_counters(stats_dir)
    finally:
        ex.shutdown(wait=True)
    return res


# ----------------------------------------------------------------------------------------------------
# parent
# ----------------------------------------------------------------------------------------------------
def _fmt_pct(v) -> str:
    return "-" if v is None else f"{v:.0%}"


def report(results: list) -> None:
    rows = []
    for r in results:
        for c in r["cells"] + r.get("map_cells", []):
            rows.append([f"{r['workers']:,} ({r['managers']:,} x {r['workers'] // r['managers']})",
                         f"{c['d'] * 1e3:g} ms" + ("" if c.get("mode", "submit") == "submit" else f" {c['mode']}"),
                         f"{c['tasks']:,}", C.fmt_rate(c["rate"]), _fmt_pct(c["utilisation"]),
                         f"{c['tasks_per_msg']:.1f}" if c["tasks_per_msg"] else "-", f"{c['ic_us']:.1f}",
                         f"{c['swarm_us']:.1f}", f"{c['client_us']:.1f}", C.fmt_mib(c["ic_rss"])])
    C.print_table(["workers (managers x W)", "task", "calls", "calls/s", "busy", "tasks/msg", "ic us/call",
                   "swarm us/call", "client us/call", "ic RSS"], rows,
                  title=f"\nThroughput by scale and task duration ({PAPER}); map/K: map(chunksize=K), K calls a task")
    rows = [[f"{r['workers']:,}", f"{r['managers']:,}", r["swarm_processes"], C.fmt_s(r["register_s"]),
             C.fmt_ms(r["latency_0"]["p50"]), C.fmt_ms(r["latency_0"]["p99"]), C.fmt_ms(r["latency_10ms"]["p50"])]
            for r in results]
    C.print_table(["workers", "managers", "swarm procs", "all registered", "no-op p50", "no-op p99",
                   "10 ms task p50 (minus 10 ms)"], rows, title="\nRegistration and sequential latency")


def plot(results: list, out_dir: str | None) -> None:
    from benchmarks.harness import plots
    series: dict = {}
    for r in results:
        for c in r["cells"]:
            series.setdefault(f"{c['d'] * 1e3:g} ms tasks", []).append((r["workers"], c["rate"]))
    plots.line_plot("bench_scale.png", "faasx interchange, simulated managers (64 workers each)", "workers",
                    "tasks/s", series, out_dir=out_dir, logx=True, logy=True, hline=1694,
                    hline_label="funcX paper, 65,536 workers")
    cost = {"interchange": [(r["workers"], r["cells"][0]["ic_us"]) for r in results if r["cells"]],
            "swarm (all simulated managers)": [(r["workers"], r["cells"][0]["swarm_us"]) for r in results if r["cells"]]}
    plots.line_plot("bench_scale_cpu.png", "CPU per no-op task", "workers", "us of CPU per task", cost,
                    out_dir=out_dir, logx=True, hline=10, hline_label="target 10 us")
    busy: dict = {}
    for r in results:
        for c in r["cells"] + r.get("map_cells", []):
            if c["utilisation"] is not None:
                label = f"{c['d'] * 1e3:g} ms tasks, " + ("submit()" if c.get("mode", "submit") == "submit"
                                                         else c["mode"].replace("map/", "map(chunksize=") + ")")
                busy.setdefault(label, []).append((r["workers"], 100 * c["utilisation"]))
    plots.line_plot("bench_scale_busy.png", "Workers busy (N x d / (workers x makespan))", "workers", "% busy",
                    busy, out_dir=out_dir, logx=True, hline=60, hline_label="target 60 % (1 s tasks)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    C.add_common_args(p)
    p.add_argument("--managers", default="4,16,64,256,1024,2048", help="scales, as numbers of managers")
    p.add_argument("--workers", type=int, default=64, help="simulated workers per manager (default 64)")
    p.add_argument("--prefetch", type=int, default=0, help="prefetch each simulated manager registers (default 0)")
    p.add_argument("--per-process", type=int, default=1024,
                   help="simulated managers per swarm process (default 1,024: fewer, busier processes batch more per wake-up)")
    p.add_argument("--durations", default=",".join(str(d) for d in DURATIONS), help="task durations, seconds")
    p.add_argument("--tasks", type=int, default=100_000, help="tasks per no-op cell (default 100,000)")
    p.add_argument("--max-tasks", type=int, default=200_000, help="tasks per cell at most (default 200,000)")
    p.add_argument("--seconds", type=float, default=4.0, help="ideal makespan per cell (default 4 s)")
    p.add_argument("--round-trips", type=int, default=200)
    p.add_argument("--map-durations", default="1", help="durations of the sustained map() cells ('' for none)")
    p.add_argument("--map-chunksize", type=int, default=16, help="chunksize of the map() cells (default 16)")
    p.add_argument("--map-seconds", type=float, default=32.0,
                   help="seconds of work per worker in a map() cell (default 32: two chunks of 16 x 1 s each)")
    p.add_argument("--plots", default=None, metavar="DIR", help="write the PNGs here (default docs/img/)")
    p.add_argument("--no-plots", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.managers, args.workers, args.durations = "2", min(args.workers, 8), "0,0.01"
        args.tasks, args.max_tasks, args.seconds, args.round_trips = 2000, 2000, 0.5, 20
        args.map_durations, args.map_chunksize, args.map_seconds = "0.01", 4, 0.1
    if args.child:
        C.child_main(args, measure)
        return 0
    C.parse_common(args)
    info = C.machine_info()
    print(f"bench_scale: managers {args.managers} x {args.workers} simulated workers, {args.per_process} per swarm "
          f"process, durations {args.durations} s; load {info['loadavg'][0]:.2f}; faasx {info.get('faasx')} "
          f"({info.get('git')})", flush=True)
    child_args = ["--workers", str(args.workers), "--prefetch", str(args.prefetch), "--per-process",
                  str(args.per_process), "--durations", args.durations, "--tasks", str(args.tasks),
                  "--max-tasks", str(args.max_tasks), "--seconds", str(args.seconds),
                  "--round-trips", str(args.round_trips), "--map-durations", args.map_durations,
                  "--map-chunksize", str(args.map_chunksize), "--map-seconds", str(args.map_seconds)]
    results, errors, runs = [], [], []
    for m in [int(x) for x in args.managers.split(",")]:
        r = C.run_child(os.path.abspath(__file__), ["--child", str(m), *child_args], timeout=900,
                        label=f"{m} managers x {args.workers}")
        runs.append(r)
        if r.get("ok") and not r.get("strays"):
            results.append(r["result"])
        else:
            errors.append(f"{m} managers: {(r.get('error') or 'stray processes').strip().splitlines()[-1:]}")
    if results:
        report(results)
    note = C.busy_note(runs)
    if note:
        print(note)
    if results and not args.no_plots and not args.quick:
        plot(results, args.plots)
    return C.finish("bench_scale", args, {"bench": "scale", "machine": info, "results": results}, errors)


if __name__ == "__main__":
    sys.exit(main())
