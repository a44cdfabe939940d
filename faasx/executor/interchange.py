"""faasx-interchange: routes tasks from one executor to its managers and results back.

One interchange process per executor, started by the executor's client.  It talks to the client
over an inherited Unix socketpair (``faasx.executor.channel``: they always share a host, nothing else
can connect to it, and it saves ZeroMQ's two I/O-thread hand-offs per message each way) and to
managers over a ROUTER socket (TCP on the executor's address, CurveZMQ when encrypted; managers on
this host may reach the same socket over ZeroMQ's ipc transport instead).  A
``Scheduler`` (``faasx.executor.scheduling``) makes every decision; this module only moves bytes:
task payloads and results pass through as opaque frames, never deserialized here.

Each loop iteration drains whatever is waiting on the client link and the manager socket, lets the
scheduler dispatch, sends one TASKS message per manager that got work and one RESULTS message to the
client, then does the periodic work: heartbeats both ways, expiring silent managers (their tasks are
re-dispatched or failed), and exiting when the client is gone (its end of the link closed, its
process gone, or silent past ``heartbeat_threshold``).  Sends to the client never block: what the
link will not take now waits for it to become writable.

The configuration arrives as one JSON line on stdin; the bound manager port goes back as one JSON
line on stdout, after which stdout is closed.
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import socket
import sys
import time
from typing import Dict, List, Optional

import zmq

from faasx.executor import affinity
from faasx.executor import protocol as P
from faasx.executor.channel import Channel, ChannelClosed, ChannelError
from faasx.executor.processes import set_process_name
from faasx.executor.scheduling import Scheduler, TaskRecord
from faasx.executor.sockets import drain, send

logger = logging.getLogger("faasx.interchange")

_POLLIN, _POLLOUT = int(zmq.POLLIN), int(zmq.POLLOUT)   # plain ints: pyzmq's enum flags cost a Python call per '&'
RECV_BATCH = 2000        # messages drained from one socket per loop iteration
LOST_MEMORY = 10000      # how many lost manager ids are remembered, to refuse them when they return


class Interchange:
    def __init__(self, cfg: dict):
        self.cfg = cfg
        self.token: str = cfg["token"]
        self.hb_period: float = cfg["heartbeat_period"]
        self.hb_threshold: float = cfg["heartbeat_threshold"]
        self.client_threshold: float = cfg.get("client_threshold", cfg["heartbeat_threshold"])
        self.parent_pid: int = cfg.get("parent_pid") or os.getppid()
        self.debug: bool = cfg.get("debug", False)
        self.scheduler = Scheduler(max_retries=cfg["max_retries"])
        self.codes: Dict[bytes, bytes] = {}
        self.versions = P.versions()
        self.client_ready = False       # the client said HELLO
        self.lost: Dict[bytes, str] = {}
        self.blocks_seen: Dict[str, float] = {}
        self.running = True
        self.stats = {"tasks_received": 0, "results_sent": 0, "malformed": 0, "duplicates_dropped": 0,
                      "retried": 0, "failed_system": 0, "managers_registered": 0, "managers_lost": 0,
                      "managers_refused": 0}
        self.out_body: List[list] = []
        self.out_payloads: List[bytes] = []

        max_msg = cfg["max_payload_size"] + (16 << 20)
        self.link = Channel(socket.socket(fileno=cfg["client_fd"]), max_message=2 * max_msg)
        self.ctx = zmq.Context(io_threads=1)      # its I/O thread inherits main()'s pin (engine_cpu)
        self.engine_cpu = cfg.get("engine_cpu")
        self.managers = self._router()
        self.managers.setsockopt(zmq.ROUTER_HANDOVER, 1)
        self.managers.setsockopt(zmq.MAXMSGSIZE, max_msg)
        self.auth = None
        if cfg.get("cert_dir"):
            from faasx.executor.security import configure_server
            self.auth = configure_server(self.ctx, self.managers, cfg["cert_dir"])
        self.manager_port = self._bind(self.managers, cfg["bind_address"], cfg.get("worker_port_range"),
                                       cfg.get("worker_port"))
        self.manager_ipc = self._bind_local_ipc()

    def _router(self) -> zmq.Socket:
        sock = self.ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
        return sock

    def _bind_local_ipc(self) -> Optional[str]:
        """The manager port again, on ZeroMQ's ipc transport in Linux's abstract socket namespace, for
        managers on this host: the same socket (CURVE, ZAP and all), without the TCP/IP stack on each
        message (~25 us less per round trip).  A manager uses it only if it can connect to it -- one in
        another network namespace or container cannot and falls back to TCP.  No file to clean up."""
        if not sys.platform.startswith("linux") or self.cfg.get("manager_ipc") is False:
            return None
        name = f"faasx-{os.getpid()}-{secrets.token_hex(8)}"
        try:
            self.managers.bind(f"ipc://@{name}")
        except zmq.ZMQError as e:
            logger.warning("could not bind the local ipc endpoint for managers (%s); managers use TCP", e)
            return None
        return name

    @staticmethod
    def _bind(sock: zmq.Socket, address: str, port_range=None, port: Optional[int] = None) -> int:
        if port:
            sock.bind(f"tcp://{address}:{port}")
            return port
        if port_range:
            return sock.bind_to_random_port(f"tcp://{address}", min_port=port_range[0], max_port=port_range[1])
        return sock.bind_to_random_port(f"tcp://{address}")

    # ---- client side -------------------------------------------------------------------------
    def handle_client(self, frames: list, now: float) -> None:
        try:
            msg_type, body, payloads = P.unpack(frames)
        except P.ProtocolError as e:
            self.stats["malformed"] += 1
            logger.error("client link: dropped malformed message: %s", e)
            return
        if not self.client_ready:
            if msg_type == P.HELLO and isinstance(body, dict) and body.get("token") == self.token:
                self.client_ready = True
                self.last_client = now
                self._send_client(P.pack(P.WELCOME, {"versions": self.versions}))
                logger.info("client connected")
            else:
                self.stats["malformed"] += 1
                logger.error("client link: dropped %s before a valid HELLO", P.TYPE_NAMES.get(msg_type))
            return
        self.last_client = now
        try:
            if msg_type == P.TASKS:
                self.accept_tasks(P.check_tasks(body, payloads), payloads)
            elif msg_type == P.FUNCS:
                for fid, code in zip(P.check_funcs(body, payloads), payloads):
                    self.codes[fid] = code
            elif msg_type == P.HEARTBEAT:
                pass
            elif msg_type == P.CANCEL:
                if not isinstance(body, list):
                    raise P.ProtocolError("CANCEL body must be a list of task ids")
                cancelled = self.scheduler.cancel(t for t in body if isinstance(t, int))
                logger.info("cancelled %d queued task(s) at the client's request", len(cancelled))
                # request id 0: the tasks that will never report, so the client can forget them
                self._send_client(P.pack(P.REPLY, [0, cancelled]))
            elif msg_type == P.COMMAND:
                if not isinstance(body, list) or len(body) != 3:
                    raise P.ProtocolError("COMMAND body must be [req_id, name, args]")
                req_id, name, args = body
                self._send_client(P.pack(P.REPLY, [req_id, self.command(name, args, now)]))
            elif msg_type == P.SHUTDOWN:
                logger.info("client requested shutdown")
                self.running = False
            else:
                raise P.ProtocolError(f"unexpected {P.TYPE_NAMES[msg_type]} from the client")
        except P.ProtocolError as e:
            self.stats["malformed"] += 1
            logger.error("client port: dropped malformed %s: %s", P.TYPE_NAMES.get(msg_type), e)

    def accept_tasks(self, records: list, payloads: list) -> None:
        new = []
        codes = self.codes
        for i, (tid, fid, kind, spec) in enumerate(records):
            if fid not in codes:
                self._fail(tid, "FAILED", f"task {tid}: the interchange has no code for function {fid.hex()}; "
                           "the client must send FUNCS before TASKS (this is a faasx bug, please report it)", 0)
                continue
            new.append(TaskRecord(tid, fid, kind, spec, payloads[i]))
        self.stats["tasks_received"] += len(records)
        for rec in self.scheduler.submit(new):
            self.stats["duplicates_dropped"] += 1
            logger.error("task %d submitted twice; the second copy was dropped", rec.tid)
        if self.debug:
            logger.debug("queued tasks %s", [r[0] for r in records])

    def command(self, name: str, args, now: float):
        sched = self.scheduler
        if name == "managers":
            return [m.summary(now) for m in sched.managers.values()]
        if name == "connected_blocks":
            return sorted(self.blocks_seen)
        if name == "outstanding":
            return {"queued": sched.queued, "tasks": len(sched.tasks)}
        if name == "hold_block":
            held = []
            for m in list(sched.managers.values()):
                if m.block_id == str(args):
                    sched.deactivate(m.mid)
                    self._send_manager(m.mid, P.pack(P.HOLD, {}))
                    held.append(m.mid.decode(errors="replace"))
            return held
        if name == "stats":
            return dict(self.stats, queued=sched.queued, tasks=len(sched.tasks), managers=len(sched.managers))
        return {"error": f"unknown command {name!r}"}

    def _send_client(self, frames: list) -> None:
        if not self.client_ready:
            return
        try:
            self.link.send_nowait(frames)
        except OSError as e:   # the client is gone; the loop sees the link's end of file next
            logger.error("could not send to the client: %s", e)
            self.running = False

    def _fail(self, tid: int, kind: str, message: str, attempts: int) -> None:
        status = {"WorkerLost": P.WORKER_LOST, "ManagerLost": P.MANAGER_LOST}.get(kind, P.FAILED)
        self.out_body.append([tid, status])
        self.out_payloads.append(P.failure_payload(kind, message, attempts))

    # ---- manager side ------------------------------------------------------------------------
    def handle_manager(self, frames: list, now: float) -> None:
        mid = frames[0]
        try:
            msg_type, body, payloads = P.unpack(frames[1:])
        except P.ProtocolError as e:
            self.stats["malformed"] += 1
            logger.error("manager port: dropped malformed message from %r: %s", mid[:64], e)
            return
        sched = self.scheduler
        m = sched.touch(mid, now)
        if m is None:
            if msg_type == P.REGISTER:
                self.register(mid, body, now)
            elif mid in self.lost:
                logger.warning("manager %r came back after it was declared lost (%s); refusing it so that no "
                               "task runs twice", mid, self.lost[mid])
                self._send_manager(mid, P.pack(P.REFUSED, {"reason": f"declared lost: {self.lost[mid]}; its tasks "
                                                           "were re-dispatched"}))
            else:
                self.stats["malformed"] += 1
                logger.error("manager port: dropped %s from unregistered peer %r", P.TYPE_NAMES.get(msg_type), mid[:64])
            return
        try:
            if msg_type == P.RESULTS:
                self.accept_results(mid, P.check_results(body, payloads), payloads, now)
            elif msg_type == P.HEARTBEAT:
                if isinstance(body, dict) and isinstance(body.get("capacity"), int):
                    sched.set_capacity(mid, body["capacity"])
                if isinstance(body, dict) and isinstance(body.get("warm"), list):
                    # container keys with a ready worker there: dispatch prefers such managers
                    sched.set_warm(mid, [k for k in body["warm"] if isinstance(k, str)])
            elif msg_type == P.DRAIN:
                sched.deactivate(mid)
                logger.info("manager %r (block %s) is draining: %s", mid, m.block_id,
                            body.get("reason") if isinstance(body, dict) else "")
            elif msg_type == P.BYE:
                reason = body.get("reason") if isinstance(body, dict) else ""
                self.remove_manager(mid, f"it exited ({reason})", now)
            elif msg_type == P.REGISTER:
                raise P.ProtocolError("REGISTER from an already registered manager")
            else:
                raise P.ProtocolError(f"unexpected {P.TYPE_NAMES[msg_type]} from a manager")
        except P.ProtocolError as e:
            self.stats["malformed"] += 1
            logger.error("manager port: dropped malformed %s from %r: %s", P.TYPE_NAMES.get(msg_type), mid, e)

    def register(self, mid: bytes, body, now: float) -> None:
        reason = None
        if not isinstance(body, dict) or not isinstance(body.get("workers"), int) or body["workers"] < 1:
            reason = "malformed registration"
        elif body.get("token") != self.token:
            reason = "wrong run token: this manager was started for another executor or an earlier run"
        else:
            diff = P.version_mismatch(self.versions, body.get("versions"))
            if diff:
                reason = "version mismatch: " + ", ".join(
                    f"{k} interchange {a!r} vs manager {b!r}" for k, (a, b) in sorted(diff.items()))
        if reason:
            self.stats["managers_refused"] += 1
            logger.error("refused manager %r from %s: %s", mid[:64],
                         body.get("hostname") if isinstance(body, dict) else "?", reason)
            self._send_manager(mid, P.pack(P.REFUSED, {"reason": reason}))
            self._send_client(P.pack(P.EVENT, {"kind": "refused", "manager": mid.decode(errors="replace"),
                                               "reason": reason, "interchange_versions": self.versions,
                                               "manager_versions": body.get("versions") if isinstance(body, dict)
                                               else None}))
            return
        workers = body["workers"]
        prefetch = body.get("prefetch") if isinstance(body.get("prefetch"), int) else 0
        info = {k: body.get(k) for k in ("hostname", "pid", "accelerators", "containers")}
        block_id = str(body.get("block_id"))
        self.scheduler.register_manager(mid, block_id, workers, workers + prefetch, info, now)
        self.blocks_seen.setdefault(block_id, now)
        self.stats["managers_registered"] += 1
        logger.info("registered manager %r: block %s, host %s, pid %s, %d workers", mid, block_id,
                    info["hostname"], info["pid"], workers)
        self._send_manager(mid, P.pack(P.REGISTERED, {"heartbeat_period": self.hb_period,
                                                      "heartbeat_threshold": self.hb_threshold}))
        self._send_client(P.pack(P.EVENT, {"kind": "registered", "manager": mid.decode(errors="replace"),
                                           "block_id": block_id, "workers": workers}))

    def accept_results(self, mid: bytes, records: list, payloads: list, now: float) -> None:
        sched = self.scheduler
        body, out_payloads = self.out_body, self.out_payloads
        for i, (tid, status) in enumerate(records):
            if status == P.WORKER_LOST:
                rec, requeued = sched.worker_lost(mid, tid, now)
                if rec is None:
                    continue
                if requeued:
                    self.stats["retried"] += 1
                    logger.warning("task %d: worker lost on manager %r; re-dispatching (attempt %d of %d)",
                                   tid, mid, rec.attempts + 1, sched.max_retries + 1)
                else:
                    self.stats["failed_system"] += 1
                    kind, message, _ = P.parse_failure(payloads[i])
                    self._fail(tid, "WorkerLost", f"{message} (gave up after {rec.attempts} attempt(s); "
                               f"max_retries_on_system_failure={sched.max_retries})", rec.attempts)
                continue
            if sched.complete(mid, tid, now) is None:
                self.stats["duplicates_dropped"] += 1
                logger.warning("task %d: dropped a result from manager %r, which does not own the task "
                               "(duplicate or stale)", tid, mid)
                continue
            body.append([tid, status])
            out_payloads.append(payloads[i])
        if self.debug:
            logger.debug("results from %r: %s", mid, [r[0] for r in records])

    def remove_manager(self, mid: bytes, why: str, now: float) -> None:
        sched = self.scheduler
        m = sched.managers.get(mid)
        if m is None:
            return
        requeued, failed = sched.remove_manager(mid, now)
        self.lost[mid] = why
        if len(self.lost) > LOST_MEMORY:
            self.lost.pop(next(iter(self.lost)))
        self.stats["managers_lost"] += 1
        self.stats["retried"] += len(requeued)
        self.stats["failed_system"] += len(failed)
        level = logging.INFO if not (requeued or failed) else logging.WARNING
        logger.log(level, "manager %r (block %s) removed: %s; %d task(s) re-queued %s, %d failed %s", mid, m.block_id,
                   why, len(requeued), [r.tid for r in requeued][:50], len(failed), [r.tid for r in failed][:50])
        for rec in failed:
            self._fail(rec.tid, "ManagerLost", f"task {rec.tid}: manager {mid.decode(errors='replace')} of block "
                       f"{m.block_id} was lost ({why}) while holding it; gave up after {rec.attempts} attempt(s) "
                       f"(max_retries_on_system_failure={sched.max_retries})", rec.attempts)
        self._send_client(P.pack(P.EVENT, {"kind": "lost", "manager": mid.decode(errors="replace"),
                                           "block_id": m.block_id, "reason": why,
                                           "requeued": len(requeued), "failed": len(failed)}))

    def _send_manager(self, mid: bytes, frames: list) -> bool:
        try:
            send(self.managers, [mid] + frames)
            return True
        except zmq.ZMQError as e:
            logger.warning("could not send to manager %r: %s", mid, e)
            return False

    def dispatch(self, now: float) -> None:
        codes = self.codes
        for m, recs in self.scheduler.dispatch():
            frames = []
            missing = [r.fid for r in recs if r.fid not in m.functions]
            if missing:
                fids = list(dict.fromkeys(missing))
                if not self._send_manager(m.mid, P.pack(P.FUNCS, fids, [codes[f] for f in fids])):
                    self.remove_manager(m.mid, "unreachable (its connection is gone)", now)
                    continue
                m.functions.update(fids)
            frames = P.pack(P.TASKS, [[r.tid, r.fid, r.kind, r.spec] for r in recs], [r.payload for r in recs])
            if not self._send_manager(m.mid, frames):
                self.remove_manager(m.mid, "unreachable (its connection is gone)", now)
            elif self.debug:
                logger.debug("dispatched tasks %s to %r", [r.tid for r in recs], m.mid)

    # ---- loop --------------------------------------------------------------------------------
    def run(self) -> None:
        poller = zmq.Poller()
        link, managers = self.link, self.managers
        lfd = link.fileno()
        poller.register(lfd, _POLLIN)
        poller.register(managers, _POLLIN)
        writing = False
        now = time.monotonic()
        self.last_client = now
        last_hb = now
        while self.running:
            if link.wants_write() != writing:
                writing = not writing
                poller.modify(lfd, _POLLIN | _POLLOUT if writing else _POLLIN)
            events = dict(poller.poll(min(self.hb_period, 0.5) * 1000))
            now = time.monotonic()
            if lfd in events:
                self.serve_link(events[lfd], now)
            if managers in events:
                for frames in drain(managers, RECV_BATCH):
                    self._guarded(self.handle_manager, frames, now, "manager")
            self.dispatch(now)
            self.flush_results()
            if now - last_hb >= self.hb_period:
                last_hb = now
                self.periodic(now)
        self.shutdown()

    def serve_link(self, event: int, now: float) -> None:
        """The client link is readable or writable (or closed)."""
        link = self.link
        try:
            if event & _POLLOUT:
                link.flush()
            if event & _POLLIN or not event & _POLLOUT:
                for frames in link.recv_available():
                    self._guarded(self.handle_client, frames, now, "client")
        except (ChannelClosed, ConnectionResetError, BrokenPipeError):
            logger.info("the client closed its link; shutting down")
            self.running = False
        except ChannelError as e:   # only our own client writes here: this is a faasx bug
            logger.error("client link: corrupt stream (%s); shutting down, the client will report the "
                         "interchange lost", e)
            self.running = False

    def _guarded(self, handler, frames: list, now: float, port: str) -> None:
        """No message may end the interchange: anything a handler did not foresee is logged and counted
        as malformed (the specific checks live in ``protocol`` and the handlers)."""
        try:
            handler(frames, now)
        except Exception:
            self.stats["malformed"] += 1
            logger.exception("%s port: dropped a message that broke its handler (peer %r)", port, frames[0][:64])

    def flush_results(self) -> None:
        if self.out_body:
            self.stats["results_sent"] += len(self.out_body)
            self._send_client(P.pack(P.RESULTS, self.out_body, self.out_payloads))
            self.out_body, self.out_payloads = [], []

    def periodic(self, now: float) -> None:
        hb = P.pack(P.HEARTBEAT, {})
        for mid in self.scheduler.expired(now, self.hb_threshold):
            self.remove_manager(mid, f"no heartbeat for more than {self.hb_threshold}s (heartbeat_threshold)", now)
        for key, recs in self.scheduler.unroutable(now, self.hb_threshold):
            need = "accelerators (available_accelerators)" if key == "gpu" else "a container runtime on PATH"
            logger.error("failing %d task(s) needing %r: none of the %d connected manager(s) has %s",
                         len(recs), key, len(self.scheduler.managers), need)
            self.stats["failed_unroutable"] = self.stats.get("failed_unroutable", 0) + len(recs)
            for rec in recs:
                self._fail(rec.tid, "FAILED", f"task {rec.tid} needs {key!r}, but none of the "
                           f"{len(self.scheduler.managers)} connected manager(s) can run it: they have no {need}. "
                           "Fix: give the executor nodes that have it, or drop the requirement.", rec.attempts)
        for mid in list(self.scheduler.managers):
            if not self._send_manager(mid, hb):
                self.remove_manager(mid, "unreachable (its connection is gone)", now)
        self._send_client(hb)
        self.flush_results()
        if os.getppid() != self.parent_pid:
            logger.error("the client process %d is gone; shutting down", self.parent_pid)
            self.running = False
        elif self.client_ready and now - self.last_client > self.client_threshold:
            logger.error("the client has been silent for %.1fs; shutting down", now - self.last_client)
            self.running = False

    def shutdown(self) -> None:
        bye = P.pack(P.SHUTDOWN, {"reason": "the executor is shutting down"})
        for mid in list(self.scheduler.managers):
            self._send_manager(mid, bye)
        self.managers.setsockopt(zmq.LINGER, 1000)
        self.managers.close()
        try:    # best effort at exit: let the client have the results still queued for it
            if not self.link.flush_until(time.monotonic() + 2.0):
                logger.warning("exiting with %d bytes for the client unsent", self.link.queued_bytes())
        except OSError:
            pass
        self.link.close()
        if self.auth is not None:
            self.auth.stop()
        self.ctx.term()
        logger.info("interchange stopped: %s", self.stats)


def main(argv=None) -> int:
    set_process_name("faasx-interchange")
    cfg = json.loads(sys.stdin.readline())
    # before any thread exists, so that every thread of this process (libzmq's, the ZAP handler) shares the CPU
    affinity.pin_this_thread(cfg.get("engine_cpu"), "interchange")
    os.makedirs(cfg["logdir"], exist_ok=True)
    logging.basicConfig(filename=os.path.join(cfg["logdir"], "interchange.log"),
                        level=logging.DEBUG if cfg.get("debug") else logging.INFO,
                        format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s")
    # the client decides when we stop; a terminal's Ctrl-C is for the user's script
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    ic = Interchange(cfg)

    def on_term(_signum, _frame):
        ic.running = False
    signal.signal(signal.SIGTERM, on_term)
    sys.stdout.write(json.dumps({"manager_port": ic.manager_port, "manager_ipc": ic.manager_ipc}) + "\n")
    sys.stdout.flush()
    sys.stdout.close()
    logger.info("interchange up: manager port %d on %s (and ipc://@%s for this host); engine CPU %s",
                ic.manager_port, cfg["bind_address"], ic.manager_ipc,
                ic.engine_cpu if ic.engine_cpu is not None else "not pinned")
    try:
        ic.run()
    except Exception:
        logger.exception("interchange crashed")
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
