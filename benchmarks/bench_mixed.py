"""Mixed task lengths: does any long task wait behind another while a worker idles? (issue 12, part 1)

Each system (faasx.Executor, ProcessPoolExecutor, Parsl HTEX) runs in a fresh child process per
repetition with 2 workers, and runs these workloads in that one executor, each after a warm-up burst of
tiny tasks (what teaches an adaptive batcher that tasks are short):

  a. 4 x 3 s, then 20 x 10 ms, submitted in that order        bound 6.1 s
  b. 6 x 2 s + 300 x 10 ms, shuffled                          bound 7.5 s
  c. bimodal: 6 x 1 s + 150 x 20 ms, shuffled                 bound 4.5 s
  d. heavy-tailed: 200 Pareto(alpha=1.2) durations from 5 ms, capped at 2 s, shuffled (seeded)

Tasks are ``time.sleep(d)``, so the lower bound of the makespan is exact:
``max(sum(d) / workers, max(d))``.  Makespan = first submit -> last result.  Every run is printed with
makespan / bound and how the long tasks (>= 0.5 s) spread over the worker processes ("4+0" is a pile-up:
all long tasks ran on one worker while the other idled).

    python benchmarks/bench_mixed.py [--reps 3] [--systems faasx,processpool,htex] [--quick]
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import time

try:
    from benchmarks import common as C
except ImportError:  # run as a script: python benchmarks/bench_mixed.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from benchmarks import common as C

SYSTEMS = ("faasx", "processpool", "htex")
LONG = 0.5  # seconds: a task at least this long counts as "long" in the spread column
TARGET = 1.1  # issue 12: makespan <= 1.1 x bound, every run


def sleep_task(d: float):
    """The workload: sleep ``d`` s; returns (worker pid, start, end) so the spread is observable."""
    import os  # imported here: HTEX ships a __main__ function by value, without its module's globals
    import time
    t = time.time()
    time.sleep(d)
    return os.getpid(), t, time.time()


def workloads(seed: int, scale: float = 1.0) -> dict[str, list[float]]:
    """Durations per workload, in submission order; ``scale`` shrinks them all for --quick."""
    rng = random.Random(seed)

    def shuffled(xs):
        rng.shuffle(xs)
        return xs

    pareto = [min(2.0, 0.005 * rng.paretovariate(1.2)) for _ in range(200)]
    w = {
        "a. 4x3s then 20x10ms": [3.0] * 4 + [0.01] * 20,
        "b. 6x2s + 300x10ms shuffled": shuffled([2.0] * 6 + [0.01] * 300),
        "c. bimodal 6x1s + 150x20ms": shuffled([1.0] * 6 + [0.02] * 150),
        "d. Pareto(1.2) 200 tasks": pareto,
    }
    return {k: [d * scale for d in v] for k, v in w.items()}


def lower_bound(durations: list[float], workers: int) -> float:
    return max(sum(durations) / workers, max(durations))


# ----------------------------------------------------------------------------------------------------
# child
# ----------------------------------------------------------------------------------------------------
def _warm_up(system, n: int) -> None:
    C.wait_all([system.submit(sleep_task, 0.0) for _ in range(n)], timeout=120)


def _run_one(system, durations: list[float], long_s: float, timeout: float) -> dict:
    t0 = time.time()
    futs = [system.submit(sleep_task, d) for d in durations]
    C.wait_all(futs, timeout=timeout)
    makespan = time.time() - t0
    per_worker: dict[int, int] = {}
    for d, f in zip(durations, futs):
        pid = f.result()[0]
        per_worker.setdefault(pid, 0)
        per_worker[pid] += d >= long_s
    return {"makespan": makespan, "long_per_worker": sorted(per_worker.values(), reverse=True)}


def measure(args) -> dict:
    system = C.System(args.child, args.workers)
    out = {"system": args.child, "runs": {}}
    try:
        for name, durations in workloads(args.seed, args.scale).items():
            _warm_up(system, args.warmup)
            r = _run_one(system, durations, LONG * args.scale, timeout=60 + 3 * sum(durations))
            r["bound"] = lower_bound(durations, args.workers)
            out["runs"][name] = r
    finally:
        system.close()
    return out


# ----------------------------------------------------------------------------------------------------
# parent
# ----------------------------------------------------------------------------------------------------
def _spread(r: dict, workers: int) -> str:
    counts = (r["long_per_worker"] + [0] * workers)[:workers]
    return "+".join(str(c) for c in counts)


def print_runs(runs: dict, workers: int) -> list:
    """One row per (workload, system, repetition); returns [workload, system, ratio] rows for the plot."""
    rows, flat = [], []
    for system, reps in runs.items():
        for i, rep in enumerate(reps):
            for name, r in ((rep.get("result") or {}).get("runs") or {}).items():
                ratio = r["makespan"] / r["bound"]
                flat.append((name, system, ratio))
                rows.append([name, C.System.NAMES[system], i + 1, C.fmt_s(r["makespan"]), C.fmt_s(r["bound"]),
                             C.fmt_ratio(ratio), _spread(r, workers), C.verdict(ratio, TARGET, False)])
    rows.sort(key=lambda r: (r[0], r[1], r[2]))
    C.print_table(["workload", "system", "run", "makespan", "bound", "makespan/bound",
                   f"long tasks per worker (>= {LONG:g} s)", f"<= {TARGET}x"], rows,
                  title="\nEvery run (makespan = first submit -> last result)")
    return flat


def summary(flat: list, systems: list) -> dict:
    """Worst makespan/bound over the repetitions, per workload and system."""
    worst: dict = {}
    for name, system, ratio in flat:
        worst.setdefault(name, {}).setdefault(system, 0.0)
        worst[name][system] = max(worst[name][system], ratio)
    rows = [[name] + [C.fmt_ratio(worst[name].get(s)) for s in systems] for name in sorted(worst)]
    C.print_table(["workload"] + [f"{C.System.NAMES[s]} worst" for s in systems], rows,
                  title="\nWorst makespan / bound over the repetitions")
    return worst


def plot(worst: dict, systems: list, out_dir: str | None) -> None:
    from benchmarks.harness import plots
    names = sorted(worst)
    plots.grouped_bars("bench_mixed.png", "Mixed task lengths, 2 workers: worst makespan / lower bound",
                       "makespan / bound (1.0 = perfect)", [n.split(" ", 1)[0] + " " + n.split(" ", 2)[1] for n in names],
                       {C.System.NAMES[s]: [worst[n].get(s) for n in names] for s in systems},
                       out_dir=out_dir, hline=TARGET, hline_label=f"target {TARGET}x")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    C.add_common_args(p)
    p.add_argument("--reps", type=int, default=3, help="fresh-process runs per system (default 3)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--warmup", type=int, default=500, help="tiny tasks before each workload (default 500)")
    p.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma list of {', '.join(SYSTEMS)}")
    p.add_argument("--seed", type=int, default=12)
    p.add_argument("--scale", type=float, default=1.0, help="multiply every duration (--quick: 0.05)")
    p.add_argument("--plots", default=None, metavar="DIR", help="write the PNG here (default docs/img/)")
    p.add_argument("--no-plots", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.reps, args.scale, args.warmup = 1, min(args.scale, 0.05), min(args.warmup, 50)
    if args.child:
        C.child_main(args, measure)
        return 0
    C.parse_common(args)
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    bad = [s for s in systems if s not in SYSTEMS]
    if bad:
        p.error(f"unknown system(s) {bad}")
    info = C.machine_info()
    print(f"bench_mixed: {args.workers} workers, {args.reps} run(s) per system, sleep tasks x{args.scale:g}; "
          f"load {info['loadavg'][0]:.2f}; faasx {info.get('faasx')} ({info.get('git')}), parsl {info.get('parsl')}",
          flush=True)
    child_args = ["--workers", str(args.workers), "--warmup", str(args.warmup), "--seed", str(args.seed),
                  "--scale", str(args.scale)]
    runs, errors = C.run_systems(os.path.abspath(__file__), systems, child_args, timeout=300 + 120 * args.scale,
                                 names=C.System.NAMES, reps=args.reps)
    worst = summary(print_runs(runs, args.workers), systems)
    note = C.busy_note(r for rs in runs.values() for r in rs)
    if note:
        print(note)
    if not args.no_plots and not args.quick:
        plot(worst, systems, args.plots)
    return C.finish("bench_mixed", args, {"bench": "mixed", "machine": info, "worst": worst,
                                          "runs": {s: [r.get("result") for r in rs] for s, rs in runs.items()}},
                    errors)


if __name__ == "__main__":
    sys.exit(main())
