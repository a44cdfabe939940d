"""faasx-manager: one per node; registers with the interchange and runs tasks on a pool of workers.

A block's launcher starts this on each node.  The manager is a single-threaded event loop over a
DEALER socket to the interchange (TCP, CurveZMQ when the executor is encrypted) and one Unix
socketpair per worker (``faasx.executor.channel``), plus a periodic check of its worker processes.
It never runs user code, so it can always answer heartbeats.

* Capacity: it asks the interchange for up to workers + prefetch tasks (``WorkerTable.prefetch``)
  and hands them to workers in adaptive batches.
* Workers that die are restarted; the tasks they held are reported as WORKER_LOST so the interchange
  can re-dispatch them.
* Containers (``docs/containers.md``): a task whose spec names a container runs only on a worker
  started inside it (``faasx.containers.container_command``); such workers are started on demand,
  kept warm, reported in heartbeats (``{"warm": [keys]}``) so the interchange prefers this node for
  them, and stopped when an idle worker's slot is needed for another kind of task.  A container that
  dies before its worker says READY fails that key's tasks with the engine's own error after
  ``MAX_CONTAINER_START_ATTEMPTS`` tries in a row.
* Liveness: heartbeats to the interchange every ``heartbeat_period``; if the interchange is silent
  for ``heartbeat_threshold`` the manager stops its workers and exits.
* Walltime: when the job's end (``FAASX_WALLTIME_END``, exported by faasx's providers) is near, the
  manager drains -- asks for nothing more, finishes what it has, says BYE and exits.  On SIGTERM
  (scheduler cancelling the job) it says BYE listing the tasks it held, so they are re-dispatched at
  once instead of after a heartbeat timeout.
* CPU (``--engine-cpu``, the executor's ``engine_cpu``; ``faasx.executor.affinity``): the manager and
  its ZeroMQ threads run on that one CPU, with the other engine threads of the host; its workers are
  given back the CPUs the manager started with (``--cpus``), so they are not pinned.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from typing import Dict, List, Optional

import psutil
import zmq

from faasx.containers import available_runtimes
from faasx.executor import affinity
from faasx.executor import protocol as P
from faasx.executor.channel import Channel, ChannelClosed, ChannelError
from faasx.executor.sockets import drain, send
from faasx.executor.processes import command, set_process_name
from faasx.executor.container_workers import ENGINE_ERROR_CODES, RETIRE_GRACE, ContainerWorkers
from faasx.executor.worker_table import WorkerTable

logger = logging.getLogger("faasx.manager")

ACCELERATOR_VARS = ("CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "ZE_AFFINITY_MASK")
WORKER_CHECK_PERIOD = 0.1
CAPACITY_UPDATE_PERIOD = 0.1


def worker_count(max_workers_per_node: Optional[float], cores_per_worker: float, mem_per_worker: Optional[float],
                 accelerators: List[str], cores: Optional[int] = None, mem_gb: Optional[float] = None) -> int:
    """How many workers fit on this node (the smallest of every bound that applies, at least 1)."""
    cores = cores if cores is not None else (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                             else os.cpu_count() or 1)
    bounds = [math.floor(cores / cores_per_worker) if cores_per_worker > 0 else math.inf]
    if max_workers_per_node is not None and max_workers_per_node != math.inf:
        bounds.append(int(max_workers_per_node))
    if mem_per_worker:
        mem_gb = mem_gb if mem_gb is not None else psutil.virtual_memory().available / 2**30
        bounds.append(math.floor(mem_gb / mem_per_worker))
    if accelerators:
        bounds.append(len(accelerators))
    return max(1, int(min(bounds)))


class Manager(ContainerWorkers):
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.block_id = args.block_id
        self.hostname = socket.gethostname()
        self.mid = f"{self.hostname}-{os.getpid()}-{uuid.uuid4().hex[:6]}".encode()
        self.accelerators = [a for a in (args.accelerators or "").split(",") if a]
        # the node's CPUs as given to this process, before it pins itself: they size the pool and are
        # what the workers get back
        original = affinity.allowed_cpus()
        self.n_workers = worker_count(args.max_workers_per_node, args.cores_per_worker, args.mem_per_worker,
                                      self.accelerators, cores=len(original))
        self.table = WorkerTable(args.prefetch_capacity) if not args.mpi_launcher else self._mpi_table(args)
        self.procs: Dict[int, subprocess.Popen] = {}
        self.restarts: Dict[int, int] = {}
        self.next_wid = 0
        self.codes: Dict[bytes, bytes] = {}
        self.running = True
        self.draining = False
        self.drain_reason = ""
        self.terminate_reason = ""
        self.advertised_prefetch = -1
        self.malformed = 0
        # tasks handed to a worker and not yet reported STARTED (tid -> None, in order), since when;
        # and tasks the client cancelled before a worker got them (answered with FAILED results)
        self.unreported: Dict[int, None] = {}
        self.unreported_since: Optional[float] = None
        self.withdrawn: List[int] = []
        self.start_time = time.time()
        self.drain_at = self._drain_deadline()

        # engine_cpu: this thread and libzmq's threads (started with the first socket) share one CPU
        # with the interchange; workers must not inherit that, so they are told the original CPUs
        self.engine_cpu: Optional[int] = None
        self.worker_cpus: Optional[str] = None
        self.original_cpus = original
        if args.engine_cpu is not None:
            cpu = affinity.choose(args.engine_cpu, original)
            if affinity.pin_this_thread(cpu, "manager"):
                self.engine_cpu = cpu
                self.worker_cpus = affinity.format_cpus(original)
                logger.info("manager pinned to CPU %d; workers get cpus %s", cpu, self.worker_cpus)
        # libzmq starts its I/O thread with the first socket, from this (pinned) thread: it inherits the pin
        self.ctx = zmq.Context(io_threads=1)
        self.ic = self.ctx.socket(zmq.DEALER)
        self.ic.setsockopt(zmq.LINGER, 0)
        self.ic.setsockopt(zmq.IDENTITY, self.mid)
        self.ic.setsockopt(zmq.SNDHWM, 0)
        self.ic.setsockopt(zmq.RCVHWM, 0)
        # A DEALER with no peer pipe blocks in send; after a fatal handshake failure (wrong or missing
        # CURVE keys) it has none, and would block for ever.  Bound every send by the liveness threshold.
        self.ic.setsockopt(zmq.SNDTIMEO, int(args.heartbeat_threshold * 1000))
        if args.max_payload_size:
            self.ic.setsockopt(zmq.MAXMSGSIZE, args.max_payload_size + (16 << 20))
        if args.cert_dir:
            from faasx.executor.security import configure_client
            configure_client(self.ic, args.cert_dir)
        self.chans: Dict[int, Channel] = {}
        self.fd_wid: Dict[int, int] = {}
        self.poller = zmq.Poller()
        self.poller.register(self.ic, zmq.POLLIN)
        # containers
        self.runtimes = available_runtimes()
        self.container_specs: Dict[str, dict] = {}        # key -> validated spec, learned from tasks
        self.container_names: Dict[int, tuple] = {}       # wid -> (engine, container name) of container workers
        self.start_failures: Dict[str, int] = {}          # key -> failed starts in a row
        self.broken: Dict[str, tuple] = {}                # key -> (until, error message)
        self.listeners: Dict[int, tuple] = {}             # listening fd -> (wid, socket, path)
        self.retiring: Dict[int, tuple] = {}              # wid -> (process, kill deadline)
        self.sock_dir: Optional[str] = None
        self.advertised_warm: List[str] = []

    def _mpi_table(self, args: argparse.Namespace) -> WorkerTable:
        """MPI mode (``faasx.MPIExecutor``): this block's nodes are a pool; a task waits for its nodes."""
        from faasx.executor.mpi import MpiWorkerTable, block_nodes
        nodes = block_nodes()
        logger.info("MPI mode (%s): %d node(s) %s, %d task(s) at once", args.mpi_launcher, len(nodes),
                    ",".join(nodes), self.n_workers)
        return MpiWorkerTable(args.mpi_launcher, nodes, self.n_workers, args.prefetch_capacity)

    def _drain_deadline(self) -> float:
        deadlines = []
        if self.args.drain_period:
            deadlines.append(self.start_time + self.args.drain_period)
        end = os.environ.get("FAASX_WALLTIME_END")
        if end:
            try:
                end_t = float(end)
                margin = min(self.args.drain_margin, max(0.0, end_t - self.start_time) * 0.25)
                deadlines.append(end_t - margin)
            except ValueError:
                logger.warning("ignoring malformed FAASX_WALLTIME_END=%r", end)
        return min(deadlines) if deadlines else math.inf

    # ---- workers -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def unpinned(self):
        """Fork a worker (or a container engine) with this thread's original CPUs, not the engine's pin: a
        child inherits its forking thread's affinity, and a worker's interpreter start-up and imports
        (~50 ms of CPU each) would otherwise all run on the engine's CPU, one worker after another, before
        its ``--cpus`` takes effect."""
        if self.engine_cpu is None:
            yield
            return
        try:
            os.sched_setaffinity(0, self.original_cpus)
        except OSError as e:
            logger.warning("could not unpin the manager to start a worker: %s", e)
        try:
            yield
        finally:
            affinity.pin_this_thread(self.engine_cpu, "manager")

    def _worker_env(self, wid: int) -> Dict[str, str]:
        env: Dict[str, str] = {}
        if self.accelerators:
            device = self.accelerators[wid % len(self.accelerators)]
            for var in ACCELERATOR_VARS:
                env[var] = device
        env["FAASX_WORKER_ID"] = str(wid)
        env["FAASX_MANAGER_ID"] = self.mid.decode()
        env["FAASX_BLOCK_ID"] = str(self.block_id)
        return env

    def start_worker(self, container: Optional[str] = None) -> None:
        if container is not None:
            self.start_container_worker(container)
            return
        wid = self.next_wid
        self.next_wid += 1
        env = dict(os.environ)
        env.update(self._worker_env(wid))
        log_base = os.path.join(self.args.logdir, f"worker_{self.mid.decode()}_{wid}")
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        argv = command("faasx-worker", "faasx.executor.worker") + [
            "--fd", str(theirs.fileno()), "--worker-id", str(wid), "--manager-pid", str(os.getpid()),
            "--max-payload-size", str(self.args.max_payload_size), "--log-file", log_base + ".log"]
        if self.worker_cpus is not None:
            argv += ["--cpus", self.worker_cpus]
        if self.args.debug:
            argv.append("--debug")
        try:
            with open(log_base + ".out", "ab") as out, self.unpinned():
                # own session: at shutdown we kill the worker's whole process group, children included
                self.procs[wid] = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                                   stderr=subprocess.STDOUT, start_new_session=True,
                                                   pass_fds=(theirs.fileno(),))
        finally:
            theirs.close()
        chan = Channel(ours, max_message=self.args.max_payload_size * 2 + (64 << 20))
        self.chans[wid] = chan
        self.fd_wid[chan.fileno()] = wid
        self.poller.register(chan.fileno(), zmq.POLLIN)
        self.table.add(wid, None, time.monotonic())
        logger.info("started worker %d (pid %d)%s", wid, self.procs[wid].pid,
                    f" on accelerator {env['CUDA_VISIBLE_DEVICES']}" if self.accelerators else "")

    def _add_channel(self, wid: int, sock: socket.socket) -> None:
        chan = Channel(sock, max_message=self.args.max_payload_size * 2 + (64 << 20))
        self.chans[wid] = chan
        self.fd_wid[chan.fileno()] = wid
        self.poller.register(chan.fileno(), zmq.POLLIN)

    def worker_gone(self, wid: int, results: list, payloads: list, detail: str = "") -> None:
        """A worker died or broke its channel: report the tasks it held and start a replacement."""
        chan = self.chans.pop(wid, None)
        if chan is not None:
            self.fd_wid.pop(chan.fileno(), None)
            self.poller.unregister(chan.fileno())
            chan.close()
        self._drop_listener(wid)
        slot = self.table.slots.get(wid)
        container = slot.container if slot is not None else None
        was_ready = slot is not None and slot.ready
        proc = self.procs.get(wid)
        pid = proc.pid if proc else -1
        if container is not None and proc is not None and proc.poll() is None:
            if not was_ready:
                # the engine is still exiting (its code tells an engine error from a worker's):
                # check_workers comes back here once it has
                return
            # never block the loop on a container engine's clean-up: reap it in the background
            del self.procs[wid]
            self.retiring[wid] = (proc, time.monotonic() + RETIRE_GRACE)
            proc = None
        else:
            self.procs.pop(wid, None)
        how = detail or "died"
        code = None
        if proc is not None:
            try:
                code = proc.wait(0.5)
                killed_here = False
            except subprocess.TimeoutExpired:
                self._kill(proc)
                code = proc.wait()
                killed_here = True     # our SIGKILL is not the cause: keep the detail that says why
            if not detail or (code != 0 and not killed_here):
                how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
            elif killed_here:
                how = f"{detail}; the manager stopped it"
        if container is not None and not was_ready:
            self._container_start_failed(wid, container, how, results, payloads,
                                         definite=proc is not None and code in ENGINE_ERROR_CODES)
            return
        if wid not in self.retiring:
            self.container_names.pop(wid, None)
        lost = self.table.remove(wid)
        if lost or (self.running and not self.draining):
            logger.error("worker %d (pid %d) %s while holding %d task(s): %s", wid, pid, how, len(lost),
                         [t[0] for t in lost])
        for task in lost:
            results.append([task[0], P.WORKER_LOST])
            payloads.append(P.failure_payload(
                "WorkerLost", f"task {task[0]}: worker {wid} (pid {pid}) on {self.hostname} {how} while "
                "running it. If the function crashes the interpreter (segfault, os._exit, out of memory), "
                "fix it or give it more memory (mem_per_worker).", 0))
        if self.running and not self.draining and container is None:
            # a plain worker is replaced at once; container workers are started again on demand
            self.restarts[wid] = self.restarts.get(wid, 0) + 1
            self.start_worker()

    @staticmethod
    def _kill(proc: subprocess.Popen) -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def check_workers(self, results: list, payloads: list) -> None:
        for wid, proc in list(self.procs.items()):
            if proc.poll() is not None:
                self.worker_gone(wid, results, payloads)
        now = time.monotonic()
        for wid, chan in list(self.chans.items()):
            # A worker writes each message whole, so one left half-written for heartbeat_threshold
            # means its stream is corrupt (the function wrote on the socket): no result can be trusted
            # to arrive; replace the worker and report its tasks lost rather than wait for ever.
            if chan.partial_since is not None and now - chan.partial_since > self.args.heartbeat_threshold:
                self.worker_gone(wid, results, payloads, "left a message unfinished for more than "
                                 f"{self.args.heartbeat_threshold}s (corrupt channel)")
        if self.container_names:
            now = time.monotonic()
            timeout = self.args.container_start_timeout
            for wid, slot in list(self.table.slots.items()):
                if slot.container is not None and not slot.ready and now - slot.started_at > timeout \
                        and wid in self.procs:
                    logger.error("worker %d in container %s not ready after %.0fs (container_start_timeout); "
                                 "stopping it", wid, slot.container, now - slot.started_at)
                    self._remove_container(wid)
                    self._kill(self.procs[wid])
                    try:
                        self.procs[wid].wait(5)
                    except subprocess.TimeoutExpired:
                        pass
                    self.worker_gone(wid, results, payloads, f"was not ready within {timeout:.0f}s")
        if self.retiring:
            self.reap_retiring(time.monotonic())

    def stop_workers(self, grace: float = 2.0) -> None:
        for chan in self.chans.values():
            try:
                chan.send(P.pack(P.SHUTDOWN, {}))
            except OSError:
                pass
        deadline = time.monotonic() + grace
        for proc in self.procs.values():
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for wid, proc in self.procs.items():
            if proc.poll() is None:
                self._remove_container(wid)   # a container outlives a killed ``podman run``
            self._kill(proc)   # the whole group: also children the functions left behind
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                logger.error("worker %d (pid %d) did not die after SIGKILL within 5 s", wid, proc.pid)
        for chan in self.chans.values():
            chan.close()
        self.procs.clear()
        self.chans.clear()
        self.fd_wid.clear()
        self.reap_retiring(time.monotonic(), force=True)
        for wid in list(self.listeners.values()):
            self._drop_listener(wid[0])
        self.container_names.clear()
        if self.sock_dir is not None:
            import shutil
            shutil.rmtree(self.sock_dir, ignore_errors=True)
            self.sock_dir = None

    # ---- main loop ---------------------------------------------------------------------------
    def connect(self) -> bool:
        if self.args.ipc and ipc_reachable(self.args.ipc):
            url = f"ipc://@{self.args.ipc}"    # the interchange is on this host (see Interchange._bind_local_ipc)
        else:
            addresses = [a for a in self.args.addresses.split(",") if a]
            address = probe_addresses(addresses, self.args.port, self.args.address_probe_timeout)
            if address is None:
                logger.error("could not reach the interchange on port %d at any of %s within %ss. Fix: give the "
                             "executor an address the compute nodes can reach (address=...), or check firewalls.",
                             self.args.port, addresses, self.args.address_probe_timeout)
                return False
            url = f"tcp://{address}:{self.args.port}"
        self.ic.connect(url)
        register = {
            "manager_id": self.mid.decode(), "block_id": str(self.block_id), "hostname": self.hostname,
            "pid": os.getpid(), "workers": self.n_workers, "prefetch": self.table.prefetch(),
            "versions": P.versions(), "token": self.args.token, "accelerators": self.accelerators,
            "containers": bool(self.runtimes), "container_runtimes": self.runtimes,
        }
        try:
            self.ic.send_multipart(P.pack(P.REGISTER, register))
        except zmq.Again:
            logger.error("the interchange at %s did not answer the registration: it could not even be sent within "
                         "%ss (no connection; with encryption on, check that this node can read the executor's "
                         "cert_dir)", url, self.args.heartbeat_threshold)
            return False
        logger.info("registering with the interchange at %s as %s (block %s, %d workers)", url, self.mid.decode(),
                    self.block_id, self.n_workers)
        if not self.ic.poll(int(self.args.heartbeat_threshold * 1000)):
            logger.error("the interchange at %s did not answer the registration within %ss", url,
                         self.args.heartbeat_threshold)
            return False
        msg_type, body, _ = P.unpack(self.ic.recv_multipart())
        if msg_type == P.REFUSED:
            logger.error("the interchange refused this manager: %s", (body or {}).get("reason"))
            return False
        if msg_type != P.REGISTERED:
            logger.error("unexpected reply to registration: %s", P.TYPE_NAMES.get(msg_type))
            return False
        self.advertised_prefetch = register["prefetch"]
        return True

    def run(self) -> int:
        # Start-up is bounded as a whole too: probing, registering and (on failure) cleaning up end
        # within this many seconds, or the kernel ends the process.
        probing = len([a for a in self.args.addresses.split(",") if a]) > 1
        bound = int((self.args.address_probe_timeout if probing else 0) + 2 * self.args.heartbeat_threshold) + 10
        arm_exit_watchdog(bound, f"the interchange did not answer the registration within the start-up bound of "
                                 f"{bound}s (start-up watchdog); exiting")
        # workers boot (~0.1 s of imports) while the registration round trip is under way
        for _ in range(self.n_workers):
            self.start_worker()
        if not self.connect():
            arm_exit_watchdog(10)   # only plain workers exist yet: their cleanup takes well under a second
            self.stop_workers(grace=0)
            self.ic.close(0)
            self.ctx.term()
            return 1
        signal.alarm(0)   # registered: from here liveness is the heartbeats' job
        poller = self.poller
        hb_period = self.args.heartbeat_period
        threshold = self.args.heartbeat_threshold
        now = time.monotonic()
        last_ic = last_hb = last_check = last_capacity = now
        results: list = []
        payloads: list = []
        ic_sock = self.ic
        try:
            while self.running:
                timeout = 0 if self.table.assignable() else WORKER_CHECK_PERIOD * 1000
                if self.unreported_since is not None:
                    due = self.unreported_since + P.STARTED_DELAY - now
                    timeout = min(timeout, max(0.0, due) * 1000)
                events = poller.poll(timeout)
                now = time.monotonic()
                for sock, _ in events:
                    if sock is ic_sock:
                        last_ic = now
                        for frames in drain(ic_sock, 1000):
                            self.handle_interchange(frames)
                    else:
                        wid = self.fd_wid.get(sock)
                        chan = self.chans.get(wid) if wid is not None else None
                        if chan is None:
                            if sock in self.listeners:
                                self.accept_container_worker(sock)
                            continue
                        try:
                            for frames in chan.recv_available():
                                self.handle_worker(wid, frames, results, payloads, now)
                        except (ChannelClosed, ChannelError, ConnectionResetError) as e:
                            self.worker_gone(wid, results, payloads, f"closed its connection ({e})")
                if now - last_check >= WORKER_CHECK_PERIOD:
                    last_check = now
                    self.check_workers(results, payloads)
                    if time.time() >= self.drain_at and not self.draining:
                        self.start_drain("the block's walltime is nearly over" if os.environ.get("FAASX_WALLTIME_END")
                                         else f"drain_period of {self.args.drain_period}s reached")
                self.dispatch_to_workers(now, results, payloads)
                # also while draining: held container tasks may still need their worker started
                if self.table.queued() and self.running and (
                        self.container_names or len(self.table.slots) < self.n_workers
                        or any(self.table.cqueues.values())):
                    self.manage_containers(results, payloads)
                if self.withdrawn:
                    self.answer_withdrawn(results, payloads)
                if results:
                    if self.unreported:
                        for r in results:
                            self.unreported.pop(r[0], None)
                    send(ic_sock, P.pack(P.RESULTS, results, payloads))
                    results, payloads = [], []
                if self.unreported_since is not None:
                    self.report_started(now)
                if now - last_capacity >= CAPACITY_UPDATE_PERIOD and not self.draining:
                    last_capacity = now
                    self.update_capacity()
                warm = self.table.warm() if self.container_names else []
                if now - last_hb >= hb_period or warm != self.advertised_warm:
                    last_hb = now
                    self.advertised_warm = warm
                    ic_sock.send_multipart(P.pack(P.HEARTBEAT, {"held": self.table.held(), "warm": warm}))
                if now - last_ic > threshold:
                    logger.error("the interchange has been silent for %.1fs (heartbeat_threshold %ss); it is gone. "
                                 "Stopping workers and exiting.", now - last_ic, threshold)
                    self.terminate_reason = "interchange lost"
                    self.running = False
                if self.draining and self.table.held() == 0:
                    logger.info("drained (%s): no tasks left; exiting", self.drain_reason)
                    self.running = False
        except zmq.Again:
            # every send to the interchange is bounded (SNDTIMEO = heartbeat_threshold)
            logger.error("could not send to the interchange for %ss: it is gone. Stopping workers and exiting.",
                         threshold)
            self.terminate_reason = "interchange unreachable"
        return self.shutdown()

    def handle_interchange(self, frames) -> None:
        try:
            msg_type, body, payloads = P.unpack(frames)
            if msg_type == P.TASKS:
                records = P.check_tasks(body, payloads)
                tasks = [(r[0], r[1], r[2], r[3], payloads[i]) for i, r in enumerate(records)]
                if any(r[3] and r[3].get("container") for r in records):
                    tasks = self.admit_container_tasks(tasks)
                self.table.enqueue(tasks)
                if self.args.debug:
                    logger.debug("received tasks %s", [r[0] for r in records])
            elif msg_type == P.FUNCS:
                for fid, code in zip(P.check_funcs(body, payloads), payloads):
                    self.codes[fid] = code
            elif msg_type == P.HEARTBEAT:
                pass
            elif msg_type == P.CANCEL:
                self.withdrawn.extend(t[0] for t in self.table.withdraw(set(P.parse_cancel(body))))
            elif msg_type == P.HOLD:
                self.start_drain("the executor is scaling in this block", notify=False)
            elif msg_type in (P.SHUTDOWN, P.REFUSED):
                reason = (body or {}).get("reason", "the executor is shutting down") if isinstance(body, dict) else ""
                logger.info("the interchange asked this manager to exit: %s", reason)
                self.terminate_reason = reason or "shutdown requested"
                self.running = False
            else:
                raise P.ProtocolError(f"unexpected {P.TYPE_NAMES[msg_type]} message")
        except P.ProtocolError as e:
            self.malformed += 1
            logger.error("dropped malformed message from the interchange: %s", e)

    def handle_worker(self, wid: int, frames, results: list, payloads: list, now: float) -> None:
        try:
            msg_type, body, data = P.unpack(frames)
            if msg_type == P.RESULTS:
                recs = P.check_results(body, data)
                slot = self.table.slots.get(wid)
                held = slot.tasks if slot is not None else {}
                if any(r[0] not in held for r in recs):
                    # only the worker running a task may report it (a function can write on its
                    # worker's socket: it must not resolve another task's future)
                    stray = [r[0] for r in recs if r[0] not in held]
                    keep = [i for i, r in enumerate(recs) if r[0] in held]
                    recs, data = [recs[i] for i in keep], [data[i] for i in keep]
                    self.malformed += 1
                    logger.error("dropped results from worker %d for task(s) it does not hold: %s", wid, stray[:20])
                self.table.done(wid, [r[0] for r in recs], now)
                results.extend(recs)
                payloads.extend(data)
            elif msg_type == P.READY:
                slot = self.table.slots.get(wid)
                if slot is None:
                    raise P.ProtocolError(f"READY from unknown worker {wid}")
                if slot.container is not None:
                    theirs = body.get("versions") if isinstance(body, dict) else None
                    diff = P.version_mismatch(P.versions(), theirs) if theirs is not None else {}
                    if diff:
                        self.container_version_mismatch(wid, slot.container, diff, results, payloads)
                        return
                    self.start_failures.pop(slot.container, None)
                    self.broken.pop(slot.container, None)
                    logger.info("worker %d in container %s is ready after %.2fs", wid, slot.container,
                                now - slot.started_at)
                self.table.mark_ready(wid, now)
            else:
                raise P.ProtocolError(f"unexpected {P.TYPE_NAMES[msg_type]} message")
        except P.ProtocolError as e:
            self.malformed += 1
            logger.error("dropped malformed message from worker %d: %s", wid, e)

    def report_started(self, now: float) -> None:
        """Tell the interchange which tasks workers have taken, once the oldest of them has run for
        ``STARTED_DELAY`` without a result (a result says it by itself): their futures become
        running().  One small message per STARTED_DELAY at most, none for short tasks."""
        if not self.unreported:
            self.unreported_since = None
        elif now - self.unreported_since >= P.STARTED_DELAY:
            send(self.ic, P.pack_started(list(self.unreported)))
            self.unreported.clear()
            self.unreported_since = None

    def answer_withdrawn(self, results: list, payloads: list) -> None:
        """Tasks cancelled by the client before any worker took them never run: each is answered with a
        FAILED result, which completes it at the interchange (the client's future is cancelled already)."""
        for tid in self.withdrawn:
            results.append([tid, P.FAILED])
            payloads.append(P.failure_payload("FAILED", f"task {tid} was cancelled before it started", 0))
        logger.info("dropped %d queued task(s) the client cancelled", len(self.withdrawn))
        self.withdrawn = []

    def dispatch_to_workers(self, now: float, results: list, payloads: list) -> None:
        for slot, batch in self.table.assign(now):
            chan = self.chans.get(slot.wid)
            missing = [t[1] for t in batch if t[1] not in slot.fids]
            try:
                if chan is None:
                    raise BrokenPipeError("no channel")
                if missing:
                    fids = list(dict.fromkeys(missing))
                    have = [f for f in fids if f in self.codes]
                    chan.send(P.pack(P.FUNCS, have, [self.codes[f] for f in have]))
                    slot.fids.update(have)
                chan.send(P.pack(P.TASKS, [[t[0], t[1], t[2], t[3]] for t in batch], [t[4] for t in batch]))
                unreported = self.unreported
                for t in batch:
                    unreported[t[0]] = None
                if self.unreported_since is None:
                    self.unreported_since = now
                if self.args.debug:
                    logger.debug("tasks %s -> worker %d", [t[0] for t in batch], slot.wid)
            except OSError as e:
                # the worker is gone: its tasks (this batch included) are reported lost
                self.worker_gone(slot.wid, results, payloads, f"could not be sent its tasks ({e})")

    def update_capacity(self) -> None:
        prefetch = self.table.prefetch()
        old = self.advertised_prefetch
        if prefetch != old and (old <= 0 or abs(prefetch - old) > 0.25 * old):
            self.advertised_prefetch = prefetch
            self.ic.send_multipart(P.pack(P.HEARTBEAT, {"held": self.table.held(),
                                                        "capacity": self.n_workers + prefetch}))

    def start_drain(self, reason: str, notify: bool = True) -> None:
        self.draining = True
        self.drain_reason = reason
        logger.info("draining: %s; finishing %d held task(s)", reason, self.table.held())
        if notify:
            self.ic.send_multipart(P.pack(P.DRAIN, {"reason": reason}))

    def shutdown(self) -> int:
        arm_exit_watchdog()
        held = self.table.all_tids()
        # BYE first: nothing a worker finishes from here on is forwarded, so the held tasks are lost to
        # this manager already; saying so now lets the interchange re-dispatch them without waiting for
        # the workers' shutdown grace (a job being cancelled has only KillWait seconds left anyway).
        try:
            self.ic.send_multipart(P.pack(P.BYE, {"reason": self.terminate_reason or self.drain_reason or "exit",
                                                  "lost": held}), zmq.NOBLOCK)
            # give the BYE a moment to leave before the context is torn down
            self.ic.setsockopt(zmq.LINGER, 500)
        except zmq.ZMQError:
            pass
        self.stop_workers()
        self.ic.close()
        self.ctx.term()
        logger.info("manager %s exited (%s); %d task(s) were still held", self.mid.decode(),
                    self.terminate_reason or self.drain_reason or "exit", len(held))
        return 0


