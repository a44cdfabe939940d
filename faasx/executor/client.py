"""The executor's side of the engine: submit, one I/O thread, the table of pending futures.

``EngineClient`` is what both public executors drive.  ``submit()`` runs in the caller's thread: it
takes an id, makes a ``TaskFuture``, files it in ``futures`` and appends the serialized task to an
outbox -- no socket, no lock.  The I/O thread is woken through a pipe only when it is asleep, drains
the whole outbox into one TASKS message (function code first, once per function), receives
RESULTS batches and resolves futures, dropping each from the table the moment it resolves.

Liveness: the I/O thread watches the interchange process and its heartbeats.  If the interchange
dies, every pending future fails with ``InterchangeLost`` within a poll period (0.2 s for a local
interchange, ``heartbeat_threshold`` at worst) and ``shutdown()`` still returns promptly.

Back-pressure: at most ``window`` tasks are outstanding at the interchange; the rest wait in the
outbox (they are the caller's own objects already), so the interchange's memory stays bounded.
"""
from __future__ import annotations

import itertools
import json
import logging
import os
import select
import subprocess
import threading
import time
import weakref
from collections import deque
from concurrent.futures import Future, InvalidStateError
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

import zmq

from faasx.errors import (ExecutorShutdown, FaaSXError, InterchangeLost, ManagerLost, VersionMismatch,
                          WorkerLost)
from faasx.executor import protocol as P
from faasx.executor.processes import command
from faasx.executor.serialization import deserialize, deserialize_exception, serialize_function
from faasx.executor.sockets import drain, send

logger = logging.getLogger("faasx.executor")

SEND_BATCH = 8192            # tasks per TASKS message at most
IC_CHECK_PERIOD = 0.2        # how often the I/O thread looks at the interchange process


class TaskFuture(Future):
    """A Future for one task; ``parsl_executor_task_id`` is its task id in every log line."""

    def __init__(self, tid: int, client: "EngineClient"):
        super().__init__()
        self.parsl_executor_task_id = tid
        self._client = client

    def cancel(self) -> bool:
        """Cancel the task.  A task still queued is never run; one already at a worker runs, and its
        result is discarded."""
        with self._condition:    # re-entrant: a second cancel() must not notify twice
            if self.cancelled():
                return True
            if not super().cancel():
                return False
            # CANCELLED -> CANCELLED_AND_NOTIFIED: concurrent.futures.wait()/as_completed() only
            # count a cancelled future as done once its waiters have been notified
            self.set_running_or_notify_cancel()
        self._client._cancel(self.parsl_executor_task_id)
        return True


def _failure_exception(status: int, payload: bytes, tid: int) -> BaseException:
    kind, message, attempts = P.parse_failure(payload)
    if status == P.WORKER_LOST:
        return WorkerLost(message, tid, attempts)
    if status == P.MANAGER_LOST:
        return ManagerLost(message, tid, attempts)
    return FaaSXError(message)


