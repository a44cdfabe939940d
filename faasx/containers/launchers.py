"""Container launchers: start the manager command inside a container on each node of a block.

(``faasx.containers.launchers``; public as ``faasx.launchers.PodmanLauncher`` etc.)

``PodmanLauncher(image, ...)`` turns the manager command into ``podman run ... IMAGE /bin/sh -c
'COMMAND'`` and hands that to an inner launcher (``SingleNodeLauncher`` unless ``launcher=`` names
another), so ``PodmanLauncher(img, launcher=SrunLauncher())`` starts one container per node through
srun.  Whatever the engine, the container gets what a manager needs:

- the host's network (the manager connects out to the interchange over TCP);
- the job's working directory, bind-mounted at the same path and used as the working directory
  (the run directory with the manager's logs lives there), plus any ``binds``;
- the job's ``FAASX_*`` and ``PARSL_*`` variables (e.g. ``FAASX_WALLTIME_END``, which tells the manager
  when to drain), matched when the fragment runs, and any fixed ``env``;
- the inner launcher's arguments: under ``SingleNodeLauncher`` the copy index is ``$1`` inside too.

The image must contain Python with faasx installed (same versions as the submit side) and
``/bin/sh``.  Fragments need bash, like every launcher's.  Only podman can be run on faasx's CI
machines; the Docker, Apptainer/Singularity and Shifter commands are checked by their construction.
"""
from __future__ import annotations

import os
import re
import shlex
from typing import Iterable, Mapping, Optional, Sequence, Union

from parsl.launchers.base import Launcher

from faasx.containers.engines import SIGNAL_FORWARDER, normalize_binds

__all__ = ["ContainerLauncher", "PodmanLauncher", "DockerLauncher", "ApptainerLauncher", "SingularityLauncher",
           "ShifterLauncher"]

# Shell words that must be expanded when the fragment runs, not quoted.
_CWD = '"$PWD"'
_CWD_BIND = '"$PWD:$PWD"'

_PATTERN = re.compile(r"^[A-Za-z_*?][A-Za-z0-9_*?]*$")


def _checked_image(cls_name: str, image) -> str:
    if not isinstance(image, str) or not image.strip() or any(c.isspace() for c in image.strip()):
        raise ValueError(f"{cls_name} needs an image name without whitespace, got {image!r}")
    return image.strip()


def _checked_env(env: Optional[Mapping[str, str]]) -> dict:
    env = {k: str(v) for k, v in (env or {}).items()}
    for name in env:
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"environment variable name {name!r} is not a valid identifier")
    return env


def _checked_passthrough(patterns: Sequence[str]) -> list:
    patterns = list(patterns)
    for pattern in patterns:
        if not isinstance(pattern, str) or not _PATTERN.match(pattern):
            raise ValueError(f"env_passthrough entry {pattern!r} must be a variable name or a glob such as "
                             "'FAASX_*' (letters, digits, '_', '*', '?')")
    return patterns


