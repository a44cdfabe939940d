#!/usr/bin/env python
"""Engine benchmark: faasx vs Parsl's HighThroughputExecutor, side by side, same run.

No-op ``def noop(x): return x``, 2 workers, one local block.  Systems (each in its own fresh process):

* ``faasx``        -- ``faasx.Executor(max_workers_per_node=2)``, ``ex.submit(noop, i)``
* ``faasx-parsl``  -- ``faasx.FaaSExecutor`` loaded with ``parsl.load(Config(executors=[fx]))``,
                      then ``fx.submit(noop, {}, i)`` directly (no DataFlowKernel on the hot path)
* ``htex``         -- ``HighThroughputExecutor(max_workers_per_node=2, provider=LocalProvider(init_blocks=1,
                      max_blocks=1))`` loaded the same way, then ``htex.submit(noop, {}, i)``

Per system: cold start (construct/load -> first result), latency (p50/p90 of sequential round trips
after warm-up), throughput (N tasks submitted one by one, then awaited), and for ``faasx`` also
``map(noop, range(M), chunksize=256)``.  Prints a table with ratios against HTEX and the targets of
BASELINES.md; exits non-zero only on errors (a missed target is printed as MISSED).

    python benchmarks/bench_engine.py                # full run (20,000 tasks)
    python benchmarks/bench_engine.py --quick        # smoke run
    python benchmarks/bench_engine.py --systems htex --repeat 3
"""
from __future__ import annotations

import argparse
import os
import sys

try:
    from benchmarks import common as C
except ImportError:  # run as a script: python benchmarks/bench_engine.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from benchmarks import common as C


def noop(x):
    return x


EXPERIMENTS = ("faasx-plain", "faasx-unpinned", "faasx-zmq")     # faasx.Executor variants, only with --systems
SYSTEMS = {
    "faasx": "faasx.Executor",
    # the cost of authentication: the same, without CurveZMQ (not a default; only with --systems)
    "faasx-plain": "faasx.Executor encrypted=False",
    # the placement experiment (issue 12): the engine's threads never pinned (only with --systems)
    "faasx-unpinned": "faasx.Executor engine_cpu=None",
    # the same-host manager on ZeroMQ's ipc transport instead of its direct link (only with --systems)
    "faasx-zmq": "faasx.Executor FAASX_DIRECT_LINKS=0",
    "faasx-parsl": "faasx.FaaSExecutor",
    "htex": "Parsl HTEX",
}


# ----------------------------------------------------------------------------------------------------
# child: measure one system
# ----------------------------------------------------------------------------------------------------
def _throughput(submit, n: int) -> dict:
    """N tasks submitted one by one, then all awaited; every result checked (their sum)."""
    cpu0 = C.tree_cpu()
    t = C.now()
    futs = [submit(i) for i in range(n)]
    t_sub = C.now() - t
    C.wait_all(futs, timeout=max(120.0, n / 100.0))
    elapsed = C.now() - t
    total = sum(f.result() for f in futs)
    if total != n * (n - 1) // 2:
        raise AssertionError(f"throughput: sum of results {total} != {n * (n - 1) // 2}")
    del futs
    return {"tasks": n, "elapsed_s": elapsed, "tasks_per_s": n / elapsed, "submit_s": t_sub, "submit_per_s": n / t_sub,
            "cpu_us": C.cpu_delta(cpu0, C.tree_cpu(), n)}


def _map(ex, m: int, chunksize: int) -> dict:
    t = C.now()
    total = sum(ex.map(noop, range(m), chunksize=chunksize, timeout=max(120.0, m / 1000.0)))
    elapsed = C.now() - t
    if total != m * (m - 1) // 2:
        raise AssertionError(f"map: sum of results {total} != {m * (m - 1) // 2}")
    return {"tasks": m, "chunksize": chunksize, "elapsed_s": elapsed, "tasks_per_s": m / elapsed}


