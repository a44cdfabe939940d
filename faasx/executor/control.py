"""The run's control endpoint: what ``faasx status`` asks a live executor.

::

    faasx status  --connect-->  <logdir>/control/control.sock   (Unix socket, 0600, in a 0700 directory)
                                  |  ControlServer thread in the client process:
                                  |    peer uid checked (SO_PEERCRED), one JSON request, one JSON reply
                                  |    snapshot() = FaaSExecutor's block table
                                  |               + the interchange's answers to COMMAND "managers" / "stats"
                                  |               + the client's counters (O(1) each, kept anyway)
    at shutdown:  <logdir>/status.json   the final snapshot, for ``faasx status`` on a finished run

Only the run's own user can connect: the directory keeps everyone else from reaching the socket,
and the server checks the peer's uid as well, so a loosened mode does not open it.  There is no TCP
port.  The thread wakes once a second (to sample the result count for the rate over the last
minute) and otherwise only when ``faasx status`` connects: nothing here is on the task path.

Thread ownership: ``ControlServer`` state belongs to its thread, except ``stop()`` and
``write_final()``, which the thread calling ``FaaSExecutor.shutdown()`` runs after the server
thread has been joined.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import select
import socket
import struct
import sys
import threading
import time
from collections import deque
from typing import Any, Deque, Dict, Iterator, List, Optional, Tuple

logger = logging.getLogger("faasx.control")

CONTROL_DIR = "control"
SOCKET_NAME = "control.sock"
FINAL_STATUS = "status.json"
RATE_WINDOW = 60.0          # seconds: "rate over the last minute"
REQUEST_TIMEOUT = 5.0       # a connected peer gets this long to send its request; the interchange to answer
STOP_TIMEOUT = 0.5          # how long shutdown waits for the interchange's last answer
MAX_REQUEST = 4096
_UCRED = struct.Struct("3i")   # struct ucred {pid, uid, gid}


def socket_path(logdir: str) -> str:
    return os.path.join(logdir, CONTROL_DIR, SOCKET_NAME)


@contextlib.contextmanager
def addressable(path: str) -> Iterator[str]:
    """``path`` as a Unix socket address.  Addresses are limited to 107 bytes, and run directories
    (pytest's, a deep project tree) are often longer: then the directory is opened and the socket
    named through ``/proc/self/fd/N/``, which the kernel resolves like the real path."""
    if len(os.fsencode(path)) < 100 or not os.path.isdir("/proc/self/fd"):
        yield path
        return
    fd = os.open(os.path.dirname(path), os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{os.path.basename(path)}"
    finally:
        os.close(fd)


def peer_uid(conn: socket.socket) -> int:
    _pid, uid, _gid = _UCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    return uid


def _private_dir(path: str) -> None:
    """Create ``path`` as 0700, or check that an existing one is ours and 0700."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    st = os.stat(path)
    if st.st_uid != os.getuid():
        raise PermissionError(f"control directory {path} belongs to uid {st.st_uid}, not to this user")
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)


