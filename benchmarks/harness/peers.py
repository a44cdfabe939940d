"""The systems under test, built the same way in every benchmark (used in child processes only)."""
from __future__ import annotations

import os

from .child import child_tmpdir


def parsl_load(executor, run_dir: str | None = None):
    """``parsl.load(Config(executors=[executor]))`` with a private run_dir; returns the DFK."""
    import parsl
    from parsl.config import Config
    cfg = Config(executors=[executor], run_dir=run_dir or os.path.join(child_tmpdir(), "runinfo"))
    return parsl.load(cfg)


def parsl_cleanup() -> None:
    import parsl
    try:
        parsl.dfk().cleanup()
    finally:
        parsl.clear()


def make_htex(max_workers: int = 2, label: str = "htex", **options):
    """Parsl's HighThroughputExecutor exactly as in BASELINES.md: one local block, 2 workers."""
    from parsl.executors import HighThroughputExecutor
    from parsl.providers import LocalProvider
    return HighThroughputExecutor(label=label, max_workers_per_node=max_workers,
                                  provider=LocalProvider(init_blocks=1, max_blocks=1), **options)


def make_faas_executor(max_workers: int = 2, label: str = "faasx", **options):
    """``faasx.FaaSExecutor`` with one local block (faasx's LocalProvider, as Parsl's)."""
    import faasx
    from faasx.providers import LocalProvider
    return faasx.FaaSExecutor(label=label, max_workers_per_node=max_workers,
                              provider=LocalProvider(init_blocks=1, max_blocks=1), **options)


def wait_all(futures, timeout: float):
    """Wait for all futures; raise TimeoutError naming how many are still pending."""
    import concurrent.futures as cf
    done, not_done = cf.wait(futures, timeout=timeout)
    if not_done:
        raise TimeoutError(f"{len(not_done)} of {len(futures)} futures still pending after {timeout:.0f}s")
    return done


class System:
    """One system under test behind one calling convention: ``submit(fn, *args) -> Future``, ``close()``.

    ``faasx`` is ``faasx.Executor``; ``faasx-parsl`` and ``htex`` are loaded with ``parsl.load`` (so the
    block is provisioned as Parsl does it) and called directly (``executor.submit(fn, {}, *args)``);
    ``processpool`` is ``concurrent.futures.ProcessPoolExecutor`` (the contract faasx.Executor follows).
    """

    NAMES = {"faasx": "faasx.Executor", "faasx-parsl": "faasx.FaaSExecutor", "htex": "Parsl HTEX",
             "processpool": "ProcessPoolExecutor"}

    def __init__(self, name: str, workers: int = 2, **options):
        self.name = name
        self._parsl = name in ("faasx-parsl", "htex")
        if name == "faasx":
            import faasx
            self._ex = faasx.Executor(max_workers_per_node=workers, **options)
        elif name == "processpool":
            import concurrent.futures as cf
            self._ex = cf.ProcessPoolExecutor(max_workers=workers)
        elif self._parsl:
            self._ex = make_faas_executor(workers, **options) if name == "faasx-parsl" else make_htex(workers, **options)
            parsl_load(self._ex)
        else:
            raise ValueError(f"unknown system {name!r}; one of {', '.join(self.NAMES)}")

    def submit(self, fn, *args):
        return self._ex.submit(fn, {}, *args) if self._parsl else self._ex.submit(fn, *args)

    def close(self, cancel_futures: bool = False) -> None:
        """Shut the system down, waiting; ``cancel_futures`` as in ``Executor.shutdown`` (not Parsl's)."""
        if self._parsl:
            parsl_cleanup()
        else:
            self._ex.shutdown(wait=True, cancel_futures=cancel_futures)