class EngineClient:
    def __init__(self, *, label: str, logdir: str, token: str, heartbeat_period: float,
                 heartbeat_threshold: float, max_payload_size: int, window: int = 100_000,
                 debug: bool = False, on_fatal: Optional[Callable[[BaseException], None]] = None):
        self.label = label
        self.logdir = logdir
        self.token = token
        self.heartbeat_period = heartbeat_period
        self.heartbeat_threshold = heartbeat_threshold
        self.max_payload_size = max_payload_size
        self.window = window
        self.debug = debug
        self.on_fatal = on_fatal

        self.futures: Dict[int, TaskFuture] = {}
        self._ids = itertools.count(1)
        self._tasks_out: Deque[Tuple[int, bytes, int, Optional[dict], bytes]] = deque()
        self._funcs_out: Deque[Tuple[bytes, bytes]] = deque()
        self._cancel_out: Deque[int] = deque()
        self._cmds_out: Deque[Tuple[int, str, Any, Future]] = deque()
        self._cmd_ids = itertools.count(1)
        self._cmd_futures: Dict[int, Future] = {}
        self._known_fids: set = set()
        self._fn_cache: "weakref.WeakKeyDictionary[Any, Tuple[bytes, bytes]]" = weakref.WeakKeyDictionary()
        self._fn_cache_strong: Dict[int, Tuple[Any, bytes, bytes]] = {}
        self._in_flight = 0
        self._sleeping = False
        self._closing = False
        self._stopped = threading.Event()
        self._fatal: Optional[BaseException] = None
        self._thread: Optional[threading.Thread] = None
        self.ic_proc: Optional[subprocess.Popen] = None
        self.ports: Dict[str, int] = {}
        self.memo_store = None            # a MemoStore, set by the executor
        self._memo_keys: Dict[int, bytes] = {}
        self.managers_connected = 0
        self.last_refusal: Optional[dict] = None
        self.stats = {"submitted": 0, "results": 0, "duplicates": 0}

    # ---- start -------------------------------------------------------------------------------
    def start(self, ic_config: dict, start_timeout: float = 30.0) -> Dict[str, int]:
        """Start the interchange process, connect to it and start the I/O thread."""
        os.makedirs(self.logdir, exist_ok=True)
        cfg = dict(ic_config, token=self.token, logdir=self.logdir, parent_pid=os.getpid(),
                   heartbeat_period=self.heartbeat_period, heartbeat_threshold=self.heartbeat_threshold,
                   max_payload_size=self.max_payload_size, debug=self.debug)
        stderr_path = os.path.join(self.logdir, "interchange.stderr")
        with open(stderr_path, "ab") as err:
            self.ic_proc = subprocess.Popen(command("faasx-interchange", "faasx.executor.interchange"),
                                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err)
        assert self.ic_proc.stdin is not None and self.ic_proc.stdout is not None
        self.ic_proc.stdin.write(json.dumps(cfg).encode() + b"\n")
        self.ic_proc.stdin.close()
        ready, _, _ = select.select([self.ic_proc.stdout], [], [], start_timeout)
        line = self.ic_proc.stdout.readline() if ready else b""
        self.ic_proc.stdout.close()
        if not line:
            self.ic_proc.kill()
            self.ic_proc.wait()
            with open(stderr_path, "rb") as f:
                tail = f.read()[-2000:].decode(errors="replace")
            raise InterchangeLost(f"executor {self.label}: the interchange did not start within {start_timeout}s "
                                  f"(exit code {self.ic_proc.returncode}). Its stderr ({stderr_path}):\n{tail}")
        self.ports = json.loads(line)

        self.ctx = zmq.Context(io_threads=1)
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, 0)
        self.sock.setsockopt(zmq.RCVHWM, 0)
        self.sock.connect(f"tcp://{ic_config['loopback_address']}:{self.ports['client_port']}")
        self.sock.send_multipart(P.pack(P.HELLO, {"token": self.token, "versions": P.versions()}))
        if not self.sock.poll(int(start_timeout * 1000)):
            self._kill_interchange()
            raise InterchangeLost(f"executor {self.label}: the interchange did not answer HELLO within "
                                  f"{start_timeout}s; see {self.logdir}/interchange.log")
        msg_type, body, _ = P.unpack(self.sock.recv_multipart())
        if msg_type != P.WELCOME:
            self._kill_interchange()
            raise InterchangeLost(f"executor {self.label}: unexpected reply to HELLO: {P.TYPE_NAMES.get(msg_type)}")
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._thread = threading.Thread(target=self._io_loop, name=f"faasx-io-{self.label}", daemon=True)
        self._thread.start()
        return self.ports

    # ---- submit path (caller's thread) -------------------------------------------------------
    def function(self, fn: Callable) -> Tuple[bytes, bytes]:
        """(function id, code) for a callable, serialized once per function object."""
        try:
            cached = self._fn_cache.get(fn)
        except TypeError:  # not weak-referenceable (builtins): keep a strong reference
            entry = self._fn_cache_strong.get(id(fn))
            if entry is not None and entry[0] is fn:
                return entry[1], entry[2]
            fid, code = serialize_function(fn)
            if len(self._fn_cache_strong) > 10_000:
                self._fn_cache_strong.clear()
            self._fn_cache_strong[id(fn)] = (fn, fid, code)
            return fid, code
        if cached is None:
            cached = self._fn_cache[fn] = serialize_function(fn)
        return cached

    def submit(self, fid: bytes, code: Optional[bytes], kind: int, spec: Optional[dict],
               payload: bytes, memo_key: Optional[bytes] = None) -> TaskFuture:
        if self._fatal is not None:
            raise self._fatal
        if self._closing:
            raise ExecutorShutdown(f"executor {self.label} is shut down; no new tasks are accepted")
        tid = next(self._ids)
        fut = TaskFuture(tid, self)
        self.futures[tid] = fut
        if memo_key is not None:
            self._memo_keys[tid] = memo_key
        if fid not in self._known_fids:
            if code is None:
                raise FaaSXError(f"function {fid.hex()} has no code to send")
            self._known_fids.add(fid)
            self._funcs_out.append((fid, code))
        self._tasks_out.append((tid, fid, kind, spec, payload))
        if self._sleeping:
            self._sleeping = False
            self._wake()
        return fut

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"\0")
        except (BlockingIOError, OSError):
            pass

    def _cancel(self, tid: int) -> None:
        self._cancel_out.append(tid)
        self._wake()

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
        sock = self.sock
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        now = time.monotonic()
        last_hb = last_check = last_heard = now
        wake_r = self._wake_r
        while True:
            self._sleeping = True
            sendable = (self._tasks_out and self._in_flight < self.window) or self._cancel_out or self._cmds_out
            timeout = 0 if sendable or self._closing else int(min(IC_CHECK_PERIOD, self.heartbeat_period) * 1000)
            events = dict(poller.poll(timeout))
            self._sleeping = False
            now = time.monotonic()
            if wake_r in events:
                try:
                    os.read(wake_r, 65536)
                except BlockingIOError:
                    pass
            if sock in events:
                last_heard = now
                for frames in drain(sock, 1000):
                    self._handle(frames)
            self._send_outgoing()
            if self._closing:
                sock.send_multipart(P.pack(P.SHUTDOWN, {}))
                return
            if now - last_hb >= self.heartbeat_period:
                last_hb = now
                sock.send_multipart(P.pack(P.HEARTBEAT, {}))
            if now - last_check >= IC_CHECK_PERIOD:
                last_check = now
                code = self.ic_proc.poll() if self.ic_proc is not None else None
                if code is not None:
                    self._fail_everything(InterchangeLost(
                        f"executor {self.label}: the interchange (pid {self.ic_proc.pid}) exited with code {code}; "
                        f"pending tasks cannot complete. See {self.logdir}/interchange.log and interchange.stderr. "
                        "Start a new executor to continue."))
                    return
                if now - last_heard > self.heartbeat_threshold:
                    self._fail_everything(InterchangeLost(
                        f"executor {self.label}: the interchange has been silent for {now - last_heard:.1f}s "
                        f"(heartbeat_threshold {self.heartbeat_threshold}s); pending tasks failed."))
                    return

    def _send_outgoing(self) -> None:
        sock = self.sock
        tasks_out = self._tasks_out
        # Take the tasks first, then the functions: every function a taken task needs was queued
        # before the task, so it is in the functions we take now.
        room = min(self.window - self._in_flight, SEND_BATCH)
        n = min(len(tasks_out), room) if room > 0 else 0
        if n:
            batch = [tasks_out.popleft() for _ in range(n)]
        if self._funcs_out:
            funcs = []
            while self._funcs_out:
                funcs.append(self._funcs_out.popleft())
            sock.send_multipart(P.pack(P.FUNCS, [f[0] for f in funcs], [f[1] for f in funcs]))
        if n:
            futures = self.futures
            body, payloads = [], []
            for tid, fid, kind, spec, payload in batch:
                fut = futures.get(tid)
                if fut is None or fut.cancelled():
                    futures.pop(tid, None)
                    continue
                body.append([tid, fid, kind, spec])
                payloads.append(payload)
            if body:
                self._in_flight += len(body)
                self.stats["submitted"] += len(body)
                send(sock, P.pack(P.TASKS, body, payloads))
                if self.debug:
                    logger.debug("sent tasks %s", [b[0] for b in body])
        if self._cancel_out:
            tids = []
            while self._cancel_out:
                tids.append(self._cancel_out.popleft())
            sock.send_multipart(P.pack(P.CANCEL, tids))
        while self._cmds_out:
            req_id, name, args, fut = self._cmds_out.popleft()
            self._cmd_futures[req_id] = fut
            sock.send_multipart(P.pack(P.COMMAND, [req_id, name, args]))

    def _handle(self, frames: list) -> None:
        try:
            msg_type, body, payloads = P.unpack(frames)
        except P.ProtocolError as e:
            logger.error("executor %s: dropped malformed message from the interchange: %s", self.label, e)
            return
        if msg_type == P.RESULTS:
            self._resolve(body, payloads)
        elif msg_type == P.REPLY:
            req_id, result = body
            if req_id == 0:          # confirmation of cancelled tasks: they will never report
                self._forget_cancelled(result)
                return
            fut = self._cmd_futures.pop(req_id, None)
            if fut is not None and not fut.done():
                fut.set_result(result)
        elif msg_type == P.EVENT:
            self._event(body)
        elif msg_type != P.HEARTBEAT:
            logger.warning("executor %s: unexpected %s from the interchange", self.label, P.TYPE_NAMES[msg_type])

    def _resolve(self, body: list, payloads: list) -> None:
        futures = self.futures
        self._in_flight -= len(body)
        self.stats["results"] += len(body)
        debug = self.debug
        memo_keys = self._memo_keys
        for i, (tid, status) in enumerate(body):
            fut = futures.pop(tid, None)
            if fut is None:
                self.stats["duplicates"] += 1
                logger.error("executor %s: result for unknown or already resolved task %d dropped", self.label, tid)
                continue
            payload = payloads[i]
            if memo_keys:
                key = memo_keys.pop(tid, None)
                if key is not None and status == P.OK and self.memo_store is not None:
                    self.memo_store.put(key, payload)   # only successes are remembered
            try:
                if status == P.OK:
                    try:
                        value = deserialize(payload)
                    except Exception as e:
                        fut.set_exception(FaaSXError(
                            f"task {tid}: the result could not be deserialized in the client: {e!r}. Fix: make sure "
                            "the result's classes are importable where the executor runs."))
                    else:
                        fut.set_result(value)
                elif status == P.EXCEPTION:
                    fut.set_exception(deserialize_exception(payload))
                else:
                    fut.set_exception(_failure_exception(status, payload, tid))
            except InvalidStateError:  # cancelled by the user meanwhile
                pass
            if debug:
                logger.debug("task %d resolved (status %d)", tid, status)

    def _forget_cancelled(self, tids: Any) -> None:
        if isinstance(tids, list):
            self._in_flight -= len(tids)
            for tid in tids:
                self.futures.pop(tid, None)

    def _event(self, body: Any) -> None:
        if not isinstance(body, dict):
            return
        kind = body.get("kind")
        if kind == "registered":
            self.managers_connected += 1
            logger.info("executor %s: manager %s of block %s connected with %s workers", self.label,
                        body.get("manager"), body.get("block_id"), body.get("workers"))
        elif kind == "lost":
            self.managers_connected = max(0, self.managers_connected - 1)
            # a manager leaving idle (scale-in, shutdown, drain) is routine; one that took tasks with it is not
            affected = (body.get("requeued") or 0) + (body.get("failed") or 0)
            logger.log(logging.WARNING if affected else logging.INFO,
                       "executor %s: manager %s of block %s removed: %s (%d task(s) re-queued, %d failed)",
                       self.label, body.get("manager"), body.get("block_id"), body.get("reason"),
                       body.get("requeued") or 0, body.get("failed") or 0)
        elif kind == "refused":
            self.last_refusal = body
            logger.error("executor %s: the interchange refused manager %s: %s", self.label, body.get("manager"),
                         body.get("reason"))
            theirs = body.get("manager_versions")
            if str(body.get("reason", "")).startswith("version mismatch") and self.managers_connected == 0:
                err = VersionMismatch("manager " + str(body.get("manager")), body.get("interchange_versions") or {},
                                      theirs if isinstance(theirs, dict) else {})
                self._fail_pending(err)

    # ---- failure and shutdown ----------------------------------------------------------------
    def _fail_pending(self, exc: BaseException) -> None:
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
        self._in_flight = 0

    def _fail_everything(self, exc: BaseException) -> None:
        if self._fatal is None:
            self._fatal = exc
            logger.error("%s", exc)
        self._fail_pending(exc)
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

    def _kill_interchange(self) -> None:
        if self.ic_proc is not None and self.ic_proc.poll() is None:
            self.ic_proc.kill()
            self.ic_proc.wait()

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop the interchange (which tells its managers to exit) and the I/O thread; fail what is left."""
        if self._closing:
            return
        self._closing = True
        if self._thread is not None and self._thread.is_alive():
            self._wake()
            self._stopped.wait(timeout)
        if self.ic_proc is not None:
            try:
                self.ic_proc.wait(timeout)
            except subprocess.TimeoutExpired:
                logger.warning("executor %s: the interchange did not exit within %ss; killing it", self.label, timeout)
                self._kill_interchange()
        self._fail_pending(ExecutorShutdown(f"executor {self.label} was shut down before the task finished"))
        if self._thread is not None:
            self._thread.join(timeout)
            self.sock.close(0)
            self.ctx.term()
            os.close(self._wake_r)
            os.close(self._wake_w)
