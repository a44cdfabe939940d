#!/usr/bin/env python
"""Choosing defaults (issue 5): throughput vs task duration, prefetch_capacity and map chunksize.

Task: ``sleeper(x, d)`` -- ``time.sleep(d)`` (skipped for d=0), returns x; d in 0, 1 and 10 ms.  2 workers,
one local block.  Each configuration runs in its own fresh process:

* ``faasx.Executor(max_workers_per_node=2, prefetch_capacity=P)`` for P in None (the default: adaptive), 0, 2,
  8, 32: tasks submitted one by one, then awaited (one child per P, all durations in it)
* ``faasx.Executor(max_workers_per_node=2)`` (default prefetch) with ``map(sleeper, xs, ds, chunksize=C)``
  for C in 1, 16, 256 (one child, all chunksizes and durations)
* ``--htex``: Parsl HTEX with ``prefetch_capacity=P`` (submit loop) as reference rows

The number of tasks per cell scales with the duration (the ideal for 2 workers is 2/d tasks/s), so every
cell takes a second or two; "eff" is the measured rate as a share of that ideal.

    python benchmarks/bench_prefetch.py
    python benchmarks/bench_prefetch.py --quick
    python benchmarks/bench_prefetch.py --prefetch 0,2,8,32 --chunksizes 1,16,256 --durations 0,1,10 --htex
"""
from __future__ import annotations

import argparse
import itertools
import os
import sys

try:
    from benchmarks import common as C
except ImportError:  # run as a script
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from benchmarks import common as C


def sleeper(x, d):
    if d:
        import time  # inside: the function is shipped by value, without this module's globals
        time.sleep(d)
    return x


def tasks_for(d_ms: float, args) -> int:
    """Enough tasks for ~args.cell_seconds at the ideal rate (2 workers), at least a few hundred."""
    if d_ms == 0:
        return args.tasks0
    ideal = args.workers * 1000.0 / d_ms
    return max(100, int(ideal * args.cell_seconds))


def measure(args) -> dict:
    kind, _, value = args.child.partition(":")
    durations = [float(x) for x in args.durations.split(",")]
    res: dict = {"config": args.child, "cells": []}
    t0 = C.now()
    if kind in ("prefetch", "map"):
        import faasx
        opts = {"prefetch_capacity": int(value)} if kind == "prefetch" and value != "default" else {}
        ex = faasx.Executor(max_workers_per_node=args.workers, **opts)

        def submit(i, d):
            return ex.submit(sleeper, i, d)

        def close():
            ex.shutdown(wait=True)
    elif kind == "htex":
        from parsl.executors import HighThroughputExecutor
        from parsl.providers import LocalProvider
        opts = {"prefetch_capacity": int(value)} if value != "default" else {}
        htex = HighThroughputExecutor(label="htex", max_workers_per_node=args.workers,
                                      provider=LocalProvider(init_blocks=1, max_blocks=1), **opts)
        C.parsl_load(htex)

        def submit(i, d):
            return htex.submit(sleeper, {}, i, d)

        close = C.parsl_cleanup
    else:
        raise ValueError(args.child)
    try:
        assert submit(0, 0).result(timeout=120) == 0
        res["cold_start_s"] = C.now() - t0
        C.wait_all([submit(i, 0) for i in range(200)], timeout=120)  # warm
        for d_ms in durations:
            d = d_ms / 1000.0
            n = tasks_for(d_ms, args)
            expected = n * (n - 1) // 2
            chunks = [int(c) for c in args.chunksizes.split(",")] if kind == "map" else [None]
            for cs in chunks:
                t = C.now()
                if cs is None:
                    futs = [submit(i, d) for i in range(n)]
                    C.wait_all(futs, timeout=120 + n * d)
                    total = sum(f.result() for f in futs)
                    del futs
                else:
                    total = sum(ex.map(sleeper, range(n), itertools.repeat(d, n), chunksize=cs,
                                       timeout=120 + n * d))
                elapsed = C.now() - t
                if total != expected:
                    raise AssertionError(f"d={d_ms}ms chunksize={cs}: sum {total} != {expected}")
                res["cells"].append({"duration_ms": d_ms, "chunksize": cs, "tasks": n, "elapsed_s": elapsed,
                                     "tasks_per_s": n / elapsed})
    finally:
        close()
    return res


def plot(grid: dict, durations: list, workers: int, out_dir) -> None:
    """The table as a heat map.  Colour: share of the ideal 2/d tasks/s for sleeps; for no-ops (no
    ideal) log(tasks/s) / log(best), since map's chunks are 100x the submit loop.  Text: the tasks/s."""
    import math

    from benchmarks.harness import plots
    best = [max((v[i] or 0) for v in grid.values()) or 1 for i in range(len(durations))]

    def colour(v, i, d):
        if v is None:
            return None
        return math.log10(max(v, 1)) / math.log10(max(best[i], 10)) if d == 0 else v / (workers * 1000.0 / d)

    share = [[colour(v[i], i, d) for i, d in enumerate(durations)] for v in grid.values()]
    texts = [[("-" if v[i] is None else f"{v[i]:,.0f}/s") + ("" if d == 0 or v[i] is None else
                                                          f" ({v[i] / (workers * 1000.0 / d):.0%})")
              for i, d in enumerate(durations)] for v in grid.values()]
    rows = [r.replace("faasx ", "").replace("prefetch_capacity", "prefetch").replace("None (default: adaptive)",
                                                                                   "None (adaptive)") for r in grid]
    plots.heatmap("bench_prefetch.png", f"faasx tasks/s by task duration, {workers} workers (colour: share of ideal; "
                  "0 ms: log share of best)", rows, [f"{d:g} ms tasks" for d in durations], share, texts=texts,
                  out_dir=out_dir, cbar_label="share")


