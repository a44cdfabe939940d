"""``FaaSExecutor``: the faasx engine as a Parsl executor (a ``BlockProviderExecutor``)."""
from __future__ import annotations

import logging
import math
import os
import secrets
import shlex
import sys
import threading
from concurrent.futures import Future
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import psutil
from parsl.executors.status_handling import BlockProviderExecutor
from parsl.jobs.states import TERMINAL_STATES, JobState, JobStatus
from parsl.providers.base import ExecutionProvider
from parsl.utils import RepresentationMixin
from typeguard import typechecked

from faasx.errors import PayloadTooLarge
from faasx.executor import affinity, payloads
from faasx.executor import protocol as P
from faasx.executor.client import EngineClient, TaskFuture
from faasx.executor.control import ControlServer
from faasx.executor.memo import MemoStore, memo_key
from faasx.executor.processes import manager_program
from faasx.executor.options import check_faas_executor
from faasx.executor.registry import FunctionRegistry
from faasx.executor.security import create_keys, private_dir
from faasx.executor.serialization import deserialize, serialize

logger = logging.getLogger("faasx.executor")

# Keys a task's resource specification may carry (Parsl's parsl_resource_specification).
ACCEPTED_RESOURCE_KEYS = frozenset({"priority", "gpus", "cores", "memory", "container", "memoize", "walltime"})
LOOPBACK = ("127.", "::1", "localhost")


def local_addresses() -> List[str]:
    """IPv4 addresses of this host, loopback last (what managers on other nodes may reach)."""
    found = []
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family.name == "AF_INET" and a.address not in found:
                found.append(a.address)
    return sorted(found, key=lambda a: a.startswith("127."))


def is_loopback(address: str) -> bool:
    return address.startswith(LOOPBACK)