class ContainerLauncher(Launcher):
    """Base class: wrap the command in a container engine's invocation, then in an inner launcher.

    Parameters
    ----------
    image : str
        The image: a registry reference or local tag for podman/docker (``"localhost/sci:1"``), a ``.sif``
        path or URI for Apptainer, a Shifter image (``"docker:repo/name:tag"``; a bare name gets
        ``docker:``).
    binds : iterable
        Extra host paths to mount: ``"/path"`` (same path inside), ``"/src:/dst"``, ``"/src:/dst:ro"`` or
        tuples; taken literally (expand ``$SCRATCH`` with ``os.path.expandvars`` first if you need it).
    options : list of str or str
        Extra engine options placed before the image, e.g. ``["--nv"]`` for Apptainer on NVIDIA GPUs,
        ``["--device", "nvidia.com/gpu=all"]`` for podman with CDI, ``"--userns=keep-id"``.  A string is
        split with shell rules.
    env : mapping
        Fixed variables to set inside the container.
    env_passthrough : sequence of str
        Names or glob patterns (``"FAASX_*"``) of the job's exported variables to pass into the container,
        matched when the fragment runs on the node.
    bind_cwd : bool
        Mount the job's working directory at the same path and start there.
    launcher : Launcher, optional
        Inner launcher that starts the container command on the nodes (default ``SingleNodeLauncher``).
    executable : str, optional
        The engine binary (default: the engine's name).
    debug : bool
        Passed to the default inner launcher.
    """

    #: engine name, set by subclasses
    engine = ""
    #: default for ``bind_cwd``
    default_bind_cwd = True

    def __init__(self, image: str, binds: Iterable = (), options: Union[Sequence[str], str, None] = (),
                 env: Optional[Mapping[str, str]] = None,
                 env_passthrough: Sequence[str] = ("FAASX_*", "PARSL_*"),
                 bind_cwd: Optional[bool] = None, launcher: Optional[Launcher] = None,
                 executable: Optional[str] = None, debug: bool = True):
        super().__init__(debug=debug)
        self.image = _checked_image(type(self).__name__, image)
        self.binds = list(binds)
        self._mounts = normalize_binds(self.binds, engine=self.engine)
        if options is None:
            options = ()
        self.options = shlex.split(options) if isinstance(options, str) else [str(o) for o in options]
        self.env = _checked_env(env)
        self.env_passthrough = _checked_passthrough(env_passthrough)
        self.bind_cwd = self.default_bind_cwd if bind_cwd is None else bool(bind_cwd)
        if launcher is None:
            # imported here: faasx.launchers imports this module (the public names live there)
            from faasx.launchers.batch import SingleNodeLauncher
            launcher = SingleNodeLauncher(debug=debug)
        if not callable(launcher):
            raise TypeError(f"launcher must be a Parsl-style launcher, got {launcher!r}")
        self.launcher = launcher
        self.executable = executable or self.engine

    # -- the part subclasses provide ---------------------------------------------------------------------
    def wrap(self, command: str) -> str:
        """The shell line that runs ``command`` (a shell string) inside the container."""
        raise NotImplementedError

    # -- shared pieces -----------------------------------------------------------------------------------
    def _passthrough_loop(self, action: str) -> str:
        """A bash loop running ``action`` (which sees ``$faasx_v``) for every exported variable matching
        ``env_passthrough``; empty when nothing is passed through."""
        if not self.env_passthrough:
            return ""
        patterns = "|".join(self.env_passthrough)
        return f"for faasx_v in $(compgen -e); do case $faasx_v in {patterns}) {action};; esac; done"

    def _cwd_mount(self, flag: str) -> tuple:
        """(prelude, word) mounting the job's working directory with ``flag`` (``--volume=$PWD:$PWD``).

        When an explicit bind already has ``$PWD`` as its destination the engines refuse a second one
        ("duplicate mount destination"), and ``$PWD`` is known only when the fragment runs: the prelude
        then drops the cwd mount for that case.
        """
        if not self._mounts:
            return "", flag
        destinations = "|".join(shlex.quote(m.split(":")[1]) for m in self._mounts)
        prelude = f'faasx_cwd=({flag}); case "$PWD" in {destinations}) faasx_cwd=();; esac;'
        return prelude, '"${faasx_cwd[@]}"'

    def _inner_shell(self, command: str) -> list:
        # "$@" hands on the inner launcher's arguments: SingleNodeLauncher's copy index stays $1 inside
        return ["/bin/sh", "-c", shlex.quote(command), "faasx-launch", '"$@"']

    def __call__(self, command: str, tasks_per_node: int, nodes_per_block: int, script_dir: str = "") -> str:
        wrapped = self.wrap(command)
        if script_dir:
            return self.launcher(wrapped, tasks_per_node, nodes_per_block, script_dir)
        return self.launcher(wrapped, tasks_per_node, nodes_per_block)


class PodmanLauncher(ContainerLauncher):
    """Start the manager in a podman container (``podman run --rm --network=host ...``).

    The container is removed when the manager ends (``--rm``); a small ``/bin/sh`` signal forwarder is
    its PID 1, so the SIGTERM that ``podman run`` relays when a block is cancelled reaches the manager.
    The container carries the label ``faasx.role=manager`` (``podman ps --filter label=faasx.role=manager``
    finds them).  SELinux relabelling is off (``--security-opt label=disable``) so bind mounts stay
    readable on SELinux hosts.  Rootless podman on a cluster often wants ``options="--userns=keep-id"``
    so files written to the working directory belong to you.  Parameters: see :class:`ContainerLauncher`.
    """

    engine = "podman"

    def wrap(self, command: str) -> str:
        prelude, cwd_mount = self._cwd_mount(f"--volume={_CWD_BIND}") if self.bind_cwd else ("", "")
        words = [prelude] if prelude else []
        words += [shlex.quote(self.executable), "run", "--rm", "--network=host", "--security-opt=label=disable",
                  "--label=faasx.role=manager"]
        loop = self._passthrough_loop('printf -- "--env=%s " "$faasx_v"')
        if loop:
            # --env=NAME (no value): the engine copies the value from its own environment, i.e. the job's
            words.append(f"$({loop})")
        words += [shlex.quote(f"--env={k}={v}") for k, v in sorted(self.env.items())]
        if self.bind_cwd:
            words += [cwd_mount, f"--workdir={_CWD}"]
        words += [shlex.quote(f"--volume={m}") for m in self._mounts]
        words += [shlex.quote(o) for o in self.options]
        words += [shlex.quote(self.image), "/bin/sh", "-c", shlex.quote(SIGNAL_FORWARDER), "faasx-init"]
        return " ".join(words + self._inner_shell(command))


