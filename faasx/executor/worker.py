"""faasx-worker: runs functions for its manager, one task at a time.

A worker talks to its manager over an inherited Unix socket (``faasx.executor.channel``), says
READY, and then loops: receive a
batch of tasks, run each, send the results back.  Results of a batch go back together, except that
those finished before a task that runs long go at once, so the manager and the client see them early
(``ResultFlusher``: a helper thread sends them while the task runs).  Function code arrives once
(FUNCS) and stays deserialized here.

In a container (``docs/containers.md``) the manager is not in the worker's PID namespace
(``--manager-pid 0``): the worker then relies on its socket, which reaches end of file the moment the
manager is gone.  Where the socket cannot be inherited (docker, apptainer, singularity, shifter) the
worker connects to a Unix socket path the manager listens on (``--connect``) instead of ``--fd``.

The worker dies with its manager (``PR_SET_PDEATHSIG``), and survives whatever the function does
short of killing the process: exceptions, ``sys.exit``, unpicklable or oversize results all come
back as the task's exception.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import resource
import select
import socket
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from faasx.errors import FunctionExited, PayloadTooLarge, SerializationError
from faasx.executor import affinity, payloads
from faasx.executor import protocol as P
from faasx.executor import task_output
from faasx.executor.task_output import TaskOutput
from faasx.executor.channel import Channel, ChannelClosed, ChannelError
from faasx.executor.imports import explain_missing_module
from faasx.executor.mpi import run_in_environment
from faasx.executor.processes import die_with_parent, set_process_name
from faasx.executor.serialization import (deserialize, deserialize_function, serialize,
                                          serialize_exception)

logger = logging.getLogger("faasx.worker")

FLUSH_INTERVAL = 0.005   # seconds between result flushes inside a long batch
EARLY_SEND = 0.005       # a task running this long sends the results finished before it (ResultFlusher)


class ResultFlusher:
    """The results of a batch, and when they go to the manager.

    Owned by the worker's main thread (which runs the tasks), except for one helper thread described
    below; ``_lock`` guards ``_results``, ``_running_since`` and every send on the channel.

    * Between tasks (main thread): the results are sent together at the end of the batch, and those
      ready so far whenever a task of the batch finishes ``FLUSH_INTERVAL`` after the last send, so a
      long batch of short tasks reports as it goes.  A batch of no-ops is one message, as before.
    * While a task runs (helper thread ``faasx-early-results``): once the task now running has run
      ``EARLY_SEND`` and results finished before it are still waiting, they are sent at once, so a
      result never waits for a slow task later in its batch (``map(timeout=)``,
      ``wait(FIRST_EXCEPTION)`` and ``as_completed`` see it as ProcessPoolExecutor would).  The
      thread looks every ``EARLY_SEND`` while batches of more than one task run, and sleeps on
      ``_wake`` otherwise; tasks shorter than ``EARLY_SEND`` never cause an extra message.

    An early send does not confuse the manager: it measures a batch's duration when its last result
    arrives (``WorkerTable.done`` counts results, not messages).

    Limit: the helper thread needs the GIL.  Python code running in the task gives it up every
    ``sys.getswitchinterval()`` (5 ms by default), and so does any blocking call (sleep, I/O, most of
    numpy); a C extension call that holds the GIL for its whole duration keeps the finished results
    waiting until it returns (as they did before this thread existed).
    """

    def __init__(self, send: Callable[[List[bytes]], None]):
        self._send = send
        self._lock = threading.Lock()
        self._results: List[P.Result] = []
        self._last = time.perf_counter()          # main thread: the batch's start or its last message
        self._running_since: Optional[float] = None   # when the task now running started, if results wait
        self._in_batch = False                    # main thread writes: a batch of several tasks is running
        self._wake = threading.Event()            # wakes the helper thread when it sleeps between batches
        self._thread: Optional[threading.Thread] = None

    def start_batch(self, n: int) -> None:
        """Main thread, before a batch of ``n`` tasks: wake the helper thread if there can be results to
        send early (there cannot with one task)."""
        if n > 1:
            if self._thread is None:
                self._thread = threading.Thread(target=self._watch, name="faasx-early-results", daemon=True)
                self._thread.start()
            self._in_batch = True
            if not self._wake.is_set():    # most batches find it set: no system call then
                self._wake.set()
        self._last = time.perf_counter()   # FLUSH_INTERVAL counts from the batch's start, not an idle gap

    def start_task(self) -> None:
        """Main thread, before each task of a batch: from now on, results waiting for it may go early."""
        if self._results:
            self._running_since = time.perf_counter()

    def add(self, tid: int, status: int, data: bytes, more: bool) -> None:
        """Main thread: a task of the batch finished; ``more`` says whether others follow it."""
        with self._lock:
            self._running_since = None
            self._results.append(P.Result(tid, status, data))
        if more:
            now = time.perf_counter()
            if now - self._last > FLUSH_INTERVAL:
                self.flush()

    def flush(self) -> None:
        """Main thread: send what is waiting (at the end of a batch, and between its tasks)."""
        with self._lock:
            self._running_since = None
            self._send_locked()
        self._last = time.perf_counter()

    def end_batch(self) -> None:
        """Main thread, after the last task of a batch: send the rest; the helper thread goes back to sleep."""
        self._in_batch = False
        self.flush()

    def _send_locked(self) -> None:
        if self._results:
            results, self._results = self._results, []
            for chunk in P.chunks_by_bytes(results):
                self._send(P.pack_results(chunk))

    def _watch(self) -> None:
        """The helper thread: while a batch runs, send the waiting results of a task running ``EARLY_SEND``."""
        while True:
            self._wake.wait()
            time.sleep(EARLY_SEND)
            try:
                self._send_early()
            except OSError:      # the manager is gone: the main thread's own loop sees it and exits
                return
            if not self._in_batch:
                self._wake.clear()
                if self._in_batch:     # a batch began between the test and the clear: keep watching
                    self._wake.set()

    def _send_early(self) -> None:
        with self._lock:
            since = self._running_since
            if since is not None and time.perf_counter() - since >= EARLY_SEND:
                self._running_since = None
                self._send_locked()


class Worker:
    def __init__(self, fd: int, worker_id: int, max_payload_size: int, debug: bool = False,
                 sock: Optional[socket.socket] = None):
        self.worker_id = worker_id
        self.max_payload_size = max_payload_size
        # the client's shared-memory directory, given to a local block's plain workers (payloads)
        self.shm_dir = os.environ.get(payloads.SHM_DIR_ENV)
        self.debug = debug
        self.host = socket.gethostname()
        self.codes: Dict[bytes, bytes] = {}
        self.functions: Dict[bytes, Callable] = {}
        self.chan = Channel(sock if sock is not None else socket.socket(fileno=fd),
                            max_message=max_payload_size * 2 + (64 << 20))
        self.malformed = 0
        self.output = TaskOutput()     # replaced by task_output.install() in a real worker process
        self.flusher = ResultFlusher(self.send)

    def send(self, frames: List[bytes]) -> None:
        self.chan.send(frames)

    def run(self, manager_pid: int) -> None:
        """Say READY, then handle the manager's messages until it says SHUTDOWN or is gone."""
        poller = select.poll()
        poller.register(self.chan.fileno(), select.POLLIN)
        self.send(P.pack_ready(self.worker_id, os.getpid()))
        while self.manager_alive(poller, manager_pid):
            frames = self.receive()
            if frames is None or not self.handle(frames):
                return

    def manager_alive(self, poller, manager_pid: int) -> bool:
        """Wait (a second at a time) for a message; False once the manager process is gone.  In a container
        (``manager_pid`` 0) the channel's end of file says so instead."""
        while not self.chan.buffered() and not poller.poll(1000):
            if manager_pid and os.getppid() != manager_pid:
                logger.warning("worker %d: manager %d is gone; exiting", self.worker_id, manager_pid)
                return False
        return True

    def receive(self) -> Optional[list]:
        """The next message, or None when the channel is closed or corrupt."""
        try:
            return self.chan.recv()
        except ChannelClosed:
            logger.info("worker %d: the manager closed the channel; exiting", self.worker_id)
        except ChannelError as e:
            logger.error("worker %d: corrupt stream from the manager (%s); exiting", self.worker_id, e)
        return None

    def handle(self, frames) -> bool:
        """One message from the manager; False when it asks this worker to exit."""
        try:
            msg_type, body, payloads = P.unpack(frames)
            if msg_type == P.TASKS:
                self.run_batch(P.parse_tasks(body, payloads))
            elif msg_type == P.FUNCS:
                for fid, code in P.parse_funcs(body, payloads):
                    self.codes[fid] = code
            elif msg_type == P.SHUTDOWN:
                logger.info("worker %d: shutdown requested", self.worker_id)
                return False
            else:
                raise P.ProtocolError(f"unexpected {P.type_name(msg_type)} message")
        except P.ProtocolError as e:
            self.malformed += 1
            logger.error("worker %d: dropped malformed message from manager: %s", self.worker_id, e)
        return True

    def run_batch(self, tasks: List[P.Task]) -> None:
        flusher = self.flusher
        n = len(tasks)
        output = self.output
        flusher.start_batch(n)
        for i, task in enumerate(tasks):
            tid, spec = task.tid, task.spec
            flusher.start_task()
            output.tid = tid               # names the task in its captured output (task_output)
            if self.debug:
                logger.debug("task %d: start", tid)
            if spec and "mpi" in spec:   # MPI mode: PARSL_MPI_PREFIX & co. for this call (faasx.executor.mpi)
                status, data = run_in_environment(spec["mpi"], lambda: self.execute(task))
            elif spec and ("cores" in spec or "memory" in spec):
                with task_limits(spec):
                    status, data = self.execute(task)
            else:
                status, data = self.execute(task)
            if payloads.held():
                payloads.release_mappings()   # before the result: the client may then reuse the argument file
            if self.debug:
                logger.debug("task %d: done (status %d, %d bytes)", tid, status, len(data))
            flusher.add(tid, status, data, more=i + 1 < n)
        output.tid = None
        flusher.end_batch()

    def execute(self, task: P.Task) -> Tuple[int, bytes]:
        """Run one task: (status, payload) of its value, or of whatever it raised."""
        tid, fid = task.tid, task.fid
        try:
            fn = self.functions.get(fid)
            if fn is None:
                code = self.codes.get(fid)
                if code is None:
                    return P.FAILED, P.failure_payload(
                        "FAILED", f"task {tid}: the worker never received the code of function {fid.hex()}")
                try:
                    fn = self.functions[fid] = deserialize_function(code)
                except ModuleNotFoundError as e:   # a module next to the script, absent on this node
                    raise explain_missing_module(e, tid, self.host)
                del self.codes[fid]
            try:
                args, kwargs = deserialize(task.payload)
            except ModuleNotFoundError as e:
                raise explain_missing_module(e, tid, self.host)
            if task.kind == P.KIND_CALL:
                value = fn(*args, **kwargs)
            else:
                value = [fn(*a) for a in args]
            return P.OK, self._result_payload(value, task)
        except SerializationError as e:
            e.task_id = tid
            return P.EXCEPTION, serialize_exception(e, self.host)
        except Exception as e:
            return P.EXCEPTION, serialize_exception(e, self.host)
        except SystemExit as e:
            return P.EXCEPTION, serialize_exception(FunctionExited(f"SystemExit({e.code!r})", tid), self.host)
        except BaseException as e:  # KeyboardInterrupt, GeneratorExit raised by user code
            return P.EXCEPTION, serialize_exception(FunctionExited(type(e).__name__, tid), self.host)


    def _result_payload(self, value: Any, task: P.Task) -> bytes:
        """The serialized result: through the client's shared memory when the arguments came that way or
        the manager named its directory (``faasx.executor.payloads``: the reader unlinks the file),
        inline otherwise (and where that directory cannot be opened: a container)."""
        writer = payloads.reply_writer(task.payload, self.max_payload_size, self.shm_dir)
        data = serialize(value, "the function's return value", shared=writer)
        size = payloads.payload_size(data)
        if size > self.max_payload_size:
            payloads.release(data)
            raise PayloadTooLarge("the function's return value", size, self.max_payload_size, task.tid)
        return data


THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")


@contextlib.contextmanager
def task_limits(spec: dict):
    """Honour a task's ``cores`` and ``memory`` (MB) while it runs, then restore the worker.

    cores: the task may use only that many of the worker's CPUs (affinity), and the usual
    thread-count variables say so to libraries that read them at call time.  memory: the worker's
    address space may grow by at most that much, so an allocation beyond it raises MemoryError in
    the function instead of the node running out of memory.
    """
    restore: List[Callable[[], object]] = []
    try:
        if spec.get("cores") and hasattr(os, "sched_setaffinity"):
            _limit_cores(max(1, int(spec["cores"])), restore)
        if spec.get("memory"):
            _limit_memory(int(spec["memory"]), restore)
        yield
    finally:
        for undo in reversed(restore):
            try:
                undo()
            except (OSError, ValueError) as e:
                logger.error("could not restore the worker after a task's resource limits: %s", e)


def _limit_cores(cores: int, restore: list) -> None:
    """The first ``cores`` of the worker's CPUs, and the thread-count variables set to match."""
    allowed = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, allowed[:cores])
    restore.append(lambda: os.sched_setaffinity(0, allowed))
    saved = {v: os.environ.get(v) for v in THREAD_VARS}
    os.environ.update({v: str(cores) for v in THREAD_VARS})
    restore.append(lambda: [os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
                            for k, v in saved.items()])


