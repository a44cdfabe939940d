"""Memoization: results of (function, arguments) reused instead of recomputed, across runs with SQLite.

    python examples/memoization.py      # run it twice: the second run computes nothing
"""
import os
import time

import faasx


def slow_fib(n):
    import time
    time.sleep(0.5)                       # stands in for an expensive simulation
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


def main():
    store = os.path.abspath("faasx-memo.sqlite")
    with faasx.Executor(max_workers_per_node=2, memo_store=store) as ex:
        fib = ex.register_function(slow_fib, memoize=True)
        for attempt in (1, 2):
            t = time.perf_counter()
            values = [f.result() for f in [ex.submit(fib, n) for n in range(80, 84)]]
            print(f"pass {attempt}: {values} in {time.perf_counter() - t:.3f}s")
        print("memo:", ex.memo_stats(), "store:", store)


if __name__ == "__main__":
    main()
