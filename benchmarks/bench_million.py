#!/usr/bin/env python
"""One million no-op tasks through ``faasx.Executor``: correctness, wall time and client memory.

Modes (each in its own fresh process, 2 workers, one local block):

* ``loop``      -- ``futs = [ex.submit(noop, i) for i in range(N)]``; ``sum(f.result() for f in futs)``;
                   then ``del futs`` (what a plain script does: the user holds every future)
* ``callbacks`` -- submit in a loop without keeping futures; a done-callback adds each result to a sum
                   (fire-and-forget: only the engine's own bookkeeping holds anything)
* ``map``       -- ``sum(ex.map(noop, range(N), chunksize=256))``

For each: the sum check (all results correct), wall time and tasks/s, client RSS (psutil) at start
(executor warm, before submitting), peak (sampled every 50 ms) and after (results dropped, ``gc.collect()``;
then again after glibc ``malloc_trim(0)``, which separates memory still referenced from allocator slack),
how many ``concurrent.futures.Future`` objects are still alive afterwards, and "objects left": the change in
``sys.getallocatedblocks()`` (every live Python object, bytes and ints included) from start to after.  "Memory back near start"
means after-trim RSS within max(64 MiB, 10% of the peak growth) of the start.

    python benchmarks/bench_million.py                       # loop + map, 1,000,000 tasks each
    python benchmarks/bench_million.py --modes loop,callbacks,map
    python benchmarks/bench_million.py --quick
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


MODES = ("loop", "callbacks", "map")


def _live_futures() -> int:
    import concurrent.futures as cf
    import gc
    return sum(1 for o in gc.get_objects() if isinstance(o, cf.Future))


def measure(args) -> dict:
    import gc
    mode = args.child
    n = args.tasks
    expected = n * (n - 1) // 2
    res: dict = {"mode": mode, "tasks": n}
    if args.executor == "processpool":  # reference: the stdlib pool, no network hop at all
        import concurrent.futures as cf
        ex = cf.ProcessPoolExecutor(args.workers)
    else:
        import faasx
        ex = faasx.Executor(max_workers_per_node=args.workers)
    try:
        assert ex.submit(noop, 0).result(timeout=120) == 0
        C.wait_all([ex.submit(noop, i) for i in range(200)], timeout=120)  # warm
        gc.collect()
        C.malloc_trim()
        res["rss_start"] = C.rss_bytes()
        res["live_futures_start"] = _live_futures()
        res["gc_objects_start"] = len(gc.get_objects())
        res["blocks_start"] = sys.getallocatedblocks()
        res["rounds"] = []
        for rnd in range(args.rounds):
            if rnd:
                print(f"round {rnd + 1} of {args.rounds}", flush=True)
            one_round(ex, mode, n, expected, args, res)
            res["rounds"].append({k: res.get(k) for k in ("elapsed_s", "tasks_per_s", "rss_peak", "rss_after",
                                                          "rss_after_trim", "live_futures_after", "gc_objects_after",
                                                          "blocks_after")})
    finally:
        t = C.now()
        ex.shutdown(wait=True)
        res["shutdown_s"] = C.now() - t
    return res


def one_round(ex, mode: str, n: int, expected: int, args, res: dict) -> None:
    import gc
    import threading
    progress = max(1, n // 10)
    with C.RssSampler() as sampler:
        t0 = C.now()
        if mode == "loop":
            futs = []
            for i in range(n):
                futs.append(ex.submit(noop, i))
                if i and i % progress == 0:
                    print(f"submitted {i:,} ({C.now() - t0:.1f}s, rss {C.fmt_mib(C.rss_bytes())})", flush=True)
            res["submit_s"] = C.now() - t0
            C.wait_all(futs, timeout=args.task_timeout)
            total = sum(f.result() for f in futs)
            res["elapsed_s"] = C.now() - t0
            del futs
        elif mode == "callbacks":
            lock = threading.Lock()
            state = {"sum": 0, "done": 0, "errors": 0}
            finished = threading.Event()

            def on_done(f):
                try:
                    v = f.result()
                except BaseException:  # noqa: BLE001
                    v = None
                with lock:
                    if v is None:
                        state["errors"] += 1
                    else:
                        state["sum"] += v
                    state["done"] += 1
                    if state["done"] == n:
                        finished.set()

            for i in range(n):
                ex.submit(noop, i).add_done_callback(on_done)
                if i and i % progress == 0:
                    print(f"submitted {i:,} ({C.now() - t0:.1f}s, rss {C.fmt_mib(C.rss_bytes())})", flush=True)
            res["submit_s"] = C.now() - t0
            if not finished.wait(timeout=args.task_timeout):
                raise TimeoutError(f"only {state['done']:,} of {n:,} callbacks ran in {args.task_timeout:.0f}s")
            res["elapsed_s"] = C.now() - t0
            if state["errors"]:
                raise AssertionError(f"{state['errors']} tasks failed")
            total = state["sum"]
        elif mode == "map":
            total = sum(ex.map(noop, range(n), chunksize=args.chunksize, timeout=args.task_timeout))
            res["elapsed_s"] = C.now() - t0
            res["chunksize"] = args.chunksize
        else:
            raise ValueError(mode)
    res["tasks_per_s"] = n / res["elapsed_s"]
    res["sum_ok"] = total == expected
    if total != expected:
        raise AssertionError(f"sum of results {total} != {expected}")
    res["rss_peak"] = sampler.peak
    res["rss_timeline"] = sampler.samples
    # let the I/O thread finish any bookkeeping, then measure what is still held
    import time
    time.sleep(0.5)
    gc.collect()
    res["rss_after"] = C.rss_bytes()
    res["malloc_trim"] = C.malloc_trim()
    res["rss_after_trim"] = C.rss_bytes()
    res["live_futures_after"] = _live_futures()
    res["gc_objects_after"] = len(gc.get_objects())
    res["blocks_after"] = sys.getallocatedblocks()


def _mode_row(m: str, res: dict, args) -> tuple[list, list]:
    """One table row for mode ``m``, and the lines that judge its memory (returned near start?)."""
    verdicts = []
    start, peak, after_trim = res.get("rss_start"), res.get("rss_peak"), res.get("rss_after_trim")
    near = None
    if None not in (start, peak, after_trim):
        allowed = max(64 * 2**20, 0.10 * (peak - start))
        near = (after_trim - start) <= allowed
        verdicts.append(f"{m}: client memory {'RETURNED near start' if near else 'DID NOT return near start'}"
                        f" (start {C.fmt_mib(start)}, peak {C.fmt_mib(peak)}, after {C.fmt_mib(after_trim)};"
                        f" allowed +{C.fmt_mib(allowed)})")
    label = m + (f" (chunksize={args.chunksize})" if m == "map" else "")
    if args.rounds > 1 and res.get("rounds"):
        label += f", {len(res['rounds'])} rounds"
        verdicts.append(_rounds_line(m, res))
    row = [label, "yes" if res.get("sum_ok") else ("NO" if "sum_ok" in res else "-"),
           C.fmt_s(res.get("elapsed_s")), C.fmt_rate(res.get("tasks_per_s")),
           C.fmt_mib(start), C.fmt_mib(peak), C.fmt_mib(res.get("rss_after")), C.fmt_mib(after_trim),
           str(res.get("live_futures_after", "-")),
           (f"{res['blocks_after'] - res['blocks_start']:+,}" if "blocks_after" in res else "-"),
           "-" if near is None else ("yes" if near else "NO")]
    return row, verdicts


def _rounds_line(m: str, res: dict) -> str:
    after_each = ", ".join(C.fmt_mib(x.get("rss_after_trim")) for x in res["rounds"])
    gc_each = ", ".join(str(x.get("gc_objects_after")) for x in res["rounds"])
    blocks_each = ", ".join(str(x.get("blocks_after")) for x in res["rounds"])
    return (f"{m}: RSS after trim, round by round: {after_each}; gc objects: "
            f"{res.get('gc_objects_start')} at start, then {gc_each}; allocated blocks: "
            f"{res.get('blocks_start')} at start, then {blocks_each}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    C.add_common_args(p)
    p.add_argument("--tasks", type=int, default=1_000_000)
    p.add_argument("--modes", default="loop,map", help=f"comma list of {', '.join(MODES)} (default loop,map)")
    p.add_argument("--chunksize", type=int, default=256)
    p.add_argument("--rounds", type=int, default=1,
                   help="repeat the workload in the same executor (a leak shows as 'after' growing per round)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--executor", choices=("faasx", "processpool"), default="faasx",
                   help="processpool: concurrent.futures.ProcessPoolExecutor as a reference (default faasx)")
    p.add_argument("--task-timeout", type=float, default=None,
                   help="seconds allowed for all tasks of one mode (default 120 + tasks/1000)")
    args = p.parse_args(argv)
    if args.quick:
        args.tasks = min(args.tasks, 500)
    if args.task_timeout is None:
        args.task_timeout = 120 + args.tasks / 1000
    if args.child:
        C.child_main(args, measure)
        return 0
    C.parse_common(args)

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for m in modes:
        if m not in MODES:
            p.error(f"unknown mode {m!r}")
    info = C.machine_info()
    ex_name = "faasx.Executor" if args.executor == "faasx" else "ProcessPoolExecutor"
    print(f"bench_million: {args.tasks:,} no-op tasks through {ex_name}, {args.workers} workers; modes "
          f"{', '.join(modes)}; {info.get('cpus')} cpus, faasx {info.get('faasx')} ({info.get('git')})", flush=True)
    child_args = ["--executor", args.executor, "--rounds", str(args.rounds), "--tasks", str(args.tasks), "--chunksize", str(args.chunksize), "--workers", str(args.workers),
                  "--task-timeout", str(args.task_timeout)]
    runs = {}
    errors = []
    rows = []
    verdicts = []
    for m in modes:
        r = C.run_child(os.path.abspath(__file__), ["--child", m, *child_args],
                        timeout=(args.task_timeout + 60) * args.rounds + 120,
                        label=f"mode {m}")
        runs[m] = r
        if not r.get("ok"):
            errors.append(f"{m}: {(r.get('error') or '').strip().splitlines()[-1:]}")
        if r.get("strays"):
            errors.append(f"{m}: {len(r['strays'])} stray process(es) left behind")
        row, notes = _mode_row(m, r.get("result") or {}, args)
        rows.append(row)
        verdicts += notes
    print()
    table = C.print_table(["mode", "sum ok", "wall", "tasks/s", "RSS start", "RSS peak", "RSS after gc",
                           "after trim", "live futures", "objects left", "mem back"], rows,
                          title=f"{args.tasks:,} no-op tasks through {ex_name}")
    print()
    for v in verdicts:
        print(v)
    note = C.busy_note(runs.values())
    if note:
        print(note)
    return C.finish("bench_million", args, {"bench": "million", "machine": info, "runs": runs, "table": table,
                                            "verdicts": verdicts}, errors)


if __name__ == "__main__":
    sys.exit(main())
