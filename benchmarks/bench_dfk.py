#!/usr/bin/env python
"""Through Parsl's DataFlowKernel: ``@python_app`` no-ops on faasx vs HTEX (and the DFK's own ceiling).

Systems (each in its own fresh process, loaded with ``parsl.load(Config(executors=[...]))``):

* ``faasx-parsl`` -- ``faasx.FaaSExecutor(label="faasx", max_workers_per_node=2, provider=LocalProvider(
                     init_blocks=1, max_blocks=1))``
* ``htex``        -- ``HighThroughputExecutor(max_workers_per_node=2, provider=LocalProvider(init_blocks=1,
                     max_blocks=1))``
* ``threads``     -- Parsl's ``ThreadPoolExecutor(max_threads=2)``: no serialization, no processes; the
                     DataFlowKernel's own ceiling on this machine

N ``@python_app`` calls are made one by one, then all AppFutures are awaited -> tasks/s.  Also the p50
of sequential app round trips and the load -> first result time.  Target: faasx at least HTEX's rate.

    python benchmarks/bench_dfk.py              # 20,000 tasks per system
    python benchmarks/bench_dfk.py --quick
"""
from __future__ import annotations

import argparse
import os
import sys

try:
    from benchmarks import common as C
except ImportError:  # run as a script
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from benchmarks import common as C


def noop(x):
    return x


SYSTEMS = {
    "faasx-parsl": "faasx.FaaSExecutor",
    "htex": "Parsl HTEX",
    "threads": "ThreadPoolExecutor",
}


def measure(args) -> dict:
    system = args.child
    res: dict = {"system": system}
    t0 = C.now()
    import parsl
    from parsl import python_app
    if system == "faasx-parsl":
        executor = C.make_faas_executor(args.workers)
    elif system == "htex":
        executor = C.make_htex(args.workers)
    else:
        from parsl.executors import ThreadPoolExecutor
        executor = ThreadPoolExecutor(label="threads", max_threads=args.workers)
    res["import_s"] = C.now() - t0

    t0 = C.now()
    C.parsl_load(executor)
    try:
        app = python_app(noop)
        first = app(0).result(timeout=args.cold_timeout)
        res["cold_start_s"] = C.now() - t0
        assert first == 0

        C.wait_all([app(i) for i in range(args.warmup)], timeout=120)

        lat = []
        for i in range(args.latency):
            t = C.now()
            app(i).result(timeout=60)
            lat.append(C.now() - t)
        res["latency"] = C.summarize_latencies(lat)

        n = args.tasks
        t = C.now()
        futs = [app(i) for i in range(n)]
        t_sub = C.now() - t
        C.wait_all(futs, timeout=max(120.0, n / 50.0))
        elapsed = C.now() - t
        total = sum(f.result() for f in futs)
        if total != n * (n - 1) // 2:
            raise AssertionError(f"sum of results {total} != {n * (n - 1) // 2}")
        res["throughput"] = {"tasks": n, "elapsed_s": elapsed, "tasks_per_s": n / elapsed,
                             "submit_s": t_sub, "submit_per_s": n / t_sub}
        del futs
    finally:
        t = C.now()
        C.parsl_cleanup()
        res["shutdown_s"] = C.now() - t
    del parsl
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    C.add_common_args(p)
    p.add_argument("--tasks", type=int, default=20_000, help="apps per system (default 20,000)")
    p.add_argument("--latency", type=int, default=200, help="sequential app round trips (default 200)")
    p.add_argument("--warmup", type=int, default=300)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma list of {', '.join(SYSTEMS)}")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--cold-timeout", type=float, default=120.0)
    args = p.parse_args(argv)
    if args.quick:
        args.tasks = min(args.tasks, 300)
        args.latency = min(args.latency, 30)
        args.warmup = min(args.warmup, 30)
    if args.child:
        C.child_main(args, measure)
        return 0
    C.parse_common(args)

    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    for s in systems:
        if s not in SYSTEMS:
            p.error(f"unknown system {s!r}")
    info = C.machine_info()
    print(f"bench_dfk: @python_app noop through Parsl's DataFlowKernel, {args.workers} workers, {args.tasks:,} "
          f"tasks; {info.get('cpus')} cpus, parsl {info.get('parsl')}, faasx {info.get('faasx')} ({info.get('git')})",
          flush=True)
    child_args = ["--tasks", str(args.tasks), "--latency", str(args.latency), "--warmup", str(args.warmup),
                  "--workers", str(args.workers), "--cold-timeout", str(args.cold_timeout)]
    timeout = 240 + args.tasks / 100 + args.cold_timeout
    runs, errors = C.run_systems(os.path.abspath(__file__), systems, child_args, timeout=timeout, names=SYSTEMS,
                                 reps=args.repeat)
    table, missed = report(runs, systems, args.repeat)
    note = C.busy_note(r for rs in runs.values() for r in rs)
    if note:
        print(note)
    return C.finish("bench_dfk", args, {"bench": "dfk", "machine": info, "runs": runs, "table": table,
                                        "missed": missed}, errors)


def report(runs: dict, systems: list, repeat: int):
    """The table (medians over the runs) and the missed targets."""
    def med(s, *path):
        vals = []
        for r in runs.get(s, []):
            v = r.get("result") if r.get("ok") else None
            for k in path:
                v = v.get(k) if isinstance(v, dict) else None
            if v is not None:
                vals.append(v)
        return C.median(vals) if vals else None

    htex_rate = med("htex", "throughput", "tasks_per_s")
    rows = []
    missed = []
    for s in systems:
        rate = med(s, "throughput", "tasks_per_s")
        r = C.ratio(rate, htex_rate)
        cell = C.fmt_ratio(r)
        if s == "faasx-parsl" and r is not None:
            vd = C.verdict(r, 1.0, True)
            cell += f" {vd}"
            if vd == "MISSED":
                missed.append(f"faasx through the DFK: {C.fmt_rate(rate)} < HTEX {C.fmt_rate(htex_rate)}")
        rows.append([SYSTEMS[s], C.fmt_rate(rate), cell, C.fmt_rate(med(s, "throughput", "submit_per_s")),
                     C.fmt_ms(med(s, "latency", "p50")), C.fmt_s(med(s, "cold_start_s")),
                     ">= 1.00x" if s == "faasx-parsl" else ("ceiling" if s == "threads" else "")])
    print()
    table = C.print_table(["executor under the DFK", "tasks/s", "vs HTEX", "app-call phase", "p50 round trip",
                           "load->first result", "target"], rows,
                          title=f"Parsl DataFlowKernel, @python_app (median of {repeat} run(s))")
    print()
    for x in missed:
        print(f"MISSED: {x}")
    return table, missed


if __name__ == "__main__":
    sys.exit(main())
