"""Providers: get blocks of nodes from a scheduler (Parsl's ``ExecutionProvider`` interface).

``LocalProvider``, ``SlurmProvider``, ``PBSProProvider``, ``CobaltProvider`` and ``KubernetesProvider``
take the constructor arguments of Parsl's providers of the same name, so a Parsl configuration ports by
changing its import; they also work under Parsl's own executors.  Helpers shared by the batch-scheduler
providers are in ``faasx.providers.base``.

Every name is imported on first use: ``import faasx.providers`` stays cheap, and the ``kubernetes``
client package is imported only when ``KubernetesProvider`` is used.
"""
import importlib

__all__ = ["LocalProvider", "SlurmProvider", "PBSProProvider", "CobaltProvider", "KubernetesProvider"]

_MODULE_OF = {
    "LocalProvider": "faasx.providers.local",
    "SlurmProvider": "faasx.providers.slurm",
    "PBSProProvider": "faasx.providers.pbspro",
    "CobaltProvider": "faasx.providers.cobalt",
    "KubernetesProvider": "faasx.providers.kubernetes",
}


def __getattr__(name: str):
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'faasx.providers' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # cache: later lookups skip __getattr__
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
