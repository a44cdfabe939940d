"""``faasx.Executor``: the engine as a ``concurrent.futures.Executor`` for plain scripts.

It wraps one ``FaaSExecutor`` (the same engine Parsl uses) and runs Parsl's job-status poller and
scaling strategy itself, so blocks scale out under load and in when idle exactly as inside Parsl.
With no provider it runs one local block on this machine.
"""
from __future__ import annotations

import atexit
import concurrent.futures
import itertools
import logging
import os
import threading
import time
import weakref
from concurrent.futures import Future
from typing import Any, Callable, Iterable, Iterator, List, Optional, Sequence, Union

from faasx.errors import refuse_pickling
from faasx.executor.options import check_standalone, max_workers_alias
from faasx.executor.parsl_executor import FaaSExecutor
from faasx.executor.security import PrivateFileHandler, private_dir

logger = logging.getLogger("faasx.executor")

_run_counter = itertools.count()
_live: "weakref.WeakSet[Executor]" = weakref.WeakSet()


def _default_run_dir() -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return os.path.join(os.getcwd(), "runinfo", f"faasx-{stamp}-{os.getpid()}-{next(_run_counter)}")


class Executor(concurrent.futures.Executor):
    """Run Python functions on faasx workers from a plain script.

    Parameters
    ----------
    provider :
        Where blocks come from (``faasx.providers``).  Default: one local block kept for the
        executor's lifetime.
    label : str
        Name used in logs and process titles.
    run_dir : str
        Directory for logs and submit scripts.  Default: ``./runinfo/faasx-<time>-<pid>-<n>``.
    strategy, strategy_period, max_idletime :
        Parsl's scaling strategy ('simple', 'htex_auto_scale', 'none'), how often it runs (s) and how
        long blocks may idle before they are scaled in (s).
    **options :
        Every ``FaaSExecutor`` option, checked here (``ValueError`` or ``TypeError`` naming the option):
        ``max_workers_per_node`` (or ``max_workers``, the stdlib pools' spelling), ``cores_per_worker``,
        ``mem_per_worker``, ``available_accelerators``, ``prefetch_capacity``, ``heartbeat_period``,
        ``heartbeat_threshold``, ``max_retries_on_system_failure``, ``address``, ``encrypted``,
        ``working_dir``, ``max_payload_size`` ...  With ``mpi_launcher=`` ("mpiexec", "srun" or
        "aprun") the engine is a ``faasx.MPIExecutor`` and takes its options too
        (``max_workers_per_block``): run MPI applications with ``faasx.mpi.MPIFunction``.
    """

    __reduce__ = refuse_pickling     # a task that refers to its executor fails at submit, naming it

    def __init__(self, provider: Any = None, *, label: str = "faasx", run_dir: Optional[str] = None,
                 strategy: Optional[str] = "simple", strategy_period: float = 1.0, max_idletime: float = 120.0,
                 **options: Any):
        options = max_workers_alias(options)
        check_standalone(strategy, strategy_period, max_idletime)
        mpi = "mpi_launcher" in options      # MPI mode: the engine is an MPIExecutor (faasx.mpi)
        if provider is None:
            from faasx.providers import LocalProvider
            from faasx.launchers import SimpleLauncher
            provider = LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1,
                                     **({"launcher": SimpleLauncher()} if mpi else {}))
        self.run_dir = os.path.abspath(run_dir or _default_run_dir())
        engine = FaaSExecutor
        if mpi:
            from faasx.executor.mpi_executor import MPIExecutor as engine
        self.executor = engine(label=label, provider=provider, **options)
        self.executor.run_dir = private_dir(self.run_dir, tighten=run_dir is None)
        private_dir(self.executor.logdir)
        self._log_handler = PrivateFileHandler(os.path.join(self.executor.logdir, "client.log"))
        self._log_handler.setFormatter(logging.Formatter("%(asctime)s %(threadName)s %(name)s %(levelname)s "
                                                         "%(message)s"))
        self._log_handler.setLevel(logging.DEBUG if options.get("worker_debug") else logging.INFO)
        faasx_logger = logging.getLogger("faasx")
        faasx_logger.addHandler(self._log_handler)
        if faasx_logger.level == logging.NOTSET or faasx_logger.level > self._log_handler.level:
            faasx_logger.setLevel(self._log_handler.level)
        self._shutdown_lock = threading.Lock()
        self._shut_down = False      # no new tasks (set by shutdown(), under _shutdown_lock)
        self._torn_down = False      # the engine is stopped (set once, by _teardown())
        self._finisher: Optional[threading.Thread] = None   # shutdown(wait=False)'s background wait
        self._poller = None
        try:
            self.executor.start()
            if strategy not in (None, "none") or provider.init_blocks < provider.min_blocks:
                from parsl.jobs.job_status_poller import JobStatusPoller
                self._poller = JobStatusPoller(strategy=strategy, max_idletime=max_idletime,
                                               strategy_period=strategy_period)
                self._poller.add_executors([self.executor])
        except BaseException:
            self._teardown()
            raise
        _live.add(self)

    # ---- functions ---------------------------------------------------------------------------
    def register_function(self, fn: Callable, *, container: Optional[dict] = None, memoize: bool = False) -> str:
        """Register ``fn``; returns a content-addressed id that ``submit`` accepts instead of ``fn``."""
        return self.executor.register_function(fn, container=container, memoize=memoize)

    def registered_functions(self) -> List[dict]:
        """[{function_id, name, container, memoize}] for every registered function."""
        return self.executor.registered_functions()

    def memo_stats(self) -> dict:
        """Memoization hits, misses and stored entries."""
        return self.executor.memo_stats()

    # ---- submit ------------------------------------------------------------------------------
    def submit(self, fn: Union[Callable, str], /, *args: Any, **kwargs: Any) -> Future:
        """Schedule ``fn(*args, **kwargs)``; ``fn`` is a callable or an id from ``register_function``."""
        if self._shut_down:
            raise RuntimeError("cannot schedule new futures after shutdown")
        return self.executor.submit(fn, None, *args, **kwargs)

    def options(self, **resources: Any) -> "TaskOptions":
        """Per-task resources for the calls made through the returned object, without taking any of
        the function's own keyword arguments: ``ex.options(walltime=60).submit(fn, x)``.  Keys as in
        a resource specification: ``walltime`` (seconds; past it the task's worker and its children
        are killed and the future fails with ``faasx.errors.TaskTimeout``), ``priority``, ``cores``,
        ``memory``, ``gpus``, ``container``, ``memoize``.  Checked here, at once."""
        self.executor.validate_resource_spec(resources)
        return TaskOptions(self, resources)

    def terminate(self, future: Future) -> bool:
        """Stop a task even while it runs (``cancel()`` keeps the stdlib contract and does not): its
        worker's whole process group is killed, the worker replaced, and the future fails with
        ``CancelledError``.  A task not yet running is simply cancelled.  False if it is done already."""
        if not hasattr(future, "parsl_executor_task_id"):
            raise ValueError("terminate() takes a future returned by this executor's submit() or map()")
        return self.executor.terminate(future)

    def submit_batch(self, calls: Iterable[Sequence[Any]]) -> List[Future]:
        """Submit many calls at once: each item is ``(fn, args)``, ``(fn, args, kwargs)`` or
        ``(fn, args, kwargs, resource_specification)``; they travel to the interchange together."""
        futures = []
        submit = self.executor.submit
        for call in calls:
            fn, args = call[0], tuple(call[1]) if len(call) > 1 else ()
            kwargs = call[2] if len(call) > 2 and call[2] else {}
            spec = call[3] if len(call) > 3 else None
            futures.append(submit(fn, spec, *args, **kwargs))
        return futures

    def map(self, fn: Callable, *iterables: Iterable, timeout: Optional[float] = None,
            chunksize: int = 1, progress: bool = False) -> Iterator:
        """Like ``concurrent.futures.Executor.map``; with ``chunksize > 1`` each task runs a whole
        chunk of calls, which is how small functions reach 100,000+ calls per second.
        ``progress=True`` shows a progress bar of the calls (``faasx.progress``; needs tqdm)."""
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1")
        if self._shut_down:
            raise RuntimeError("cannot schedule new futures after shutdown")
        if chunksize == 1 and not progress:
            return super().map(fn, *iterables, timeout=timeout)
        if chunksize == 1:
            from faasx.progress import Progress
            singles = [self.submit(fn, *args) for args in zip(*iterables)]
            Progress(singles, unit="call").in_background()
            return self._chunk_results(singles, None if timeout is None else timeout + time.monotonic(), False)
        end_time = None if timeout is None else timeout + time.monotonic()
        fid, code, spec, _ = self.executor.function_for(fn)
        zipped = zip(*iterables)
        futures: List[Future] = []
        sizes: List[int] = []
        while True:
            chunk = list(itertools.islice(zipped, chunksize))
            if not chunk:
                break
            futures.append(self.executor.submit_chunk(fid, code, chunk, spec))
            sizes.append(len(chunk))
        if progress:
            from faasx.progress import Progress
            Progress(futures, weights=sizes, unit="call").in_background()
        return self._chunk_results(futures, end_time)

    @staticmethod
    def _chunk_results(futures: List[Future], end_time: Optional[float], chunked: bool = True) -> Iterator:
        try:
            futures.reverse()
            while futures:
                fut = futures.pop()
                result = fut.result() if end_time is None else fut.result(end_time - time.monotonic())
                if chunked:
                    yield from result
                else:
                    yield result
        finally:
            for fut in futures:
                fut.cancel()

    # ---- shutdown ----------------------------------------------------------------------------
    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop the executor, as ``concurrent.futures`` does: no new tasks from now on;
        ``cancel_futures`` cancels the tasks no worker has started; ``wait`` waits for the others to
        finish first (with ``wait=False`` they finish in the background, and interpreter exit waits
        for them).  Called again, it does what is left (a teardown that raised, or that ``wait=False``
        left to the background)."""
        with self._shutdown_lock:
            self._shut_down = True
            if self._torn_down:
                return
        # with cancel_futures, only the tasks a worker has taken are left to wait for
        pending = self.executor.cancel_pending() if cancel_futures else list(self.executor.tasks.values())
        if not wait:
            if self._finisher is None:
                self._finisher = threading.Thread(target=self._finish, args=(pending,), name="faasx-shutdown",
                                                  daemon=True)
                self._finisher.start()
            return
        if self.executor.on_callback_thread():
            # ProcessPoolExecutor raises here too (its thread cannot join itself): this thread would
            # wait for callbacks queued behind the one running now
            raise RuntimeError("cannot shutdown(wait=True) from a faasx done-callback: the callback thread "
                               "would wait for itself. Use shutdown(wait=False) there (the tasks still finish "
                               "and interpreter exit waits for them), or call shutdown() from another thread.")
        self._finish(pending)

    def _finish(self, pending: List[Future]) -> None:
        """Wait for ``pending`` (and what wait=False left running), then stop the engine."""
        # only those not done: wait() takes every future's lock and installs a waiter on each, which
        # for a million just-cancelled futures costs about a second
        concurrent.futures.wait([f for f in pending if not f.done()])
        finisher = self._finisher
        if finisher is not None and finisher is not threading.current_thread():
            finisher.join()
        self._teardown()

    def _teardown(self) -> None:
        with self._shutdown_lock:
            if self._torn_down:
                return
            self._torn_down = True
        if self._poller is not None:
            self._poller.close()
            self._poller = None
        try:
            self.executor.shutdown()
        finally:
            logging.getLogger("faasx").removeHandler(self._log_handler)
            self._log_handler.close()
            _live.discard(self)


class TaskOptions:
    """``Executor.options(**resources)``: ``submit`` and ``map`` with those resources for every task."""

    def __init__(self, executor: Executor, resources: dict):
        self._executor = executor
        self._resources = resources

    def submit(self, fn: Union[Callable, str], /, *args: Any, **kwargs: Any) -> Future:
        ex = self._executor
        if ex._shut_down:
            raise RuntimeError("cannot schedule new futures after shutdown")
        return ex.executor.submit(fn, dict(self._resources), *args, **kwargs)

    def map(self, fn: Callable, *iterables: Iterable, timeout: Optional[float] = None) -> Iterator:
        """As ``Executor.map`` (one task per call)."""
        return concurrent.futures.Executor.map(self, fn, *iterables, timeout=timeout)


@atexit.register
def _finish_live_executors() -> None:
    """At interpreter exit, every executor still running finishes its submitted tasks first, as
    ProcessPoolExecutor's do (a script that ends without shutdown(), or with shutdown(wait=False),
    loses nothing).  Ctrl-C while it waits stops everything at once."""
    for ex in list(_live):
        try:
            ex.shutdown(wait=True)
        except KeyboardInterrupt:
            for left in list(_live):
                left._teardown()
            raise
        except Exception:
            logger.exception("executor %s: shutdown at interpreter exit failed", ex.executor.label)
            ex._teardown()
