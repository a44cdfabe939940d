"""The executor's side of the engine: submit, one I/O thread, the table of pending futures.

``EngineClient`` is what both public executors drive.  ``submit()`` runs in the caller's thread: it
takes an id, makes a ``TaskFuture``, files it in ``futures`` and appends the serialized task to an
outbox.  The I/O thread is woken through a pipe only when it is asleep, drains the outbox into TASKS
messages of up to ``SEND_BATCH`` (8,192) tasks, one per loop iteration, within the ``window``
(function code first, once per function), receives RESULTS batches and resolves futures, dropping
each from the table the moment it resolves.  User code never runs on it: the done-callbacks of the
futures it resolves run on a ``CallbackThread`` (in resolution order), so a slow callback cannot
delay results or heartbeats.  STARTED reports mark futures running().

One shortcut: when nothing at all is outstanding (no task in flight, an empty outbox, nothing
unsent on the link), the caller writes its one task to the link itself instead of waking the I/O
thread.  A lone task -- the interactive, latency-bound case -- then skips a thread hand-off (a
cross-CPU wake-up, ~25-40 us of a ~0.5 ms round trip); under load the outbox is never empty and
tasks go in batches as before.  The send lock orders the two writers on the link.

The link to the interchange is an inherited Unix socketpair (``faasx.executor.channel``; the
interchange is our child process on this host), written without blocking; the client's I/O thread
and the interchange share one CPU when ``engine_cpu`` allows (``faasx.executor.affinity``), and with
"auto" only while they fit on it: the I/O thread measures their demand and spreads them while that
CPU is saturated (``affinity.Governor``).

Liveness: the I/O thread watches the interchange process, its heartbeats and the link.  If the
interchange dies, the link reaches end of file at once and every pending future fails with
``InterchangeLost`` (a hung interchange: within ``heartbeat_threshold``); ``shutdown()`` still
returns promptly.

Back-pressure: at most ``window`` tasks are outstanding at the interchange; the rest wait in the
outbox (they are the caller's own objects already), so the interchange's memory stays bounded.  The
window follows the workers' capacity: it is the larger of the configured one and ``WINDOW_PER_WORKER``
tasks per connected worker, so 131,072 workers are never starved by a window smaller than their count.

Starting the interchange (spawn, configuration, HELLO/WELCOME) is ``faasx.executor.spawn``.

Threads and the state they own
------------------------------
Two kinds of thread touch an ``EngineClient``: *caller* threads (any number: ``submit``, ``cancel``,
``request``, ``shutdown``) and the one *I/O thread* (``_io_loop``), which alone reads the link and
resolves futures.  Each attribute's comment in ``__init__`` says which of them owns it.  A third,
the *callback thread* (``CallbackThread``), touches no client state: it only runs the
done-callbacks of the futures the I/O thread resolved, handed over through its own queue.  Shared
state is of three kinds, as in CPython's ``concurrent/futures/process.py``:

* queues from callers to the I/O thread (``_tasks_out``, ``_funcs_out``, ``_cancel_out``,
  ``_cmds_out``): ``collections.deque``, whose ``append`` and ``popleft`` are atomic, so no lock;
* tables with one writer per key (``futures``, ``_memo_keys``): a caller inserts a task's entry
  before the task is queued, so the I/O thread never looks a task up before it is filed, and only
  the I/O thread (or ``fail_pending``) removes it; single dict operations are atomic in CPython;
* what both the I/O thread and a caller's direct send change (``_in_flight``, writes on the link,
  ``stats["submitted"]``): under ``_send_lock``.  Lock-free *reads* of ``_in_flight`` only choose a
  path (direct send or outbox, poll timeout) and are re-checked under the lock where it matters.

Where new work goes: a new message from the interchange is a branch of ``_handle`` (its body
parsed in ``protocol``); something to run as futures resolve goes after ``_settle`` in
``_resolve`` (user code: on the callback thread); a new question to the interchange is a
``request()`` name.
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import select
import subprocess
import threading
import time
import weakref
from collections import deque
from concurrent.futures import CancelledError, Future, InvalidStateError
from concurrent.futures._base import CANCELLED_AND_NOTIFIED as _CANCELLED_AND_NOTIFIED, PENDING as _PENDING
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

from faasx.errors import (ExecutorShutdown, FaaSXError, InterchangeLost, ManagerLost, SerializationError,
                          TaskTimeout, VersionMismatch, WorkerLost, refuse_pickling)
from faasx.executor import affinity, payloads
from faasx.executor import protocol as P
from faasx.executor.channel import Channel, ChannelClosed, ChannelError
from faasx.executor.security import private_dir
from faasx.executor.serialization import deserialize, deserialize_exception, serialize_function
from faasx.executor.spawn import InterchangeProcess

logger = logging.getLogger("faasx.executor")

SEND_BATCH = 8192            # tasks per TASKS message at most
IC_CHECK_PERIOD = 0.2        # how often the I/O thread looks at the interchange process
DIRECT_MAX_BYTES = 64 << 10  # a caller writes a lone task itself only if it is this small
WINDOW_PER_WORKER = 2        # tasks outstanding per connected worker: one running, one queued behind it
FN_CACHE_STRONG_MAX = 10_000  # functions that cannot be weakly referenced, cached by id() at most

_STOP = object()             # what an I/O step returns when the loop is to end without a failure


class TaskFuture(Future):
    """A Future for one task; ``parsl_executor_task_id`` is its task id in every log line.

    ``_on_result``: called by the I/O thread when the task's result arrives, before the future is
    settled (and before the caller waiting on it wakes): the executor recycles the task's shared
    argument file there, so the caller's next submit finds it."""

    _on_result: Optional[Callable[[], None]] = None

    def __init__(self, tid: int, client: "EngineClient"):
        super().__init__()
        self.parsl_executor_task_id = tid
        self._client = client

    def cancel(self) -> bool:
        """Cancel the task unless a worker has taken it: that task is running() and, as with the stdlib,
        this returns False and it runs on.  A cancelled task queued at the interchange or at a manager
        never runs.  Between a worker taking a task and the report of it reaching here (at least
        ``protocol.STARTED_DELAY``) cancel() may still return True: the task then runs, and its
        result is discarded."""
        if self._cancel_here():
            self._client.cancel(self.parsl_executor_task_id)
        return self.cancelled()

    def _cancel_here(self) -> bool:
        """Cancel this future without telling the engine (``cancel`` does; ``EngineClient.cancel_pending``
        tells it once for many).  True if this call cancelled it."""
        # What Future.cancel() and then set_running_or_notify_cancel() do, in one step under the lock
        # (PENDING -> CANCELLED_AND_NOTIFIED: concurrent.futures.wait()/as_completed() count a cancelled
        # future as done only once its waiters have been told), at a third of the cost: a million-task
        # shutdown(cancel_futures=True) does this a million times.  Condition.acquire/release are the
        # lock's own C methods (``with`` goes through Python-level __enter__/__exit__), and notify_all
        # runs only when a thread waits in result() (Condition._waiters).  The names are the stdlib's
        # (concurrent.futures._base and threading.Condition, unchanged since 3.2).
        cond = self._condition
        cond.acquire()
        try:
            if self._state != _PENDING:
                return False             # running, finished, or cancelled by an earlier call
            self._state = _CANCELLED_AND_NOTIFIED
            for waiter in self._waiters:
                waiter.add_cancelled(self)
            if cond._waiters:
                cond.notify_all()
        finally:
            cond.release()
        if self._done_callbacks:
            self._invoke_callbacks()
        return True

    def _invoke_callbacks(self) -> None:
        # Future.set_result/set_exception/cancel end here.  On the I/O thread, user callbacks would
        # stall the engine (heartbeats, every other result), so they go to the callback thread; in
        # any other thread (a cancel() by the user) they run in place, as in the stdlib.
        if self._done_callbacks and threading.current_thread() is self._client._thread:
            self._client.callbacks.put(self)
        else:
            super()._invoke_callbacks()

    def _mark_running(self) -> None:
        """A worker has taken the task (STARTED): from now on cancel() returns False, as for a task
        ProcessPoolExecutor has moved to its call queue.  Under the condition, so that a concurrent
        cancel() sees one state or the other, never a half-done transition."""
        with self._condition:
            if not self.cancelled() and not self.running() and not self.done():
                self.set_running_or_notify_cancel()


