"""Container engines: validate a container spec and build the command that starts a worker in it.

(``faasx.containers.engines``; everything here is re-exported as ``faasx.containers.*``.)

funcX let each registered function name a container; a manager then starts workers *inside* that
container and routes the function's tasks only to them.  This module is the part of that which knows
the container engines.  It is pure (no processes, no I/O) and imports nothing heavy, because the manager
on a compute node imports it::

    spec = validate_container_spec({"type": "podman", "image": "localhost/sci:1"})
    key = container_key(spec)                     # routing key: "podman-3f1c9a0b52e4d7a1"
    argv = container_command(spec, ["faasx-worker", "--ipc", ipc_path],
                             binds=[ipc_dir], env={"CUDA_VISIBLE_DEVICES": "0"})
    subprocess.Popen(argv)                        # a worker, inside the container

What every command guarantees, whatever the engine:

- host networking (the worker and the manager share the node's network; podman/docker get
  ``--network=host``, Apptainer/Singularity and Shifter share it by default);
- the ``binds`` (at least the worker's IPC directory, so the worker reaches the manager's ``ipc://``
  socket) mounted at the same paths inside the container;
- ``FAASX_*`` variables of the calling process, and the ``env`` given, set inside the container.  The
  returned argv is self-contained: it carries the values, so it can be run with any environment
  (values therefore appear on the command line in ``ps``: pass secrets through files, not ``env``);
- for podman/docker: ``--rm`` (no stopped containers pile up), ``-i`` (stdin stays connected, so a
  worker may talk to its manager over pipes), SELinux relabelling off (``--security-opt
  label=disable``: bind mounts stay readable on SELinux hosts without ``:z``) and a tiny ``/bin/sh``
  signal forwarder as PID 1, so a SIGTERM sent to the ``podman run`` process reaches the worker
  (a process that is PID 1 ignores signals it has no handler for) and the container is removed.

The spec is funcX's: ``{"type": "podman"|"docker"|"apptainer"|"singularity"|"shifter",
"image": str, "options": list[str] | str | None}``; ``options`` are extra engine options inserted
before the image (a string is split like a shell would).
"""
from __future__ import annotations

import hashlib
import json
import os
import shlex
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

from faasx.errors import FaaSXError

__all__ = [
    "CONTAINER_TYPES", "InvalidContainerSpec", "validate_container_spec", "container_key",
    "container_command", "normalize_binds", "SIGNAL_FORWARDER", "ContainerStartError", "available_runtimes",
    "remove_command",
]

#: Container engines faasx can start workers in.
CONTAINER_TYPES = ("podman", "docker", "apptainer", "singularity", "shifter")

_SPEC_KEYS = ("type", "image", "options")

# Shifter's --image wants "type:identifier"; a bare "ubuntu:22.04" would be read as type "ubuntu".
_SHIFTER_IMAGE_TYPES = ("docker:", "id:", "custom:", "local:")

#: PID 1 inside podman/docker containers.  A plain ``sh -c cmd`` or the worker itself as PID 1 would
#: ignore the SIGTERM that ``podman run`` forwards (the kernel drops signals to PID 1 that it has no
#: handler for), leaving a running container behind.  This one forwards TERM/INT/HUP to the command
#: (also one that arrives before the command started) and exits with its status.  It has no single
#: quotes, so it stays readable when a launcher quotes it once more.  Stdin is handed on explicitly (fd 3) because POSIX shells give
#: background jobs /dev/null as stdin.  Run as: sh -c SIGNAL_FORWARDER faasx-init CMD ARGS...
SIGNAL_FORWARDER = (
    'trap "term=1; kill -TERM \\$child 2>/dev/null" TERM INT HUP; '
    'exec 3<&0; "$@" <&3 3<&- & child=$!; exec 3<&-; '
    '[ -z "$term" ] || kill -TERM $child; '
    'while :; do wait $child; rc=$?; kill -0 $child 2>/dev/null || exit $rc; done'
)


class InvalidContainerSpec(FaaSXError, ValueError):
    """A container specification is malformed: unknown type, no image, bad options or binds."""


class ContainerStartError(FaaSXError, RuntimeError):
    """A task's container could not be started on its node (image missing, engine error, no Python or
    faasx in the image, version mismatch).  The message carries the engine's own output and the fix."""


def available_runtimes(which=None) -> list:
    """The container engines on this node's PATH (``CONTAINER_TYPES`` order)."""
    if which is None:
        from shutil import which
    return [t for t in CONTAINER_TYPES if which(t)]


