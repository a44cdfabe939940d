"""faasx: serverless supercomputing -- run Python functions on laptops, HPC clusters and Kubernetes.

``faasx.Executor`` is a ``concurrent.futures.Executor`` for plain scripts; ``faasx.FaaSExecutor`` is the
same engine as a Parsl executor.  Providers (``faasx.providers``) get blocks of nodes from a scheduler,
launchers (``faasx.launchers``) start a manager on each node.  See ``faasx.executor`` for the process
model.

Names are imported lazily: compute-node processes import ``faasx`` too and must not pay for Parsl.
"""
from faasx.version import VERSION as __version__

__all__ = ["Executor", "FaaSExecutor", "MPIExecutor", "progress", "__version__"]


def __getattr__(name: str):
    if name == "Executor":
        from faasx.executor.standalone import Executor
        return Executor
    if name == "FaaSExecutor":
        from faasx.executor.parsl_executor import FaaSExecutor
        return FaaSExecutor
    if name == "MPIExecutor":
        from faasx.executor.mpi_executor import MPIExecutor
        return MPIExecutor
    if name in ("providers", "launchers", "errors", "configs", "mpi", "progress"):   # faasx.progress is callable
        import importlib
        return importlib.import_module(f"faasx.{name}")
    raise AttributeError(f"module 'faasx' has no attribute {name!r}")
