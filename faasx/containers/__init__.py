"""Per-function containers and containerized managers: one feature, three parts.

funcX let each registered function name a container; a manager then starts workers *inside* that
container and routes the function's tasks only to them (``docs/containers.md``).  A site may also run
its managers themselves in a container (``docs/clusters.md``).  The parts, from the pure to the ones
with processes::

    engines     the container engines: validate a spec, its routing key, the argv that runs a command
                in a container (podman, docker, apptainer/singularity, shifter).  Pure, light: imported
                here, so ``faasx.containers.container_command`` etc. work.
    workers     ``ContainerWorkers``: the manager's workers inside containers -- started on demand,
                linked to the manager, kept warm, retired, failed clearly when the image is broken.
                Imported by ``faasx.executor.manager`` (needs ZeroMQ).
    launchers   ``PodmanLauncher``, ``DockerLauncher``, ``ApptainerLauncher``/``SingularityLauncher``,
                ``ShifterLauncher``: the manager command wrapped in a container, for a provider.
                Public as ``faasx.launchers.*`` (needs Parsl).

Only ``engines`` is imported by ``import faasx.containers``: neither Parsl nor ZeroMQ is loaded by it.
"""
from faasx.containers.engines import (CONTAINER_TYPES, SIGNAL_FORWARDER, ContainerStartError,  # noqa: F401
                                      InvalidContainerSpec, available_runtimes, container_command, container_key,
                                      normalize_binds, remove_command, validate_container_spec)
from faasx.containers.engines import __all__  # noqa: F401
