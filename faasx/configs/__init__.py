"""Ready-made configurations for supercomputers, batch clusters and Kubernetes.

Fill in an account and a queue; everything else -- provider, launcher, the network address managers
connect to, cores and accelerators per node -- is set for the machine::

    import parsl
    from faasx.configs import polaris
    parsl.load(polaris("MyProject", "debug", worker_init="module use /soft/modulefiles; module load conda; "
                                                         "conda activate my-env"))

    import faasx
    from faasx.configs import executor_kwargs
    with faasx.Executor(**executor_kwargs("perlmutter", account="m1234_g", qos="debug")) as ex:
        print(ex.submit(pow, 2, 10).result())

Sites (function: scheduler, launcher, per node):

- ``polaris`` (ALCF): PBS Pro, ``MpiExecLauncher``; 4 A100 -> 4 workers, 32 cores; interface ``bond0``
- ``aurora`` (ALCF): PBS Pro, ``MpiExecLauncher``; 6 PVC x 2 tiles -> 12 workers (``ZE_AFFINITY_MASK``)
- ``perlmutter`` (NERSC): Slurm, ``SrunLauncher``; 4 A100 (``constraint="gpu"``) or 128 cores; ``hsn0``
- ``frontier`` (OLCF): Slurm, ``SrunLauncher``; 8 GCDs (``ROCR_VISIBLE_DEVICES``), 56 cores; ``hsn0``
- ``theta`` (ALCF, retired): Cobalt, ``AprunLauncher``; 64 KNL cores; the login node's host name
- ``slurm_cluster``: Slurm, ``SrunLauncher``; what you give
- ``pbs_cluster``: PBS Pro or Torque, ``SingleNodeLauncher`` / ``MpiExecLauncher``; what you give
- ``kubernetes``: one pod per block; ``cpu``, ``memory``, ``gpus`` per pod

MPI mode (``faasx.MPIExecutor``: tasks take whole nodes and start MPI applications with
``$PARSL_MPI_PREFIX``): ``mpi_config(site, ...)`` and ``mpi_executor_kwargs(site, ...)`` (``faasx.configs.mpi``).

Every ``<name>(...)`` returns a ``parsl.Config`` with one ``faasx.FaaSExecutor``; every
``<name>_executor_kwargs(...)`` returns that executor's keyword arguments (``provider`` included), for
``faasx.Executor(**kwargs)`` or ``FaaSExecutor(label=..., **kwargs)``; ``executor_kwargs(site, ...)`` and
``config(site, ...)`` pick them by name.  Nothing is contacted when they are called: a provider talks to
its scheduler only when the executor starts.

Parameters common to the batch sites:

``walltime``, ``nodes_per_block``, ``init_blocks``, ``min_blocks``, ``max_blocks``
    As for the providers; blocks scale between ``min_blocks`` and ``max_blocks`` with the load.
``worker_init``
    Shell lines run in the job before the managers start: load modules, activate the environment that
    has faasx (the same Python and faasx version as where you submit from).
``scheduler_options``
    Extra scheduler directive lines (``#SBATCH ...``, ``#PBS ...``, ``#COBALT ...``).
``address``, ``interface``
    The address managers connect to is found when the function is called -- on the login node: an
    explicit ``address``, else the IPv4 address of ``interface`` (``parsl.addresses.address_by_interface``;
    an error if this host has no such interface), else (``interface=None``) none, and managers probe
    every address of the host.
``launcher``
    Replaces the site's launcher.
``container``
    Run each manager (and so its workers) in a container: a container spec ``{"type": "apptainer" |
    "singularity" | "shifter" | "podman" | "docker", "image": ..., "options": [...], "binds": [...]}``;
    the site's launcher starts the container on each node (see ``faasx.launchers.container``).
``**executor_options``
    Any other ``FaaSExecutor`` option (``prefetch_capacity``, ``max_workers_per_node``,
    ``available_accelerators``, ``heartbeat_threshold`` ...); they override the site's.
"""
from __future__ import annotations

from typing import Any, Dict

from faasx.configs.alcf import (aurora, aurora_executor_kwargs, polaris, polaris_executor_kwargs, theta,
                                theta_executor_kwargs)
from faasx.configs.generic import (kubernetes, kubernetes_executor_kwargs, pbs_cluster, pbs_cluster_executor_kwargs,
                                   slurm_cluster, slurm_cluster_executor_kwargs)
from faasx.configs.nersc import perlmutter, perlmutter_executor_kwargs
from faasx.configs.olcf import frontier, frontier_executor_kwargs
from faasx.configs.site import SiteConfigError
from faasx.configs.mpi import mpi_config, mpi_executor_kwargs

__all__ = [
    "SITES", "executor_kwargs", "config", "SiteConfigError",
    "polaris", "polaris_executor_kwargs", "aurora", "aurora_executor_kwargs", "theta", "theta_executor_kwargs",
    "perlmutter", "perlmutter_executor_kwargs", "frontier", "frontier_executor_kwargs",
    "slurm_cluster", "slurm_cluster_executor_kwargs", "pbs_cluster", "pbs_cluster_executor_kwargs",
    "kubernetes", "kubernetes_executor_kwargs", "mpi_executor_kwargs", "mpi_config",
]

#: site name -> (executor kwargs function, parsl.Config function)
SITES = {
    "polaris": (polaris_executor_kwargs, polaris),
    "aurora": (aurora_executor_kwargs, aurora),
    "theta": (theta_executor_kwargs, theta),
    "perlmutter": (perlmutter_executor_kwargs, perlmutter),
    "frontier": (frontier_executor_kwargs, frontier),
    "slurm_cluster": (slurm_cluster_executor_kwargs, slurm_cluster),
    "pbs_cluster": (pbs_cluster_executor_kwargs, pbs_cluster),
    "kubernetes": (kubernetes_executor_kwargs, kubernetes),
}


def _site(name: str):
    try:
        return SITES[name.lower()]
    except (KeyError, AttributeError):
        raise SiteConfigError(f"unknown site {name!r}: choose one of {sorted(SITES)}") from None


def executor_kwargs(site: str, *args: Any, **params: Any) -> Dict[str, Any]:
    """Keyword arguments of ``faasx.Executor`` / ``faasx.FaaSExecutor`` for ``site`` (a name in ``SITES``);
    ``args`` and ``params`` are that site's ``<site>_executor_kwargs`` parameters."""
    return _site(site)[0](*args, **params)


def config(site: str, *args: Any, **params: Any):
    """A ``parsl.Config`` for ``site``; ``args`` and ``params`` are that site's function's parameters."""
    return _site(site)[1](*args, **params)
