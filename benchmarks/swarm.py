"""A swarm of simulated managers: many faasx managers in one process, speaking the real protocol.

Started by ``bench_scale.SwarmProvider`` in place of a block's ``faasx-manager``: it receives the same
command-line options the real manager would (interchange addresses, port, ipc name, token, cert dir,
heartbeat period) and opens ``--managers`` ZeroMQ DEALER sockets, one per simulated manager, each with
its own identity, registering with ``--sim-workers`` workers and ``--prefetch``.  A simulated worker
"runs" a task by holding it for the duration given as the task's first argument (the benchmark submits
``sleep_task(d)``), then the manager returns ``None`` as the result, batched per manager per loop turn,
as the real manager batches.  Nothing is executed: the swarm costs a few microseconds per task, so the
interchange, not the swarm, is what a scaling run measures (bench_scale prints both CPU costs).

Messages are built and read with ``faasx.executor.protocol`` only.  Every run is bounded: the swarm
exits on SHUTDOWN to all its managers, when the interchange is silent past the heartbeat threshold, or
after ``--max-life`` seconds.  Counters go to ``--stats-dir/swarm-BLOCK.json`` every 0.25 s.
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

import zmq

from faasx.executor import protocol as P
from faasx.executor.serialization import deserialize, serialize


class SimManager:
    """One simulated manager: its socket, free workers and the tasks it holds (owned by the swarm loop)."""
    __slots__ = ("sock", "mid", "free", "backlog", "outbox", "held", "registered", "closed")

    def __init__(self, sock, mid: bytes, workers: int):
        self.sock, self.mid, self.free = sock, mid, workers
        self.backlog: deque = deque()   # (tid, duration) waiting for a free simulated worker
        self.outbox: list = []          # tids finished since the last flush
        self.held = 0
        self.registered = False
        self.closed = False


class Swarm:
    def __init__(self, args):
        self.args = args
        self.ctx = zmq.Context(io_threads=1)
        self.ctx.set(zmq.MAX_SOCKETS, args.managers + 64)  # libzmq's default (1,023) caps big swarms
        self.ok_payload = serialize(None)
        self.durations: dict = {}       # task payload bytes -> duration (the payloads repeat)
        self.due: list = []             # heap of (time, seq, manager, tid): simulated workers finishing
        self.seq = 0
        self.dirty: set = set()         # managers with results to flush
        self.by_sock: dict = {}
        self.managers: list = []
        self.c = {"managers": args.managers, "registered": 0, "tasks_in": 0, "task_msgs": 0,
                  "results_out": 0, "result_msgs": 0, "refused": 0, "t_first_register": None,
                  "t_all_registered": None}
        self.t_start = time.time()
        self.last_heard = time.monotonic()

    # ---- connecting ------------------------------------------------------------------------------
    def url(self) -> str:
        if self.args.ipc:
            return f"ipc://@{self.args.ipc}"
        return f"tcp://{self.args.addresses.split(',')[0]}:{self.args.port}"

    def connect_all(self) -> None:
        url = self.url()
        for i in range(self.args.managers):
            sock = self.ctx.socket(zmq.DEALER)
            mid = f"swarm-{self.args.block_id}-{os.getpid()}-{i}".encode()
            sock.setsockopt(zmq.IDENTITY, mid)
            sock.setsockopt(zmq.LINGER, 0)
            if self.args.cert_dir:
                from faasx.executor.security import configure_client
                configure_client(sock, self.args.cert_dir)
            sock.connect(url)
            m = SimManager(sock, mid, self.args.sim_workers)
            self.managers.append(m)
            self.by_sock[sock] = m
        self.c["t_first_register"] = time.time()
        for m in self.managers:
            m.sock.send_multipart(P.pack_register(P.Registration(
                manager_id=m.mid.decode(), block_id=str(self.args.block_id), hostname="swarm", pid=os.getpid(),
                workers=self.args.sim_workers, prefetch=self.args.prefetch, versions=P.versions(),
                token=self.args.token, accelerators=[], containers=False, container_runtimes=[])))

    # ---- messages from the interchange ----------------------------------------------------------
    def on_message(self, m: SimManager, frames: list) -> None:
        msg_type, body, payloads = P.unpack(frames)
        if msg_type == P.TASKS:
            self.on_tasks(m, P.parse_tasks(body, payloads))
        elif msg_type == P.REGISTERED:
            m.registered = True
            self.c["registered"] += 1
            if self.c["registered"] == len(self.managers):
                self.c["t_all_registered"] = time.time()
        elif msg_type == P.SHUTDOWN:
            m.sock.send_multipart(P.pack_bye("shutdown", []))
            m.closed = True
        elif msg_type == P.REFUSED:
            self.c["refused"] += 1
            print(f"swarm: manager {m.mid!r} refused: {P.parse_reason(body)}", file=sys.stderr, flush=True)
            m.closed = True
        # FUNCS, HEARTBEAT, HOLD: nothing to do (no code runs here; any message is a sign of life)

    def duration(self, payload) -> float:
        d = self.durations.get(payload)
        if d is None:
            args, _ = deserialize(payload)
            d = self.durations[payload] = float(args[0]) if args else 0.0
        return d

    def on_tasks(self, m: SimManager, tasks: list) -> None:
        self.c["tasks_in"] += len(tasks)
        self.c["task_msgs"] += 1
        m.held += len(tasks)
        now = time.monotonic()
        for t in tasks:
            d = self.duration(t.payload)
            if d <= 0:
                m.outbox.append(t.tid)
            elif m.free > 0:
                self.start(m, t.tid, d, now)
            else:
                m.backlog.append((t.tid, d))
        if m.outbox:
            self.dirty.add(m)

    def start(self, m: SimManager, tid: int, d: float, now: float) -> None:
        m.free -= 1
        self.seq += 1
        heapq.heappush(self.due, (now + d, self.seq, m, tid))

    # ---- simulated workers finishing, results --------------------------------------------------------
    def finish_due(self) -> None:
        now = time.monotonic()
        due = self.due
        while due and due[0][0] <= now:
            _, _, m, tid = heapq.heappop(due)
            m.free += 1
            m.outbox.append(tid)
            self.dirty.add(m)
            if m.backlog:
                tid2, d = m.backlog.popleft()
                self.start(m, tid2, d, now)

    def flush(self) -> None:
        ok, payload = P.OK, self.ok_payload
        for m in self.dirty:
            if m.outbox and not m.closed:
                m.sock.send_multipart(P.pack_results([P.Result(tid, ok, payload) for tid in m.outbox]))
                self.c["results_out"] += len(m.outbox)
                self.c["result_msgs"] += 1
                m.held -= len(m.outbox)
            m.outbox = []
        self.dirty.clear()

    def heartbeat(self) -> None:
        for m in self.managers:
            if m.registered and not m.closed:
                m.sock.send_multipart(P.pack_manager_heartbeat(m.held))

    def write_stats(self) -> None:
        if not self.args.stats_dir:
            return
        c = dict(self.c, cpu_s=sum(os.times()[:2]), pid=os.getpid())
        path = os.path.join(self.args.stats_dir, f"swarm-{self.args.block_id}.json")
        with open(path + ".tmp", "w") as f:
            json.dump(c, f)
        os.replace(path + ".tmp", path)

    # ---- the loop -----------------------------------------------------------------------------------
    def drain(self, sock) -> None:
        m = self.by_sock[sock]
        while True:
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self.on_message(m, frames)

    def timeout_ms(self, next_tick: float) -> int:
        until = next_tick if not self.due else min(next_tick, self.due[0][0])
        return max(0, int((until - time.monotonic()) * 1000) + 1)

    def run(self) -> int:
        self.connect_all()
        poller = zmq.Poller()
        for m in self.managers:
            poller.register(m.sock, zmq.POLLIN)
        next_hb = next_stats = time.monotonic()
        deadline = time.monotonic() + self.args.max_life
        while not all(m.closed for m in self.managers):
            now = time.monotonic()
            if now > deadline or now - self.last_heard > self.args.heartbeat_threshold:
                print("swarm: exiting: " + ("max life reached" if now > deadline else "the interchange is silent"),
                      file=sys.stderr, flush=True)
                break
            events = poller.poll(self.timeout_ms(min(next_hb, next_stats)))
            if events:
                self.last_heard = time.monotonic()
            for sock, _ in events:
                self.drain(sock)
            self.finish_due()
            self.flush()
            now = time.monotonic()
            if now >= next_hb:
                self.heartbeat()
                next_hb = now + self.args.heartbeat_period
            if now >= next_stats:
                self.write_stats()
                next_stats = now + 0.25
        self.write_stats()
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
    p.add_argument("--token", default="")
    p.add_argument("--cert-dir", default=None)
    p.add_argument("--heartbeat-period", type=float, default=5.0)
    p.add_argument("--heartbeat-threshold", type=float, default=30.0)
    args, _ = p.parse_known_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # ~2 descriptors per simulated manager
    return Swarm(args).run()


if __name__ == "__main__":
    sys.exit(main())
