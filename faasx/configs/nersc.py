"""NERSC Perlmutter (Slurm; managers started by srun).  Parameters common to every site are described in
:mod:`faasx.configs`."""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

from faasx.configs.site import SiteConfigError, check_options, interchange_address, manager_launcher, parsl_config

__all__ = ["perlmutter", "perlmutter_executor_kwargs", "PERLMUTTER"]

#: Node facts: GPU nodes have one 64-core EPYC and 4 NVIDIA A100, CPU nodes two 64-core EPYCs; Slurm
#: counts hardware threads (2 per core) as CPUs.
PERLMUTTER = {
    "gpu": {"cores": 64, "slurm_cpus": 128, "accelerators": 4},
    "cpu": {"cores": 128, "slurm_cpus": 256, "accelerators": 0},
    "interface": "hsn0",
}


def perlmutter_executor_kwargs(account: str, qos: str = "regular", *, constraint: str = "gpu",
                               walltime: str = "00:30:00", nodes_per_block: int = 1, init_blocks: int = 1,
                               min_blocks: int = 0, max_blocks: int = 1, worker_init: str = "",
                               scheduler_options: str = "", address: Optional[str] = None,
                               interface: Optional[str] = PERLMUTTER["interface"], launcher: Any = None,
                               container: Optional[Mapping[str, Any]] = None,
                               **executor_options: Any) -> Dict[str, Any]:
    """NERSC Perlmutter: Slurm; GPU nodes (4 A100, 64 cores) or CPU nodes (128 cores).

    One manager per node through ``srun --ntasks-per-node=1 --cpus-per-task=<all CPUs>`` (and
    ``--gpus-per-node=4`` on GPU nodes: a Slurm step sees only the GPUs it asks for); on GPU nodes four
    workers, one GPU each (``CUDA_VISIBLE_DEVICES``).

    Parameters
    ----------
    account : str
        NERSC project; GPU jobs charge the ``_g`` account (``m1234_g``), CPU jobs the plain one.
    qos : str
        ``regular``, ``debug``, ``preempt``, ``shared`` ...
    constraint : str
        ``"gpu"`` or ``"cpu"`` (``#SBATCH --constraint``).
    interface : str
        Network interface of the login node that compute nodes reach (``hsn0``).
    """
    check_options("perlmutter", executor_options)
    if constraint not in ("gpu", "cpu"):
        raise SiteConfigError(f"perlmutter: constraint must be 'gpu' or 'cpu', not {constraint!r}")
    node = PERLMUTTER[constraint]
    from faasx.launchers import SrunLauncher
    from faasx.providers import SlurmProvider
    gpus = node["accelerators"]
    overrides = f"--cpus-per-task={node['slurm_cpus']}" + (f" --gpus-per-node={gpus}" if gpus else "")
    provider = SlurmProvider(
        account=account, qos=qos, constraint=constraint, walltime=walltime, nodes_per_block=nodes_per_block,
        init_blocks=init_blocks, min_blocks=min_blocks, max_blocks=max_blocks, gpus_per_node=gpus or None,
        exclusive=True, scheduler_options=scheduler_options, worker_init=worker_init,
        launcher=manager_launcher(launcher or SrunLauncher(overrides=overrides), container))
    kwargs: Dict[str, Any] = {"provider": provider,
                              "address": interchange_address("perlmutter", address, interface)}
    if gpus:
        kwargs.update(available_accelerators=gpus, max_workers_per_node=gpus)
    else:
        kwargs.update(max_workers_per_node=node["cores"])
    kwargs.update(executor_options)
    return kwargs


def perlmutter(account: str, qos: str = "regular", *, label: str = "perlmutter",
               config_options: Optional[Mapping[str, Any]] = None, **kwargs: Any):
    """A ``parsl.Config`` for Perlmutter; parameters as :func:`perlmutter_executor_kwargs`, plus ``label``
    and ``config_options``."""
    return parsl_config(label, perlmutter_executor_kwargs(account, qos, **kwargs), **dict(config_options or {}))