class FaaSExecutor(BlockProviderExecutor, RepresentationMixin):
    """The faasx engine as a Parsl executor: a drop-in for ``HighThroughputExecutor``.

    Tasks go from this object to an interchange process, which routes them to one manager per
    node; each manager runs a pool of worker processes.  Blocks of nodes come from ``provider``.

    Parameters
    ----------
    label : str
        Unique name of the executor (Parsl apps select executors by label).
    provider : ExecutionProvider
        Where blocks come from (``faasx.providers``, or any Parsl provider).  Default: one local block.
    launch_cmd : str
        Command that starts a manager on a node; ``{block_id}`` is filled in per block.  Default:
        ``faasx-manager`` with this executor's options.
    address : str
        Address the managers connect to.  Default: loopback for a local provider, otherwise every
        address of this host (managers probe them and use the first that answers).
    loopback_address : str
        The loopback address managers of a local provider connect to (default ``127.0.0.1``).
    worker_port, worker_port_range :
        The managers' port: a fixed port, or a range to pick from.
    interchange_port_range :
        Accepted for HTEX compatibility and unused: the client talks to its interchange over an
        inherited socketpair, with no port.
    storage_access : list
        Parsl staging providers, as for HTEX.
    working_dir : str
        Parsl's working directory for staged files (assignable, as Parsl expects).
    worker_debug : bool
        Log every task id at every hop (submit, dispatch, run, result) in every component's log.
    cores_per_worker, mem_per_worker (GB), max_workers_per_node :
        Workers per node = the smallest of max_workers_per_node, cores / cores_per_worker,
        memory / mem_per_worker and the number of accelerators.
    available_accelerators : int or list of str
        Devices to pin workers to, one per worker (``CUDA_VISIBLE_DEVICES``,
        ``ROCR_VISIBLE_DEVICES``, ``ZE_AFFINITY_MASK``).  An int n means devices "0".."n-1".
    prefetch_capacity : int or None
        Tasks a manager queues beyond one per worker.  None (default) adapts to task duration:
        deep for sub-millisecond tasks, none for long ones.
    heartbeat_period, heartbeat_threshold : float (seconds)
        Liveness in both directions: a manager silent for heartbeat_threshold is declared lost and
        its tasks re-dispatched; a manager whose interchange is silent that long exits.
    drain_period : float
        Seconds after a manager starts at which it drains and exits (as in HTEX).
    drain_margin : float
        A manager drains this many seconds before its job's walltime ends (providers export it).
    max_retries_on_system_failure : int
        How often a task whose worker or manager was lost is re-dispatched before its future fails
        with ``WorkerLost`` / ``ManagerLost``.
    max_payload_size : int (bytes)
        Largest accepted serialized arguments or result of one task.
    encrypted : bool or None
        CurveZMQ on the manager connection, on every address (loopback and the same-host ipc socket
        included).  None (default) or True: on.  False: off -- managers then authenticate only with
        the run token (read from the run's 0700 directory), and traffic is plain text.
    block_error_handler : bool or callable
        As in Parsl: True fails the executor when every block has failed.
    address_probe_timeout : float
        How long a manager tries the candidate addresses.
    worker_logdir_root : str
        Where managers and workers write their logs (default: this executor's run directory).
    remote_monitoring_radio :
        Parsl monitoring radio for resource monitoring of tasks (None: Parsl's filesystem radio).
    shared_memory : bool
        For a local block (the managers on this host): arguments and results with buffers of 256 KiB
        or more (numpy arrays, bytes-like values) go through private files in /dev/shm, mapped by the
        reader instead of copied through every hop (``faasx.executor.payloads``).  False: every
        payload travels inline in the messages.  Blocks on other hosts always get payloads inline.
    memo_store : str or None
        Path of a SQLite file that keeps memoized results across runs (functions registered with
        ``memoize=True``, or calls with ``{"memoize": True}`` in their resource specification).
        None: memoized results live in memory for this executor's lifetime.
    max_container_types : int
        Distinct per-function container types a node keeps warm at once (``docs/containers.md``).
        None: the manager's default (2, or ``FAASX_MAX_CONTAINER_TYPES`` on the node).
    container_python : str
        The Python interpreter inside function containers that runs the faasx worker (None:
        ``python3``, or ``FAASX_CONTAINER_PYTHON`` on the node).
    container_start_timeout : float
        Seconds a function container may take to start (pull, boot) before its tasks fail (None:
        300, or ``FAASX_CONTAINER_START_TIMEOUT`` on the node).
    engine_cpu : "auto", int or None
        The one CPU per host on which the engine's own threads run (the client's I/O thread, the
        interchange, the managers and their ZeroMQ I/O threads), so that their hand-offs stay on one
        CPU instead of waking another (``faasx.executor.affinity``).  "auto" (default): the CPU the
        thread calling ``start()`` is on, for as long as the engine fits on it (the client's I/O
        thread and the interchange spread over every CPU while they saturate it); an int: that CPU (a host that does not have it uses its
        highest allowed CPU).  Workers are never pinned.  None: no pinning, e.g. on a shared host or
        where a site forbids setting CPU affinity.
    """

    @typechecked
    def __init__(self,
                 label: str = "FaaSExecutor",
                 provider: Optional[ExecutionProvider] = None,
                 launch_cmd: Optional[str] = None,
                 address: Optional[str] = None,
                 loopback_address: str = "127.0.0.1",
                 worker_port: Optional[int] = None,
                 worker_port_range: Optional[Tuple[int, int]] = (54000, 55000),
                 interchange_port_range: Optional[Tuple[int, int]] = (55000, 56000),
                 storage_access: Optional[List[Any]] = None,
                 working_dir: Optional[str] = None,
                 worker_debug: bool = False,
                 cores_per_worker: float = 1.0,
                 mem_per_worker: Optional[float] = None,
                 max_workers_per_node: Optional[Union[int, float]] = None,
                 available_accelerators: Union[int, Sequence[str]] = (),
                 prefetch_capacity: Optional[int] = None,
                 heartbeat_period: float = 5.0,
                 heartbeat_threshold: float = 30.0,
                 drain_period: Optional[float] = None,
                 drain_margin: float = 60.0,
                 max_retries_on_system_failure: int = 2,
                 max_payload_size: int = 512 * 2**20,
                 encrypted: Optional[bool] = None,
                 block_error_handler: Union[bool, Callable] = True,
                 address_probe_timeout: float = 30.0,
                 worker_logdir_root: Optional[str] = None,
                 remote_monitoring_radio: Optional[Any] = None,
                 memo_store: Optional[str] = None,
                 max_container_types: Optional[int] = None,
                 container_python: Optional[str] = None,
                 container_start_timeout: Optional[float] = None,
                 engine_cpu: Union[int, str, None] = "auto",
                 shared_memory: bool = True):
        # every value checked before anything is set up, naming the option (faasx.executor.options)
        check_faas_executor(
            label=label, address=address, loopback_address=loopback_address, worker_port=worker_port,
            worker_port_range=worker_port_range, interchange_port_range=interchange_port_range,
            cores_per_worker=cores_per_worker, mem_per_worker=mem_per_worker,
            max_workers_per_node=max_workers_per_node, available_accelerators=available_accelerators,
            prefetch_capacity=prefetch_capacity, heartbeat_period=heartbeat_period,
            heartbeat_threshold=heartbeat_threshold, drain_period=drain_period, drain_margin=drain_margin,
            max_retries_on_system_failure=max_retries_on_system_failure, max_payload_size=max_payload_size,
            address_probe_timeout=address_probe_timeout, max_container_types=max_container_types,
            container_start_timeout=container_start_timeout)
        if provider is None:
            from faasx.providers import LocalProvider
            provider = LocalProvider(init_blocks=1, min_blocks=0, max_blocks=1)
        BlockProviderExecutor.__init__(self, provider=provider, block_error_handler=block_error_handler)
        self.engine_cpu = affinity.validate(engine_cpu)
        self.label = label
        self.launch_cmd = launch_cmd
        self.address = address
        self.loopback_address = loopback_address
        self.worker_port = worker_port
        self.worker_port_range = worker_port_range
        self.interchange_port_range = interchange_port_range
        self.storage_access = storage_access
        self.working_dir = working_dir
        self.worker_debug = worker_debug
        self.cores_per_worker = cores_per_worker
        self.mem_per_worker = mem_per_worker
        self.max_workers_per_node = max_workers_per_node
        if isinstance(available_accelerators, int):
            accelerators = [str(i) for i in range(available_accelerators)]
        else:
            accelerators = [str(a) for a in available_accelerators]
        self.available_accelerators = accelerators
        self.prefetch_capacity = prefetch_capacity
        self.heartbeat_period = heartbeat_period
        self.heartbeat_threshold = heartbeat_threshold
        self.drain_period = drain_period
        self.drain_margin = drain_margin
        self.max_retries_on_system_failure = max_retries_on_system_failure
        self.max_payload_size = max_payload_size
        self.encrypted = encrypted
        self.address_probe_timeout = address_probe_timeout
        self.worker_logdir_root = worker_logdir_root
        self.remote_monitoring_radio = remote_monitoring_radio
        self.memo_store = memo_store
        self.shared_memory = shared_memory
        self.max_container_types = max_container_types
        self.container_python = container_python
        self.container_start_timeout = container_start_timeout
        self._memo: Optional[MemoStore] = None
        self._memo_inflight: Dict[bytes, Future] = {}
        self._shm: Optional[payloads.RunDir] = None   # set by start() for a local block: big payloads by shm
        self._shm_writer: Optional[payloads.Writer] = None
        if remote_monitoring_radio is None:
            from parsl.monitoring.radios.filesystem import FilesystemRadio
            self.remote_monitoring_radio = FilesystemRadio()
        self._workers_per_node = self._estimate_workers_per_node()
        self._client: Optional[EngineClient] = None
        self._engine_cpu: Optional[int] = None
        self._registry = FunctionRegistry()
        self._strategy_init_pending = False
        self._lock = threading.Lock()
        self.run_dir = "."

    # ---- sizing ------------------------------------------------------------------------------
    def _estimate_workers_per_node(self) -> int:
        bounds = [math.inf if self.max_workers_per_node is None else self.max_workers_per_node]
        cores = getattr(self.provider, "cores_per_node", None)
        if cores:
            bounds.append(math.floor(cores / self.cores_per_worker))
        mem = getattr(self.provider, "mem_per_node", None)
        if mem and self.mem_per_worker:
            bounds.append(math.floor(mem / self.mem_per_worker))
        if self.available_accelerators:
            bounds.append(len(self.available_accelerators))
        n = min(bounds)
        if n == math.inf:
            # the manager will size itself from the node's cores; for a local block we know them
            n = max(1, math.floor((os.cpu_count() or 1) / self.cores_per_worker))
        return max(1, int(n))

    @property
    def workers_per_node(self) -> Union[int, float]:
        return self._workers_per_node

    @property
    def logdir(self) -> str:
        return os.path.join(self.run_dir, self.label)

    @property
    def worker_logdir(self) -> str:
        if self.worker_logdir_root is not None:
            return os.path.join(self.worker_logdir_root, self.label)
        return self.logdir

    # ---- start -------------------------------------------------------------------------------
    def _manager_addresses(self) -> Tuple[List[str], str]:
        """(addresses managers try, address the interchange binds)."""
        if self.address:
            if is_loopback(self.address):
                # any 127.x address other than loopback_address (e.g. one on a test host's veth) must be
                # bound itself: a socket bound to 127.0.0.1 does not accept connections to 127.10.0.1
                return [self.address], (self.address if self.address.startswith("127.") else self.loopback_address)
            return [self.address], "*"
        from faasx.providers import LocalProvider as FaaSXLocal
        from parsl.providers import LocalProvider as ParslLocal
        launcher = getattr(self.provider, "launcher", None)
        single_node = launcher is None or type(launcher).__name__ in ("SingleNodeLauncher", "SimpleLauncher")
        if isinstance(self.provider, (FaaSXLocal, ParslLocal)) and single_node:
            return [self.loopback_address], self.loopback_address
        return local_addresses(), "*"

    def start(self) -> None:
        super().start()
        private_dir(self.logdir)
        if getattr(self.provider, "script_dir", "unset") is None:
            self.provider.script_dir = private_dir(os.path.join(self.logdir, "submit_scripts"))
        addresses, bind = self._manager_addresses()
        # authenticated on every address, loopback included (README, threat model); False only if asked
        encrypted = self.encrypted is not False
        self._token = secrets.token_hex(16)
        cert_dir = create_keys(self.logdir, self._token, encrypted)
        # chosen once, here, in the thread calling start(): for "auto" the CPU this thread is on
        self._engine_cpu = affinity.choose(self.engine_cpu)
        # big arguments and results through shared memory when the blocks run on this host (the rule
        # that offers them the ipc socket); the interchange still inlines them for any manager that
        # registers from another host (faasx.executor.payloads)
        on_this_host = addresses == [self.loopback_address]
        self._shm = payloads.RunDir.create() if on_this_host and self.shared_memory else None
        self._shm_writer = self._shm.writer(self.max_payload_size) if self._shm is not None else None
        self._client = EngineClient(label=self.label, logdir=self.logdir, token=self._token,
                                    heartbeat_period=self.heartbeat_period,
                                    heartbeat_threshold=self.heartbeat_threshold,
                                    max_payload_size=self.max_payload_size, debug=self.worker_debug,
                                    on_fatal=self._on_fatal)
        ports = self._client.start({
            "loopback_address": self.loopback_address, "bind_address": bind,
            "worker_port_range": self.worker_port_range,
            "worker_port": self.worker_port, "max_retries": self.max_retries_on_system_failure,
            "cert_dir": cert_dir if encrypted else None, "engine_cpu": self._engine_cpu,
            "shm_dir": self._shm.path if self._shm is not None else None,
            "engine_cpu_adaptive": self.engine_cpu == "auto",
        })
        self._memo = MemoStore(self.memo_store)
        self._client.memo_store = self._memo
        # the ipc socket is a file: offered to a local block's managers only.  A manager on another host
        # cannot connect to it even through a shared file system, but one in another network namespace of
        # this host (a test "node") could, and would skip the network it is meant to use
        local = addresses == [self.loopback_address]
        self._launch_template = self._build_launch_cmd(addresses, ports["manager_port"], cert_dir,
                                                       ports.get("manager_ipc") if local else None)
        self._control: Optional[ControlServer] = ControlServer(self)   # what `faasx status` asks (faasx.cli)
        try:
            self._control.start()
        except OSError as e:   # a run without `faasx status` still runs
            logger.warning("executor %s: no control endpoint for `faasx status`: %s", self.label, e)
            self._control = None
        logger.info("executor %s: interchange up (manager port %d on %s); launch command: %s", self.label,
                    ports["manager_port"], bind, self._launch_template)
        # Provision the initial blocks now rather than at the first strategy tick (up to
        # strategy_period later): that wait is most of HTEX's cold start.  Parsl's strategy still
        # asks for init_blocks once, on its first run; scale_out_facade skips that one request.
        if self.provider.init_blocks > 0:
            super().scale_out_facade(self.provider.init_blocks)
            self._strategy_init_pending = True

    def _build_launch_cmd(self, addresses: List[str], port: int, cert_dir: str,
                          ipc: Optional[str] = None) -> str:
        if self.launch_cmd is not None:
            return self.launch_cmd
        from faasx.providers import LocalProvider as FaaSXLocal
        from parsl.providers import LocalProvider as ParslLocal
        opts = [
            *manager_program(on_this_host=isinstance(self.provider, (FaaSXLocal, ParslLocal))),
            "--addresses", ",".join(addresses), "--port", str(port), "--block-id", "{block_id}",
            "--cert-dir", cert_dir, "--logdir", self.worker_logdir,
            "--cores-per-worker", repr(float(self.cores_per_worker)),
            "--heartbeat-period", repr(float(self.heartbeat_period)),
            "--heartbeat-threshold", repr(float(self.heartbeat_threshold)),
            "--drain-margin", repr(float(self.drain_margin)),
            "--max-payload-size", str(self.max_payload_size),
            "--address-probe-timeout", repr(float(self.address_probe_timeout)),
        ]
        if self.max_workers_per_node is not None and self.max_workers_per_node != math.inf:
            opts += ["--max-workers-per-node", str(self.max_workers_per_node)]
        if self._shm is not None:     # where workers may write big results (faasx.executor.payloads)
            opts += ["--shm-dir", self._shm.path]
        if self.mem_per_worker:
            opts += ["--mem-per-worker", repr(float(self.mem_per_worker))]
        if self.available_accelerators:
            opts += ["--accelerators", ",".join(self.available_accelerators)]
        if self.prefetch_capacity is not None:
            opts += ["--prefetch-capacity", str(self.prefetch_capacity)]
        if self.drain_period:
            opts += ["--drain-period", repr(float(self.drain_period))]
        if self.max_container_types is not None:
            opts += ["--max-container-types", str(self.max_container_types)]
        if self.container_python is not None:
            opts += ["--container-python", self.container_python]
        if self.container_start_timeout is not None:
            opts += ["--container-start-timeout", repr(float(self.container_start_timeout))]
        if ipc:   # managers on this host connect there instead (ZeroMQ's ipc transport)
            opts += ["--ipc", ipc]
        if self._engine_cpu is not None:
            opts += ["--engine-cpu", str(self._engine_cpu)]
        script_dir = _script_dir()
        if script_dir:
            opts += ["--script-dir", script_dir]
        if self.worker_debug:
            opts.append("--debug")
        return " ".join(o if o == "{block_id}" else shlex.quote(o) for o in opts)

    def _get_launch_command(self, block_id: str) -> str:
        return self._launch_template.replace("{block_id}", str(block_id))

    def scale_out_facade(self, n: int) -> List[str]:
        if self._strategy_init_pending:
            self._strategy_init_pending = False
            if n == self.provider.init_blocks:
                logger.debug("executor %s: initial blocks were provisioned at start()", self.label)
                return []
        return super().scale_out_facade(n)

    # ---- tasks -------------------------------------------------------------------------------
    def validate_resource_spec(self, resource_specification: Optional[dict]) -> None:
        """Reject unknown keys and meaningless values at submit, naming them."""
        if resource_specification:
            from faasx.errors import InvalidResourceSpecification
            unknown = set(resource_specification) - ACCEPTED_RESOURCE_KEYS
            if unknown:
                raise InvalidResourceSpecification(unknown, ACCEPTED_RESOURCE_KEYS)
            for key in ("cores", "memory", "gpus"):
                value = resource_specification.get(key)
                if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                          or value < 0):
                    raise InvalidResourceSpecification(
                        {key}, ACCEPTED_RESOURCE_KEYS) from ValueError(f"{key} must be a number >= 0, got {value!r}")
            walltime = resource_specification.get("walltime")
            if walltime is not None and (isinstance(walltime, bool) or not isinstance(walltime, (int, float))
                                         or not walltime > 0):
                raise InvalidResourceSpecification({"walltime"}, ACCEPTED_RESOURCE_KEYS) from ValueError(
                    f"walltime must be a number of seconds > 0, got {walltime!r}")
            priority = resource_specification.get("priority")
            if priority is not None and (isinstance(priority, bool) or not isinstance(priority, (int, float))):
                raise InvalidResourceSpecification({"priority"}, ACCEPTED_RESOURCE_KEYS) from ValueError(
                    f"priority must be a number, got {priority!r}")

    def submit(self, func: Callable, resource_specification: Optional[dict], *args: Any, **kwargs: Any) -> Future:
        """Submit ``func(*args, **kwargs)``; ``func`` may be a callable or a registered function id."""
        client = self._client
        if client is None:
            raise RuntimeError(f"executor {self.label} is not started (call start(), or use it in parsl.load)")
        if self.bad_state_is_set:
            raise self.executor_exception
        spec = None
        memoize = False
        if resource_specification:
            self.validate_resource_spec(resource_specification)
            spec = self._routing_spec(resource_specification)
            memoize = bool(resource_specification.get("memoize"))
        fid, code, fn_spec, fn_memoize = self.function_for(func)
        if fn_spec:
            spec = dict(fn_spec, **(spec or {}))
        memoize = memoize or fn_memoize
        if memoize:   # inline: the memo key hashes the argument bytes, and the store keeps result bytes
            payload = serialize((args, kwargs), "the arguments")
            if len(payload) > self.max_payload_size:
                raise PayloadTooLarge("the arguments", len(payload), self.max_payload_size)
            return self._memoized(fid, code, spec, payload)
        payload = serialize((args, kwargs), "the arguments", shared=self._writer_for(spec))
        return self._submit_payload(fid, code, P.KIND_CALL, spec, payload, "the arguments")

    def _writer_for(self, spec: Optional[dict]) -> Optional[payloads.Writer]:
        """The shared-memory writer for a task's arguments; None (inline) for a task that runs in a
        per-function container, whose /dev/shm is its own."""
        return None if spec and "container" in spec else self._shm_writer

    def _submit_payload(self, fid: bytes, code: Optional[bytes], kind: int, spec: Optional[dict], payload: bytes,
                        what: str) -> TaskFuture:
        """Check the payload's size and submit it; a shared-memory payload's file is removed when the
        future is done, or at once if it is refused (``faasx.executor.payloads``: the client owns it)."""
        assert self._client is not None
        shared = payloads.is_shared(payload)
        try:
            size = payloads.payload_size(payload)
            if size > self.max_payload_size:
                raise PayloadTooLarge(what, size, self.max_payload_size)
            fut = self._client.submit(fid, code, kind, spec, payload)
        except BaseException:
            if shared:
                self._release_arguments({"payload": payload})
            raise
        if shared:
            box = {"payload": payload}      # released once: by whichever of the two runs first
            fut._on_result = lambda: self._release_arguments(box)          # the result is in
            fut.add_done_callback(lambda _f: self._release_arguments(box))  # any other end
        return fut

    def _release_arguments(self, box: dict) -> None:
        """A task's shared argument file is done with: the writer recycles it or unlinks it."""
        payload = box.pop("payload", None)      # atomic: the I/O thread and a cancelling thread may race
        if payload is None:
            return
        writer = self._shm_writer
        if writer is not None:
            writer.release(payload)
        else:
            payloads.release(payload)

    def function_for(self, func: Union[Callable, str]) -> Tuple[bytes, Optional[bytes], Optional[dict], bool]:
        """(function id, code, routing spec, memoize) for a callable or a registered function id;
        a callable's code is serialized once per function object."""
        if isinstance(func, str):
            entry = self._registry.get(func)
            return entry.fid, entry.code, entry.spec, entry.memoize
        if self._client is None:
            raise RuntimeError(f"executor {self.label} is not started (call start(), or use it in parsl.load)")
        fid, code = self._client.function(func)
        return fid, code, None, False

    def _memoized(self, fid: bytes, code: Optional[bytes], spec: Optional[dict], payload: bytes) -> Future:
        """The hit path: a future resolved here and now, or the future of an identical running call."""
        key = memo_key(fid, payload)
        assert self._memo is not None and self._client is not None
        hit = self._memo.get(key)
        if hit is not None:
            fut: Future = Future()
            fut.set_result(deserialize(hit))
            return fut
        running = self._memo_inflight.get(key)
        # a done one is leaving the table (its done-callback runs on the callback thread, maybe not yet):
        # a success is in the store already (checked above), a failure must not be shared, so submit anew
        if running is not None and not running.done():
            shared: Future = Future()
            running.add_done_callback(lambda f: _copy_outcome(f, shared))
            return shared
        fut = self._client.submit(fid, code, P.KIND_CALL, spec, payload, memo_key=key)
        self._memo_inflight[key] = fut
        fut.add_done_callback(lambda _f, key=key: self._memo_inflight.pop(key, None))
        return fut

    def memo_stats(self) -> Dict[str, int]:
        """Hits, misses and stored entries of the memo store."""
        if self._memo is None:
            return {"hits": 0, "misses": 0, "entries": 0}
        return {"hits": self._memo.hits, "misses": self._memo.misses, "entries": len(self._memo)}

    @staticmethod
    def _routing_spec(resource_specification: dict) -> Optional[dict]:
        spec = {k: v for k, v in resource_specification.items()
                if k in ("priority", "gpus", "cores", "memory", "walltime")}
        container = resource_specification.get("container")
        if container is not None:
            # per call, as for register_function(container=...): route on the key, ship the spec
            from faasx.containers import container_key, validate_container_spec
            if not isinstance(container, dict):
                from faasx.errors import InvalidResourceSpecification
                raise InvalidResourceSpecification({"container"}, ACCEPTED_RESOURCE_KEYS) from TypeError(
                    "container must be a dict like {'type': 'podman', 'image': 'localhost/img'}")
            normalized = validate_container_spec(container)
            spec["container"] = container_key(normalized)
            spec["container_spec"] = normalized
        return spec or None

    def submit_chunk(self, fid: bytes, code: Optional[bytes], arg_tuples: list, spec: Optional[dict] = None) -> TaskFuture:
        """One task that runs ``fn(*a)`` for each tuple in ``arg_tuples`` and returns the list."""
        payload = serialize((arg_tuples, None), "the map arguments", shared=self._writer_for(spec))
        return self._submit_payload(fid, code, P.KIND_MAP, spec, payload, "a map chunk's arguments")

    def register_function(self, fn: Callable, *, container: Optional[dict] = None, memoize: bool = False) -> str:
        """Register ``fn`` once; returns its content-addressed id, which ``submit`` accepts."""
        return self._registry.register(fn, container=container, memoize=memoize)

    def registered_functions(self) -> List[dict]:
        return self._registry.listing()

    def terminate(self, future: Future) -> bool:
        """Stop a task even while it runs (``EngineClient.terminate``); ValueError if not started."""
        if self._client is None:
            raise ValueError("terminate() takes a future returned by this executor's submit() or map()")
        return self._client.terminate(future)

    def cancel_pending(self) -> List[Future]:
        """Cancel every task no worker has taken, in one pass (``shutdown(cancel_futures=True)``); returns
        the futures still running."""
        return self._client.cancel_pending() if self._client is not None else []

    def on_callback_thread(self) -> bool:
        """Whether the calling thread is the one running this executor's done-callbacks."""
        return self._client is not None and self._client.callbacks.is_current()

    def outstanding(self) -> int:
        return self._client.outstanding if self._client is not None else 0

    @property
    def tasks(self) -> Dict[object, Future]:  # type: ignore[override]
        return self._client.futures if self._client is not None else {}

    def _on_fatal(self, exc: BaseException) -> None:
        self._executor_exception = exc
        self._executor_bad_state.set()

    def set_bad_state_and_fail_all(self, exception: Exception) -> None:
        logger.error("executor %s: entering bad state: %s", self.label, exception)
        self._executor_exception = exception
        self._executor_bad_state.set()
        if self._client is not None:
            from parsl.executors.errors import BadStateException
            self._client.fail_pending(BadStateException(self, exception))

    # ---- blocks ------------------------------------------------------------------------------
    def _ask(self, name: str, args: Any = None, default: Any = None) -> Any:
        """Ask the interchange; once the engine is down there is nothing to ask: ``default``."""
        if self._client is None or not self._client.healthy:
            return default
        return self._client.request(name, args)

    def connected_managers(self) -> List[Dict[str, Any]]:
        return self._ask("managers", default=[])

    def connected_blocks(self) -> List[str]:
        return self._ask("connected_blocks", default=[])

    def interchange_stats(self) -> Dict[str, Any]:
        return self._ask("stats", default={})

    def scale_in(self, blocks: int, max_idletime: Optional[float] = None) -> List[str]:
        """Remove up to ``blocks`` blocks, longest-idle first.  With ``max_idletime`` only blocks idle
        that long (and holding no task) are removed; without it busy blocks may go too, and their
        tasks are re-dispatched."""
        idle: Dict[str, float] = {}
        busy: Dict[str, int] = {}
        for block_id, status in self._status.items():
            if status.state not in TERMINAL_STATES:
                idle.setdefault(block_id, math.inf)
                busy.setdefault(block_id, 0)
        for m in self.connected_managers():
            if not m["active"]:
                continue
            b = m["block_id"]
            idle[b] = min(idle.get(b, math.inf), m["idle_duration"] if m["tasks"] == 0 else 0.0)
            busy[b] = busy.get(b, 0) + m["tasks"]
        order = sorted(idle, key=lambda b: (-idle[b], busy[b]))
        if max_idletime is not None:
            order = [b for b in order if idle[b] > max_idletime and busy[b] == 0]
        chosen = [b for b in order if b in self.blocks_to_job_id][:blocks]
        for block_id in chosen:
            self._ask("hold_block", block_id)
        job_ids = [self.blocks_to_job_id[b] for b in chosen]
        if not job_ids:
            return []
        cancelled = self.provider.cancel(job_ids)
        killed = self._filter_scale_in_ids(job_ids, cancelled)
        logger.info("executor %s: scaled in blocks %s", self.label, [self.job_ids_to_block[j] for j in killed])
        return [self.job_ids_to_block[j] for j in killed]

    def status(self) -> Dict[str, JobStatus]:
        job_status = super().status()
        if self._client is None or not self._client.healthy:
            return job_status
        try:
            connected = set(self.connected_blocks())
        except Exception as e:
            logger.warning("executor %s: could not ask the interchange for connected blocks: %s", self.label, e)
            return job_status
        for block_id, st in job_status.items():
            if st.terminal and block_id not in connected and st.state != JobState.SCALED_IN:
                detail = ""
                stderr = getattr(st, "stderr_summary", None)
                if stderr:
                    detail = f" The job's stderr ends with:\n{stderr}"
                st.state = JobState.MISSING
                st.message = (f"block {block_id} ended without its manager ever connecting to the interchange: "
                              f"{self._interpreter_hint()} Check the address too."
                              + (st.message and f" Scheduler: {st.message}." or "") + detail)
        return job_status

    def _interpreter_hint(self) -> str:
        """Which Python the block's manager runs under, for errors about blocks that never connected."""
        if self._launch_template.startswith("faasx-manager "):
            init = getattr(self.provider, "worker_init", "")
            return (f"the job runs `faasx-manager` from its PATH after worker_init ({init!r}): make worker_init "
                    "activate an environment with faasx and the client's Python "
                    f"{sys.version_info[0]}.{sys.version_info[1]} (the client runs {sys.executable}).")
        return f"the job runs the manager with {shlex.split(self._launch_template)[0]}."

    # ---- shutdown ----------------------------------------------------------------------------
    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop the interchange and managers, cancel the blocks, fail whatever is still pending."""
        client = self._client
        if client is None:
            return
        logger.info("executor %s: shutting down", self.label)
        control = getattr(self, "_control", None)
        if control is not None:
            control.stop()
        client.shutdown(timeout)
        if self._shm is not None:      # every future is done: no task needs its files any more
            self._shm.remove()
        if control is not None:
            try:
                control.write_final()
            except OSError as e:
                logger.warning("executor %s: could not write the final status file: %s", self.label, e)
        if self._memo is not None:
            self._memo.close()
        job_ids = [j for b, j in self.blocks_to_job_id.items()
                   if b not in self._status or self._status[b].state not in TERMINAL_STATES]
        if job_ids and self.provider is not None:
            try:
                self.provider.cancel(job_ids)
            except Exception as e:
                logger.warning("executor %s: cancelling blocks %s failed: %s", self.label, job_ids, e)
        super().shutdown()
        logger.info("executor %s: shut down", self.label)


def _script_dir() -> Optional[str]:
    """The directory of the script being run (``python /path/to/main.py`` from anywhere), which Python
    puts first on the script's own ``sys.path``; None in a REPL or notebook (their workers start in the
    same working directory anyway)."""
    import sys
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    return os.path.dirname(os.path.abspath(path)) if path else None


def _copy_outcome(src: Future, dst: Future) -> None:
    if src.cancelled():
        dst.cancel()
        dst.set_running_or_notify_cancel()
    elif src.exception() is not None:
        dst.set_exception(src.exception())
    else:
        dst.set_result(src.result())


def _register_as_htex_for_parsl_strategy() -> None:
    """Parsl's 'htex_auto_scale' strategy scales in busy-but-underused blocks only for executors
    that are ``isinstance(executor, HighThroughputExecutor)``; FaaSExecutor implements the same
    ``scale_in(blocks, max_idletime)`` contract, so it is registered as a virtual subclass.  (That
    check is Parsl's only non-test use of the class; code that tests for HTEX will see faasx as one.)
    """
    from parsl.executors import HighThroughputExecutor
    HighThroughputExecutor.register(FaaSExecutor)


_register_as_htex_for_parsl_strategy()
