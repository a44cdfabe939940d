"""``faasx.MPIExecutor``: ``FaaSExecutor`` in MPI mode, a drop-in for ``parsl.executors.MPIExecutor``.

A Parsl configuration that uses Parsl's ``MPIExecutor`` ports by changing its import: the constructor
takes the same arguments (``mpi_launcher``, ``max_workers_per_block``, ...) and every other
``FaaSExecutor`` option, tasks take the same ``parsl_resource_specification`` keys, and the task's
environment carries the same ``PARSL_*`` variables.  What happens where:

* submit (here): the MPI keys are checked and completed (``faasx.executor.mpi.parse_mpi_spec``) and a
  task asking for more nodes than a block of this provider has fails at once.
* manager (one per block, on the node running the job script): ``MpiWorkerTable`` holds each task until
  its nodes are free, sets its environment, and returns the nodes when it ends however it ends.
* worker: runs the function with ``PARSL_MPI_PREFIX`` and friends in ``os.environ``.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

from parsl.executors.errors import InvalidResourceSpecification as _ParslInvalidResourceSpecification
from parsl.providers.base import ExecutionProvider

from faasx.errors import InvalidResourceSpecification
from faasx.executor.mpi import MPI_LAUNCHERS, MPI_RESOURCE_KEYS, parse_mpi_spec
from faasx.executor.parsl_executor import FaaSExecutor

#: what an MPI task's resource specification may carry: Parsl's MPI keys, and faasx's priority, memoize and
#: walltime (seconds: the task is stopped and its nodes return to the pool)
MPI_ACCEPTED_KEYS = MPI_RESOURCE_KEYS | {"priority", "memoize", "walltime"}


class InvalidMPIResourceSpecification(InvalidResourceSpecification):
    """An MPI task's resource specification has a value that cannot be right, or asks for more nodes than
    any block of the executor has."""

    def __init__(self, keys, message: str):
        _ParslInvalidResourceSpecification.__init__(self, set(keys), message)

    def __reduce__(self):
        return (type(self), (self.invalid_keys, self.message))

    __module__ = "faasx.errors"


class MPIExecutor(FaaSExecutor):
    """The faasx engine for multi-node (MPI) tasks: a drop-in for ``parsl.executors.MPIExecutor``.

    Each block runs one manager on the node that runs the job script (the provider must use
    ``SimpleLauncher``, as for Parsl's MPIExecutor).  Its ``max_workers_per_block`` workers each run one
    task at a time; a task takes ``num_nodes`` whole nodes of the block for as long as it runs and
    starts its MPI application with ``$PARSL_MPI_PREFIX``::

        @bash_app
        def hello(parsl_resource_specification={"num_nodes": 2, "ranks_per_node": 4}):
            return "$PARSL_MPI_PREFIX ./hello_mpi"     # mpiexec -n 8 -ppn 4 -hosts node1,node2 ./hello_mpi

    Resource keys, as in Parsl: ``num_nodes`` (default 1), ``ranks_per_node``, ``num_ranks`` (one is
    derived from the other), ``launcher_options`` (appended to the prefix); also ``priority``,
    ``memoize`` and ``walltime``.  The task's environment gets ``PARSL_MPI_PREFIX`` (the prefix of ``mpi_launcher``),
    ``PARSL_MPIEXEC_PREFIX``, ``PARSL_SRUN_PREFIX``, ``PARSL_APRUN_PREFIX``, ``PARSL_NUM_NODES``,
    ``PARSL_RANKS_PER_NODE``, ``PARSL_NUM_RANKS``, ``PARSL_MPI_NODELIST`` and ``PARSL_LAUNCHER_OPTIONS``.

    Differences from Parsl, deliberate: a task with no resource specification runs on one node with one
    rank (Parsl raises, after once hanging: #3427); a task asking for more nodes than the provider's
    ``nodes_per_block`` fails at submit with ``InvalidMPIResourceSpecification``, and one asking for
    more than its block turned out to have fails with ``MPIPlacementError`` (Parsl's waits for ever);
    tasks wait for nodes strictly in arrival order (a two-node task is not starved by one-node tasks).

    Parameters
    ----------
    mpi_launcher : str
        ``"mpiexec"`` (MPICH, Cray PALS on Polaris/Aurora, Intel MPI), ``"srun"`` (Slurm: Perlmutter,
        Frontier) or ``"aprun"``: which prefix ``PARSL_MPI_PREFIX`` holds.
    max_workers_per_block : int
        How many MPI tasks of one block run at once (at most ``nodes_per_block`` is useful).
    prefetch_capacity : int
        Tasks a block's manager queues beyond its workers (default 0, as in Parsl).
    **options :
        Every other ``FaaSExecutor`` option (``label``, ``provider``, ``address``, ``encrypted``,
        ``heartbeat_period`` ...).  ``max_workers_per_node`` and ``cores_per_worker`` are set from
        ``max_workers_per_block``.
    """

    def __init__(self, label: str = "MPIExecutor", provider: Optional[ExecutionProvider] = None, *,
                 mpi_launcher: str = "mpiexec", max_workers_per_block: int = 1, prefetch_capacity: int = 0,
                 **options: Any):
        if mpi_launcher not in MPI_LAUNCHERS:
            raise ValueError(f"mpi_launcher={mpi_launcher!r}: must be one of {', '.join(MPI_LAUNCHERS)}")
        if isinstance(max_workers_per_block, bool) or not isinstance(max_workers_per_block, int) \
                or max_workers_per_block < 1:
            raise ValueError(f"max_workers_per_block must be an integer >= 1, got {max_workers_per_block!r}")
        for key in ("max_workers_per_node", "cores_per_worker"):
            if key in options:
                raise TypeError(f"MPIExecutor sets {key} itself (from max_workers_per_block); do not pass it")
        from faasx.launchers import SimpleLauncher
        if provider is None:
            from faasx.providers import LocalProvider
            provider = LocalProvider(init_blocks=1, min_blocks=0, max_blocks=1, launcher=SimpleLauncher())
        if not isinstance(getattr(provider, "launcher", None), SimpleLauncher):
            raise TypeError(
                f"MPIExecutor needs a provider whose launcher is SimpleLauncher (one manager per block, on the "
                f"node that runs the job script; the MPI launcher reaches the other nodes), got "
                f"{type(getattr(provider, 'launcher', None)).__name__}: pass launcher=SimpleLauncher() from "
                "faasx.launchers to the provider")
        super().__init__(label=label, provider=provider, max_workers_per_node=max_workers_per_block,
                         cores_per_worker=1e-6, prefetch_capacity=prefetch_capacity, **options)
        self.mpi_launcher = mpi_launcher
        self.max_workers_per_block = max_workers_per_block
        self.enable_mpi_mode = True   # what Parsl's own code checks for an executor in MPI mode

    @property
    def nodes_per_block(self) -> int:
        return int(getattr(self.provider, "nodes_per_block", 1) or 1)

    def _build_launch_cmd(self, *args: Any, **kwargs: Any) -> str:
        cmd = super()._build_launch_cmd(*args, **kwargs)
        if self.launch_cmd is not None:
            return cmd
        return f"{cmd} --mpi-launcher {self.mpi_launcher}"

    def validate_resource_spec(self, resource_specification: Optional[dict]) -> None:
        """Unknown keys, impossible values and more nodes than a block has are refused here, at submit."""
        spec = resource_specification or {}
        unknown = set(spec) - MPI_ACCEPTED_KEYS
        if unknown:
            raise InvalidResourceSpecification(unknown, MPI_ACCEPTED_KEYS)
        try:
            mpi = parse_mpi_spec(spec)
        except ValueError as e:
            raise InvalidMPIResourceSpecification(set(spec) & MPI_RESOURCE_KEYS, str(e)) from None
        if mpi["num_nodes"] > self.nodes_per_block:
            raise InvalidMPIResourceSpecification({"num_nodes"}, (
                f"the task asks for num_nodes={mpi['num_nodes']} but the blocks of executor {self.label} have "
                f"{self.nodes_per_block} node(s) (the provider's nodes_per_block): it could never run. Ask for "
                f"fewer nodes or raise nodes_per_block"))
        super().validate_resource_spec({k: v for k, v in spec.items() if k in ("priority", "walltime")})

    def _routing_spec(self, resource_specification: dict) -> Optional[dict]:  # type: ignore[override]
        spec = {"mpi": parse_mpi_spec(resource_specification)}
        for key in ("priority", "walltime"):
            if resource_specification.get(key) is not None:
                spec[key] = resource_specification[key]
        return spec

    def submit(self, func: Callable, resource_specification: Optional[dict], *args: Any, **kwargs: Any):
        """As ``FaaSExecutor.submit``; every task is an MPI task (none given: one node, one rank).  A
        ``faasx.mpi.MPIFunction`` / ``ShellFunction`` carries its own resource specification."""
        if not resource_specification:
            resource_specification = dict(getattr(func, "resource_specification", None) or {})
        self.validate_resource_spec(resource_specification)
        return super().submit(func, dict(resource_specification) or {"num_nodes": 1}, *args, **kwargs)

    def monitor_resources(self) -> bool:
        """As Parsl's MPIExecutor: a task's processes are spread over nodes, so per-task resource
        monitoring of the worker would measure only the launcher."""
        return False
