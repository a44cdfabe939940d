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
