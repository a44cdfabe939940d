"""OLCF Frontier (Slurm; managers started by srun).  Parameters common to every site are described in
:mod:`faasx.configs`."""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

from faasx.configs.site import check_options, interchange_address, manager_launcher, parsl_config

__all__ = ["frontier", "frontier_executor_kwargs", "FRONTIER"]

#: Node facts: one 64-core EPYC of which 8 are reserved for the system (low-noise mode), 4 AMD MI250X =
#: 8 GCDs, each a device for ROCR_VISIBLE_DEVICES.
FRONTIER = {"cores": 56, "accelerators": 8, "interface": "hsn0"}


def frontier_executor_kwargs(account: str, partition: str = "batch", *, walltime: str = "00:30:00",
                             nodes_per_block: int = 1, init_blocks: int = 1, min_blocks: int = 0,
                             max_blocks: int = 1, worker_init: str = "", scheduler_options: str = "",
                             address: Optional[str] = None, interface: Optional[str] = FRONTIER["interface"],
                             launcher: Any = None, container: Optional[Mapping[str, Any]] = None,
                             **executor_options: Any) -> Dict[str, Any]:
    """OLCF Frontier: Slurm, 8 AMD GCDs and 56 usable cores per node.

    One manager per node through ``srun --ntasks-per-node=1 --cpus-per-task=56 --gpus-per-node=8``; eight
    workers per node, each with its own GCD (``ROCR_VISIBLE_DEVICES=0..7``).

    Parameters
    ----------
    account : str
        OLCF project (``#SBATCH --account``, e.g. ``abc123``).
    partition : str
        ``batch`` or ``extended``.
    interface : str
        Network interface of the login node that compute nodes reach (``hsn0``).
    """
    check_options("frontier", executor_options)
    from faasx.launchers import SrunLauncher
    from faasx.providers import SlurmProvider
    gpus = FRONTIER["accelerators"]
    site_launcher = launcher or SrunLauncher(overrides=f"--cpus-per-task={FRONTIER['cores']} --gpus-per-node={gpus}")
    provider = SlurmProvider(
        account=account, partition=partition, walltime=walltime, nodes_per_block=nodes_per_block,
        init_blocks=init_blocks, min_blocks=min_blocks, max_blocks=max_blocks, exclusive=True,
        scheduler_options=scheduler_options, worker_init=worker_init,
        launcher=manager_launcher(site_launcher, container))
    kwargs = {"provider": provider, "address": interchange_address("frontier", address, interface),
              "available_accelerators": gpus, "max_workers_per_node": gpus}
    kwargs.update(executor_options)
    return kwargs


def frontier(account: str, partition: str = "batch", *, label: str = "frontier",
             config_options: Optional[Mapping[str, Any]] = None, **kwargs: Any):
    """A ``parsl.Config`` for Frontier; parameters as :func:`frontier_executor_kwargs`, plus ``label`` and
    ``config_options``."""
    return parsl_config(label, frontier_executor_kwargs(account, partition, **kwargs), **dict(config_options or {}))