def _limit_memory(megabytes: int, restore: list) -> None:
    """RLIMIT_AS at the worker's current size plus ``megabytes`` (within the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/statm") as f:
        vm_bytes = int(f.read().split()[0]) * resource.getpagesize()
    limit = vm_bytes + megabytes * 2**20
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    restore.append(lambda: resource.setrlimit(resource.RLIMIT_AS, (soft, hard)))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="faasx-worker")
    link = parser.add_mutually_exclusive_group(required=True)
    link.add_argument("--fd", type=int, help="inherited socket to the manager")
    link.add_argument("--connect", help="Unix socket path the manager listens on (containers that cannot inherit "
                      "a socket)")
    parser.add_argument("--worker-id", type=int, required=True)
    parser.add_argument("--manager-pid", type=int, required=True,
                        help="the manager's pid; 0 when it is in another PID namespace (a container)")
    parser.add_argument("--max-payload-size", type=int, default=1 << 30)
    parser.add_argument("--log-file", default=None)
    parser.add_argument("--cpus", default=None,
                        help="CPU list (\"0,1,5\") to take back from a manager pinned to its engine_cpu")
    parser.add_argument("--debug", action="store_true")
    args = parser.parse_args(argv)
    # first, before any thread exists (threads inherit it): the CPUs the manager had, not its pin.
    # task_limits() reads this set as the worker's allowed CPUs.
    affinity.restore(args.cpus)
    set_process_name("faasx-worker")
    # in a container the parent is the container's init (the signal forwarder), which dies with it
    die_with_parent(args.manager_pid or os.getppid())
    from faasx.executor.security import PrivateFileHandler
    logging.basicConfig(handlers=[PrivateFileHandler(args.log_file)] if args.log_file else None,
                        level=logging.DEBUG if args.debug else logging.INFO, format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s")
    sock = None
    if args.connect:
        from faasx.containers.links import connect_to_manager   # exits with the fix if the socket is not ours
        sock = connect_to_manager(args.connect)
    worker = Worker(args.fd if args.fd is not None else -1, args.worker_id, args.max_payload_size, args.debug, sock)
    worker.output = task_output.install(sys.stdout, sys.stderr)
    try:
        worker.run(args.manager_pid)
    except (ChannelClosed, BrokenPipeError, ConnectionResetError):
        logger.info("worker %d: lost the connection to the manager; exiting", args.worker_id)
    finally:
        worker.chan.close()
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
    # Skip interpreter teardown: after heavy user code (monitoring wrappers, big heaps) garbage
    # collection at exit can take seconds, and the manager only grants a short grace period.
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
