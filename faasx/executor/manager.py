"""faasx-manager: one per node; registers with the interchange and runs tasks on a pool of workers.

A block's launcher starts this on each node.  The manager is a single-threaded event loop over its
link to the interchange (``manager_link``: a direct Unix socket on the interchange's own host, else a
ZeroMQ DEALER over TCP, CurveZMQ when the executor is encrypted) and one Unix socketpair per worker
(``faasx.executor.channel``), plus a periodic check of its worker processes.
It never runs user code, so it can always answer heartbeats.  One thread, so no locks: ``Manager``
and everything it composes belong to the thread that runs ``Manager.run``.

``Manager.run`` is the loop; each pass, in order::

    serve_sockets       wait (not at all if an idle worker has work queued); handle the interchange's
                        messages (on_tasks, on_funcs, on_hold, on_shutdown) and the workers' (on_results,
                        on_ready); a broken channel is worker_gone()
    periodic_checks     every WORKER_CHECK_PERIOD: check_workers (exits, corrupt channels, containers not
                        ready in time), tasks past their own walltime (enforce_walltimes), and the
                        block's walltime drain
    dispatch_to_workers WorkerTable.assign -> FUNCS the worker lacks + one TASKS message per batch
    rebalance_workers   WorkerTable.plan -> start / retire workers so queued tasks get one of their kind
    flush_results       the pass's ResultBatch as one RESULTS message (tasks the client cancelled
                        while still queued here answered too)
    report_started      STARTED for tasks a worker took that have run STARTED_DELAY without a result
    update_capacity     a new prefetch when the measured task length moved it
    heartbeat           every heartbeat_period, or at once when the warm containers changed
    check_liveness      the interchange silent for heartbeat_threshold, or a drain done: stop

What it composes, one job each:

* ``WorkerTable`` (``worker_table``): pure bookkeeping -- queues, which worker holds what, adaptive
  batch and prefetch sizes, which workers to start or stop.
* ``WorkerProcesses`` (``worker_processes``): the worker processes and their channels.
* ``ContainerWorkers`` (``faasx.containers.workers``): workers inside a task's container
  (``docs/containers.md``), started on demand, kept warm, reported in heartbeats (``{"warm": [keys]}``)
  so the interchange prefers this node for them, and retired when another kind needs the slot.
* ``ResultBatch``: the RESULTS of one loop pass, sent to the interchange once at its end.

* Capacity: it asks the interchange for up to workers + prefetch tasks (``WorkerTable.prefetch``)
  and hands them to workers in adaptive batches.
* Workers that die are restarted; the tasks they held are reported as WORKER_LOST so the interchange
  can re-dispatch them.
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
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from typing import Dict, List, Optional, Union

import psutil
import zmq

from faasx.containers.workers import ENGINE_ERROR_CODES, ContainerWorkers
from faasx.executor import affinity, payloads
from faasx.executor import protocol as P
from faasx.executor.channel import ChannelClosed, ChannelError
from faasx.executor.direct import direct_path
from faasx.executor.manager_link import DirectLink, InterchangeGone, ZmqLink
from faasx.executor.processes import command, set_process_name
from faasx.executor.security import PrivateFileHandler, manager_credentials, open_private, private_dir
from faasx.executor.worker_processes import WorkerProcesses
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


def walltime_left() -> Optional[float]:
    """Seconds until this block's job ends (``FAASX_WALLTIME_END``, epoch seconds, exported by the
    providers), for REGISTER: the interchange sends a task with a walltime only where it fits.
    None when the job has no limit or the variable is malformed (``_drain_deadline`` warns of that)."""
    try:
        return max(0.0, float(os.environ["FAASX_WALLTIME_END"]) - time.time())
    except (KeyError, ValueError):
        return None


class ResultBatch:
    """RESULTS waiting to go to the interchange: filled during one pass of the event loop (workers'
    results, tasks lost with their worker, tasks failed before they ran) and sent as one message at its
    end (``Manager.flush_results``).  A worker's results (``protocol.Result``) are appended as parsed."""

    __slots__ = ("results",)

    def __init__(self) -> None:
        self.results: List[P.Result] = []

    def add(self, result: P.Result) -> None:
        self.results.append(result)

    def extend(self, results: List[P.Result]) -> None:
        self.results.extend(results)

    def __bool__(self) -> bool:
        return bool(self.results)

    def take(self) -> List[P.Result]:
        """The batch so far, emptying this one."""
        out, self.results = self.results, []
        return out


