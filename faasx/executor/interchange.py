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
re-dispatched or failed), and exiting when the client is gone: its end of the link closed or its
process gone.  Never for silence: the client's I/O thread may be held up for a while (a main thread
in a long C call that keeps the GIL), and that must not fail the tasks it submitted.  Sends to the
client never block: what the link will not take now waits for it to become writable.

Where things go: each message type has one handler method (``_on_client_*`` / ``_on_manager_*``,
looked up in ``_client_handlers`` / ``_manager_handlers``), each COMMAND one ``_cmd_*`` method in
``_commands`` (what a status or control endpoint would call), and results for the client collect
in ``outbox`` until ``flush_results`` sends them as one RESULTS message per loop iteration (where a
byte bound on batches would apply).  Message bodies are built and read by ``protocol`` only.

The configuration arrives as one JSON line on stdin; the bound manager port goes back as one JSON
line on stdout, after which stdout is closed.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sys
import time
from typing import Dict, List, Optional

import zmq

from faasx.executor import affinity
from faasx.executor import direct
from faasx.executor import payloads as shared_payloads   # 'payloads' names message frames here
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
        self.parent_pid: int = cfg.get("parent_pid") or os.getppid()
        self.debug: bool = cfg.get("debug", False)
        self.scheduler = Scheduler(max_retries=cfg["max_retries"])
        self.codes: Dict[bytes, bytes] = {}
        self.versions = P.versions()
        self.host_id = shared_payloads.host_id()   # a manager registering with another may not get shm payloads
        self.shm = bool(cfg.get("shm_dir"))  # the client sends shared-memory payloads (a local block)
        self.client_ready = False       # the client said HELLO
        self.lost: Dict[bytes, str] = {}
        self.blocks_seen: Dict[str, float] = {}
        self.running = True
        self.stats = {"tasks_received": 0, "results_sent": 0, "malformed": 0, "duplicates_dropped": 0,
                      "retried": 0, "failed_system": 0, "managers_registered": 0, "managers_lost": 0,
                      "managers_refused": 0}
        self.outbox: List[P.Result] = []     # results for the client, sent once per loop iteration
        self.started: List[int] = []         # STARTED task ids for the client, sent with the results
        self._client_handlers = {P.TASKS: self._on_client_tasks, P.FUNCS: self._on_client_funcs,
                                 P.HEARTBEAT: self._on_client_heartbeat, P.CANCEL: self._on_client_cancel,
                                 P.TERMINATE: self._on_client_terminate,
                                 P.COMMAND: self._on_client_command, P.SHUTDOWN: self._on_client_shutdown}
        self._manager_handlers = {P.RESULTS: self._on_manager_results, P.HEARTBEAT: self._on_manager_heartbeat,
                                  P.DRAIN: self._on_manager_drain, P.BYE: self._on_manager_bye,
                                  P.REGISTER: self._on_manager_register, P.STARTED: self._on_manager_started}
        self._commands = {"managers": self._cmd_managers, "connected_blocks": self._cmd_connected_blocks,
                          "outstanding": self._cmd_outstanding, "hold_block": self._cmd_hold_block,
                          "stats": self._cmd_stats}

        max_msg = cfg["max_payload_size"] + (16 << 20)
        self.link = Channel(socket.socket(fileno=cfg["client_fd"]), max_message=2 * max_msg)
        self.ctx = zmq.Context(io_threads=1)      # its I/O thread inherits main()'s pin (engine_cpu)
        self.engine_cpu = cfg.get("engine_cpu")
        self.managers = self._router()
        # no ROUTER_HANDOVER: manager ids are public (they name log files), and with handover a second
        # connection presenting a registered id would take over that manager's pipe and its tasks
        self.managers.setsockopt(zmq.ROUTER_HANDOVER, 0)
        self.managers.setsockopt(zmq.MAXMSGSIZE, max_msg)
        self.auth = None
        if cfg.get("cert_dir"):
            from faasx.executor.security import configure_server
            self.auth = configure_server(self.ctx, self.managers, cfg["cert_dir"])
        self.manager_port = self._bind(self.managers, cfg["bind_address"], cfg.get("worker_port_range"),
                                       cfg.get("worker_port"))
        self.manager_ipc = self._bind_local_ipc()
        self.direct = self._bind_direct(2 * max_msg)

    def _router(self) -> zmq.Socket:
        sock = self.ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
        return sock

    def _bind_local_ipc(self) -> Optional[str]:
        """The manager port again, on ZeroMQ's ipc transport, for managers on this host: the same socket
        (CURVE, ZAP and all), without the TCP/IP stack on each message (~25 us less per round trip).  It
        is a filesystem socket in the run's 0700 directory (``security.ipc_socket_path``), so other
        users cannot connect to it -- never Linux's abstract namespace, which every local user can
        reach.  A manager uses it only if it can connect to it (one on another host cannot) and falls
        back to TCP."""
        self.ipc_cleanup: List[str] = []
        if not sys.platform.startswith("linux") or self.cfg.get("manager_ipc") is False:
            return None
        from faasx.executor.security import ipc_socket_path
        path, own_dir = ipc_socket_path(self.cfg["logdir"], f"interchange-{os.getpid()}.sock")
        self.ipc_cleanup = [path] + ([own_dir] if own_dir else [])
        try:
            self.managers.bind(f"ipc://{path}")
            os.chmod(path, 0o600)   # libzmq makes it with the umask's mode; the 0700 directory is what guards it
        except zmq.ZMQError as e:
            logger.warning("could not bind the local ipc endpoint for managers (%s); managers use TCP", e)
            return None
        return path

    def _bind_direct(self, max_message: int) -> Optional[direct.DirectLinks]:
        """Beside the ipc socket, the direct socket (``faasx.executor.direct``): same-host managers skip
        ZeroMQ altogether.  None where there is no ipc socket, or with FAASX_DIRECT_LINKS=0."""
        if self.manager_ipc is None or not direct.enabled():
            return None
        path = direct.direct_path(self.manager_ipc)
        try:
            links = direct.DirectLinks(path, max_message)
        except OSError as e:
            logger.warning("could not bind the direct socket for managers on this host (%s); they use ipc", e)
            return None
        self.ipc_cleanup.insert(0, path)
        return links

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
        """One message from the client: HELLO first, then whatever ``_client_handlers`` accepts."""
        try:
            msg_type, body, payloads = P.unpack(frames)
        except P.ProtocolError as e:
            self.stats["malformed"] += 1
            logger.error("client link: dropped malformed message: %s", e)
            return
        if not self.client_ready:
            self._greet_client(msg_type, body, now)
            return
        handler = self._client_handlers.get(msg_type)
        try:
            if handler is None:
                raise P.ProtocolError(f"unexpected {P.type_name(msg_type)} from the client")
            handler(body, payloads, now)
        except P.ProtocolError as e:
            self.stats["malformed"] += 1
            logger.error("client port: dropped malformed %s: %s", P.type_name(msg_type), e)

    def _greet_client(self, msg_type: int, body, now: float) -> None:
        """Before a valid HELLO nothing else is accepted, and nothing is answered."""
        if msg_type == P.HELLO and P.hello_token(body) == self.token:
            self.client_ready = True
            self._send_client(P.pack_welcome(self.versions))
            logger.info("client connected")
        else:
            self.stats["malformed"] += 1
            logger.error("client link: dropped %s before a valid HELLO", P.type_name(msg_type))

    def _on_client_tasks(self, body, payloads, now: float) -> None:
        self.accept_tasks(P.parse_tasks(body, payloads, TaskRecord))

    def _on_client_funcs(self, body, payloads, now: float) -> None:
        self.codes.update(P.parse_funcs(body, payloads))

    def _on_client_heartbeat(self, body, payloads, now: float) -> None:
        pass    # the client's liveness is its end of the link and its process (_check_client), never silence

    def _on_client_cancel(self, body, payloads, now: float) -> None:
        tids = P.parse_cancel(body)
        cancelled = self.scheduler.cancel(tids)
        logger.info("cancelled %d queued task(s) at the client's request", len(cancelled))
        self._send_client(P.pack_cancel_confirmed(cancelled))   # these will never report
        # the others are at managers: each drops those no worker has taken yet (and answers them)
        for mid, held in self.scheduler.owners(tids).items():
            self._send_manager(mid, P.pack_cancel(held))

    def _on_client_terminate(self, body, payloads, now: float) -> None:
        tids = P.parse_terminate(body)
        for tid in self.scheduler.cancel(tids):      # still queued here: it never runs
            self._fail(tid, "Terminated", f"task {tid} was terminated at the user's request", 0)
        for mid, held in self.scheduler.owners(tids).items():
            self._send_manager(mid, P.pack_terminate(held))

    def _on_client_command(self, body, payloads, now: float) -> None:
        cmd = P.parse_command(body)
        self._send_client(P.pack_reply(cmd.req_id, self.command(cmd.name, cmd.args, now)))

    def _on_client_shutdown(self, body, payloads, now: float) -> None:
        logger.info("client requested shutdown")
        self.running = False

    def accept_tasks(self, records: List[TaskRecord]) -> None:
        """Queue the client's tasks; one whose function code never arrived fails at once (FUNCS must
        come before the TASKS that use them)."""
        self.stats["tasks_received"] += len(records)
        codes = self.codes
        new = [rec for rec in records if rec.fid in codes]
        if len(new) < len(records):
            self._fail_codeless([rec for rec in records if rec.fid not in codes])
        for rec in self.scheduler.submit(new):
            self.stats["duplicates_dropped"] += 1
            logger.error("task %d submitted twice; the second copy was dropped", rec.tid)
        if self.debug:
            logger.debug("queued tasks %s", [r.tid for r in records])

    def _fail_codeless(self, records: List[TaskRecord]) -> None:
        for rec in records:
            self._fail(rec.tid, "FAILED", f"task {rec.tid}: the interchange has no code for function "
                       f"{rec.fid.hex()}; the client must send FUNCS before TASKS (this is a faasx bug, "
                       "please report it)", 0)

    def command(self, name: str, args, now: float):
        """The answer to a COMMAND (see ``protocol``: the names a client may ask)."""
        handler = self._commands.get(name)
        if handler is None:
            return {"error": f"unknown command {name!r}"}
        return handler(args, now)

    def _cmd_managers(self, args, now: float):
        return [m.summary(now) for m in self.scheduler.managers.values()]

    def _cmd_connected_blocks(self, args, now: float):
        return sorted(self.blocks_seen)

    def _cmd_outstanding(self, args, now: float):
        return {"queued": self.scheduler.queued, "tasks": len(self.scheduler.tasks)}

    def _cmd_hold_block(self, args, now: float):
        """Scale-in: stop dispatching to the block's managers and ask them to drain."""
        sched = self.scheduler
        held = []
        for m in list(sched.managers.values()):
            if m.block_id == str(args):
                sched.deactivate(m.mid)
                self._send_manager(m.mid, P.pack_hold())
                held.append(m.mid.decode(errors="replace"))
        return held

    def _cmd_stats(self, args, now: float):
        sched = self.scheduler
        return dict(self.stats, queued=sched.queued, tasks=len(sched.tasks), managers=len(sched.managers),
                    direct_refused=self.direct.refused if self.direct is not None else 0)

    def _send_client(self, frames: list) -> None:
        if not self.client_ready:
            return
        try:
            self.link.send_nowait(frames)
        except OSError as e:   # the client is gone; the loop sees the link's end of file next
            logger.error("could not send to the client: %s", e)
            self.running = False

    def _fail(self, tid: int, kind: str, message: str, attempts: int) -> None:
        self.outbox.append(P.failed_result(tid, kind, message, attempts))

    # ---- manager side ------------------------------------------------------------------------
    def handle_manager(self, frames: list, now: float) -> None:
        """One message from a manager: frame 0 is its ROUTER identity, then the protocol frames."""
        mid = frames[0]
        try:
            msg_type, body, payloads = P.unpack(frames[1:])
        except P.ProtocolError as e:
            self.stats["malformed"] += 1
            logger.error("manager port: dropped malformed message from %r: %s", mid[:64], e)
            return
        m = self.scheduler.touch(mid, now)
        if m is None:
            self._from_unregistered(mid, msg_type, body, now)
            return
        handler = self._manager_handlers.get(msg_type)
        try:
            if handler is None:
                raise P.ProtocolError(f"unexpected {P.type_name(msg_type)} from a manager")
            handler(m, body, payloads, now)
        except P.ProtocolError as e:
            self.stats["malformed"] += 1
            logger.error("manager port: dropped malformed %s from %r: %s", P.type_name(msg_type), mid, e)

    def _from_unregistered(self, mid: bytes, msg_type: int, body, now: float) -> None:
        """REGISTER, or a manager declared lost coming back (refused: its tasks ran elsewhere)."""
        if msg_type == P.REGISTER:
            self.register(mid, body, now)
        elif mid in self.lost:
            logger.warning("manager %r came back after it was declared lost (%s); refusing it so that no "
                           "task runs twice", mid, self.lost[mid])
            self._send_manager(mid, P.pack_refused(f"declared lost: {self.lost[mid]}; its tasks were re-dispatched"))
        else:
            self.stats["malformed"] += 1
            logger.error("manager port: dropped %s from unregistered peer %r", P.type_name(msg_type), mid[:64])

    def _on_manager_results(self, m, body, payloads, now: float) -> None:
        self.accept_results(m.mid, P.parse_results(body, payloads), now)

    def _on_manager_heartbeat(self, m, body, payloads, now: float) -> None:
        hb = P.parse_manager_heartbeat(body)
        if hb.capacity is not None:
            self.scheduler.set_capacity(m.mid, hb.capacity)
        if hb.warm is not None:
            # container keys with a ready worker there: dispatch prefers such managers
            self.scheduler.set_warm(m.mid, hb.warm)

    def _on_manager_started(self, m, body, payloads, now: float) -> None:
        tasks, mid = self.scheduler.tasks, m.mid
        self.started.extend(t for t in P.parse_started(body) if t in tasks and tasks[t].manager == mid)

    def _on_manager_drain(self, m, body, payloads, now: float) -> None:
        self.scheduler.deactivate(m.mid)
        logger.info("manager %r (block %s) is draining: %s", m.mid, m.block_id, P.parse_reason(body))

    def _on_manager_bye(self, m, body, payloads, now: float) -> None:
        # the tasks it lists as lost are in our own ownership record already: that one is requeued
        self.remove_manager(m.mid, f"it exited ({P.parse_bye(body).reason})", now)

    def _on_manager_register(self, m, body, payloads, now: float) -> None:
        raise P.ProtocolError("REGISTER from an already registered manager")

    def register(self, mid: bytes, body, now: float) -> None:
        """REGISTER from a new manager: REGISTERED, or REFUSED with the reason (the client hears either)."""
        try:
            reg = P.parse_register(body)
        except P.ProtocolError as e:
            self._refuse(mid, body, str(e))
            return
        reason = self._registration_problem(reg)
        if reason:
            self._refuse(mid, body, reason)
            return
        info = {"hostname": reg.hostname, "pid": reg.pid, "accelerators": reg.accelerators,
                "containers": reg.containers, "walltime_left": reg.walltime_left,
                "same_host": reg.host_id == self.host_id,   # may be sent shared-memory payloads
                "link": "direct" if self.direct is not None and mid in self.direct.by_mid else "zmq"}
        self.scheduler.register_manager(mid, reg.block_id, reg.workers, reg.workers + reg.prefetch, info, now)
        self.blocks_seen.setdefault(reg.block_id, now)
        self.stats["managers_registered"] += 1
        logger.info("registered manager %r: block %s, host %s, pid %s, %d workers", mid, reg.block_id,
                    reg.hostname, reg.pid, reg.workers)
        self._send_manager(mid, P.pack_registered(self.hb_period, self.hb_threshold))
        self._send_client(P.pack_event_registered(mid.decode(errors="replace"), reg.block_id, reg.workers))

    def _registration_problem(self, reg: P.Registration) -> Optional[str]:
        if reg.token != self.token:
            return "wrong run token: this manager was started for another executor or an earlier run"
        diff = P.version_mismatch(self.versions, reg.versions)
        if diff:
            return "version mismatch: " + ", ".join(
                f"{k} interchange {a!r} vs manager {b!r}" for k, (a, b) in sorted(diff.items()))
        return None

    def _refuse(self, mid: bytes, body, reason: str) -> None:
        theirs = body if isinstance(body, dict) else {}
        self.stats["managers_refused"] += 1
        logger.error("refused manager %r from %s: %s", mid[:64], theirs.get("hostname", "?"), reason)
        self._send_manager(mid, P.pack_refused(reason))
        self._send_client(P.pack_event_refused(mid.decode(errors="replace"), reason, self.versions,
                                               theirs.get("versions")))

    def accept_results(self, mid: bytes, results: List[P.Result], now: float) -> None:
        """Forward the results the manager owns; WORKER_LOST ones are retried or failed here."""
        sched, outbox = self.scheduler, self.outbox
        for res in results:
            if res.status == P.WORKER_LOST:
                self._worker_lost(mid, res, now)
            elif sched.complete(mid, res.tid, now) is None:
                self.stats["duplicates_dropped"] += 1
                shared_payloads.release(res.payload)     # a shared-memory result nobody will read
                logger.warning("task %d: dropped a result from manager %r, which does not own the task "
                               "(duplicate or stale)", res.tid, mid)
            else:
                outbox.append(res)
        if self.debug:
            logger.debug("results from %r: %s", mid, [r.tid for r in results])

    def _worker_lost(self, mid: bytes, res: P.Result, now: float) -> None:
        sched = self.scheduler
        rec, requeued = sched.worker_lost(mid, res.tid, now)
        if rec is None:
            return
        if requeued:
            self.stats["retried"] += 1
            logger.warning("task %d: worker lost on manager %r; re-dispatching (attempt %d of %d)",
                           res.tid, mid, rec.attempts + 1, sched.max_retries + 1)
            return
        self.stats["failed_system"] += 1
        _, message, _ = P.parse_failure(res.payload)
        self._fail(res.tid, "WorkerLost", f"{message} (gave up after {rec.attempts} attempt(s); "
                   f"max_retries_on_system_failure={sched.max_retries})", rec.attempts)

    def remove_manager(self, mid: bytes, why: str, now: float) -> None:
        """Forget a manager: its tasks go back to the queues (or fail, retries spent); remember its id
        so that it is refused if it comes back."""
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
        self._send_client(P.pack_event_lost(mid.decode(errors="replace"), m.block_id, why, len(requeued),
                                            len(failed)))

    def _send_manager(self, mid: bytes, frames: list) -> bool:
        if self.direct is not None and mid in self.direct.by_mid:
            if self.direct.send(mid, frames):
                return True
            logger.warning("could not send to manager %r: its direct link is gone", mid)
            return False
        try:
            send(self.managers, [mid] + frames)
            return True
        except zmq.ZMQError as e:
            logger.warning("could not send to manager %r: %s", mid, e)
            return False

    def dispatch(self, now: float) -> None:
        """Send each manager the tasks the scheduler gave it (their functions' code first)."""
        for m, recs in self.scheduler.dispatch(now):
            if self.shm and not m.info.get("same_host"):   # it cannot open this host's shm: send inline
                recs = shared_payloads.inline_tasks(recs)
            if not (self._send_missing_funcs(m, recs)
                    and all(self._send_manager(m.mid, P.pack_tasks(c)) for c in P.chunks_by_bytes(recs))):
                self.remove_manager(m.mid, "unreachable (its connection is gone)", now)
            elif self.debug:
                logger.debug("dispatched tasks %s to %r", [r.tid for r in recs], m.mid)

    def _send_missing_funcs(self, m, recs: List[TaskRecord]) -> bool:
        """FUNCS for the functions of ``recs`` the manager has not been sent yet (False: unreachable)."""
        missing = [r.fid for r in recs if r.fid not in m.functions]
        if not missing:
            return True
        fids = list(dict.fromkeys(missing))
        if not self._send_manager(m.mid, P.pack_funcs(fids, [self.codes[f] for f in fids])):
            return False
        m.functions.update(fids)
        return True

    # ---- loop --------------------------------------------------------------------------------
    def run(self) -> None:
        poller = zmq.Poller()
        link, managers = self.link, self.managers
        lfd = link.fileno()
        poller.register(lfd, _POLLIN)
        poller.register(managers, _POLLIN)
        if self.direct is not None:
            self.direct.attach(poller)
        writing = False
        now = time.monotonic()
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
                    self._guarded(self.handle_router, frames, now, "manager")
            if self.direct is not None and len(events) > (lfd in events) + (managers in events):
                self.serve_direct(events, now)
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

    def handle_router(self, frames: list, now: float) -> None:
        """A message on the ZeroMQ port; one naming a manager that has a direct link is not its (a second
        connection presenting a registered id must not act for it)."""
        if self.direct is not None and frames[0] in self.direct.by_mid:
            self.stats["malformed"] += 1
            logger.error("manager port: dropped a message from %r, which is connected on its direct link",
                         frames[0][:64])
            return
        self.handle_manager(frames, now)

    def serve_direct(self, events: dict, now: float) -> None:
        """The direct socket and links that have events: accept, read, write; a closed link removes its
        manager at once (it exited or died: its tasks are re-dispatched now, not after the heartbeat
        threshold)."""
        links = self.direct
        in_use = self.scheduler.managers.__contains__
        for fd, event in events.items():      # the client link's fd and the ROUTER are not ``owns``
            if not links.owns(fd):
                continue
            messages, closed = links.serve(fd, event, in_use)
            for frames in messages:
                self._guarded(self.handle_manager, frames, now, "manager")
            for mid in closed:
                self.remove_manager(mid, "its connection closed (the manager exited or died)", now)

    def _guarded(self, handler, frames: list, now: float, port: str) -> None:
        """No message may end the interchange: anything a handler did not foresee is logged and counted
        as malformed (the specific checks live in ``protocol`` and the handlers)."""
        try:
            handler(frames, now)
        except Exception:
            self.stats["malformed"] += 1
            logger.exception("%s port: dropped a message that broke its handler (peer %r)", port, frames[0][:64])

    def flush_results(self) -> None:
        if self.started:
            self._send_client(P.pack_started(self.started))
            self.started = []
        if self.outbox:
            self.stats["results_sent"] += len(self.outbox)
            for chunk in P.chunks_by_bytes(self.outbox):
                self._send_client(P.pack_results(chunk))
            self.outbox = []

    def periodic(self, now: float) -> None:
        """Once per heartbeat period: liveness both ways, and tasks no manager can run (no capable
        manager, or no block with the walltime they need left)."""
        self._expire_managers(now)
        self._fail_unroutable(now)
        self._fail_too_long(now)
        self._heartbeat_managers(now)
        self._send_client(P.pack_heartbeat())
        self.flush_results()
        self._check_client(now)

    def _expire_managers(self, now: float) -> None:
        for mid in self.scheduler.expired(now, self.hb_threshold):
            self.remove_manager(mid, f"no heartbeat for more than {self.hb_threshold}s (heartbeat_threshold)", now)

    def _fail_unroutable(self, now: float) -> None:
        """Fail the keyed tasks (GPU, container) none of the connected managers can run."""
        n_managers = len(self.scheduler.managers)
        for key, recs in self.scheduler.unroutable(now, self.hb_threshold):
            need = "accelerators (available_accelerators)" if key == "gpu" else "a container runtime on PATH"
            logger.error("failing %d task(s) needing %r: none of the %d connected manager(s) has %s",
                         len(recs), key, n_managers, need)
            self.stats["failed_unroutable"] = self.stats.get("failed_unroutable", 0) + len(recs)
            for rec in recs:
                self._fail(rec.tid, "FAILED", f"task {rec.tid} needs {key!r}, but none of the {n_managers} "
                           f"connected manager(s) can run it: they have no {need}. "
                           "Fix: give the executor nodes that have it, or drop the requirement.", rec.attempts)

    def _heartbeat_managers(self, now: float) -> None:
        hb = P.pack_heartbeat()
        for mid in list(self.scheduler.managers):
            if not self._send_manager(mid, hb):
                self.remove_manager(mid, "unreachable (its connection is gone)", now)

    def _check_client(self, now: float) -> None:
        """Exit when the client process is gone (its link closing is seen in serve_link; never for
        silence, see the module docstring)."""
        if os.getppid() != self.parent_pid:
            logger.error("the client process %d is gone; shutting down", self.parent_pid)
            self.running = False

    def _fail_too_long(self, now: float) -> None:
        """Fail tasks whose walltime no connected block has left (after the same grace as above)."""
        for rec, longest in self.scheduler.too_long(now, self.hb_threshold):
            self.stats["failed_unroutable"] = self.stats.get("failed_unroutable", 0) + 1
            logger.error("failing task %d: its walltime of %ss exceeds the %.0fs the longest connected block "
                         "has left", rec.tid, rec.walltime, longest)
            self._fail(rec.tid, "FAILED", f"task {rec.tid} declares a walltime of {rec.walltime}s, but the "
                       f"longest remaining block time of the {len(self.scheduler.managers)} connected manager(s) "
                       f"is {longest:.0f}s, and no longer block came within {self.hb_threshold}s. Fix: give the "
                       "provider a longer walltime, or declare a shorter one for the task.", rec.attempts)

    def shutdown(self) -> None:
        bye = P.pack_shutdown("the executor is shutting down")
        for mid in list(self.scheduler.managers):
            self._send_manager(mid, bye)
        self.managers.setsockopt(zmq.LINGER, 1000)
        self.managers.close()
        if self.direct is not None:
            self.direct.close(time.monotonic() + 1.0)
        try:    # best effort at exit: let the client have the results still queued for it
            if not self.link.flush_until(time.monotonic() + 2.0):
                logger.warning("exiting with %d bytes for the client unsent", self.link.queued_bytes())
        except OSError:
            pass
        self.link.close()
        if self.auth is not None:
            self.auth.stop()
        self.ctx.term()
        shared_payloads.remove_dir(self.cfg.get("shm_dir"))    # the client's, if it could not (killed): nothing reads it now
        for path in self.ipc_cleanup:     # the socket file, then the private directory made for it
            try:
                os.rmdir(path) if os.path.isdir(path) else os.unlink(path)
            except OSError:
                pass
        logger.info("interchange stopped: %s", self.stats)


def main(argv=None) -> int:
    set_process_name("faasx-interchange")
    cfg = json.loads(sys.stdin.readline())
    # before any thread exists, so that every thread of this process (libzmq's, the ZAP handler) shares the CPU
    affinity.pin_this_thread(cfg.get("engine_cpu"), "interchange")
    from faasx.executor.security import PrivateFileHandler, private_dir
    private_dir(cfg["logdir"])
    logging.basicConfig(handlers=[PrivateFileHandler(os.path.join(cfg["logdir"], "interchange.log"))],
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
    logger.info("interchange up: manager port %d on %s (and ipc://%s for this host); engine CPU %s",
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
