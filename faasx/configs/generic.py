"""Configurations for any Slurm cluster, any PBS cluster (PBS Pro / OpenPBS or Torque) and Kubernetes.

Parameters common to every site are described in :mod:`faasx.configs`.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional

from faasx.configs.site import SiteConfigError, check_options, interchange_address, manager_launcher, parsl_config

__all__ = ["slurm_cluster", "slurm_cluster_executor_kwargs", "pbs_cluster", "pbs_cluster_executor_kwargs",
           "kubernetes", "kubernetes_executor_kwargs"]


def _accelerators(kwargs: Dict[str, Any], gpus: Optional[int]) -> None:
    if gpus:
        kwargs.update(available_accelerators=int(gpus), max_workers_per_node=int(gpus))


def slurm_cluster_executor_kwargs(partition: Optional[str] = None, account: Optional[str] = None, *,
                                  qos: Optional[str] = None, constraint: Optional[str] = None,
                                  walltime: str = "01:00:00", nodes_per_block: int = 1,
                                  cores_per_node: Optional[int] = None, mem_per_node: Optional[float] = None,
                                  gpus_per_node: Optional[int] = None, exclusive: bool = True,
                                  init_blocks: int = 1, min_blocks: int = 0, max_blocks: int = 1,
                                  worker_init: str = "", scheduler_options: str = "",
                                  address: Optional[str] = None, interface: Optional[str] = None,
                                  launcher: Any = None, container: Optional[Mapping[str, Any]] = None,
                                  **executor_options: Any) -> Dict[str, Any]:
    """Any Slurm cluster: one manager per node through srun.

    ``srun`` gets ``--cpus-per-task=cores_per_node`` and ``--gpus-per-node=gpus_per_node`` when they are
    given (since Slurm 22.05 a step no longer inherits the job's ``--cpus-per-task``, and it sees only
    the GPUs it asks for); with ``gpus_per_node`` each worker gets its own GPU.

    Parameters
    ----------
    partition, account, qos, constraint : str
        ``#SBATCH`` values; None leaves the cluster's default.
    cores_per_node : int
        Cores per node (``--cpus-per-task`` of the one task per node); None: Slurm's default.
    mem_per_node : float
        GB of memory per node (``--mem``).
    gpus_per_node : int
        GPUs per node (``--gpus-per-node``); also the number of workers, one GPU each.
    exclusive : bool
        Whole nodes (``--exclusive``).
    interface : str or None
        A network interface of this host that compute nodes reach; None: managers probe every address.
    """
    check_options("slurm_cluster", executor_options)
    from faasx.launchers import SrunLauncher
    from faasx.providers import SlurmProvider
    overrides = " ".join(filter(None, [f"--cpus-per-task={cores_per_node}" if cores_per_node else "",
                                       f"--gpus-per-node={gpus_per_node}" if gpus_per_node else ""]))
    provider = SlurmProvider(
        partition=partition, account=account, qos=qos, constraint=constraint, walltime=walltime,
        nodes_per_block=nodes_per_block, cores_per_node=cores_per_node, mem_per_node=mem_per_node,
        gpus_per_node=gpus_per_node, exclusive=exclusive, init_blocks=init_blocks, min_blocks=min_blocks,
        max_blocks=max_blocks, scheduler_options=scheduler_options, worker_init=worker_init,
        launcher=manager_launcher(launcher or SrunLauncher(overrides=overrides), container))
    kwargs: Dict[str, Any] = {"provider": provider,
                              "address": interchange_address("slurm_cluster", address, interface)}
    _accelerators(kwargs, gpus_per_node)
    kwargs.update(executor_options)
    return kwargs


def slurm_cluster(partition: Optional[str] = None, account: Optional[str] = None, *, label: str = "slurm",
                  config_options: Optional[Mapping[str, Any]] = None, **kwargs: Any):
    """A ``parsl.Config`` for a Slurm cluster; parameters as :func:`slurm_cluster_executor_kwargs`, plus
    ``label`` and ``config_options``."""
    return parsl_config(label, slurm_cluster_executor_kwargs(partition, account, **kwargs),
                        **dict(config_options or {}))


def pbs_cluster_executor_kwargs(account: Optional[str] = None, queue: Optional[str] = None, *,
                                cpus_per_node: int, gpus_per_node: Optional[int] = None,
                                select_options: str = "", walltime: str = "01:00:00", nodes_per_block: int = 1,
                                init_blocks: int = 1, min_blocks: int = 0, max_blocks: int = 1,
                                worker_init: str = "", scheduler_options: str = "", dialect: Optional[str] = None,
                                address: Optional[str] = None, interface: Optional[str] = None,
                                launcher: Any = None, container: Optional[Mapping[str, Any]] = None,
                                **executor_options: Any) -> Dict[str, Any]:
    """Any PBS cluster: PBS Pro / OpenPBS (``select=N:ncpus=C``) or Torque (``nodes=N:ppn=C``).

    Blocks of one node run the manager directly (``SingleNodeLauncher``); larger blocks start one manager
    per node with ``mpiexec --ppn 1`` over the job's ``$PBS_NODEFILE`` (``MpiExecLauncher``; pass
    ``launcher=`` if your MPI's options differ).

    Parameters
    ----------
    account, queue : str
        ``#PBS -A`` / ``-q``; None leaves the server's default.
    cpus_per_node : int
        Cores per node (``ncpus`` / ``ppn``): required, PBS gives a job only what it asks for.
    gpus_per_node : int
        Workers get one GPU each; request the GPUs themselves in ``select_options`` (``"ngpus=4"`` on PBS
        Pro, ``"gpus=4"`` on Torque).
    select_options : str
        Appended to the resource request.
    dialect : str
        ``"pbspro"`` or ``"torque"``; None: detected from ``qstat --version`` on first use.
    interface : str or None
        A network interface of this host that compute nodes reach; None: managers probe every address.
    """
    check_options("pbs_cluster", executor_options)
    if not isinstance(cpus_per_node, int) or cpus_per_node < 1:
        raise SiteConfigError(f"pbs_cluster: cpus_per_node must be the number of cores of a node, "
                              f"got {cpus_per_node!r}")
    from faasx.launchers import MpiExecLauncher, SingleNodeLauncher
    from faasx.providers import PBSProProvider
    site_launcher = launcher or (SingleNodeLauncher() if nodes_per_block == 1 else MpiExecLauncher())
    provider = PBSProProvider(
        account=account, queue=queue, cpus_per_node=cpus_per_node, select_options=select_options,
        walltime=walltime, nodes_per_block=nodes_per_block, init_blocks=init_blocks, min_blocks=min_blocks,
        max_blocks=max_blocks, scheduler_options=scheduler_options, worker_init=worker_init,
        launcher=manager_launcher(site_launcher, container), dialect=dialect)
    kwargs: Dict[str, Any] = {"provider": provider,
                              "address": interchange_address("pbs_cluster", address, interface)}
    _accelerators(kwargs, gpus_per_node)
    kwargs.update(executor_options)
    return kwargs


def pbs_cluster(account: Optional[str] = None, queue: Optional[str] = None, *, label: str = "pbs",
                config_options: Optional[Mapping[str, Any]] = None, **kwargs: Any):
    """A ``parsl.Config`` for a PBS cluster; parameters as :func:`pbs_cluster_executor_kwargs`, plus
    ``label`` and ``config_options``."""
    return parsl_config(label, pbs_cluster_executor_kwargs(account, queue, **kwargs), **dict(config_options or {}))


def kubernetes_executor_kwargs(image: str, *, namespace: str = "default", cpu: float = 1.0, memory: str = "2Gi",
                               gpus: Optional[int] = None, init_blocks: int = 0, min_blocks: int = 0,
                               max_blocks: int = 4, worker_init: str = "",
                               service_account_name: Optional[str] = None,
                               image_pull_secrets: Optional[List[str]] = None,
                               volumes: Optional[List[Dict[str, Any]]] = None,
                               volume_mounts: Optional[List[Dict[str, Any]]] = None,
                               env: Optional[Dict[str, str]] = None, kubeconfig: Optional[str] = None,
                               context: Optional[str] = None, address: Optional[str] = None,
                               interface: Optional[str] = None, **executor_options: Any) -> Dict[str, Any]:
    """Kubernetes: each block is one pod running a manager; the pod's image must contain Python and faasx.

    Pods get ``cpu`` and ``memory`` as both request and limit (a guaranteed pod is not evicted first) and
    run ``max(1, int(cpu))`` workers; ``gpus`` adds an ``nvidia.com/gpu`` limit and one GPU per worker.
    Pods must reach the interchange: run your script in the cluster (a pod, a Job) or give an ``address``
    the pods can route to.  Blocks start at 0 and scale to ``max_blocks`` pods under load.

    Parameters
    ----------
    image : str
        Container image of the pods (e.g. ``"ghcr.io/me/faasx-worker:1"``).
    namespace : str
        Namespace the pods are created in.
    cpu : float
        CPUs per pod (request = limit).
    memory : str
        Memory per pod, Kubernetes quantity (``"2Gi"``).
    gpus : int
        NVIDIA GPUs per pod.
    service_account_name, image_pull_secrets, volumes, volume_mounts, env, kubeconfig, context :
        Passed to ``faasx.providers.KubernetesProvider``.
    interface : str or None
        A network interface of this host that pods reach; None: managers probe every address.
    """
    check_options("kubernetes", executor_options)
    from faasx.providers import KubernetesProvider
    provider = KubernetesProvider(
        image=image, namespace=namespace, init_cpu=cpu, max_cpu=cpu, init_mem=memory, max_mem=memory,
        extra_limits={"nvidia.com/gpu": str(int(gpus))} if gpus else None,
        init_blocks=init_blocks, min_blocks=min_blocks, max_blocks=max_blocks, worker_init=worker_init,
        service_account_name=service_account_name, image_pull_secrets=image_pull_secrets, volumes=volumes,
        volume_mounts=volume_mounts, env=env, kubeconfig=kubeconfig, context=context)
    kwargs: Dict[str, Any] = {"provider": provider, "address": interchange_address("kubernetes", address, interface),
                              "max_workers_per_node": max(1, int(cpu))}
    _accelerators(kwargs, gpus)
    kwargs.update(executor_options)
    return kwargs


def kubernetes(image: str, *, label: str = "kubernetes", config_options: Optional[Mapping[str, Any]] = None,
               **kwargs: Any):
    """A ``parsl.Config`` for Kubernetes; parameters as :func:`kubernetes_executor_kwargs`, plus ``label``
    and ``config_options``."""
    return parsl_config(label, kubernetes_executor_kwargs(image, **kwargs), **dict(config_options or {}))