class Manager:
    """The per-node process.  Single-threaded: every attribute here, and the state of the objects it
    composes (``pool``, ``table``, ``containers``, ``out``), is owned by the thread that runs ``run()``.
    The one exception is the SIGTERM/SIGINT handler set by ``main``, which Python runs on that same
    thread between bytecodes; it only sets ``running`` and ``terminate_reason``."""

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
        self.out = ResultBatch()
        self.restarts: Dict[int, int] = {}        # wid -> times a plain worker was replaced
        self.codes: Dict[bytes, bytes] = {}       # fid -> function code, as the interchange sent it
        self.running = True
        self.draining = False
        self.drain_reason = ""
        self.terminate_reason = ""
        self.advertised_prefetch = -1
        self.advertised_warm: List[str] = []
        # tasks handed to a worker and not yet reported STARTED (tid -> when, in hand-out order), the
        # oldest one's time; and tasks the client cancelled before a worker got them (answered with
        # FAILED results)
        self.unreported: Dict[int, float] = {}
        self.unreported_since: Optional[float] = None
        self.withdrawn: List[int] = []
        # tasks with a walltime at a worker: tid -> (deadline, worker id, walltime)
        self.deadlines: Dict[int, tuple] = {}
        self.malformed = 0
        self.start_time = time.time()
        self.drain_at = self._drain_deadline()
        self.hb_period = args.heartbeat_period
        self.threshold = args.heartbeat_threshold
        # when the event loop last heard from the interchange / sent a heartbeat / checked its workers /
        # reconsidered its advertised capacity (time.monotonic(); set at registration)
        self.last_ic = self.last_hb = self.last_check = self.last_capacity = 0.0
        self.engine_cpu, self.worker_cpus = self._pin(original)
        # libzmq starts its I/O thread with the first socket, from this (pinned) thread: it inherits the pin
        self.ctx = zmq.Context(io_threads=1)
        # the run token and keys come from the run's 0700 cert dir, never from the command line (ps)
        self.token, self.encrypted = manager_credentials(args.cert_dir)
        self.ic: Optional[Union[DirectLink, ZmqLink]] = None     # chosen by connect()
        self.poller = zmq.Poller()
        self.pool = WorkerProcesses(self.poller, args.max_payload_size * 2 + (64 << 20), self.engine_cpu, original)
        self.containers = ContainerWorkers(args, self.pool, self.table, self.out, mid=self.mid.decode(),
                                           hostname=self.hostname, worker_env=self.worker_env,
                                           worker_cpus=self.worker_cpus)
        self.ic_handlers = {P.TASKS: self.on_tasks, P.FUNCS: self.on_funcs, P.HEARTBEAT: self.on_heartbeat,
                            P.HOLD: self.on_hold, P.SHUTDOWN: self.on_shutdown, P.REFUSED: self.on_shutdown,
                            P.CANCEL: self.on_cancel, P.TERMINATE: self.on_terminate}

    def _pin(self, original) -> tuple:
        """engine_cpu: this thread and libzmq's threads (started with the first socket) share one CPU
        with the interchange; workers must not inherit that, so they are told the original CPUs.
        Returns (the CPU pinned to or None, the workers' ``--cpus`` or None)."""
        if self.args.engine_cpu is None:
            return None, None
        cpu = affinity.choose(self.args.engine_cpu, original)
        if not affinity.pin_this_thread(cpu, "manager"):
            return None, None
        worker_cpus = affinity.format_cpus(original)
        logger.info("manager pinned to CPU %d; workers get cpus %s", cpu, worker_cpus)
        return cpu, worker_cpus

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
    def worker_env(self, wid: int) -> Dict[str, str]:
        """The variables that tell worker ``wid`` who it is and which accelerator is its own."""
        env: Dict[str, str] = {}
        if self.accelerators:
            device = self.accelerators[wid % len(self.accelerators)]
            for var in ACCELERATOR_VARS:
                env[var] = device
        env["FAASX_WORKER_ID"] = str(wid)
        env["FAASX_MANAGER_ID"] = self.mid.decode()
        env["FAASX_BLOCK_ID"] = str(self.block_id)
        if self.args.script_dir:
            env["FAASX_SCRIPT_DIR"] = self.args.script_dir   # named by a worker that misses a module (imports.py)
        if self.args.script_dir and os.path.isdir(self.args.script_dir):
            # the user's script's directory, as Python gives it to the script itself (sys.path[0]):
            # ``from helpers import f`` next to it pickles f by reference, so workers must import it too
            env["PYTHONPATH"] = os.pathsep.join(p for p in (self.args.script_dir, os.environ.get("PYTHONPATH"))
                                                if p)
        return env

    def start_worker(self, container: Optional[str] = None) -> None:
        """Start a plain worker, or one inside container ``container`` (``ContainerWorkers.start``)."""
        if container is not None:
            self.containers.start(container)
            return
        wid = self.pool.new_wid()
        env = dict(os.environ)
        env.update(self.worker_env(wid))
        if self.args.shm_dir:
            env[payloads.SHM_DIR_ENV] = self.args.shm_dir
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
            with open_private(log_base + ".out", "ab") as out:
                proc = self.pool.spawn(wid, argv, out, env=env, stdin=subprocess.DEVNULL,
                                       pass_fds=(theirs.fileno(),))
        finally:
            theirs.close()
        self.pool.add_channel(wid, ours)
        self.table.add(wid, None, time.monotonic())
        logger.info("started worker %d (pid %d)%s", wid, proc.pid,
                    f" on accelerator {env['CUDA_VISIBLE_DEVICES']}" if self.accelerators else "")

    def worker_gone(self, wid: int, detail: str = "") -> None:
        """A worker died or broke its channel: reap it and say how it ended (``_reap``), then report the
        tasks it held (``_report_lost``) and replace it.  ``detail`` is what the manager saw."""
        slot = self.table.slots.get(wid)
        key = slot.container if slot is not None else None
        ready = slot is not None and slot.ready
        self.pool.close_channel(wid)
        self.containers.drop_listener(wid)
        ended = self._reap(wid, key, ready, detail)
        if ended is None:
            return
        pid, code, how = ended
        if key is not None and not ready:
            self.containers.start_failed(wid, key, how, definite=code in ENGINE_ERROR_CODES)
            return
        self.containers.forget(wid)
        self._report_lost(wid, pid, how)
        if key is None and self.running and not self.draining:
            # a plain worker is replaced at once; container workers are started again on demand
            self.restarts[wid] = self.restarts.get(wid, 0) + 1
            self.start_worker()

    def _reap(self, wid: int, key: Optional[str], ready: bool, detail: str) -> Optional[tuple]:
        """(pid, exit status or None, how it ended) of a gone worker, its process reaped; None while a
        container engine that never got its worker ready is still exiting (its exit status tells an
        engine error from a worker's: ``check_workers`` comes back here once it has)."""
        proc = self.pool.procs.get(wid)
        if proc is None:
            return -1, None, detail or "died"
        if key is not None and proc.poll() is None:
            if not ready:
                return None
            # never block the loop on a container engine's clean-up: reap it in the background
            del self.pool.procs[wid]
            self.containers.retire_process(wid, proc)
            return proc.pid, None, detail or "died"
        del self.pool.procs[wid]
        code, how = self.pool.reap(proc, detail)
        return proc.pid, code, how

    def _report_lost(self, wid: int, pid: int, how: str) -> None:
        """The tasks worker ``wid`` held go back to the interchange as WORKER_LOST (it may re-dispatch them)."""
        lost = self.table.remove(wid)
        if lost or (self.running and not self.draining):
            logger.error("worker %d (pid %d) %s while holding %d task(s): %s", wid, pid, how, len(lost),
                         [t.tid for t in lost])
        for task in lost:
            self.out.add(P.failed_result(
                task.tid, "WorkerLost", f"task {task.tid}: worker {wid} (pid {pid}) on {self.hostname} {how} while "
                "running it. If the function crashes the interpreter (segfault, os._exit, out of memory), "
                "fix it or give it more memory (mem_per_worker).", 0))

    def check_workers(self) -> None:
        """Every ``WORKER_CHECK_PERIOD``: processes that ended, channels left corrupt, containers that
        are not ready in time, retired workers still exiting."""
        for wid in self.pool.exited():
            self.worker_gone(wid)
        # A worker writes each message whole, so one left half-written for heartbeat_threshold means
        # its stream is corrupt (the function wrote on the socket): no result can be trusted to arrive;
        # replace the worker and report its tasks lost rather than wait for ever.
        for wid in self.pool.corrupt(time.monotonic(), self.threshold):
            self.worker_gone(wid, f"left a message unfinished for more than {self.threshold}s (corrupt channel)")
        for wid, detail in self.containers.overdue_starts(time.monotonic()):
            self.worker_gone(wid, detail)
        self.containers.reap_retiring(time.monotonic())

    def rebalance_workers(self) -> None:
        """Start and stop workers so queued tasks get a worker of their kind (``WorkerTable.plan``).
        Also while draining: held container tasks may still need their worker started."""
        table = self.table
        if not (table.queued() and self.running):
            return
        if not (self.containers.active() or len(table.slots) < self.n_workers or any(table.cqueues.values())):
            return
        to_start, to_stop = table.plan(self.n_workers, self.args.max_container_types, self.containers.blocked())
        for wid in to_stop:
            self.containers.retire_worker(wid)
        for key in to_start:
            self.start_worker(key)

    def stop_workers(self, grace: float = 2.0) -> None:
        # a container outlives a killed ``podman run``: remove it before the kill
        self.pool.stop_all(grace, before_kill=self.containers.remove_container)
        self.containers.close()

    # ---- registration ------------------------------------------------------------------------
    def connect(self) -> bool:
        """Connect to the interchange and register; False (logged with the fix) if that fails."""
        url = self._open_link()
        if url is None:
            return False
        self.ic.register(self.poller)
        return self._register(url) and self._await_registered(url)

    def _open_link(self) -> Optional[str]:
        """The interchange's direct socket when it is on this host (``faasx.executor.direct``), else a
        ZeroMQ link (ipc on its host, TCP elsewhere); returns where it goes, None if nowhere."""
        max_message = self.args.max_payload_size + (16 << 20) if self.args.max_payload_size else 0
        if self.args.ipc:
            path = direct_path(self.args.ipc)
            self.ic = DirectLink.try_connect(path, self.threshold, max_message or (1 << 31))
            if self.ic is not None:
                return f"direct:{path}"
        url = self._interchange_url()
        if url is not None:
            self.ic = ZmqLink(self.ctx, self.mid, self.threshold, max_message, self.args.cert_dir, self.encrypted)
            self.ic.connect(url)
        return url

    def _interchange_url(self) -> Optional[str]:
        if self.args.ipc and ipc_reachable(self.args.ipc):
            return f"ipc://{self.args.ipc}"    # the interchange is on this host (see Interchange._bind_local_ipc)
        addresses = [a for a in self.args.addresses.split(",") if a]
        address = probe_addresses(addresses, self.args.port, self.args.address_probe_timeout)
        if address is None:
            logger.error("could not reach the interchange on port %d at any of %s within %ss. Fix: give the "
                         "executor an address the compute nodes can reach (address=...), or check firewalls.",
                         self.args.port, addresses, self.args.address_probe_timeout)
            return None
        return f"tcp://{address}:{self.args.port}"

    def _register(self, url: str) -> bool:
        register = P.Registration(
            manager_id=self.mid.decode(), block_id=str(self.block_id), hostname=self.hostname,
            pid=os.getpid(), workers=self.n_workers, prefetch=self.table.prefetch(),
            versions=P.versions(), token=self.token, accelerators=self.accelerators,
            containers=bool(self.containers.runtimes), container_runtimes=self.containers.runtimes,
            walltime_left=walltime_left(), host_id=payloads.host_id())
        try:
            self.ic.send(P.pack_register(register))
        except InterchangeGone:
            logger.error("the interchange at %s did not answer the registration: it could not even be sent within "
                         "%ss (no connection; with encryption on, check that this node can read the executor's "
                         "cert_dir)", url, self.threshold)
            return False
        logger.info("registering with the interchange at %s as %s (block %s, %d workers)", url, self.mid.decode(),
                    self.block_id, self.n_workers)
        self.advertised_prefetch = register.prefetch
        return True

    def _await_registered(self, url: str) -> bool:
        reply = self.ic.recv(self.threshold)
        if reply is None:
            logger.error("the interchange at %s did not answer the registration within %ss", url, self.threshold)
            return False
        msg_type, body, _ = P.unpack(reply)
        if msg_type == P.REFUSED:
            logger.error("the interchange refused this manager: %s", P.parse_reason(body, "(no reason given)"))
            return False
        if msg_type != P.REGISTERED:
            logger.error("unexpected reply to registration: %s", P.type_name(msg_type))
            return False
        return True

    # ---- main loop ---------------------------------------------------------------------------
    def run(self) -> int:
        """Start up, then loop -- serve sockets, periodic checks, hand tasks to workers, flush results,
        heartbeat, liveness -- until told to stop, the drain is done or the interchange is gone."""
        if not self.start():
            return 1
        now = time.monotonic()
        try:
            for frames in self.ic.drain(1000):      # tasks read together with the registration reply
                self.handle_interchange(frames)
            while self.running:
                now = self.serve_sockets(now)
                self.periodic_checks(now)
                self.dispatch_to_workers(now)
                self.rebalance_workers()
                self.flush_results()
                self.report_started(now)
                self.update_capacity(now)
                self.heartbeat(now)
                self.check_liveness(now)
        except InterchangeGone as e:
            # every send to the interchange is bounded (SNDTIMEO = heartbeat_threshold)
            logger.error("the interchange is gone (%s). Stopping workers and exiting.", e)
            self.terminate_reason = "interchange unreachable"
        return self.shutdown()

    def start(self) -> bool:
        """Start the workers and register.  Start-up is bounded as a whole: probing, registering and (on
        failure) cleaning up end within a bound, or the kernel ends the process."""
        probing = len([a for a in self.args.addresses.split(",") if a]) > 1
        bound = int((self.args.address_probe_timeout if probing else 0) + 2 * self.threshold) + 10
        arm_exit_watchdog(bound, f"the interchange did not answer the registration within the start-up bound of "
                                 f"{bound}s (start-up watchdog); exiting")
        # workers boot (~0.1 s of imports) while the registration round trip is under way
        for _ in range(self.n_workers):
            self.start_worker()
        if not self.connect():
            arm_exit_watchdog(10)   # only plain workers exist yet: their cleanup takes well under a second
            self.stop_workers(grace=0)
            if self.ic is not None:
                self.ic.close()
            self.ctx.term()
            return False
        signal.alarm(0)   # registered: from here liveness is the heartbeats' job
        self.last_ic = self.last_hb = self.last_check = self.last_capacity = time.monotonic()
        return True

    def serve_sockets(self, now: float) -> float:
        """Wait for the interchange or a worker (not at all when an idle worker has work waiting; at most
        until a STARTED report is due), handle every message that arrived; returns the time after the wait."""
        timeout = 0 if self.table.assignable() else WORKER_CHECK_PERIOD * 1000
        if self.unreported_since is not None:
            # whole milliseconds, rounded up: pyzmq truncates a float timeout, and poll(0) until the
            # report is due would spin the loop
            due = self.unreported_since + P.STARTED_DELAY - now
            timeout = min(timeout, max(0, math.ceil(due * 1000)))
        events = self.poller.poll(timeout)
        now = time.monotonic()
        ic = self.ic
        key = ic.key
        for sock, _ in events:
            if sock == key:
                self.last_ic = now
                for frames in ic.drain(1000):
                    self.handle_interchange(frames)
            else:
                self.serve_worker(sock, now)
        return now

    def serve_worker(self, fd: int, now: float) -> None:
        wid = self.pool.fd_wid.get(fd)
        chan = self.pool.chans.get(wid) if wid is not None else None
        if chan is None:
            self.containers.accept(fd)   # a container worker connecting to its socket path
            return
        try:
            for frames in chan.recv_available():
                self.handle_worker(wid, frames, now)
        except (ChannelClosed, ChannelError, ConnectionResetError) as e:
            self.worker_gone(wid, f"closed its connection ({e})")

    def periodic_checks(self, now: float) -> None:
        if now - self.last_check < WORKER_CHECK_PERIOD:
            return
        self.last_check = now
        self.check_workers()
        if self.deadlines:
            self.enforce_walltimes(now)
        if time.time() >= self.drain_at and not self.draining:
            self.start_drain("the block's walltime is nearly over" if os.environ.get("FAASX_WALLTIME_END")
                             else f"drain_period of {self.args.drain_period}s reached")

    def flush_results(self) -> None:
        if self.withdrawn:
            self.answer_withdrawn()
        if self.out:
            if self.unreported:     # a result says by itself that its task started
                for r in self.out.results:
                    self.unreported.pop(r.tid, None)
                if not self.unreported:
                    self.unreported_since = None
            for chunk in P.chunks_by_bytes(self.out.take()):
                self.ic.send(P.pack_results(chunk))

    def report_started(self, now: float) -> None:
        """Tell the interchange which tasks workers have taken, once the oldest of them has gone
        ``STARTED_DELAY`` without a result (a result says it by itself): their futures become
        running().  Reported are the tasks handed out at least half that long ago, so each is
        reported 5-10 ms after its hand-over, at most one message goes per 5 ms, and a stream of
        short tasks sends none (listing every task in flight made the client mark thousands of
        no-ops running per second)."""
        if self.unreported_since is None or now - self.unreported_since < P.STARTED_DELAY:
            return
        unreported = self.unreported
        cutoff = now - P.STARTED_DELAY / 2
        started = []
        for tid, handed in unreported.items():     # oldest first
            if handed > cutoff:
                break
            started.append(tid)
        for tid in started:
            del unreported[tid]
        self.unreported_since = next(iter(unreported.values()), None)
        if started:
            self.ic.send(P.pack_started(started))

    def answer_withdrawn(self) -> None:
        """Tasks cancelled by the client before any worker took them never run: each is answered with a
        FAILED result, which completes it at the interchange (the client's future is cancelled already)."""
        for tid in self.withdrawn:
            self.out.add(P.failed_result(tid, "FAILED", f"task {tid} was cancelled before it started"))
        logger.info("dropped %d queued task(s) the client cancelled", len(self.withdrawn))
        self.withdrawn = []

    def update_capacity(self, now: float) -> None:
        """Tell the interchange a new capacity when the adaptive prefetch moved by more than a quarter."""
        if self.draining or now - self.last_capacity < CAPACITY_UPDATE_PERIOD:
            return
        self.last_capacity = now
        prefetch = self.table.prefetch()
        old = self.advertised_prefetch
        if prefetch != old and (old <= 0 or abs(prefetch - old) > 0.25 * old):
            self.advertised_prefetch = prefetch
            self.ic.send(P.pack_manager_heartbeat(self.table.held(), capacity=self.n_workers + prefetch))

    def heartbeat(self, now: float) -> None:
        """Every ``heartbeat_period``, and at once when the set of warm containers changed."""
        warm = self.table.warm() if self.containers.active() else []
        if now - self.last_hb >= self.hb_period or warm != self.advertised_warm:
            self.last_hb = now
            self.advertised_warm = warm
            self.ic.send(P.pack_manager_heartbeat(self.table.held(), warm))

    def check_liveness(self, now: float) -> None:
        """Stop when the interchange has been silent too long, or a drain has nothing left."""
        if now - self.last_ic > self.threshold:
            logger.error("the interchange has been silent for %.1fs (heartbeat_threshold %ss); it is gone. "
                         "Stopping workers and exiting.", now - self.last_ic, self.threshold)
            self.terminate_reason = "interchange lost"
            self.running = False
        if self.draining and self.table.held() == 0:
            logger.info("drained (%s): no tasks left; exiting", self.drain_reason)
            self.running = False

    # ---- messages ----------------------------------------------------------------------------
    def handle_interchange(self, frames) -> None:
        try:
            msg_type, body, payloads = P.unpack(frames)
            handler = self.ic_handlers.get(msg_type)
            if handler is None:
                raise P.ProtocolError(f"unexpected {P.type_name(msg_type)} message")
            handler(body, payloads)
        except P.ProtocolError as e:
            self.malformed += 1
            logger.error("dropped malformed message from the interchange: %s", e)

    def on_tasks(self, body, payloads) -> None:
        tasks = P.parse_tasks(body, payloads)
        if self.args.debug:
            logger.debug("received tasks %s", [t.tid for t in tasks])
        if any(t.spec and t.spec.get("container") for t in tasks):
            tasks = self.containers.admit(tasks)
        self.table.enqueue(tasks)

    def on_funcs(self, body, payloads) -> None:
        for fid, code in P.parse_funcs(body, payloads):
            self.codes[fid] = code

    def on_cancel(self, body, payloads) -> None:
        """The client cancelled these tasks: those still queued here never run (``answer_withdrawn``)."""
        self.withdrawn.extend(t.tid for t in self.table.withdraw(set(P.parse_cancel(body))))

    def on_terminate(self, body, payloads) -> None:
        """The user asked to stop these tasks (``Executor.terminate``), running or not."""
        tids = set(P.parse_terminate(body))
        message = "task {} was terminated at the user's request"
        for task in self.table.withdraw(tids):
            self.out.add(P.failed_result(task.tid, "Terminated", message.format(task.tid)))
        for slot in list(self.table.slots.values()):
            for tid in tids.intersection(slot.tasks):
                self.stop_task(tid, slot.wid, "Terminated", message.format(tid) + f" (worker {slot.wid} on "
                               f"{self.hostname} and its child processes were killed)")

    def enforce_walltimes(self, now: float) -> None:
        """Stop every task that has run past its walltime (``TaskTimeout``; never retried)."""
        for tid, (deadline, wid, walltime) in list(self.deadlines.items()):
            slot = self.table.slots.get(wid)
            if slot is None or tid not in slot.tasks:     # finished, or its worker is gone already
                del self.deadlines[tid]
            elif now >= deadline:
                self.stop_task(tid, wid, "TaskTimeout", f"task {tid} ran longer than its walltime of {walltime}s; "
                               f"worker {wid} on {self.hostname} and its child processes were killed")

    def stop_task(self, tid: int, wid: int, kind: str, message: str) -> None:
        """Kill the worker running ``tid`` with its whole process group (the function's children too),
        answer ``tid`` with a FAILED result of ``kind`` and replace the worker; its other tasks, if any,
        are reported lost as for any dead worker (and re-dispatched)."""
        slot = self.table.slots.get(wid)
        if slot is None or slot.tasks.pop(tid, None) is None:
            return
        self.deadlines.pop(tid, None)
        logger.warning("%s: stopping worker %d", message, wid)
        self.out.add(P.failed_result(tid, kind, message))
        proc = self.pool.procs.get(wid)
        if proc is not None:
            self.pool.kill(proc)
        self.worker_gone(wid, f"was stopped ({kind})")

    def on_heartbeat(self, body, payloads) -> None:
        """Nothing to do: any message counts as the interchange being alive (``serve_sockets``)."""

    def on_hold(self, body, payloads) -> None:
        self.start_drain("the executor is scaling in this block", notify=False)

    def on_shutdown(self, body, payloads) -> None:
        """SHUTDOWN or REFUSED: exit now."""
        reason = P.parse_reason(body, "the executor is shutting down") if isinstance(body, dict) else ""
        logger.info("the interchange asked this manager to exit: %s", reason)
        self.terminate_reason = reason or "shutdown requested"
        self.running = False

    def handle_worker(self, wid: int, frames, now: float) -> None:
        try:
            msg_type, body, data = P.unpack(frames)
            if msg_type == P.RESULTS:
                self.on_results(wid, P.parse_results(body, data), now)
            elif msg_type == P.READY:
                self.on_ready(wid, P.parse_ready(body), now)
            else:
                raise P.ProtocolError(f"unexpected {P.type_name(msg_type)} message")
        except P.ProtocolError as e:
            self.malformed += 1
            logger.error("dropped malformed message from worker %d: %s", wid, e)

    def on_results(self, wid: int, results: List[P.Result], now: float) -> None:
        slot = self.table.slots.get(wid)
        held = slot.tasks if slot is not None else {}
        tids = [r.tid for r in results]
        if any(tid not in held for tid in tids):
            results = self._drop_stray(wid, results, held)
            tids = [r.tid for r in results]
        self.table.done(wid, tids, now)
        self.out.extend(results)
        if self.deadlines:
            for tid in tids:
                self.deadlines.pop(tid, None)

    def _drop_stray(self, wid: int, results: List[P.Result], held) -> List[P.Result]:
        """Only the worker running a task may report it (a function can write on its worker's socket: it
        must not resolve another task's future)."""
        stray = [r.tid for r in results if r.tid not in held]
        self.malformed += 1
        logger.error("dropped results from worker %d for task(s) it does not hold: %s", wid, stray[:20])
        return [r for r in results if r.tid in held]

    def on_ready(self, wid: int, ready: P.Ready, now: float) -> None:
        slot = self.table.slots.get(wid)
        if slot is None:
            raise P.ProtocolError(f"READY from unknown worker {wid}")
        if slot.container is not None and not self.containers.worker_ready(wid, slot, ready, now):
            return
        self.table.mark_ready(wid, now)

    def dispatch_to_workers(self, now: float) -> None:
        """Hand queued tasks to idle workers (``WorkerTable.assign``): FUNCS they lack, then the TASKS."""
        for slot, batch in self.table.assign(now):
            try:
                self._send_batch(slot, batch, now)
            except OSError as e:
                # the worker is gone: its tasks (this batch included) are reported lost
                self.worker_gone(slot.wid, f"could not be sent its tasks ({e})")

    def _send_batch(self, slot, batch: list, now: float) -> None:
        chan = self.pool.chans.get(slot.wid)
        if chan is None:
            raise BrokenPipeError("no channel")
        missing = [t.fid for t in batch if t.fid not in slot.fids]
        if missing:
            self._send_funcs(chan, slot, missing)
        for chunk in P.chunks_by_bytes(batch):
            chan.send(P.pack_tasks(chunk))
        unreported = self.unreported
        for t in batch:
            unreported[t.tid] = now
            if t.spec and "walltime" in t.spec:
                self.deadlines[t.tid] = (now + float(t.spec["walltime"]), slot.wid, t.spec["walltime"])
        if self.unreported_since is None:
            self.unreported_since = now
        if self.args.debug:
            logger.debug("tasks %s -> worker %d", [t.tid for t in batch], slot.wid)

    def _send_funcs(self, chan, slot, missing: list) -> None:
        """The code of the functions of a batch that this worker has not been sent yet."""
        have = [f for f in dict.fromkeys(missing) if f in self.codes]
        chan.send(P.pack_funcs(have, [self.codes[f] for f in have]))
        slot.fids.update(have)

    # ---- ending ------------------------------------------------------------------------------
    def start_drain(self, reason: str, notify: bool = True) -> None:
        self.draining = True
        self.drain_reason = reason
        logger.info("draining: %s; finishing %d held task(s)", reason, self.table.held())
        if notify:
            self.ic.send(P.pack_drain(reason))

    def shutdown(self) -> int:
        arm_exit_watchdog()
        held = self.table.all_tids()
        # BYE first: nothing a worker finishes from here on is forwarded, so the held tasks are lost to
        # this manager already; saying so now lets the interchange re-dispatch them without waiting for
        # the workers' shutdown grace (a job being cancelled has only KillWait seconds left anyway).
        try:
            self.ic.send(P.pack_bye(self.terminate_reason or self.drain_reason or "exit", held), nowait=True)
        except (InterchangeGone, zmq.ZMQError):
            pass
        self.stop_workers()
        self.ic.close(linger=0.5)     # give the BYE a moment to leave before the context is torn down
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


def ipc_reachable(path: str) -> bool:
    """Whether the interchange's ipc socket ``path`` accepts connections here: only on its own host (Linux),
    and only for its user (the socket is in the run's 0700 directory)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(0.5)
            s.connect(path)
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
                        help="the interchange's ipc socket path, for a manager on its own host")
    parser.add_argument("--block-id", default="0")
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
    parser.add_argument("--shm-dir", default=None, help="the client's shared-memory directory (a local block): "
                        "plain workers may write big results into it (faasx.executor.payloads)")
    parser.add_argument("--cert-dir", default=None,
                        help="the run's credentials directory (run token, CurveZMQ keys), readable only by its user")
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
    parser.add_argument("--script-dir", default=None,
                        help="the submitting script's directory, put first on the workers' PYTHONPATH where it exists")
    parser.add_argument("--debug", action="store_true")
    args = parser.parse_args(argv)
    set_process_name("faasx-manager")
    private_dir(args.logdir)
    logging.basicConfig(handlers=[PrivateFileHandler(
        os.path.join(args.logdir, f"manager_{args.block_id}_{socket.gethostname()}_{os.getpid()}.log"))],
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