class CallbackThread:
    """Runs the done-callbacks of futures the I/O thread resolved, in the order they resolved.

    The stdlib runs callbacks on the thread that sets the result; here that is the I/O thread, which
    must stay free to move results and heartbeats, so it hands each future with callbacks to this
    thread instead (``TaskFuture._invoke_callbacks``).  A slow callback delays only later callbacks,
    never the engine.  Started on first use; ``stop()`` lets it finish the callbacks already queued.
    """

    def __init__(self, label: str):
        self.label = label
        self._queue: "queue.SimpleQueue[Optional[Future]]" = queue.SimpleQueue()
        self._thread: Optional[threading.Thread] = None
        self._lock = threading.Lock()

    def put(self, fut: Future) -> None:
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name=f"faasx-callbacks-{self.label}",
                                                    daemon=True)
                    self._thread.start()
        self._queue.put(fut)

    def is_current(self) -> bool:
        return threading.current_thread() is self._thread

    def _run(self) -> None:
        while True:
            fut = self._queue.get()
            if fut is None:
                return
            Future._invoke_callbacks(fut)     # logs and swallows each callback's exception

    def stop(self, timeout: float) -> None:
        """End the thread after the queued callbacks (waits ``timeout``; never joins itself)."""
        thread = self._thread
        if thread is None:
            return
        self._queue.put(None)
        if thread is not threading.current_thread():
            thread.join(timeout)