def remove_command(ctype: str, name: str, executable: Optional[str] = None) -> Optional[list]:
    """The command that force-removes the named container (podman/docker), or None for engines whose
    containers are plain processes of the caller (apptainer, singularity, shifter)."""
    exe = executable or ctype
    if ctype == "podman":
        return [exe, "rm", "-f", "-t", "0", name]
    if ctype == "docker":
        return [exe, "rm", "-f", name]
    return None


Bind = Union[str, Sequence[str]]


def validate_container_spec(spec: Any) -> dict:
    """Check a container spec and return its normalized form.

    Parameters
    ----------
    spec : mapping
        ``{"type": ..., "image": ..., "options": ...}``.  ``type`` is case-insensitive; ``options`` may be
        a list of strings, one string (split with shell rules) or ``None``.  A ``"key"`` entry (the
        spec's :func:`container_key`, carried along with it) is checked and left out of the result.

    Returns
    -------
    dict
        ``{"type": str (lower case), "image": str, "options": list[str]}`` -- a new dict; the input is
        not modified.  Validating a normalized spec returns an equal dict.

    Raises
    ------
    InvalidContainerSpec
        With a message naming the offending field and the accepted values.
    """
    if not isinstance(spec, Mapping):
        raise InvalidContainerSpec(
            f"container spec must be a dict like {{'type': 'podman', 'image': 'repo/name:tag'}}, "
            f"got {type(spec).__name__}")
    unknown = sorted(str(k) for k in spec if k not in _SPEC_KEYS and k != "key")
    if unknown:
        raise InvalidContainerSpec(
            f"container spec has unknown key(s) {unknown}: the accepted keys are {list(_SPEC_KEYS)}")
    ctype = _spec_type(spec.get("type"))
    image = _spec_image(ctype, spec.get("image"))
    norm = {"type": ctype, "image": image, "options": _normalize_options(spec.get("options"))}
    if "key" in spec and spec["key"] != container_key(norm):
        # a spec carried along with its routing key (as the engine stores it) must still match it
        raise InvalidContainerSpec(f"container spec's 'key' {spec['key']!r} does not match its contents "
                                   f"(expected {container_key(norm)!r})")
    return norm


def _spec_type(ctype: Any) -> str:
    if not isinstance(ctype, str) or not ctype.strip():
        raise InvalidContainerSpec(
            f"container spec needs a 'type', one of {list(CONTAINER_TYPES)}; got {ctype!r}")
    if ctype.strip().lower() not in CONTAINER_TYPES:
        raise InvalidContainerSpec(
            f"unknown container type {ctype!r}: use one of {list(CONTAINER_TYPES)}")
    return ctype.strip().lower()


def _spec_image(ctype: str, image: Any) -> str:
    if not isinstance(image, str) or not image.strip():
        raise InvalidContainerSpec(
            f"container spec of type {ctype!r} needs an 'image' (e.g. 'docker.io/library/python:3.11' or, "
            f"for apptainer, a .sif path); got {image!r}")
    image = image.strip()
    if any(c.isspace() for c in image):
        raise InvalidContainerSpec(f"container image {image!r} contains whitespace")
    if image.startswith("-"):
        # would be parsed as an engine option, not as the image
        raise InvalidContainerSpec(f"container image {image!r} must not start with '-'")
    return image


def _normalize_options(options: Any) -> list:
    if options is None:
        return []
    if isinstance(options, str):
        try:
            return shlex.split(options)
        except ValueError as e:
            raise InvalidContainerSpec(f"container options {options!r} cannot be split: {e}") from None
    if isinstance(options, (list, tuple)):
        bad = [o for o in options if not isinstance(o, str)]
        if bad:
            raise InvalidContainerSpec(f"container options must be strings; got {bad!r}")
        return list(options)
    raise InvalidContainerSpec(
        f"container options must be a list of strings, a string or None; got {type(options).__name__}")


def container_key(spec: Any) -> str:
    """A stable routing key for a container spec: ``"<type>-<16 hex digits>"``.

    Equal specs (after normalization: ``"Podman"`` vs ``"podman"``, ``"-a b"`` vs ``["-a", "b"]``) give
    the same key in every process and every Python run; a different type, image or option list gives a
    different key.  The key contains only ``[a-z0-9-]``, so it is safe in file names, container labels
    and log lines.
    """
    norm = validate_container_spec(spec)
    canonical = json.dumps(norm, sort_keys=True, separators=(",", ":"))
    return f"{norm['type']}-{hashlib.sha256(canonical.encode()).hexdigest()[:16]}"


