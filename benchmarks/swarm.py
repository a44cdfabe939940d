"""A swarm of simulated managers: many faasx managers in one process, speaking the real protocol.

Started by ``bench_scale.SwarmProvider`` in place of a block's ``faasx-manager``: it receives the same
command-line options the real manager would (interchange addresses, port, ipc socket, cert dir,
heartbeat period) and opens ``--managers`` ZeroMQ DEALER sockets, one per simulated manager, each with
its own identity, registering with ``--sim-workers`` workers and ``--prefetch``.  A simulated worker
"runs" a task by holding it for the duration given as the task's first argument (the benchmark submits
``sleep_task(d)``), then the manager returns ``None`` as the result, batched per manager per loop turn,
as the real manager batches.  A chunk of ``map(..., chunksize=k)`` (``KIND_MAP``) is held for the sum of
its calls' durations, as one real worker runs the calls one after the other, and returns ``[None] * k``.  Nothing is executed: the swarm costs a few microseconds per task, so the
interchange, not the swarm, is what a scaling run measures (bench_scale prints both CPU costs).

Messages are built and read with ``faasx.executor.protocol`` only.  Every run is bounded: the swarm
exits on SHUTDOWN to all its managers, when the interchange is silent past the heartbeat threshold, or
after ``--max-life`` seconds.  Counters go to ``--stats-dir/swarm-BLOCK.json`` every 0.25 s while they change.
"""
from __future__ import annotations

import argparse
import heapq
import json
import os
import resource
import sys
import time
from collections import deque
from typing import Optional

import zmq

from faasx.executor import protocol as P
from faasx.executor import sockets as S
from faasx.executor.serialization import deserialize, serialize

_NOBLOCK = int(zmq.NOBLOCK)
_recv = zmq.backend.Socket.recv   # pyzmq's Cython methods, no wrappers


class SimManager:
    """One simulated manager: its socket, free workers and the tasks it holds (owned by the swarm loop)."""
    __slots__ = ("sock", "mid", "free", "backlog", "outbox", "held", "registered", "closed")

    def __init__(self, sock, mid: bytes, workers: int):
        self.sock, self.mid, self.free = sock, mid, workers
        self.backlog: deque = deque()   # (tid, duration, result) waiting for a free simulated worker
        self.outbox: list = []          # (tid, result payload) finished since the last flush
        self.held = 0
        self.registered = False
        self.closed = False