def _cell_text(c, d_ms: float, workers: int) -> str:
    if c is None:
        return "-"
    txt = C.fmt_rate(c["tasks_per_s"])
    if d_ms:
        txt += f" ({100 * c['tasks_per_s'] / (workers * 1000.0 / d_ms):.0f}% eff)"
    return txt


def _config_cells(cfg: str, cells: list, durations: list, chunksizes: list) -> dict:
    """Row label -> the cell per duration (None: not measured) of one configuration (map: one row per
    chunksize)."""
    kind, _, value = cfg.partition(":")
    if kind == "map":
        return {f"faasx map chunksize={cs}": [next((c for c in cells if c["duration_ms"] == d
                                                     and c["chunksize"] == int(cs)), None) for d in durations]
                for cs in chunksizes}
    name = "faasx submit, prefetch_capacity=" if kind == "prefetch" else "HTEX submit, prefetch_capacity="
    label = name + (value if value != "default" else "None (default: adaptive)")
    return {label: [next((c for c in cells if c["duration_ms"] == d), None) for d in durations]}


def report(runs: dict, configs: list, durations: list, args):
    """The throughput table (tasks/s and share of the ideal per duration); returns it and the grid of
    tasks/s per row for the PNG."""
    rows, grid = [], {}
    for cfg in configs:
        cells = (runs[cfg].get("result") or {}).get("cells") or []
        for label, found in _config_cells(cfg, cells, durations, args.chunksizes.split(",")).items():
            rows.append([label] + [_cell_text(c, d, args.workers) for c, d in zip(found, durations)])
            grid[label] = [c and c["tasks_per_s"] for c in found]
    rows.append(["ideal (2 workers, no overhead)"] + ["-" if d == 0 else C.fmt_rate(args.workers * 1000.0 / d)
                                                       for d in durations])
    print()
    table = C.print_table(["configuration"] + [f"{d:g} ms" for d in durations], rows,
                          title="Throughput by task duration (tasks/s; eff = share of ideal)")
    print()
    return table, grid


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    C.add_common_args(p)
    p.add_argument("--durations", default="0,1,10", help="task durations in ms (default 0,1,10)")
    p.add_argument("--prefetch", default="default,0,2,8,32",
                   help="prefetch_capacity values; 'default' passes none (faasx: adaptive) (default default,0,2,8,32)")
    p.add_argument("--chunksizes", default="1,16,256", help="map chunksizes (default 1,16,256)")
    p.add_argument("--tasks0", type=int, default=10_000, help="tasks for the 0 ms cells (default 10,000)")
    p.add_argument("--cell-seconds", type=float, default=2.0, help="target seconds per cell with sleeps (2)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--htex", action="store_true", help="also Parsl HTEX rows with the same prefetch values")
    p.add_argument("--plots", default=None, metavar="DIR", help="write the PNG here (default docs/img/)")
    p.add_argument("--no-plots", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.tasks0 = min(args.tasks0, 300)
        args.cell_seconds = min(args.cell_seconds, 0.2)
    if args.child:
        C.child_main(args, measure)
        return 0
    C.parse_common(args)

    info = C.machine_info()
    durations = [float(x) for x in args.durations.split(",")]
    configs = [f"prefetch:{v}" for v in args.prefetch.split(",")] + ["map:default"]
    if args.htex:
        configs += [f"htex:{v}" for v in args.prefetch.split(",") if v != "default"]
    print(f"bench_prefetch: sleeper tasks of {args.durations} ms, {args.workers} workers; {info.get('cpus')} cpus, "
          f"faasx {info.get('faasx')} ({info.get('git')})", flush=True)
    child_args = ["--durations", args.durations, "--chunksizes", args.chunksizes, "--tasks0", str(args.tasks0),
                  "--cell-seconds", str(args.cell_seconds), "--workers", str(args.workers)]
    runs = {}
    errors = []
    for cfg in configs:
        n_cells = len(durations) * (len(args.chunksizes.split(",")) if cfg.startswith("map") else 1)
        timeout = 300 + n_cells * (60 + args.cell_seconds * 20)
        r = C.run_child(os.path.abspath(__file__), ["--child", cfg, *child_args], timeout=timeout, label=cfg)
        runs[cfg] = r
        if not r.get("ok"):
            errors.append(f"{cfg}: {(r.get('error') or '').strip().splitlines()[-1:]}")
        if r.get("strays"):
            errors.append(f"{cfg}: {len(r['strays'])} stray process(es) left behind")

    table, grid = report(runs, configs, durations, args)
    note = C.busy_note(runs.values())
    if note:
        print(note)
    if not args.no_plots and not args.quick:
        plot(grid, durations, args.workers, args.plots)
    return C.finish("bench_prefetch", args, {"bench": "prefetch", "machine": info, "runs": runs, "table": table},
                    errors)


if __name__ == "__main__":
    sys.exit(main())