EXIT_WATCHDOG = 60   # seconds a normal exit may take (container removals included) before the kernel ends it


def arm_exit_watchdog(seconds: int = EXIT_WATCHDOG, message: Optional[str] = None) -> None:
    """Bound a phase: whatever it blocks on, the process ends within ``seconds`` (SIGALRM).  With a
    ``message`` it is logged first (blocking pyzmq calls return to Python on a signal); without one
    the kernel's default action ends the process, which works even inside any C call."""
    if message is None:
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
    else:
        def expired(_signum, _frame):
            logger.error("%s", message)
            logging.shutdown()
            os._exit(1)
        signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)


def ipc_reachable(name: str) -> bool:
    """Whether the interchange's abstract-namespace ipc endpoint ``name`` accepts connections here: only
    on its own host and network namespace (Linux)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(0.5)
            s.connect("\0" + name)
        return True
    except OSError:
        return False


def probe_addresses(addresses: List[str], port: int, timeout: float) -> Optional[str]:
    """The first of ``addresses`` on which ``port`` accepts a TCP connection, trying all in turn until
    ``timeout``; a single address is returned untried (ZeroMQ retries the connection itself)."""
    if len(addresses) == 1:
        return addresses[0]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for address in addresses:
            try:
                with socket.create_connection((address, port), timeout=0.5):
                    return address
            except OSError:
                continue
        time.sleep(0.2)
    return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="faasx-manager", description="faasx per-node manager")
    parser.add_argument("--addresses", required=True, help="comma-separated interchange addresses to try")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ipc", default=None,
                        help="the interchange's ipc endpoint (abstract socket name) for a manager on its own host")
    parser.add_argument("--block-id", default="0")
    parser.add_argument("--token", default="")
    parser.add_argument("--logdir", default=".")
    parser.add_argument("--max-workers-per-node", type=float, default=None)
    parser.add_argument("--cores-per-worker", type=float, default=1.0)
    parser.add_argument("--mem-per-worker", type=float, default=None)
    parser.add_argument("--accelerators", default="")
    parser.add_argument("--prefetch-capacity", type=int, default=None)
    parser.add_argument("--heartbeat-period", type=float, default=5.0)
    parser.add_argument("--heartbeat-threshold", type=float, default=30.0)
    parser.add_argument("--drain-period", type=float, default=None)
    parser.add_argument("--drain-margin", type=float, default=60.0)
    parser.add_argument("--address-probe-timeout", type=float, default=30.0)
    parser.add_argument("--max-payload-size", type=int, default=1 << 30)
    parser.add_argument("--cert-dir", default=None)
    parser.add_argument("--max-container-types", type=int,
                        default=int(os.environ.get("FAASX_MAX_CONTAINER_TYPES") or 2),
                        help="distinct container images with workers on this node at once")
    parser.add_argument("--container-python", default=os.environ.get("FAASX_CONTAINER_PYTHON") or "python3",
                        help="the Python that runs the worker inside containers (with faasx installed)")
    parser.add_argument("--container-start-timeout", type=float,
                        default=float(os.environ.get("FAASX_CONTAINER_START_TIMEOUT") or 300.0),
                        help="seconds a container worker may take to be ready (image pulls included)")
    parser.add_argument("--container-channel", choices=("auto", "fd", "socket"),
                        default=os.environ.get("FAASX_CONTAINER_CHANNEL") or "auto",
                        help="how container workers reach the manager: auto (podman: inherited socket; "
                             "others: Unix socket path), or force one")
    parser.add_argument("--engine-cpu", type=int, default=None,
                        help="pin this manager and its ZeroMQ threads to this CPU (or, where it is not "
                             "allowed, the highest allowed one); workers keep the manager's original CPUs")
    parser.add_argument("--mpi-launcher", choices=("mpiexec", "srun", "aprun"), default=None,
                        help="MPI mode: one manager per block whose tasks take whole nodes of it (faasx.executor.mpi)")
    parser.add_argument("--debug", action="store_true")
    args = parser.parse_args(argv)
    set_process_name("faasx-manager")
    os.makedirs(args.logdir, exist_ok=True)
    logging.basicConfig(
        filename=os.path.join(args.logdir, f"manager_{args.block_id}_{socket.gethostname()}_{os.getpid()}.log"),
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s")
    manager = Manager(args)

    def on_term(signum, _frame):
        manager.terminate_reason = f"received {signal.Signals(signum).name} (job cancelled or walltime over)"
        manager.running = False
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    try:
        return manager.run()
    except Exception:
        logger.exception("manager crashed")
        manager.stop_workers(grace=0)
        raise


if __name__ == "__main__":
    sys.exit(main())