def normalize_binds(binds: Iterable[Bind], *, engine: str = "podman") -> list:
    """Turn bind specifications into ``"src:dst"`` / ``"src:dst:opts"`` strings.

    Each bind is a path (mounted at the same path), a ``"src:dst[:opts]"`` string, or a ``(src, dst)``
    / ``(src, dst, opts)`` tuple.  Paths must be absolute: a relative source would mean a *named volume*
    to docker/podman, which is never what a faasx bind wants.  Paths containing ``:`` (every engine's
    separator) or, for Apptainer/Singularity, ``,`` (its list separator) are rejected.
    """
    return [_normalize_bind(bind, engine) for bind in binds]


def _bind_parts(bind: Bind) -> list:
    """A bind as [src, dst] or [src, dst, opts] (paths unchecked)."""
    if isinstance(bind, str):
        parts = bind.split(":")
        return [parts[0], parts[0]] if len(parts) == 1 else parts
    if isinstance(bind, (list, tuple)) and all(isinstance(p, str) for p in bind):
        for p in bind[:2]:
            if ":" in p:
                raise InvalidContainerSpec(f"bind path {p!r} contains ':', which container engines "
                                           "use as the source:destination separator")
        return list(bind)
    raise InvalidContainerSpec(f"bind {bind!r} must be a path, 'src:dst[:opts]' or a (src, dst[, opts]) tuple")


def _normalize_bind(bind: Bind, engine: str) -> str:
    parts = _bind_parts(bind)
    if len(parts) not in (2, 3) or not all(parts[:2]):
        raise InvalidContainerSpec(f"bind {bind!r} is not 'src', 'src:dst' or 'src:dst:opts'")
    for p in parts[:2]:
        if not os.path.isabs(p):
            raise InvalidContainerSpec(f"bind path {p!r} in {bind!r} must be absolute")
    if engine in ("apptainer", "singularity") and any("," in p for p in parts):
        raise InvalidContainerSpec(f"bind {bind!r} contains ',', which {engine} uses to separate binds")
    if len(parts) == 3 and not parts[2]:
        parts = parts[:2]
    return ":".join(parts)


def _environment(env: Optional[Mapping[str, str]], environ: Optional[Mapping[str, str]],
                 passthrough: Sequence[str]) -> dict:
    source = os.environ if environ is None else environ
    merged = {k: v for k, v in source.items() if any(k.startswith(p) for p in passthrough)}
    for k, v in (env or {}).items():
        if not isinstance(k, str) or not k.isidentifier():
            raise InvalidContainerSpec(f"environment variable name {k!r} is not a valid identifier")
        merged[k] = str(v)
    return dict(sorted(merged.items()))


def container_command(spec: Any, inner_argv: Sequence[str], *, binds: Iterable[Bind] = (),
                      env: Optional[Mapping[str, str]] = None, workdir: Optional[str] = None,
                      name: Optional[str] = None, executable: Optional[str] = None,
                      passthrough: Sequence[str] = ("FAASX_",),
                      environ: Optional[Mapping[str, str]] = None, preserve_fds: int = 0) -> list:
    """The argv that runs ``inner_argv`` inside the container described by ``spec``.

    Parameters
    ----------
    spec : mapping
        A container spec (see :func:`validate_container_spec`); validated here.
    inner_argv : sequence of str
        The command to run in the container, e.g. ``["faasx-worker", "--ipc", "/run/x/w.sock"]``.
        It is passed as separate arguments (never through a shell), so it needs no quoting.
    binds : iterable
        Host paths to mount (see :func:`normalize_binds`); the worker's IPC directory must be one of
        them for the worker to reach an ``ipc://`` socket.
    env : mapping, optional
        Variables to set inside the container (e.g. ``CUDA_VISIBLE_DEVICES``); they override passed-through
        values of the same name.  Only these and the passed-through ones are set: the host's ``PATH`` and
        ``HOME`` are not forced on the image.
    workdir : str, optional
        Working directory inside the container (default: the engine's; the image's for podman/docker).
    name : str, optional
        Container name (podman/docker only), so a manager can ``podman rm -f NAME`` a worker it lost.
    executable : str, optional
        The engine binary (default: the spec's type, e.g. ``"podman"``; for Shifter ``"shifter"``).
    passthrough : sequence of str
        Prefixes of variables copied from ``environ`` into the container (default ``("FAASX_",)``).
    environ : mapping, optional
        Where passed-through variables are read from (default ``os.environ``).
    preserve_fds : int
        podman only: pass the caller's file descriptors 3 .. 3+N-1 into the container (``--preserve-fds``),
        e.g. the socket to the manager.  The signal forwarder uses fd 3 itself, so a descriptor meant for
        the command should be at 4 or above.  Other engines refuse it (docker has no such option;
        Apptainer/Singularity/Shifter processes are children of the caller and inherit what it passes).

    Returns
    -------
    list of str

    Raises
    ------
    InvalidContainerSpec
        Bad spec, binds, environment names or an empty ``inner_argv``.
    """
    norm = validate_container_spec(spec)
    inner = [str(a) for a in inner_argv]
    ctype = norm["type"]
    _check_command_args(ctype, inner, workdir, preserve_fds)
    exe = executable or ctype
    mounts = normalize_binds(binds, engine=ctype)
    variables = _environment(env, environ, passthrough)
    if ctype in ("podman", "docker"):
        return _oci_argv(norm, exe, inner, mounts, variables, workdir, name, preserve_fds)
    if ctype in ("apptainer", "singularity"):
        return _apptainer_argv(norm, exe, inner, mounts, variables, workdir)
    return _shifter_argv(norm, exe, inner, mounts, variables, workdir)


