"""Container launchers, defined in ``faasx.containers.launchers`` (the container feature's package);
this module keeps their import path, ``faasx.launchers.container``."""
from faasx.containers.launchers import (ApptainerLauncher, ContainerLauncher, DockerLauncher,  # noqa: F401
                                        PodmanLauncher, ShifterLauncher, SingularityLauncher, __all__)