def measure(args) -> dict:
    system = args.child
    res: dict = {"system": system}
    if args.cpus:  # pin this process, and so everything it starts, to these CPUs
        os.sched_setaffinity(0, {int(c) for c in args.cpus.split(",")})
        res["cpus"] = sorted(os.sched_getaffinity(0))
    t0 = C.now()
    # imports are not part of cold start (faasx imports lazily: touch the class to import it now)
    if system == "faasx-zmq":
        os.environ["FAASX_DIRECT_LINKS"] = "0"     # read by the interchange this child starts
    if system in ("faasx",) + EXPERIMENTS:
        import faasx
        faasx.Executor  # noqa: B018
    else:
        import parsl  # noqa: F401
        if system == "faasx-parsl":
            import faasx
            faasx.FaaSExecutor  # noqa: B018
            import faasx.providers  # noqa: F401
        from parsl.executors import HighThroughputExecutor  # noqa: F401
    res["import_s"] = C.now() - t0

    # ---- cold start: constructing / loading the executor -> first result
    t0 = C.now()
    if system in ("faasx",) + EXPERIMENTS:
        ex = faasx.Executor(max_workers_per_node=args.workers, encrypted=system != "faasx-plain",
                            **({"engine_cpu": None} if system == "faasx-unpinned" else {}))

        def submit(i):
            return ex.submit(noop, i)

        def close():
            ex.shutdown(wait=True)
    else:
        executor = (C.make_faas_executor(args.workers) if system == "faasx-parsl"
                    else C.make_htex(args.workers))
        C.parsl_load(executor)

        def submit(i):
            return executor.submit(noop, {}, i)

        close = C.parsl_cleanup
    try:
        first = submit(0).result(timeout=args.cold_timeout)
        res["cold_start_s"] = C.now() - t0
        assert first == 0, f"first result {first!r} != 0"
        if system != "htex" and res["cold_start_s"] > 5.0:  # keep this run's logs for diagnosis
            res["anomaly"] = f"cold start took {res['cold_start_s']:.1f}s"

        # ---- warm-up: a burst and some round trips
        C.wait_all([submit(i) for i in range(args.warmup)], timeout=120)
        for i in range(30):
            submit(i).result(timeout=60)

        # ---- latency: sequential submit -> result round trips
        lat = []
        for i in range(args.latency):
            t = C.now()
            r = submit(i).result(timeout=60)
            lat.append(C.now() - t)
            if r != i:
                raise AssertionError(f"latency task {i} returned {r!r}")
        res["latency"] = C.summarize_latencies(lat)
        res["latency_samples"] = lat  # for the distribution plot
        # CPU per round trip, by process role, over a longer sequential run (CPU times tick at 10 ms)
        if args.cpu_rounds:
            cpu0 = C.tree_cpu()
            for i in range(args.cpu_rounds):
                submit(i).result(timeout=60)
            res["latency"]["cpu_us"] = C.cpu_delta(cpu0, C.tree_cpu(), args.cpu_rounds)

        # ---- throughput: N tasks submitted one by one, then awaited
        res["throughput"] = _throughput(submit, args.tasks)
        # ---- faasx only: map with chunking
        if system == "faasx" and args.map_tasks:
            res["map"] = _map(ex, args.map_tasks, args.chunksize)
    finally:
        t = C.now()
        close()
        res["shutdown_s"] = C.now() - t
    return res


# ----------------------------------------------------------------------------------------------------
# parent
# ----------------------------------------------------------------------------------------------------
def get(r: dict | None, *path):
    for p in path:
        if r is None:
            return None
        r = r.get(p) if isinstance(r, dict) else None
    return r


def combine(runs: list[dict]) -> dict | None:
    """Median over repeats of every metric we report."""
    ok = [r["result"] for r in runs if r.get("ok") and r.get("result")]
    if not ok:
        return None
    keys = [("cold_start_s",), ("import_s",), ("shutdown_s",), ("latency", "p50"), ("latency", "p90"),
            ("latency", "p99"), ("throughput", "tasks_per_s"), ("throughput", "submit_per_s"),
            ("map", "tasks_per_s"), ("latency", "cpu_us", "total"), ("throughput", "cpu_us", "total")]
    out: dict = {}
    for k in keys:
        vals = [get(r, *k) for r in ok]
        vals = [v for v in vals if v is not None]
        out[".".join(k)] = C.median(vals) if vals else None
    return out