def _check_command_args(ctype: str, inner: list, workdir: Optional[str], preserve_fds: Any) -> None:
    if not inner:
        raise InvalidContainerSpec("container_command needs a command to run in the container")
    if workdir is not None and not os.path.isabs(workdir):
        raise InvalidContainerSpec(f"workdir {workdir!r} must be an absolute path")
    if not isinstance(preserve_fds, int) or preserve_fds < 0:
        raise InvalidContainerSpec(f"preserve_fds must be a non-negative int, got {preserve_fds!r}")
    if preserve_fds and ctype != "podman":
        raise InvalidContainerSpec(f"preserve_fds is a podman option; {ctype} cannot pass file descriptors that way")


def _oci_argv(norm: dict, exe: str, inner: list, mounts: list, variables: dict, workdir: Optional[str],
              name: Optional[str], preserve_fds: int) -> list:
    """podman / docker ``run``."""
    argv = [exe, "run", "--rm", "-i", "--network=host", "--security-opt=label=disable",
            f"--label=faasx.container_key={container_key(norm)}"]
    if name:
        argv.append(f"--name={name}")
    if preserve_fds:
        argv.append(f"--preserve-fds={preserve_fds}")
    argv += [f"--volume={m}" for m in mounts]
    argv += [f"--env={k}={v}" for k, v in variables.items()]
    if workdir:
        argv.append(f"--workdir={workdir}")
    argv += norm["options"]
    # The forwarder needs /bin/sh in the image; every image that can run a Python worker has one.
    return argv + [norm["image"], "/bin/sh", "-c", SIGNAL_FORWARDER, "faasx-init"] + inner


def _apptainer_argv(norm: dict, exe: str, inner: list, mounts: list, variables: dict,
                    workdir: Optional[str]) -> list:
    """apptainer / singularity ``exec``."""
    # APPTAINERENV_X / SINGULARITYENV_X reach the container even under --cleanenv or --containall,
    # which an option list may add; ``env`` (coreutils) sets them without a shell.
    prefix = "SINGULARITYENV_" if os.path.basename(exe).startswith("singularity") else "APPTAINERENV_"
    argv = (["env"] + [f"{prefix}{k}={v}" for k, v in variables.items()]) if variables else []
    argv += [exe, "exec"]
    argv += [f"--bind={m}" for m in mounts]
    if workdir:
        argv.append(f"--pwd={workdir}")
    return argv + norm["options"] + [norm["image"]] + inner


def _shifter_argv(norm: dict, exe: str, inner: list, mounts: list, variables: dict,
                  workdir: Optional[str]) -> list:
    """shifter: it keeps the caller's environment (its --env option is a no-op in released versions), so
    the variables are set on the shifter process itself."""
    image = norm["image"]
    if not image.startswith(_SHIFTER_IMAGE_TYPES):
        image = "docker:" + image
    argv = (["env"] + [f"{k}={v}" for k, v in variables.items()]) if variables else []
    argv += [exe, f"--image={image}"]
    argv += [f"--volume={m}" for m in mounts]
    if workdir:
        argv.append(f"--workdir={workdir}")
    return argv + norm["options"] + ["--"] + inner
