"""Launchers: start the manager command on the nodes of a block (Parsl's launcher interface).

A provider calls ``launcher(command, tasks_per_node, nodes_per_block)`` and puts the shell fragment it
returns at the end of the block's job script.  faasx's launchers keep Parsl's names and arguments, so a
Parsl configuration ports by changing its import, and they work under Parsl's own providers too.

Process launchers (``faasx.launchers.batch``; see there for what they fix in Parsl's):

=====================  ==========================================================================
``SingleNodeLauncher``  copies of the command on the node running the script (the default)
``SrunLauncher``        ``srun`` across a Slurm allocation (Perlmutter, Frontier, generic Slurm)
``MpiExecLauncher``     ``mpiexec`` across a PBS allocation (Polaris, Aurora)
``AprunLauncher``       Cray ``aprun`` (Cobalt on Theta)
=====================  ==========================================================================

Container launchers (``faasx.launchers.container``) start the manager inside a container and hand that
to one of the above (``launcher=``): ``PodmanLauncher``, ``DockerLauncher``, ``ApptainerLauncher``
(``SingularityLauncher`` for ``singularity``), ``ShifterLauncher``.  Per-*function* containers, started
by a manager for its workers, are ``faasx.containers``.

Parsl launchers that faasx does not change are re-exported as they are: ``SimpleLauncher``,
``WrappedLauncher``, ``GnuParallelLauncher``, ``MpiRunLauncher``, ``JsrunLauncher``, ``SrunMPILauncher``.
"""
from parsl.launchers import (GnuParallelLauncher, JsrunLauncher, MpiRunLauncher, SimpleLauncher,
                             SrunMPILauncher, WrappedLauncher)
from parsl.launchers.base import Launcher

from faasx.launchers.batch import AprunLauncher, MpiExecLauncher, SingleNodeLauncher, SrunLauncher
from faasx.launchers.container import (ApptainerLauncher, ContainerLauncher, DockerLauncher, PodmanLauncher,
                                       ShifterLauncher, SingularityLauncher)

__all__ = [
    "Launcher",
    "SingleNodeLauncher", "SrunLauncher", "AprunLauncher", "MpiExecLauncher",
    "ContainerLauncher", "PodmanLauncher", "DockerLauncher", "ApptainerLauncher", "SingularityLauncher",
    "ShifterLauncher",
    "SimpleLauncher", "WrappedLauncher", "GnuParallelLauncher", "MpiRunLauncher", "JsrunLauncher",
    "SrunMPILauncher",
]
