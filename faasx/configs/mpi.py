"""Site configurations in MPI mode: ``faasx.MPIExecutor`` on the blocks of a site's configuration.

``mpi_executor_kwargs(site, ...)`` takes a site's ``<site>_executor_kwargs`` parameters and returns
``faasx.MPIExecutor`` keyword arguments: the same provider (account, queue, walltime, nodes_per_block,
worker_init ...) with ``SimpleLauncher`` (one manager per block, on the node running the job script),
without the per-node worker layout (``max_workers_per_node``, ``available_accelerators``: MPI tasks
take whole nodes), and the site's MPI launcher::

    import parsl
    from faasx import configs
    parsl.load(configs.mpi_config("polaris", "MyProject", "debug", nodes_per_block=4, max_workers_per_block=2,
                                  worker_init="module load conda; conda activate faasx"))

    import faasx
    with faasx.Executor(**configs.mpi_executor_kwargs("perlmutter", "m1234_g", qos="debug", nodes_per_block=2)) as ex:
        ...
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

from faasx.configs.site import SiteConfigError

__all__ = ["MPI_LAUNCHER_OF_SITE", "mpi_executor_kwargs", "mpi_config"]

#: the MPI launcher of each batch site: Cray PALS ``mpiexec`` on the ALCF PBS machines, ``srun`` on the
#: Slurm ones, ``aprun`` on Theta (Cobalt), ``mpiexec`` (MPICH / Open PBS style) on a generic PBS cluster
MPI_LAUNCHER_OF_SITE = {
    "polaris": "mpiexec", "aurora": "mpiexec", "perlmutter": "srun", "frontier": "srun", "theta": "aprun",
    "slurm_cluster": "srun", "pbs_cluster": "mpiexec",
}

#: options of a site's configuration that lay out workers per node, which MPI mode does not do
_PER_NODE_OPTIONS = ("max_workers_per_node", "available_accelerators", "cores_per_worker", "mem_per_worker")


def mpi_executor_kwargs(site: str, *args: Any, mpi_launcher: Optional[str] = None, max_workers_per_block: int = 1,
                        **params: Any) -> Dict[str, Any]:
    """``faasx.MPIExecutor`` / ``faasx.Executor`` keyword arguments for ``site`` in MPI mode; ``args`` and
    ``params`` are the site's ``<site>_executor_kwargs`` parameters (``launcher`` excepted)."""
    from faasx.configs import executor_kwargs
    from faasx.launchers import SimpleLauncher
    name = str(site).lower()
    if name not in MPI_LAUNCHER_OF_SITE:
        raise SiteConfigError(f"MPI mode has no configuration for site {site!r}: choose one of "
                              f"{sorted(MPI_LAUNCHER_OF_SITE)}")
    if "launcher" in params:
        raise SiteConfigError(f"{name}: MPI mode sets the launcher itself (SimpleLauncher: one manager per block)")
    kwargs = executor_kwargs(name, *args, launcher=SimpleLauncher(), **params)
    for key in _PER_NODE_OPTIONS:
        kwargs.pop(key, None)
    kwargs["mpi_launcher"] = mpi_launcher or MPI_LAUNCHER_OF_SITE[name]
    kwargs["max_workers_per_block"] = max_workers_per_block
    return kwargs


def mpi_config(site: str, *args: Any, label: Optional[str] = None,
               config_options: Optional[Mapping[str, Any]] = None, **params: Any):
    """A ``parsl.Config`` with one ``faasx.MPIExecutor`` for ``site``; parameters as
    :func:`mpi_executor_kwargs`, plus ``label`` (default ``<site>_mpi``) and ``config_options``."""
    from parsl.config import Config

    from faasx.executor.mpi_executor import MPIExecutor
    kwargs = mpi_executor_kwargs(site, *args, **params)
    return Config(executors=[MPIExecutor(label=label or f"{site}_mpi", **kwargs)], **dict(config_options or {}))
