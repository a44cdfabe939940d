"""ALCF: Polaris and Aurora (PBS Pro, mpiexec from Cray PALS) and Theta (Cobalt + aprun, retired 2023).

Each machine has two functions: ``<machine>_executor_kwargs(...)`` returns the keyword arguments of
``faasx.FaaSExecutor`` / ``faasx.Executor`` (provider included), ``<machine>(...)`` returns a
``parsl.Config`` holding one ``FaaSExecutor`` built from them.  Parameters common to every site are
described in :mod:`faasx.configs`.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

from faasx.configs.site import check_options, interchange_address, manager_launcher, parsl_config

__all__ = ["polaris", "polaris_executor_kwargs", "aurora", "aurora_executor_kwargs", "theta",
           "theta_executor_kwargs", "POLARIS", "AURORA", "THETA"]

#: Node facts the configurations are built from.
POLARIS = {"cores": 32, "hardware_threads": 64, "accelerators": 4, "interface": "bond0"}
AURORA = {"cores": 104, "hardware_threads": 208, "accelerators": 12, "interface": None}
THETA = {"cores": 64, "hardware_threads": 256, "accelerators": 0, "interface": None}

#: Aurora's 6 Intel Data Center GPU Max (PVC) per node, 2 tiles each, as ZE_AFFINITY_MASK names them
#: ("GPU.tile"), one tile per worker -- the layout of ALCF's Parsl guide.
AURORA_TILES = tuple(f"{gpu}.{tile}" for gpu in range(6) for tile in range(2))


def _pals_mpiexec():
    from faasx.launchers import MpiExecLauncher
    # one manager per node, unbound: its workers share the whole node
    return MpiExecLauncher(bind_cmd="--cpu-bind", ppn_flag="--ppn")


def polaris_executor_kwargs(account: str, queue: str = "debug", *, walltime: str = "01:00:00",
                            nodes_per_block: int = 1, init_blocks: int = 1, min_blocks: int = 0,
                            max_blocks: int = 1, worker_init: str = "", filesystems: str = "home:eagle",
                            scheduler_options: str = "", address: Optional[str] = None,
                            interface: Optional[str] = POLARIS["interface"], launcher: Any = None,
                            container: Optional[Mapping[str, Any]] = None, **executor_options: Any) -> Dict[str, Any]:
    """ALCF Polaris: PBS Pro, 4 NVIDIA A100 and 32 cores (64 hardware threads) per node.

    One manager per node through PALS ``mpiexec --cpu-bind none --ppn 1``; four workers per node, each
    with its own GPU (``available_accelerators=4`` -> ``CUDA_VISIBLE_DEVICES=0..3``).  Jobs ask for
    ``select=N:ncpus=64:ngpus=4``, ``place=scatter`` and the ``filesystems`` Polaris requires.

    Parameters
    ----------
    account : str
        ALCF project to charge (``#PBS -A``).
    queue : str
        ``debug``, ``debug-scaling``, ``prod``, ``preemptable`` ...
    filesystems : str
        ``#PBS -l filesystems=``: the file systems the job needs (``home:eagle``, ``home:grand`` ...).
    interface : str
        Network interface of the login node that compute nodes reach (``bond0``).
    """
    check_options("polaris", executor_options)
    from faasx.providers import PBSProProvider
    provider = PBSProProvider(
        account=account, queue=queue, walltime=walltime, nodes_per_block=nodes_per_block,
        init_blocks=init_blocks, min_blocks=min_blocks, max_blocks=max_blocks,
        cpus_per_node=POLARIS["hardware_threads"], select_options=f"ngpus={POLARIS['accelerators']}",
        scheduler_options="\n".join(filter(None, [f"#PBS -l filesystems={filesystems}", "#PBS -l place=scatter",
                                                  scheduler_options])),
        worker_init=worker_init, launcher=manager_launcher(launcher or _pals_mpiexec(), container),
        dialect="pbspro")
    kwargs = {"provider": provider, "address": interchange_address("polaris", address, interface),
              "available_accelerators": POLARIS["accelerators"], "max_workers_per_node": POLARIS["accelerators"]}
    kwargs.update(executor_options)
    return kwargs


def polaris(account: str, queue: str = "debug", *, label: str = "polaris",
            config_options: Optional[Mapping[str, Any]] = None, **kwargs: Any):
    """A ``parsl.Config`` for Polaris; parameters as :func:`polaris_executor_kwargs`, plus ``label`` (the
    executor's) and ``config_options`` (passed to ``parsl.Config``)."""
    return parsl_config(label, polaris_executor_kwargs(account, queue, **kwargs), **dict(config_options or {}))


def aurora_executor_kwargs(account: str, queue: str = "debug", *, walltime: str = "01:00:00",
                           nodes_per_block: int = 1, init_blocks: int = 1, min_blocks: int = 0,
                           max_blocks: int = 1, worker_init: str = "", filesystems: str = "home:flare",
                           scheduler_options: str = "", address: Optional[str] = None,
                           interface: Optional[str] = AURORA["interface"], launcher: Any = None,
                           container: Optional[Mapping[str, Any]] = None, **executor_options: Any) -> Dict[str, Any]:
    """ALCF Aurora: PBS Pro, 6 Intel GPU Max (2 tiles each) and 2 x 52 cores (208 threads) per node.

    One manager per node through PALS ``mpiexec``; 12 workers per node, each pinned to one GPU tile by
    ``ZE_AFFINITY_MASK`` (``0.0``, ``0.1``, ... ``5.1``).  Jobs ask for ``select=N:ncpus=208``,
    ``place=scatter`` and ``filesystems``.

    Parameters
    ----------
    account : str
        ALCF project to charge.
    queue : str
        ``debug``, ``debug-scaling``, ``prod`` ...
    filesystems : str
        ``#PBS -l filesystems=`` (``home:flare`` ...).
    interface : str or None
        None (the default): managers probe every address of the login node and use the first that
        answers.  Name an interface (see ``ip -brief addr``) to fix the address instead.
    """
    check_options("aurora", executor_options)
    from faasx.providers import PBSProProvider
    provider = PBSProProvider(
        account=account, queue=queue, walltime=walltime, nodes_per_block=nodes_per_block,
        init_blocks=init_blocks, min_blocks=min_blocks, max_blocks=max_blocks,
        cpus_per_node=AURORA["hardware_threads"],
        scheduler_options="\n".join(filter(None, [f"#PBS -l filesystems={filesystems}", "#PBS -l place=scatter",
                                                  scheduler_options])),
        worker_init=worker_init, launcher=manager_launcher(launcher or _pals_mpiexec(), container),
        dialect="pbspro")
    kwargs = {"provider": provider, "address": interchange_address("aurora", address, interface),
              "available_accelerators": list(AURORA_TILES), "max_workers_per_node": len(AURORA_TILES)}
    kwargs.update(executor_options)
    return kwargs


def aurora(account: str, queue: str = "debug", *, label: str = "aurora",
           config_options: Optional[Mapping[str, Any]] = None, **kwargs: Any):
    """A ``parsl.Config`` for Aurora; parameters as :func:`aurora_executor_kwargs`, plus ``label`` and
    ``config_options``."""
    return parsl_config(label, aurora_executor_kwargs(account, queue, **kwargs), **dict(config_options or {}))


def theta_executor_kwargs(account: str, queue: str = "debug-cache-quad", *, walltime: str = "00:30:00",
                          nodes_per_block: int = 1, init_blocks: int = 1, min_blocks: int = 0,
                          max_blocks: int = 1, worker_init: str = "", scheduler_options: str = "",
                          address: Optional[str] = None, interface: Optional[str] = THETA["interface"],
                          launcher: Any = None, container: Optional[Mapping[str, Any]] = None,
                          **executor_options: Any) -> Dict[str, Any]:
    """ALCF Theta (retired 2023; the machine of the funcX paper): Cobalt, Intel KNL, 64 cores per node.

    Jobs run on a MOM node; ``aprun -n N -N 1 -d 64 -j 1 -cc depth`` starts one manager on each compute
    node with all 64 cores, and the manager runs up to 64 workers.  Managers connect to the login node
    by its host name.

    Parameters
    ----------
    account : str
        ALCF project (``qsub -A``).
    queue : str
        ``debug-cache-quad``, ``debug-flat-quad``, ``default`` ...
    interface : str or None
        None (the default): the login node's host name is the address.
    """
    check_options("theta", executor_options)
    from faasx.launchers import AprunLauncher
    from faasx.providers import CobaltProvider
    site_launcher = launcher or AprunLauncher(overrides=f"-d {THETA['cores']} -j 1 -cc depth")
    provider = CobaltProvider(
        account=account, queue=queue, walltime=walltime, nodes_per_block=nodes_per_block,
        init_blocks=init_blocks, min_blocks=min_blocks, max_blocks=max_blocks,
        scheduler_options=scheduler_options, worker_init=worker_init,
        launcher=manager_launcher(site_launcher, container))
    kwargs = {"provider": provider, "address": interchange_address("theta", address, interface, hostname=True),
              "max_workers_per_node": THETA["cores"]}
    kwargs.update(executor_options)
    return kwargs


def theta(account: str, queue: str = "debug-cache-quad", *, label: str = "theta",
          config_options: Optional[Mapping[str, Any]] = None, **kwargs: Any):
    """A ``parsl.Config`` for Theta; parameters as :func:`theta_executor_kwargs`, plus ``label`` and
    ``config_options``."""
    return parsl_config(label, theta_executor_kwargs(account, queue, **kwargs), **dict(config_options or {}))