class ControlServer:
    """Serves ``faasx status`` requests for one ``FaaSExecutor`` from a thread of the client process."""

    def __init__(self, executor: Any):
        self.executor = executor
        self.path = socket_path(executor.logdir)
        self.started = time.time()
        self._samples: Deque[Tuple[float, int]] = deque()   # (monotonic time, results so far)
        self._sock: Optional[socket.socket] = None
        self._thread: Optional[threading.Thread] = None
        self._stop = threading.Event()
        self._last: Dict[str, Any] = {}

    # ---- lifetime (the thread calling FaaSExecutor.start/shutdown) ----------------------------
    def start(self) -> None:
        _private_dir(os.path.dirname(self.path))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.executor.logdir, FINAL_STATUS))
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with addressable(self.path) as address:
            sock.bind(address)
        os.chmod(self.path, 0o600)
        sock.listen(8)
        sock.setblocking(False)
        self._sock = sock
        self._wake_r, self._wake_w = os.pipe()   # stop() writes here so the thread need not time out
        self._thread = threading.Thread(target=self._serve, name=f"faasx-control-{self.executor.label}",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop serving; keep a last snapshot while the engine can still answer."""
        if self._thread is None:
            return
        self._stop.set()
        os.write(self._wake_w, b"x")
        self._thread.join(10)
        self._thread = None
        os.close(self._wake_r)
        os.close(self._wake_w)
        # briefly: an interchange still working through a flood (a million cancels) may answer late,
        # and shutdown must stay prompt; without its answer the final status has the client's counts
        with contextlib.suppress(Exception):
            self._last = self.snapshot(timeout=STOP_TIMEOUT)
        if self._sock is not None:
            self._sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def write_final(self) -> None:
        """The run's final status file: the last snapshot with the client's final counts."""
        final = dict(self._last or {}, live=False, finished=time.time())
        final["tasks"] = dict(final.get("tasks", {}), **self._client_counts())
        final["tasks"].update(queued=0, running=0, prefetched=0)
        final["errors"] = self._errors()
        tmp = os.path.join(self.executor.logdir, FINAL_STATUS + ".tmp")
        from faasx.executor.security import open_private
        with open_private(tmp, "w") as f:    # 0600 whatever the umask, as every file of the run
            json.dump(final, f, indent=1, default=str)
        os.replace(tmp, os.path.join(self.executor.logdir, FINAL_STATUS))

    # ---- the server thread --------------------------------------------------------------------
    def _serve(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            self._sample()
            ready, _, _ = select.select([self._sock, self._wake_r], [], [], 1.0)
            if self._sock not in ready:
                continue
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, OSError):
                continue
            with conn:
                try:
                    self._answer(conn)
                except Exception as e:   # a bad peer never ends the server
                    logger.warning("control endpoint: request failed: %r", e)

    def _answer(self, conn: socket.socket) -> None:
        conn.settimeout(REQUEST_TIMEOUT)
        uid = peer_uid(conn)
        if uid != os.getuid():
            logger.warning("control endpoint: refused a connection from uid %d (only uid %d may connect)",
                           uid, os.getuid())
            conn.sendall(json.dumps({"error": f"refused: uid {uid} is not the run's user"}).encode() + b"\n")
            return
        request = b""
        while not request.endswith(b"\n") and len(request) < MAX_REQUEST:
            chunk = conn.recv(MAX_REQUEST)
            if not chunk:
                break
            request += chunk
        op = json.loads(request or b"{}").get("op")
        reply = self.snapshot() if op == "status" else {"error": f"unknown request {op!r}; try 'status'"}
        conn.sendall(json.dumps(reply, default=str).encode() + b"\n")

    def _sample(self) -> None:
        client = self.executor._client
        if client is None:
            return
        now = time.monotonic()
        samples = self._samples
        samples.append((now, client.stats["results"]))
        while len(samples) > 2 and now - samples[1][0] >= RATE_WINDOW:
            samples.popleft()

    # ---- what status shows --------------------------------------------------------------------
    def snapshot(self, timeout: float = REQUEST_TIMEOUT) -> Dict[str, Any]:
        ex = self.executor
        client = ex._client
        managers, stats = self._ask_interchange(timeout)
        held = sum(m["tasks"] for m in managers)
        running = sum(min(m["tasks"], m["worker_count"]) for m in managers)
        tasks = dict(self._client_counts(), queued=stats.get("queued", 0) + len(getattr(client, "_tasks_out", ())),
                     running=running, prefetched=held - running, retried=stats.get("retried", 0),
                     rate_per_s=self._rate())
        return {
            "label": ex.label, "run_dir": ex.run_dir, "logdir": os.path.abspath(ex.logdir),
            "pid": os.getpid(), "python": platform.python_version(), "executable": sys.executable,
            "started": self.started, "now": time.time(), "live": True,
            "blocks": self._blocks(managers),
            "managers": [_manager_row(m) for m in managers],
            "tasks": tasks,
            "errors": self._errors(),
        }

    def _ask_interchange(self, timeout: float) -> Tuple[List[dict], Dict[str, Any]]:
        """The interchange's managers and stats, or nothing if it cannot answer within ``timeout``."""
        client = self.executor._client
        if client is None or not client.healthy:
            return [], {}
        deadline = time.monotonic() + timeout
        try:
            managers = client.request("managers", None, timeout=timeout)
            stats = client.request("stats", None, timeout=max(0.01, deadline - time.monotonic()))
        except Exception as e:    # timed out, or the engine went down meanwhile
            logger.info("control endpoint: no answer from the interchange within %.1fs (%r)", timeout, e)
            return [], {}
        return managers, stats

    def _client_counts(self) -> Dict[str, int]:
        client = self.executor._client
        if client is None:
            return {"pending": 0, "done": 0, "failed": 0}
        failed = client.stats["failed"]
        return {"pending": len(client.futures), "done": client.stats["results"] - failed, "failed": failed}

    def _rate(self) -> float:
        """Results per second since the oldest sample of the last minute, up to this moment."""
        client = self.executor._client
        if not self._samples or client is None:
            return 0.0
        t0, r0 = self._samples[0]
        elapsed = time.monotonic() - t0
        return (client.stats["results"] - r0) / elapsed if elapsed > 0 else 0.0

    def _blocks(self, managers: List[dict]) -> List[dict]:
        ex = self.executor
        status = dict(ex._status)
        hosts: Dict[str, List[str]] = {}
        for m in managers:
            hosts.setdefault(str(m["block_id"]), []).append(m.get("hostname") or "?")
        rows = []
        for block_id, job_id in sorted(dict(ex.blocks_to_job_id).items(), key=lambda kv: str(kv[0])):
            st = status.get(block_id)
            nodes = sorted(set(hosts.get(str(block_id), [])))
            state = st.state.name if st is not None else "PENDING"
            if state == "PENDING" and nodes:   # the poller has not looked yet; its managers are here
                state = "RUNNING"
            rows.append({"block_id": block_id, "job_id": job_id, "state": state,
                         "message": (st.message if st is not None else None) or "", "nodes": nodes})
        return rows

    def _errors(self) -> List[dict]:
        client = self.executor._client
        if client is None:
            return []
        return [{"task_id": tid, "time": when, "type": type(exc).__name__ if exc is not None else "?",
                 "message": str(exc).splitlines()[0][:300] if exc is not None and str(exc) else ""}
                for tid, when, exc in list(client.recent_errors)]


def _manager_row(m: dict) -> dict:
    return {"manager": m["manager"], "block_id": m["block_id"], "host": m.get("hostname"), "pid": m.get("pid"),
            "workers": m["worker_count"], "busy": min(m["tasks"], m["worker_count"]), "tasks": m["tasks"],
            "last_heard": m.get("last_heard"), "active": m["active"]}


def query(path: str, op: str = "status", timeout: float = 10.0) -> Dict[str, Any]:
    """Ask the control endpoint at ``path``; raises OSError when nothing answers there."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        with addressable(path) as address:
            sock.connect(address)
        sock.sendall(json.dumps({"op": op}).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(1 << 16)
            if not chunk:
                break
            data += chunk
    if not data:
        raise ConnectionError(f"the control endpoint {path} closed the connection without answering")
    return json.loads(data)