def plot_latency(runs: dict, out_dir) -> None:
    """Distributions of the sequential round trips, all runs of a system pooled, as CDFs (PNG)."""
    from benchmarks.harness import plots
    samples = {SYSTEMS[s]: [x * 1e3 for r in rs if r.get("ok") for x in (r["result"].get("latency_samples") or [])]
               for s, rs in runs.items()}
    plots.distributions("bench_engine_latency.png", "Sequential submit -> result round trips, 2 workers", samples,
                        "round trip (ms, log scale)", out_dir=out_dir)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    C.add_common_args(p)
    p.add_argument("--tasks", type=int, default=20_000, help="tasks for the throughput test (default 20,000)")
    p.add_argument("--latency", type=int, default=300, help="sequential round trips measured (default 300)")
    p.add_argument("--warmup", type=int, default=500, help="warm-up burst before measuring (default 500)")
    p.add_argument("--cpu-rounds", type=int, default=2000,
                   help="extra sequential round trips over which CPU per round trip is measured (default 2000)")
    p.add_argument("--map-tasks", type=int, default=200_000,
                   help="tasks for faasx map(chunksize) (default 200,000; 0 to skip)")
    p.add_argument("--chunksize", type=int, default=256)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--cpus", default="", metavar="LIST",
                   help="pin each system (its child process and everything it starts) to these CPUs, e.g. 0 "
                        "(an experiment: by default nothing is pinned)")
    p.add_argument("--systems", default=",".join(s for s in SYSTEMS if s not in EXPERIMENTS),
                   help=f"comma list of {', '.join(SYSTEMS)}")
    p.add_argument("--repeat", type=int, default=1, help="fresh-process runs per system; medians reported")
    p.add_argument("--cold-timeout", type=float, default=120.0, help="seconds allowed for the first result")
    p.add_argument("--plots", default=None, metavar="DIR", help="write the PNG here (default docs/img/)")
    p.add_argument("--no-plots", action="store_true")
    args = p.parse_args(argv)

    if args.quick:
        args.tasks = min(args.tasks, 300)
        args.latency = min(args.latency, 50)
        args.warmup = min(args.warmup, 50)
        args.cpu_rounds = min(args.cpu_rounds, 100)
        args.map_tasks = min(args.map_tasks, 2_000)
    if args.child:
        C.child_main(args, measure)
        return 0
    C.parse_common(args)

    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    for s in systems:
        if s not in SYSTEMS:
            p.error(f"unknown system {s!r}")
    info = C.machine_info()
    print(f"bench_engine: noop, {args.workers} workers, one local block; throughput {args.tasks:,} tasks, "
          f"latency {args.latency} round trips, map {args.map_tasks:,} tasks chunksize={args.chunksize}; "
          + (f"ALL PINNED to CPUs {args.cpus}; " if args.cpus else "") +
          f"{info.get('cpus')} cpus, parsl {info.get('parsl')}, faasx {info.get('faasx')} ({info.get('git')})",
          flush=True)

    child_args = ["--tasks", str(args.tasks), "--latency", str(args.latency), "--warmup", str(args.warmup),
                  "--cpu-rounds", str(args.cpu_rounds), "--map-tasks", str(args.map_tasks), "--chunksize", str(args.chunksize),
                  "--workers", str(args.workers), "--cold-timeout", str(args.cold_timeout),
                  "--cpus", args.cpus]
    timeout = 240 + args.tasks / 300 + args.map_tasks / 2000 + args.cold_timeout
    runs, errors = C.run_systems(os.path.abspath(__file__), systems, child_args, timeout=timeout, names=SYSTEMS,
                                 reps=args.repeat)
    med, table, missed = report(runs, systems, args)
    note = C.busy_note(r for rs in runs.values() for r in rs)
    if note:
        print(note)
    if not args.no_plots and not args.quick:
        plot_latency(runs, args.plots)
    return C.finish("bench_engine", args, {"bench": "engine", "machine": info, "runs": runs, "median": med,
                                           "table": table, "missed": missed}, errors)