class Swarm:
    def __init__(self, args):
        self.args = args
        self.ctx = zmq.Context(io_threads=1)
        self.ctx.set(zmq.MAX_SOCKETS, args.managers + 64)  # libzmq's default (1,023) caps big swarms
        self.durations: dict = {}       # task payload bytes -> (duration, result payload): they repeat
        self.due: list = []             # heap of (time, seq, manager, tid): simulated workers finishing
        self.seq = 0
        self.dirty: set = set()         # managers with results to flush
        self.by_sock: dict = {}
        self.managers: list = []
        self.open = 0                   # managers neither shut down nor refused
        self.c = {"managers": args.managers, "registered": 0, "tasks_in": 0, "task_msgs": 0,
                  "results_out": 0, "result_msgs": 0, "refused": 0, "t_first_register": None,
                  "t_all_registered": None}
        self.written: Optional[dict] = None   # the counters last written to the stats file
        self.t_start = time.time()
        self.last_heard = time.monotonic()

    # ---- connecting ------------------------------------------------------------------------------
    def url(self) -> str:
        if self.args.ipc:
            return f"ipc://{self.args.ipc}"     # a socket file in the run's 0700 directory
        return f"tcp://{self.args.addresses.split(',')[0]}:{self.args.port}"

    def connect_all(self) -> None:
        from faasx.executor.security import configure_client, manager_credentials
        url = self.url()
        # as the real manager: the token and keys come from --cert-dir, never from the command line
        token, encrypted = manager_credentials(self.args.cert_dir)
        for i in range(self.args.managers):
            sock = self.ctx.socket(zmq.DEALER)
            mid = f"swarm-{self.args.block_id}-{os.getpid()}-{i}".encode()
            sock.setsockopt(zmq.IDENTITY, mid)
            sock.setsockopt(zmq.LINGER, 0)
            if encrypted:
                configure_client(sock, self.args.cert_dir)
            sock.connect(url)
            m = SimManager(sock, mid, self.args.sim_workers)
            self.managers.append(m)
            self.open += 1
            self.by_sock[sock] = m
        self.c["t_first_register"] = time.time()
        for m in self.managers:
            m.sock.send_multipart(P.pack_register(P.Registration(
                manager_id=m.mid.decode(), block_id=str(self.args.block_id), hostname="swarm", pid=os.getpid(),
                workers=self.args.sim_workers, prefetch=self.args.prefetch, versions=P.versions(),
                token=token, accelerators=[], containers=False, container_runtimes=[])))

    # ---- messages from the interchange ----------------------------------------------------------
    def on_message(self, m: SimManager, frames: list) -> None:
        msg_type, body, payloads = P.unpack(frames)
        if msg_type == P.TASKS:
            # a TASKS body is [[tid, fid, kind, spec], ...] with one payload frame per record (spec
            # section 3); the interchange is trusted here, so parse_tasks' validation is skipped: the
            # swarm must cost less than what it measures
            self.on_tasks(m, body, payloads)
        elif msg_type == P.REGISTERED:
            m.registered = True
            self.c["registered"] += 1
            if self.c["registered"] == len(self.managers):
                self.c["t_all_registered"] = time.time()
        elif msg_type == P.SHUTDOWN:
            m.sock.send_multipart(P.pack_bye("shutdown", []))
            self.close(m)
        elif msg_type == P.REFUSED:
            self.c["refused"] += 1
            print(f"swarm: manager {m.mid!r} refused: {P.parse_reason(body)}", file=sys.stderr, flush=True)
            self.close(m)
        # FUNCS, HEARTBEAT, HOLD: nothing to do (no code runs here; any message is a sign of life)

    def close(self, m: SimManager) -> None:
        if not m.closed:
            m.closed = True
            self.open -= 1

    def duration(self, payload: bytes, kind: int) -> tuple:
        """(how long the task holds a worker, its result payload), decoded once per distinct payload:
        a call's first argument; for a map chunk the sum over its calls, and one result per call."""
        args, _ = deserialize(payload)
        if kind == P.KIND_MAP:
            entry = (sum(float(a[0]) for a in args if a), serialize([None] * len(args)))
        else:
            entry = (float(args[0]) if args else 0.0, serialize(None))
        self.durations[payload] = entry
        return entry

    def on_tasks(self, m: SimManager, records: list, payloads: list) -> None:
        self.c["tasks_in"] += len(records)
        self.c["task_msgs"] += 1
        m.held += len(records)
        now = time.monotonic()
        durations = self.durations
        for rec, frame in zip(records, payloads):
            payload = frame.bytes
            entry = durations.get(payload)
            if entry is None:
                entry = self.duration(payload, rec[2])
            d, result = entry
            if d <= 0:
                m.outbox.append((rec[0], result))
            elif m.free > 0:
                self.start(m, rec[0], d, result, now)
            else:
                m.backlog.append((rec[0], d, result))
        if m.outbox:
            self.dirty.add(m)

    def start(self, m: SimManager, tid: int, d: float, result: bytes, now: float) -> None:
        m.free -= 1
        self.seq += 1
        heapq.heappush(self.due, (now + d, self.seq, m, tid, result))

    # ---- simulated workers finishing, results --------------------------------------------------------
    def finish_due(self) -> None:
        now = time.monotonic()
        due = self.due
        while due and due[0][0] <= now:
            _, _, m, tid, result = heapq.heappop(due)
            m.free += 1
            m.outbox.append((tid, result))
            self.dirty.add(m)
            if m.backlog:
                self.start(m, *m.backlog.popleft(), now)

    def flush(self) -> None:
        ok = P.OK
        for m in self.dirty:
            if m.outbox and not m.closed:
                S.send(m.sock, P.pack(P.RESULTS, [[tid, ok] for tid, _ in m.outbox], [r for _, r in m.outbox]))
                self.c["results_out"] += len(m.outbox)
                self.c["result_msgs"] += 1
                m.held -= len(m.outbox)
            m.outbox = []
        self.dirty.clear()

    def heartbeat(self) -> None:
        for m in self.managers:
            if m.registered and not m.closed:
                S.send(m.sock, P.pack_manager_heartbeat(m.held))

    def write_stats(self, force: bool = False) -> None:
        """The counters file the benchmark reads (at most 0.25 s old); not rewritten while they stand
        still, so an idle swarm costs next to nothing (its CPU per call is what it must keep low)."""
        if not self.args.stats_dir or (not force and self.c == self.written):
            return
        self.written = dict(self.c)
        c = dict(self.c, cpu_s=sum(os.times()[:2]), pid=os.getpid())
        path = os.path.join(self.args.stats_dir, f"swarm-{self.args.block_id}.json")
        with open(path + ".tmp", "w") as f:
            json.dump(c, f)
        os.replace(path + ".tmp", path)

    # ---- the loop -----------------------------------------------------------------------------------
    # One zmq_poll over hundreds of sockets costs O(sockets) per call, which made the swarm dearer than
    # the interchange it measures.  Instead each socket's notification descriptor (zmq.FD) is in an
    # epoll set, so a wake-up costs O(sockets that have news).  zmq.FD is edge-like: it fires when the
    # socket's state may have changed, and a send can consume the signal of a message that arrived
    # meanwhile, so every socket we send on is drained afterwards, and all are swept every second.
    def drain(self, m: SimManager) -> None:
        """Every message waiting on ``m``'s socket, read until EAGAIN.  Frames are received as
        zmq.Frame, whose ``more`` attribute replaces a ZMQ_RCVMORE query per frame, and the end is one
        zmq.Again rather than a ZMQ_EVENTS query per message: in pyzmq each query builds a Python
        enum, even through its Cython ``get``, and that was a seventh of the swarm's CPU."""
        sock, got = m.sock, False
        while True:
            try:
                f = _recv(sock, _NOBLOCK, False)
            except zmq.Again:
                break
            frames = [f]
            while f.more:
                f = _recv(sock, 0, False)
                frames.append(f)
            self.on_message(m, frames)
            got = True
        if got:
            self.last_heard = time.monotonic()

    def timeout_s(self, next_tick: float) -> float:
        until = next_tick if not self.due else min(next_tick, self.due[0][0])
        return max(0.0, until - time.monotonic()) + 0.0005

    def turn(self, ep, by_fd: dict, timeout: float) -> None:
        """Wait for news (at most ``timeout`` s), handle it, finish due tasks, send results."""
        for fd, _ in ep.poll(timeout):
            self.drain(by_fd[fd])
        self.finish_due()
        sent = [m for m in self.dirty if m.outbox]
        self.flush()
        for m in sent:
            self.drain(m)

    def periodic(self, now: float, ticks: dict) -> None:
        if now >= ticks["hb"]:
            self.heartbeat()
            ticks["hb"] = now + self.args.heartbeat_period
        if now >= ticks["sweep"]:
            for m in self.managers:
                self.drain(m)
            ticks["sweep"] = now + 1.0
        if now >= ticks["stats"]:
            self.write_stats()
            ticks["stats"] = now + 0.25

    def stop_reason(self, now: float, deadline: float):
        if not self.open:
            return None
        if now > deadline:
            return "max life reached"
        if now - self.last_heard > self.args.heartbeat_threshold:
            return "the interchange is silent"
        return ""

    def run(self) -> int:
        import select
        self.connect_all()
        ep = select.epoll()
        by_fd = {}
        for m in self.managers:
            fd = m.sock.get(zmq.FD)
            by_fd[fd] = m
            ep.register(fd, select.EPOLLIN)
        now = time.monotonic()
        ticks = {"hb": now, "sweep": now, "stats": now}
        deadline = now + self.args.max_life
        while True:
            reason = self.stop_reason(time.monotonic(), deadline)
            if reason != "":
                if reason:
                    print(f"swarm: exiting: {reason}", file=sys.stderr, flush=True)
                break
            self.turn(ep, by_fd, self.timeout_s(min(ticks.values())))
            self.periodic(time.monotonic(), ticks)
        self.write_stats(force=True)
        ep.close()
        self.ctx.destroy(linger=0)
        return 0 if not self.c["refused"] else 1


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--managers", type=int, required=True)
    p.add_argument("--sim-workers", type=int, required=True)
    p.add_argument("--prefetch", type=int, default=0)
    p.add_argument("--stats-dir", default=None)
    p.add_argument("--max-life", type=float, default=1800.0)
    # the real manager's options (the executor's launch command), those the swarm needs
    p.add_argument("--addresses", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--ipc", default=None)
    p.add_argument("--block-id", default="0")
    p.add_argument("--cert-dir", default=None)
    p.add_argument("--heartbeat-period", type=float, default=5.0)
    p.add_argument("--heartbeat-threshold", type=float, default=30.0)
    args, _ = p.parse_known_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # ~2 descriptors per simulated manager
    profile = os.environ.get("FAASX_SWARM_PROFILE")  # a directory: one cProfile dump per swarm process
    if not profile:
        return Swarm(args).run()
    import cProfile
    import signal
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # the block's cancel: still write the profile
    prof = cProfile.Profile(time.process_time)  # CPU time: the wait in epoll is not cost
    try:
        return prof.runcall(Swarm(args).run)
    finally:
        prof.dump_stats(os.path.join(profile, f"swarm-{os.getpid()}.prof"))


if __name__ == "__main__":
    sys.exit(main())