def _check_spec(spec: dict) -> None:
    """Raise SerializationError naming the key if the spec cannot travel in a TASKS header (msgpack:
    plain str/int/float/bool/None/list/dict; ints within 64 bits, e.g. not ``{"priority": 2**64}``)."""
    try:
        P.pack(P.TASKS, [[0, b"", 0, spec]])
    except Exception:
        for key, value in spec.items():
            try:
                P.pack(P.TASKS, {key: value})
            except Exception as e:
                raise SerializationError(f"resource specification key {key!r} ({value!r:.60})",
                                         f"{type(e).__name__}: {e}",
                                         fix="resource specifications travel as msgpack: use ints within 64 "
                                         "bits and plain str, float, bool, list and dict values") from None
        raise


def _failure_exception(status: int, payload: bytes, tid: int) -> BaseException:
    kind, message, attempts = P.parse_failure(payload)
    if kind == "TaskTimeout":
        return TaskTimeout(message, tid)
    if kind == "Terminated":
        return CancelledError(message)
    if status == P.WORKER_LOST:
        return WorkerLost(message, tid, attempts)
    if status == P.MANAGER_LOST:
        return ManagerLost(message, tid, attempts)
    return FaaSXError(message)


def _settle(fut: Future, res: P.Result) -> None:
    """Give a future its result's outcome (raises InvalidStateError if it was cancelled meanwhile)."""
    if res.status == P.OK:
        try:
            value = deserialize(res.payload)
        except Exception as e:
            fut.set_exception(FaaSXError(
                f"task {res.tid}: the result could not be deserialized in the client: {e!r}. Fix: make sure "
                "the result's classes are importable where the executor runs."))
        else:
            fut.set_result(value)
    elif res.status == P.EXCEPTION:
        fut.set_exception(deserialize_exception(res.payload))
    else:
        fut.set_exception(_failure_exception(res.status, res.payload, res.tid))


class _LoopState:
    """What the I/O thread keeps between iterations of its loop (owned by the I/O thread)."""

    __slots__ = ("poller", "lfd", "wake_r", "writing", "last_hb", "last_check", "last_heard")

    def __init__(self, link: Channel, wake_r: int, now: float):
        self.lfd, self.wake_r = link.fileno(), wake_r
        self.poller = select.poll()
        self.poller.register(self.lfd, select.POLLIN)
        self.poller.register(wake_r, select.POLLIN)
        self.writing = False         # whether the poller also waits for the link to be writable
        self.last_hb = self.last_check = self.last_heard = now

    def watch_writable(self, wanted: bool) -> None:
        if wanted != self.writing:
            self.writing = wanted
            self.poller.modify(self.lfd, select.POLLIN | select.POLLOUT if wanted else select.POLLIN)


