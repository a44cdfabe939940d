"""What every site configuration shares: the interchange address, the optional container around the
manager, and turning executor keyword arguments into a ``parsl.Config``."""
from __future__ import annotations

import socket
from typing import Any, Dict, Mapping, Optional

from faasx.errors import FaaSXError

__all__ = ["SiteConfigError", "interchange_address", "manager_launcher", "parsl_config", "check_options"]

#: FaaSExecutor options a site function sets itself; passing them again would be ambiguous.
_SET_BY_SITE = ("provider",)


class SiteConfigError(FaaSXError, ValueError):
    """A site configuration cannot be built as asked (e.g. its network interface is not on this host)."""


def interchange_address(site: str, address: Optional[str], interface: Optional[str],
                        hostname: bool = False) -> Optional[str]:
    """The address managers connect to, decided when the configuration function is called.

    ``address`` wins when given.  Otherwise the IPv4 address of ``interface`` on this host (the login
    node the configuration is built on; ``parsl.addresses.address_by_interface``), or this host's name
    when ``hostname`` is true, or ``None``: then the executor offers all of the host's addresses and
    each manager uses the first one that answers.
    """
    if address:
        return address
    if interface:
        from parsl.addresses import address_by_interface
        try:
            return address_by_interface(interface)
        except OSError as e:
            raise SiteConfigError(
                f"{site}: network interface {interface!r} not found on {socket.gethostname()} ({e}). Build the "
                f"{site} configuration on one of its login nodes, or pass address='...' (an address the compute "
                f"nodes can reach) or interface=None (managers probe every address of this host).") from None
    if hostname:
        from parsl.addresses import address_by_hostname
        return address_by_hostname()
    return None


_CONTAINER_LAUNCHERS = {
    "podman": "PodmanLauncher", "docker": "DockerLauncher", "apptainer": "ApptainerLauncher",
    "singularity": "SingularityLauncher", "shifter": "ShifterLauncher",
}


def manager_launcher(site_launcher: Any, container: Optional[Mapping[str, Any]]) -> Any:
    """The site's launcher, or -- with ``container`` (a faasx container spec: ``{"type": ..., "image": ...,
    "options": ...}``, plus optional ``"binds"``) -- a container launcher that runs the manager in that
    container, started on the nodes by the site's launcher."""
    if container is None:
        return site_launcher
    from faasx import launchers
    from faasx.containers import validate_container_spec
    spec = dict(container)
    binds = spec.pop("binds", ())
    norm = validate_container_spec(spec)
    cls = getattr(launchers, _CONTAINER_LAUNCHERS[norm["type"]])
    return cls(norm["image"], binds=binds, options=norm["options"], launcher=site_launcher)


def check_options(site: str, options: Mapping[str, Any]) -> None:
    clash = [k for k in _SET_BY_SITE if k in options]
    if clash:
        raise SiteConfigError(f"{site}: {', '.join(clash)} is set by the site configuration; build the executor "
                              "yourself if you need another one")


def parsl_config(label: str, kwargs: Dict[str, Any], **config_options: Any):
    """A ``parsl.Config`` with one ``faasx.FaaSExecutor(label=label, **kwargs)``.

    ``config_options`` go to ``parsl.Config`` (e.g. ``run_dir``, ``retries``, ``strategy``).
    """
    from parsl.config import Config

    from faasx import FaaSExecutor
    return Config(executors=[FaaSExecutor(label=label, **kwargs)], **config_options)

