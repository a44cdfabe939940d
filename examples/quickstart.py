"""faasx quickstart: run Python functions on a local block -- no scheduler, no configuration.

    pip install . && python examples/quickstart.py
"""
import math
import time

import faasx


def work(n):
    """A small scientific-looking function: the n-th partial sum of the Basel series."""
    return sum(1.0 / (k * k) for k in range(1, n + 1))


def main():
    t0 = time.perf_counter()
    with faasx.Executor(max_workers_per_node=4) as ex:
        # one call: a future, then its result
        print("2 ** 10 =", ex.submit(pow, 2, 10).result())
        print(f"first result after {time.perf_counter() - t0:.2f}s (interchange, manager and workers started)")

        # many calls: map keeps the order; chunksize batches calls into one task each
        sums = list(ex.map(work, range(1, 2001), chunksize=256))
        print(f"pi ~ {math.sqrt(6 * sums[-1]):.6f} from {len(sums)} mapped calls")

        # register once, call by id: the code travels once, then only the id
        fid = ex.register_function(work)
        print("registered work() as", fid, "->", ex.submit(fid, 42).result())

        # errors come back as themselves, with the remote traceback attached
        try:
            ex.submit(math.sqrt, -1).result()
        except ValueError as e:
            print("remote error re-raised here:", repr(e))

        # throughput of tiny tasks submitted one by one
        n = 20_000
        t = time.perf_counter()
        futures = [ex.submit(abs, -i) for i in range(n)]
        total = sum(f.result() for f in futures)
        dt = time.perf_counter() - t
        assert total == sum(range(n))
        print(f"{n:,} tasks in {dt:.2f}s = {n / dt:,.0f} tasks/s")
    print(f"done in {time.perf_counter() - t0:.2f}s; logs in ./runinfo/")


if __name__ == "__main__":
    main()