def print_cpu_by_role(runs: dict, systems: list) -> None:
    """Where the CPU goes, per process role (median over runs)."""
    roles = ["client", "interchange", "manager", "worker", "other"]
    brows = []
    for s in systems:
        for phase, label in (("latency", "per sequential round trip"), ("throughput", "per task, throughput run")):
            cells = [f"{SYSTEMS[s]}, {label}"]
            for role in roles + ["total"]:
                vals = [get(r.get("result"), phase, "cpu_us", role) for r in runs[s] if r.get("ok")]
                vals = [v for v in vals if v is not None]
                cells.append(C.fmt_us(C.median(vals)) if vals else "-")
            brows.append(cells)
    print()
    C.print_table(["CPU time (user+sys)"] + roles + ["total"], brows,
                  title="Where the CPU goes (microseconds of CPU per task, by process role)")


def report(runs: dict, systems: list, args):
    """The results table (medians, ratios to HTEX, targets), the CPU-by-role table, the missed targets."""
    med = {s: combine(runs[s]) for s in systems}

    def m(s, k):
        return (med.get(s) or {}).get(k)

    faas_cols = [s for s in ("faasx",) + EXPERIMENTS + ("faasx-parsl",) if s in systems]
    headers = ["metric"]
    for s in faas_cols:
        headers += [SYSTEMS[s], "ratio"]
    headers += ["HTEX", "target"]
    rows = []
    missed = []

    def row(label, key, fmt, target_ratio=None, higher=True, absolute=None):
        cells = [label]
        for s in faas_cols:
            v = m(s, key)
            cells.append(fmt(v))
            if absolute is not None:
                verdict = C.verdict(C.ratio(v, absolute), 1.0, True) if v is not None else "n/a"
                cells.append(verdict if v is not None else "-")
                if verdict == "MISSED":
                    missed.append(f"{SYSTEMS[s]} {label}: {fmt(v)} (target >= {absolute:,.0f}/s)")
                continue
            r = C.ratio(v, m("htex", key))
            cell = C.fmt_ratio(r)
            if target_ratio is not None and r is not None:
                vd = C.verdict(r, target_ratio, higher)
                cell += f" {vd}"
                if vd == "MISSED":
                    missed.append(f"{SYSTEMS[s]} {label}: {C.fmt_ratio(r)} of HTEX "
                                  f"(target {'>=' if higher else '<='} {C.fmt_ratio(target_ratio)})")
            cells.append(cell)
        cells.append(fmt(m("htex", key)) if "htex" in systems else "-")
        if absolute is not None:
            cells.append(f">= {absolute:,.0f}/s")
        elif target_ratio is not None:
            cells.append((">= " if higher else "<= ") + C.fmt_ratio(target_ratio))
        else:
            cells.append("")
        rows.append(cells)

    row("throughput (submit loop)", "throughput.tasks_per_s", C.fmt_rate, 5.0, True)
    row("latency p50", "latency.p50", C.fmt_ms, 1 / 3, False)
    row("latency p90", "latency.p90", C.fmt_ms)
    row("cold start", "cold_start_s", C.fmt_s, 0.2, False)
    if "faasx" in systems and args.map_tasks:
        row(f"map chunksize={args.chunksize}", "map.tasks_per_s", C.fmt_rate, absolute=100_000.0)
    row("submit phase only", "throughput.submit_per_s", C.fmt_rate)
    row("latency p99", "latency.p99", C.fmt_ms)
    row("CPU per round trip, all processes", "latency.cpu_us.total", C.fmt_us)
    row("CPU per task in throughput run", "throughput.cpu_us.total", C.fmt_us)
    row("import time", "import_s", C.fmt_s)
    row("shutdown", "shutdown_s", C.fmt_s)
    print()
    table = C.print_table(headers, rows, title=f"Results (median of {args.repeat} fresh-process run(s) per "
                                               f"system; ratio = faasx / HTEX)")
    print_cpu_by_role(runs, systems)
    print()
    if missed:
        for x in missed:
            print(f"MISSED: {x}")
    elif "htex" in systems and faas_cols and all(med.get(s) for s in systems):
        print("all targets met")
    return med, table, missed


if __name__ == "__main__":
    sys.exit(main())
