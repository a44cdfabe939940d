"""Cancelling a million pending tasks: ``shutdown(wait=True, cancel_futures=True)`` (issue 12).

Each system in a fresh child process, 2 workers: ``faasx.Executor`` and ``ProcessPoolExecutor`` (the
contract).  ``--tasks`` (default 1,000,000) calls of a 10 ms sleep are submitted one by one, so nearly
all are still pending; then ``shutdown(wait=True, cancel_futures=True)`` is timed.  Reported: submit
time, shutdown time, futures cancelled / done / neither (must be 0: every future resolves), and for
faasx the number of log lines that mention cancelling (one per cancel batch today).

    python benchmarks/bench_cancel.py [--tasks 1000000] [--quick]
"""
from __future__ import annotations

import argparse
import glob
import os
import sys

try:
    from benchmarks import common as C
except ImportError:  # run as a script: python benchmarks/bench_cancel.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from benchmarks import common as C

SYSTEMS = {"faasx": "faasx.Executor", "processpool": "ProcessPoolExecutor"}
TARGET_S = 2.0


def sleep_task(d):
    import time
    time.sleep(d)


def _log_lines(run_dir: str, needle: str) -> int:
    n = 0
    for path in glob.glob(os.path.join(run_dir, "**", "*.log"), recursive=True):
        with open(path, errors="replace") as f:
            n += sum(1 for line in f if needle in line)
    return n


def measure(args) -> dict:
    run_dir = os.path.join(C.child_tmpdir(), "run")
    options = {"run_dir": run_dir} if args.child == "faasx" else {}
    system = C.System(args.child, args.workers, **options)
    t = C.now()
    futs = [system.submit(sleep_task, 0.01) for _ in range(args.tasks)]
    submit_s = C.now() - t
    t = C.now()
    system.close(cancel_futures=True)
    shutdown_s = C.now() - t
    res = {"submit_s": submit_s, "shutdown_s": shutdown_s, "tasks": args.tasks,
           "cancelled": sum(f.cancelled() for f in futs), "done": sum(f.done() for f in futs)}
    res["unresolved"] = args.tasks - res["done"]
    if args.child == "faasx":
        res["cancel_log_lines"] = _log_lines(run_dir, "cancel")
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    C.add_common_args(p)
    p.add_argument("--tasks", type=int, default=1_000_000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--systems", default=",".join(SYSTEMS))
    args = p.parse_args(argv)
    if args.quick:
        args.tasks = min(args.tasks, 20_000)
    if args.child:
        C.child_main(args, measure)
        return 0
    C.parse_common(args)
    info = C.machine_info()
    print(f"bench_cancel: {args.tasks:,} pending 10 ms tasks, {args.workers} workers, then shutdown(cancel_futures="
          f"True); load {info['loadavg'][0]:.2f}; faasx {info.get('faasx')} ({info.get('git')})", flush=True)
    systems = [s for s in args.systems.split(",") if s]
    runs, errors, rows = {}, [], []
    for s in systems:
        r = runs[s] = C.run_child(os.path.abspath(__file__), ["--child", s, "--tasks", str(args.tasks),
                                                              "--workers", str(args.workers)],
                                  timeout=300 + args.tasks / 1000, label=SYSTEMS[s])
        res = r.get("result") or {}
        if not r.get("ok") or r.get("strays") or res.get("unresolved"):
            errors.append(f"{s}: {(r.get('error') or 'strays or unresolved futures').strip().splitlines()[-1:]}")
        if res:
            rows.append([SYSTEMS[s], f"{res['tasks']:,}", C.fmt_s(res["submit_s"]), C.fmt_s(res["shutdown_s"]),
                         f"{res['cancelled']:,}", f"{res['done'] - res['cancelled']:,}", f"{res['unresolved']:,}",
                         res.get("cancel_log_lines", "-"), C.verdict(res["shutdown_s"], TARGET_S, False)])
    C.print_table(["system", "tasks", "submit", "shutdown(cancel_futures=True)", "cancelled", "ran", "unresolved",
                   "log lines 'cancel'", f"<= {TARGET_S:g} s"], rows, title="\nCancelling everything pending")
    note = C.busy_note(runs.values())
    if note:
        print(note)
    return C.finish("bench_cancel", args, {"bench": "cancel", "machine": info,
                                           "runs": {s: r.get("result") for s, r in runs.items()}}, errors)


if __name__ == "__main__":
    sys.exit(main())
