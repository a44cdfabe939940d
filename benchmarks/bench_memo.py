"""Memoization: what a hit costs, against what a dispatch costs (issue 5: "far below a dispatch").

One fresh child process runs ``faasx.Executor(max_workers_per_node=2)`` and measures, for a no-op
function registered with ``memoize=True`` and for the same function not memoized:

* hit path: ``submit(fid, x).result()`` when (fid, x) is already stored -- resolved in the caller's
  thread, no message sent -- per call, over many calls;
* miss path: the first call of each argument (a real dispatch, plus storing the result);
* dispatch: a sequential ``submit(...).result()`` round trip of the plain function (p50);
* the SQLite store: the same hit after a restart, read from the file.

    python benchmarks/bench_memo.py [--calls 20000] [--quick]
"""
from __future__ import annotations

import argparse
import os
import sys

try:
    from benchmarks import common
except ImportError:  # run as a script: python benchmarks/bench_memo.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from benchmarks import common


def noop(x):
    return x


def measure(args: argparse.Namespace) -> dict:
    import faasx
    tmp = common.child_tmpdir()
    store = os.path.join(tmp, "memo.sqlite")
    out = {}
    with faasx.Executor(max_workers_per_node=2, run_dir=os.path.join(tmp, "run1"), memo_store=store) as ex:
        fid = ex.register_function(noop, memoize=True)
        for i in range(200):                                   # warm up the engine
            ex.submit(noop, i).result(timeout=60)
        keys = min(args.calls, 2000)
        t = common.now()
        for i in range(keys):                                  # misses: dispatch + store
            ex.submit(fid, i).result(timeout=60)
        out["miss_us"] = (common.now() - t) / keys * 1e6
        t = common.now()
        for i in range(args.calls):                            # hits
            ex.submit(fid, i % keys).result(timeout=60)
        out["hit_us"] = (common.now() - t) / args.calls * 1e6
        lat = []
        for i in range(args.latency):                          # plain dispatch round trips
            t = common.now()
            ex.submit(noop, i).result(timeout=60)
            lat.append(common.now() - t)
        out["dispatch_p50_us"] = common.percentile(lat, 50) * 1e6
        stats = ex.memo_stats()
        out["hits"], out["misses"] = stats["hits"], stats["misses"]
        assert stats["hits"] >= args.calls, stats
    with faasx.Executor(max_workers_per_node=2, run_dir=os.path.join(tmp, "run2"), memo_store=store) as ex:
        fid = ex.register_function(noop, memoize=True)
        t = common.now()
        n = min(args.calls, 2000)
        for i in range(n):                                     # first touch: from the SQLite file
            assert ex.submit(fid, i).result(timeout=60) == i
        out["sqlite_hit_us"] = (common.now() - t) / n * 1e6
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, default=20000)
    p.add_argument("--latency", type=int, default=300)
    common.add_common_args(p)
    args = p.parse_args()
    common.parse_common(args)
    if args.quick:
        args.calls, args.latency = 500, 50
    if args.child:
        common.child_main(args, measure)
        return 0
    child_args = ["--calls", str(args.calls), "--latency", str(args.latency)]
    run = common.run_child(__file__, child_args + ["--child", "faasx"], timeout=600, label="faasx")
    if not run["ok"]:
        print("bench_memo: the run failed:", run.get("error"))
        return 1
    r = run["result"]
    common.print_table(
        ["path", "cost per call", "vs a dispatch round trip"],
        [["memo hit (in memory)", common.fmt_us(r["hit_us"]), common.fmt_ratio(r["hit_us"] / r["dispatch_p50_us"])],
         ["memo hit (SQLite, after restart)", common.fmt_us(r["sqlite_hit_us"]),
          common.fmt_ratio(r["sqlite_hit_us"] / r["dispatch_p50_us"])],
         ["memo miss (dispatch + store)", common.fmt_us(r["miss_us"]), common.fmt_ratio(r["miss_us"] / r["dispatch_p50_us"])],
         ["plain dispatch, p50 round trip", common.fmt_us(r["dispatch_p50_us"]), "1.00x"]],
        title=f"Memoization cost (no-op function, {args.calls:,} hits, {r['hits']:,} hits counted)")
    if not args.no_save:
        print("results written to", common.write_results("bench_memo", {"bench": "memo", "result": r,
                                                                          "machine": common.machine_info()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