class EngineClient:
    __reduce__ = refuse_pickling     # a task that refers to its executor fails at submit, naming it

    def __init__(self, *, label: str, logdir: str, token: str, heartbeat_period: float,
                 heartbeat_threshold: float, max_payload_size: int, window: int = 100_000,
                 debug: bool = False, on_fatal: Optional[Callable[[BaseException], None]] = None):
        # configuration: set here, read-only afterwards (any thread)
        self.label = label
        self.logdir = logdir
        self.token = token
        self.heartbeat_period = heartbeat_period
        self.heartbeat_threshold = heartbeat_threshold
        self.max_payload_size = max_payload_size
        self._base_window = window               # as configured
        self.debug = debug
        self.on_fatal = on_fatal                 # called on the I/O thread
        self.engine_cpu: Optional[int] = None    # set by start(), before the I/O thread exists
        self.engine_cpu_adaptive = False         # likewise: "auto", the pin follows the load (affinity.Governor)
        self.governor: Optional[affinity.Governor] = None   # the I/O thread's (read by tests)

        # the futures table: callers insert (submit), the I/O thread removes (see the module docstring)
        self.futures: Dict[int, TaskFuture] = {}
        self._memo_keys: Dict[int, bytes] = {}   # same discipline as futures
        self._ids = itertools.count(1)           # next() is atomic: callers share it

        # caller -> I/O thread queues (deques: atomic append/popleft, no lock)
        self._tasks_out: Deque[P.Task] = deque()
        self._funcs_out: Deque[Tuple[bytes, bytes]] = deque()
        self._cancel_out: Deque[int] = deque()
        self._terminate_out: Deque[int] = deque()
        self._cmds_out: Deque[Tuple[int, str, Any, Future]] = deque()
        self._cmd_ids = itertools.count(1)       # callers; starts at 1 (REPLY id 0 confirms a CANCEL)

        # callers only.  Races between callers are harmless: two threads submitting one new function
        # at once may both queue its code (the interchange stores it twice), or serialize it twice.
        self._known_fids: set = set()
        self._fn_cache: "weakref.WeakKeyDictionary[Any, Tuple[bytes, bytes]]" = weakref.WeakKeyDictionary()
        self._fn_cache_strong: Dict[int, Tuple[Any, bytes, bytes]] = {}

        # guarded by _send_lock: writes on the link, and the counters both writers change
        self._send_lock = threading.Lock()
        self._in_flight = 0                      # tasks sent and not resolved
        self.stats = {"submitted": 0, "results": 0, "duplicates": 0, "failed": 0}   # the rest: I/O thread

        # the I/O thread's own.  ``window`` (outstanding tasks allowed) is written by it alone, as
        # managers come and go, and read lock-free by callers: a stale value only delays a send.
        self.window = window
        self._manager_workers: Dict[str, int] = {}   # connected manager -> its workers
        self._total_workers = 0
        self._cmd_futures: Dict[int, Future] = {}   # COMMANDs sent, by req_id, until their REPLY
        self.managers_connected = 0                 # (read by anyone: a single int)
        self.last_refusal: Optional[dict] = None    # (read by anyone)
        # the last few failures, for ``faasx status`` (read from its thread: a deque, appends are atomic)
        self.recent_errors: Deque[Tuple[int, float, Optional[BaseException]]] = deque(maxlen=20)

        # flags: each has one writer, and is read lock-free by the others
        self._sleeping = False        # I/O thread: it is (about to be) in poll(); a caller that clears it wakes it
        self._closing = False         # shutdown(), once: False -> True
        self._fatal: Optional[BaseException] = None   # I/O thread, once: why every future failed
        self._stopped = threading.Event()             # the I/O thread has ended
        # runs the done-callbacks of futures the I/O thread resolves (its own thread, its own queue)
        self.callbacks = CallbackThread(label)

        # set by start() in the starting thread, before the I/O thread exists
        self._ic: Optional[InterchangeProcess] = None
        self.link: Optional[Channel] = None
        self._thread: Optional[threading.Thread] = None
        self._wake_r = self._wake_w = -1
        self.memo_store = None        # a MemoStore, set by the executor before the first submit

    # ---- start -------------------------------------------------------------------------------
    def start(self, ic_config: dict, start_timeout: float = 30.0) -> Dict[str, int]:
        """Start the interchange process, connect to it and start the I/O thread."""
        private_dir(self.logdir)
        ic_config = dict(ic_config)
        self.engine_cpu_adaptive = bool(ic_config.pop("engine_cpu_adaptive", False))
        cfg = dict(ic_config, token=self.token, logdir=self.logdir, parent_pid=os.getpid(),
                   heartbeat_period=self.heartbeat_period, heartbeat_threshold=self.heartbeat_threshold,
                   max_payload_size=self.max_payload_size, debug=self.debug)
        self.engine_cpu = ic_config.get("engine_cpu")
        self._ic = InterchangeProcess.start(self.label, self.logdir, cfg, self.token,
                                            max_message=2 * self.max_payload_size + (64 << 20),
                                            timeout=start_timeout)
        self.link = self._ic.link
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._thread = threading.Thread(target=self._io_loop, name=f"faasx-io-{self.label}", daemon=True)
        self._thread.start()
        return self.ports

    @property
    def ports(self) -> Dict[str, Any]:
        """The interchange's manager endpoints: {"manager_port": n, "manager_ipc": name or None}."""
        return self._ic.ports if self._ic is not None else {}

    @property
    def ic_proc(self) -> Optional[subprocess.Popen]:
        """The interchange process (for tests and diagnostics)."""
        return self._ic.proc if self._ic is not None else None

    # ---- submit path (caller's thread) -------------------------------------------------------
    def function(self, fn: Callable) -> Tuple[bytes, bytes]:
        """(function id, code) for a callable, serialized once per function object."""
        try:
            cached = self._fn_cache.get(fn)
        except TypeError:  # not weak-referenceable (builtins): keep a strong reference
            return self._function_by_id(fn)
        if cached is None:
            cached = self._fn_cache[fn] = serialize_function(fn)
        return cached

    def _function_by_id(self, fn: Callable) -> Tuple[bytes, bytes]:
        entry = self._fn_cache_strong.get(id(fn))
        if entry is not None and entry[0] is fn:
            return entry[1], entry[2]
        fid, code = serialize_function(fn)
        if len(self._fn_cache_strong) > FN_CACHE_STRONG_MAX:
            self._fn_cache_strong.clear()
        self._fn_cache_strong[id(fn)] = (fn, fid, code)
        return fid, code

    def submit(self, fid: bytes, code: Optional[bytes], kind: int, spec: Optional[dict],
               payload: bytes, memo_key: Optional[bytes] = None) -> TaskFuture:
        """File a future for the task and queue it (or, when nothing is outstanding, send it now)."""
        self._check_task(fid, code, spec)    # every check before anything is recorded: all or nothing
        tid = next(self._ids)
        fut = TaskFuture(tid, self)
        self.futures[tid] = fut
        if memo_key is not None:
            self._memo_keys[tid] = memo_key
        if fid not in self._known_fids:
            self._queue_code(fid, code)
        task = P.Task(tid, fid, kind, spec, payload)
        if not self._in_flight and not self._tasks_out and len(payload) <= DIRECT_MAX_BYTES \
                and self._send_direct(task):
            return fut
        self._tasks_out.append(task)
        if self._sleeping:      # set by the I/O thread before it computes its poll timeout: see _wait
            self._sleeping = False
            self._wake()
        return fut

    def _check_task(self, fid: bytes, code: Optional[bytes], spec: Optional[dict]) -> None:
        if self._fatal is not None:
            raise self._fatal
        if self._closing:
            raise ExecutorShutdown(f"executor {self.label} is shut down; no new tasks are accepted")
        if code is None and fid not in self._known_fids:
            raise FaaSXError(f"function {fid.hex()} has no code to send")
        if spec is not None:
            _check_spec(spec)

    def _queue_code(self, fid: bytes, code: bytes) -> None:
        # queue the code before the id counts as known: another thread's task for this function
        # must never reach the interchange ahead of its code
        self._funcs_out.append((fid, code))
        self._known_fids.add(fid)

    def _send_direct(self, task: P.Task) -> bool:
        """Write a lone task to the link from the caller's thread (see the module docstring); False if
        the I/O thread must take it after all."""
        link = self.link
        if link is None or not self._send_lock.acquire(blocking=False):
            return False
        try:
            if self._in_flight or self._tasks_out or link.wants_write() or self._closing:
                return False
            try:
                self._send_funcs(link)
                done = link.send_nowait(P.pack_tasks([task]))
            except OSError:       # the link is gone: the I/O thread reports it (InterchangeLost)
                self._wake()
                return True       # the future is filed: it fails with everything else
            self._in_flight += 1
            self.stats["submitted"] += 1
            if self.debug:
                logger.debug("sent task %d (directly)", task.tid)
            if not done:          # the rest waits for the link to be writable: the I/O thread's job
                self._wake()
            return True
        finally:
            self._send_lock.release()

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"\0")
        except (BlockingIOError, OSError):
            pass

    def cancel(self, tid: int) -> None:
        """Ask the interchange to drop task ``tid`` if it is still queued (``TaskFuture.cancel``)."""
        self._cancel_out.append(tid)
        self._wake()

    def terminate(self, fut: TaskFuture) -> bool:
        """Stop the task even if a worker runs it: a task not yet running is cancelled as usual; the
        manager of one at a worker kills that worker's process group and the future fails with
        ``CancelledError``.  False if the future is done already."""
        if fut.done():
            return False
        fut.cancel()
        self._terminate_out.append(fut.parsl_executor_task_id)
        self._wake()
        return True

    def cancel_pending(self) -> List[TaskFuture]:
        """Cancel every task no worker has taken (``shutdown(cancel_futures=True)``) in one pass; returns
        the futures left to wait for (those a worker has taken).

        The tasks still queued here never reached the interchange: they are dropped without a word to it
        (sending them only to cancel them is what made a million-task cancel take seconds).  Those sent
        go in one CANCEL message, so the interchange does one pass and writes one log line."""
        with self._send_lock:    # the I/O thread takes tasks under it: each task is either here or sent
            pop_task = self._tasks_out.popleft
            unsent = [pop_task() for _ in range(len(self._tasks_out))]
        pop_future = self.futures.pop
        for task in unsent:
            fut = pop_future(task.tid, None)
            if fut is not None:
                fut._cancel_here()
        if self._memo_keys:
            for task in unsent:
                self._memo_keys.pop(task.tid, None)
        sent, running = [], []
        # a copy in one C step: the I/O thread pops resolved futures meanwhile, and list(items())
        # allocates per entry (a GC pass there lets it run: 'dictionary changed size during iteration')
        for tid, fut in self.futures.copy().items():
            if fut._cancel_here():
                sent.append(tid)
            elif not fut.done():
                running.append(fut)
        if sent:
            self._cancel_out.extend(sent)
            self._wake()
        logger.info("executor %s: cancelled %d task(s) not yet sent and %d at the interchange or a manager; "
                    "%d already running", self.label, len(unsent), len(sent), len(running))
        return running

    def request(self, name: str, args: Any = None, timeout: float = 10.0) -> Any:
        """Ask the interchange something (managers, blocks, stats ...); waits up to ``timeout``."""
        if self._fatal is not None:
            raise self._fatal
        if self._closing:
            raise ExecutorShutdown(f"executor {self.label} is shut down")
        fut: Future = Future()
        self._cmds_out.append((next(self._cmd_ids), name, args, fut))
        self._wake()
        return fut.result(timeout)

    # ---- I/O thread --------------------------------------------------------------------------
    def _io_loop(self) -> None:
        try:
            self._io_loop_inner()
        except BaseException as e:  # never die silently: every future must resolve
            logger.exception("executor %s: the I/O thread crashed", self.label)
            self._fail_everything(FaaSXError(f"executor {self.label}: internal error in the I/O thread: {e!r}; "
                                             f"see the log in {self.logdir}"))
        finally:
            self._stopped.set()

    def _io_loop_inner(self) -> None:
        """Sleep until there is work, exchange messages, check the interchange; until it ends."""
        allowed = affinity.allowed_cpus()
        pinned = affinity.pin_this_thread(self.engine_cpu, f"executor {self.label}: I/O thread")
        assert self.link is not None
        io = _LoopState(self.link, self._wake_r, time.monotonic())
        if pinned and self.engine_cpu_adaptive:
            self.governor = self._governor(io.last_check, allowed)
        governor = self.governor
        while True:
            events = self._wait(io)
            now = time.monotonic()
            if governor is not None:
                governor.tick(now)
            outcome = self._exchange(io, events.get(io.lfd, 0), now) or self._check_interchange(io, now)
            if outcome is _STOP:
                return
            if outcome is not None:
                self._fail_everything(outcome)
                return

    def _governor(self, now: float, allowed: set) -> Optional[affinity.Governor]:
        """What keeps this thread and the interchange's on one CPU only while they fit (I/O thread)."""
        proc = self.ic_proc
        if proc is None or self.engine_cpu is None:
            return None
        me, tid, ic = os.getpid(), threading.get_native_id(), proc.pid

        def members() -> List[Tuple[int, int]]:
            return [(me, tid)] + [(ic, t) for t in affinity.thread_ids(ic)]
        governor = affinity.Governor(self.engine_cpu, members, f"executor {self.label}", now, allowed)
        governor.spread_if_busy(now)
        return governor

    def _wait(self, io: _LoopState) -> dict:
        """Poll the link and the wake pipe; without a timeout only when nothing is waiting to be sent.

        ``_sleeping`` is set before the outbox is looked at: a caller that queues a task after that
        sees the flag and wakes us; one that queued before is seen here (timeout 0)."""
        self._sleeping = True
        io.watch_writable(self.link.wants_write())
        sendable = (self._tasks_out and self._in_flight < self.window) or self._cancel_out \
            or self._terminate_out or self._cmds_out
        timeout = 0 if sendable or self._closing else int(min(IC_CHECK_PERIOD, self.heartbeat_period) * 1000)
        events = dict(io.poller.poll(timeout))
        self._sleeping = False
        if io.wake_r in events:
            try:
                os.read(io.wake_r, 65536)
            except BlockingIOError:
                pass
        return events

    def _exchange(self, io: _LoopState, link_events: int, now: float) -> Any:
        """Write and read the link; None to go on, ``_STOP`` after SHUTDOWN, or the error to fail with."""
        link = self.link
        try:
            if link_events & select.POLLOUT:
                with self._send_lock:
                    link.flush()
            if link_events & ~select.POLLOUT:
                io.last_heard = now
                for frames in link.recv_available():
                    self._handle(frames)
            self._send_outgoing()
            if self._closing:
                self._say_goodbye()
                return _STOP
            if now - io.last_hb >= self.heartbeat_period:
                io.last_hb = now
                with self._send_lock:
                    link.send_nowait(P.pack_heartbeat())
        except (ChannelClosed, OSError) as e:
            return self._interchange_lost(f"closed its link ({type(e).__name__})")
        except ChannelError as e:
            return InterchangeLost(
                f"executor {self.label}: corrupt data from the interchange ({e}); this is a faasx bug, please "
                f"report it with {self.logdir}/interchange.log. Start a new executor to continue.")
        return None

    def _check_interchange(self, io: _LoopState, now: float) -> Optional[InterchangeLost]:
        """Every IC_CHECK_PERIOD: has the interchange exited, or been silent too long?"""
        if now - io.last_check < IC_CHECK_PERIOD:
            return None
        io.last_check = now
        code = self._ic.poll() if self._ic is not None else None
        if code is not None:
            return self._interchange_lost(f"exited with code {code}")
        if now - io.last_heard > self.heartbeat_threshold:
            return InterchangeLost(
                f"executor {self.label}: the interchange has been silent for {now - io.last_heard:.1f}s "
                f"(heartbeat_threshold {self.heartbeat_threshold}s); pending tasks failed.")
        return None

    def _interchange_lost(self, what: str) -> InterchangeLost:
        if self._ic is None:
            return InterchangeLost(f"executor {self.label}: the interchange {what}")
        return self._ic.lost(what)

    def _say_goodbye(self) -> None:
        """Ask the interchange to stop (it tells its managers), waiting at most 2 s for the link."""
        link = self.link
        assert link is not None
        with self._send_lock:
            link.send_nowait(P.pack_shutdown())
            if not link.flush_until(time.monotonic() + 2.0):
                logger.warning("executor %s: could not deliver SHUTDOWN to the interchange; it exits when it "
                               "sees the link close", self.label)

    def _send_funcs(self, link: Channel) -> None:
        """Write every queued function's code as one FUNCS message (caller holds the send lock)."""
        funcs_out = self._funcs_out
        if funcs_out:
            funcs = [funcs_out.popleft() for _ in range(len(funcs_out))]
            link.send_nowait(P.pack_funcs([f[0] for f in funcs], [f[1] for f in funcs]))

    def _send_outgoing(self) -> None:
        """Write everything the callers queued: code, tasks (within the window), cancels, commands.

        One TASKS message per call, at most ``SEND_BATCH`` tasks (a byte bound on it would go in
        ``_take_tasks``)."""
        with self._send_lock:
            link = self.link
            assert link is not None
            # Take the tasks first, then the functions: every function a taken task needs was queued
            # before the task, so it is in the functions we take now.
            batch = self._take_tasks()
            self._send_funcs(link)
            if batch:
                self._send_tasks(link, batch)
            self._send_cancels(link)
            self._send_commands(link)

    def _take_tasks(self) -> list:
        """Up to ``SEND_BATCH`` queued tasks, as many as the window has room for (send lock held)."""
        tasks_out = self._tasks_out
        n = min(len(tasks_out), self.window - self._in_flight, SEND_BATCH)
        return [tasks_out.popleft() for _ in range(n)] if n > 0 else []

    def _send_tasks(self, link: Channel, batch: list) -> None:
        """One TASKS message for the tasks of ``batch`` not cancelled meanwhile (send lock held)."""
        futures = self.futures
        live = []
        for task in batch:
            fut = futures.get(task.tid)
            if fut is None or fut.cancelled():
                futures.pop(task.tid, None)
            else:
                live.append(task)
        for chunk in P.chunks_by_bytes(live) if live else ():
            try:
                frames = P.pack_tasks(chunk)
            except Exception:   # submit() checks each spec, so this is a bug: cost one task, not the thread
                chunk, frames = self._drop_unencodable(chunk)
            self._in_flight += len(chunk)
            self.stats["submitted"] += len(chunk)
            if chunk:
                link.send_nowait(frames)
        if live:
            if self.debug:
                logger.debug("sent tasks %s", [t.tid for t in live])

    def _drop_unencodable(self, tasks: list) -> Tuple[list, list]:
        """The tasks that encode, and their TASKS message; the future of each other one fails."""
        good = []
        for task in tasks:
            try:
                P.pack_tasks([task])
            except Exception as e:
                logger.exception("executor %s: task %d cannot be encoded; failing it", self.label, task.tid)
                fut = self.futures.pop(task.tid, None)
                if fut is not None and not fut.done():
                    fut.set_exception(SerializationError(f"task {task.tid}'s record", f"{type(e).__name__}: {e}"))
            else:
                good.append(task)
        return good, P.pack_tasks(good) if good else []

    def _send_cancels(self, link: Channel) -> None:
        cancel_out = self._cancel_out
        if cancel_out:
            link.send_nowait(P.pack_cancel([cancel_out.popleft() for _ in range(len(cancel_out))]))
        terminate_out = self._terminate_out
        if terminate_out:
            link.send_nowait(P.pack_terminate([terminate_out.popleft() for _ in range(len(terminate_out))]))

    def _send_commands(self, link: Channel) -> None:
        while self._cmds_out:
            req_id, name, args, fut = self._cmds_out.popleft()
            self._cmd_futures[req_id] = fut
            link.send_nowait(P.pack_command(req_id, name, args))

    def _handle(self, frames: list) -> None:
        """One message from the interchange (I/O thread)."""
        try:
            msg_type, body, payloads = P.unpack(frames)
            if msg_type == P.RESULTS:      # first: the hot path
                self._resolve(P.parse_results(body, payloads))
            elif msg_type == P.STARTED:
                self._on_started(P.parse_started(body))
            elif msg_type == P.REPLY:
                self._on_reply(*P.parse_reply(body))
            elif msg_type == P.EVENT:
                self._event(P.parse_event(body))
            elif msg_type != P.HEARTBEAT:
                logger.warning("executor %s: unexpected %s from the interchange", self.label, P.type_name(msg_type))
        except P.ProtocolError as e:
            logger.error("executor %s: dropped malformed message from the interchange: %s", self.label, e)

    def _on_started(self, tids: List[int]) -> None:
        futures = self.futures
        for tid in tids:
            fut = futures.get(tid)
            if fut is not None:
                fut._mark_running()

    def _on_reply(self, req_id: int, result: Any) -> None:
        if req_id == P.CANCEL_CONFIRMED:    # these cancelled tasks will never report
            self._forget_cancelled(result)
            return
        fut = self._cmd_futures.pop(req_id, None)
        if fut is not None and not fut.done():
            fut.set_result(result)

    def _resolve(self, results: list) -> None:
        """Resolve the futures of a RESULTS batch, dropping each from the table as it resolves."""
        futures = self.futures
        with self._send_lock:
            self._in_flight -= len(results)
        self.stats["results"] += len(results)
        memo_keys, debug = self._memo_keys, self.debug    # locals: read once per result
        for res in results:
            fut = futures.pop(res.tid, None)
            if fut is None:
                self.stats["duplicates"] += 1
                logger.error("executor %s: result for unknown or already resolved task %d dropped", self.label,
                             res.tid)
                payloads.release(res.payload)    # a shared-memory result: nobody else will unlink it
                continue
            if memo_keys:
                self._remember(res)
            if fut._on_result is not None:
                fut._on_result()
            try:
                _settle(fut, res)
            except InvalidStateError:  # cancelled by the user meanwhile
                pass
            if res.status != P.OK:
                self._note_failure(res.tid, fut)
            if debug:
                logger.debug("task %d resolved (status %d)", res.tid, res.status)

    def _note_failure(self, tid: int, fut: Future) -> None:
        """Count a failed task and keep it among the last few errors (what ``faasx status`` shows)."""
        self.stats["failed"] += 1
        if not fut.cancelled():
            self.recent_errors.append((tid, time.time(), fut.exception(0)))

    def _remember(self, res: P.Result) -> None:
        """Store a memoized task's result (only successes are remembered)."""
        key = self._memo_keys.pop(res.tid, None)
        if key is not None and res.status == P.OK and self.memo_store is not None:
            value = payloads.to_keep(res.payload)     # a shared-memory result's file goes once read
            if value is not None:
                self.memo_store.put(key, value)

    def _forget_cancelled(self, tids: Any) -> None:
        if isinstance(tids, list):
            with self._send_lock:
                self._in_flight -= len(tids)
            for tid in tids:
                self.futures.pop(tid, None)

    def _event(self, body: dict) -> None:
        handler = self._event_handlers.get(body["kind"])
        if handler is not None:
            handler(self, body)

    def _on_registered(self, body: dict) -> None:
        self.managers_connected += 1
        self._track_workers(body.get("manager"), body.get("workers"))
        logger.info("executor %s: manager %s of block %s connected with %s workers", self.label,
                    body.get("manager"), body.get("block_id"), body.get("workers"))

    def _on_lost(self, body: dict) -> None:
        self.managers_connected = max(0, self.managers_connected - 1)
        self._track_workers(body.get("manager"), None)
        requeued, failed = body.get("requeued") or 0, body.get("failed") or 0
        # a manager leaving idle (scale-in, shutdown, drain) is routine; one that took tasks with it is not
        logger.log(logging.WARNING if requeued + failed else logging.INFO,
                   "executor %s: manager %s of block %s removed: %s (%d task(s) re-queued, %d failed)",
                   self.label, body.get("manager"), body.get("block_id"), body.get("reason"), requeued, failed)

    def _on_refused(self, body: dict) -> None:
        """A refused manager; with a version mismatch and no manager connected, no task can ever run."""
        self.last_refusal = body
        logger.error("executor %s: the interchange refused manager %s: %s", self.label, body.get("manager"),
                     body.get("reason"))
        if str(body.get("reason", "")).startswith("version mismatch") and self.managers_connected == 0:
            theirs = body.get("manager_versions")
            self.fail_pending(VersionMismatch("manager " + str(body.get("manager")),
                                              body.get("interchange_versions") or {},
                                              theirs if isinstance(theirs, dict) else {}))

    def _track_workers(self, manager: Any, workers: Any) -> None:
        """A manager came (with ``workers``) or went (None): the window follows the workers connected."""
        gone = self._manager_workers.pop(str(manager), 0)
        if isinstance(workers, int) and workers > 0:
            self._manager_workers[str(manager)] = workers
        else:
            workers = 0
        self._total_workers += workers - gone
        self.window = max(self._base_window, WINDOW_PER_WORKER * self._total_workers)

    _event_handlers = {"registered": _on_registered, "lost": _on_lost, "refused": _on_refused}

    # ---- failure and shutdown ----------------------------------------------------------------
    def fail_pending(self, exc: BaseException) -> None:
        """Fail every pending future with ``exc`` and drop the tasks not yet sent (any thread)."""
        futures = self.futures
        for tid in list(futures):
            fut = futures.pop(tid, None)
            if fut is not None and not fut.done():
                try:
                    fut.set_exception(exc)
                except InvalidStateError:
                    pass
        self._tasks_out.clear()
        self._memo_keys.clear()
        with self._send_lock:
            self._in_flight = 0

    def _fail_everything(self, exc: BaseException) -> None:
        """The engine is gone: fail futures and requests, refuse new work, tell the executor (I/O thread)."""
        if self._fatal is None:
            self._fatal = exc
            logger.error("%s", exc)
        self.fail_pending(exc)
        for fut in list(self._cmd_futures.values()) + [c[3] for c in self._cmds_out]:
            if not fut.done():
                fut.set_exception(exc)
        if self.on_fatal is not None:
            try:
                self.on_fatal(exc)
            except Exception:
                logger.exception("on_fatal callback failed")

    @property
    def outstanding(self) -> int:
        return len(self.futures)

    @property
    def healthy(self) -> bool:
        return self._fatal is None and not self._closing

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop the interchange (which tells its managers to exit) and the I/O thread; fail what is left."""
        if self._closing:
            return
        self._closing = True
        if self._thread is not None and self._thread.is_alive():
            self._wake()
            self._stopped.wait(timeout)
        self._stop_interchange(timeout)
        self.fail_pending(ExecutorShutdown(f"executor {self.label} was shut down before the task finished"))
        self.callbacks.stop(timeout)
        if self._thread is not None:
            self._thread.join(timeout)
            if self.link is not None:
                self.link.close()
            os.close(self._wake_r)
            os.close(self._wake_w)

    def _stop_interchange(self, timeout: float) -> None:
        if self._ic is None:
            return
        try:
            self._ic.wait(timeout)
        except subprocess.TimeoutExpired:
            logger.warning("executor %s: the interchange did not exit within %ss; killing it", self.label, timeout)
            self._ic.kill()