class DockerLauncher(PodmanLauncher):
    """Start the manager in a Docker container; the same command line as :class:`PodmanLauncher`.

    Docker cannot run on faasx's CI machines: this launcher is tested by the command it builds.
    """

    engine = "docker"


class ApptainerLauncher(ContainerLauncher):
    """Start the manager with ``apptainer exec`` (``SingularityLauncher``: the same with ``singularity``).

    Apptainer shares the host's network and (unless ``--cleanenv``/``--containall`` are among the
    options) its environment; passed-through and fixed variables are also exported as
    ``APPTAINERENV_NAME`` (``SINGULARITYENV_NAME`` for ``singularity``), which reach the container even
    with those options.  Add ``options=["--nv"]`` (NVIDIA) or ``["--rocm"]`` (AMD) to see GPUs.
    Apptainer cannot run on faasx's CI machines: this launcher is tested by the command it builds.
    Parameters: see :class:`ContainerLauncher`.
    """

    engine = "apptainer"

    def _env_prefix(self) -> str:
        return "SINGULARITYENV_" if os.path.basename(self.executable).startswith("singularity") else "APPTAINERENV_"

    def wrap(self, command: str) -> str:
        prefix = self._env_prefix()
        lines = []
        loop = self._passthrough_loop(f'export "{prefix}$faasx_v=${{!faasx_v}}"')
        if loop:
            lines.append(loop + ";")
        # NAME=value before the command: the name must stay unquoted for bash to see an assignment
        prelude, cwd_mount = self._cwd_mount(f"--bind={_CWD}") if self.bind_cwd else ("", "")
        if prelude:
            lines.append(prelude)
        words = [f"{prefix}{k}={shlex.quote(v)}" for k, v in sorted(self.env.items())]
        words += [shlex.quote(self.executable), "exec"]
        if self.bind_cwd:
            words += [cwd_mount, f"--pwd={_CWD}"]
        words += [shlex.quote(f"--bind={m}") for m in self._mounts]
        words += [shlex.quote(o) for o in self.options]
        words.append(shlex.quote(self.image))
        return " ".join(lines + words + self._inner_shell(command))


class SingularityLauncher(ApptainerLauncher):
    """:class:`ApptainerLauncher` for sites that still ship ``singularity`` (SingularityCE, Singularity 3)."""

    engine = "singularity"


class ShifterLauncher(ContainerLauncher):
    """Start the manager with NERSC's ``shifter --image=... -- /bin/sh -c 'COMMAND'``.

    Shifter shares the host's network, keeps the caller's environment (so ``FAASX_*`` pass through by
    themselves; fixed ``env`` values are set on the shifter process) and its working directory, and
    mounts the site's file systems itself (at NERSC: home, CFS, scratch), so ``bind_cwd`` is off by
    default; a ``--volume`` for the working directory would be refused where it overlaps a site mount.
    Shifter images are pulled beforehand with ``shifterimg pull``.  Shifter cannot run on faasx's CI
    machines: this launcher is tested by the command it builds.  Parameters: see
    :class:`ContainerLauncher`.
    """

    engine = "shifter"
    default_bind_cwd = False

    def wrap(self, command: str) -> str:
        image = self.image if self.image.startswith(("docker:", "id:", "custom:", "local:")) else "docker:" + self.image
        prelude, cwd_mount = self._cwd_mount(f"--volume={_CWD_BIND}") if self.bind_cwd else ("", "")
        words = [prelude] if prelude else []
        words += [f"{k}={shlex.quote(v)}" for k, v in sorted(self.env.items())]
        words += [shlex.quote(self.executable), shlex.quote(f"--image={image}")]
        if self.bind_cwd:
            words += [cwd_mount, f"--workdir={_CWD}"]
        words += [shlex.quote(f"--volume={m}") for m in self._mounts]
        words += [shlex.quote(o) for o in self.options]
        words.append("--")
        return " ".join(words + self._inner_shell(command))
