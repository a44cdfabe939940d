"""Registered functions, batches and prefetch: the funcX way to call the same function many times.

    python examples/registered_and_batched.py
"""
import time

import faasx


def energy(x, y):
    return (x - 1.0) ** 2 + 100.0 * (y - x * x) ** 2   # Rosenbrock


def main():
    with faasx.Executor(max_workers_per_node=2) as ex:
        fid = ex.register_function(energy)          # serialized once; same code -> same id
        print("registered:", ex.registered_functions())

        # one call by id: only the id and the arguments travel
        print("energy(1, 1) =", ex.submit(fid, 1.0, 1.0).result())

        # a batch of calls that travels as one message end to end
        grid = [(i / 10, j / 10) for i in range(-10, 11) for j in range(-10, 11)]
        futures = ex.submit_batch([(fid, point) for point in grid])
        best = min(zip((f.result() for f in futures), grid))
        print(f"grid minimum {best[0]:.3f} at {best[1]}")

        # map with chunks: each task runs 256 calls
        xs = [i / 1e5 for i in range(200_000)]
        t = time.perf_counter()
        values = list(ex.map(energy, xs, xs, chunksize=256))
        dt = time.perf_counter() - t
        print(f"{len(values):,} mapped calls in {dt:.2f}s = {len(values) / dt:,.0f} calls/s")


if __name__ == "__main__":
    main()
