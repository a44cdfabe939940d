"""Errors raised by faasx.

Every message names the component that failed, the task it concerns (where there is one) and
what the user can do about it.  Errors that describe a lost resource (``WorkerLost``,
``ManagerLost``, ``InterchangeLost``) are *system* failures: the task itself may be fine and a
retry may succeed.  ``FaaSXError`` is the common base class so callers can catch them together.

Processes on compute nodes (manager, workers) import this module, so it must stay light: the two
errors that derive from Parsl's own classes (``InvalidResourceSpecification``, ``ScaleOutFailed``)
live in ``faasx._parsl_errors`` and are served from here on first access, which keeps Parsl's ~0.6 s
import out of every worker's start-up.
"""
from __future__ import annotations

from typing import Iterable, Optional


class FaaSXError(Exception):
    """Base class of every faasx error."""


class SerializationError(FaaSXError, TypeError):
    """An object could not be serialized with pickle or dill.

    Raised by ``submit`` for unpicklable arguments (the task is never sent), and set on a
    future when a worker cannot serialize the function's return value.
    """

    DEFAULT_FIX = ("pass only picklable objects (no open files, sockets, locks or generators); "
                   "create such resources inside the function instead.")

    def __init__(self, what: str, detail: str, task_id: Optional[int] = None, fix: Optional[str] = None):
        self.what = what
        self.detail = detail
        self.task_id = task_id
        self.fix = fix
        where = f"task {task_id}: " if task_id is not None else ""
        super().__init__(f"{where}cannot serialize {what}: {detail}. Fix: {fix or self.DEFAULT_FIX}")

    def __reduce__(self):
        return (type(self), (self.what, self.detail, self.task_id, self.fix))


class PayloadTooLarge(FaaSXError, ValueError):
    """A task's arguments or its result exceed ``max_payload_size``."""

    def __init__(self, what: str, size: int, limit: int, task_id: Optional[int] = None):
        self.what = what
        self.size = size
        self.limit = limit
        self.task_id = task_id
        where = f"task {task_id}: " if task_id is not None else ""
        super().__init__(
            f"{where}{what} is {size:,} bytes, over the executor's max_payload_size of {limit:,} bytes. "
            "Fix: move large data through a shared file system and pass its path, or raise max_payload_size."
        )

    def __reduce__(self):
        return (type(self), (self.what, self.size, self.limit, self.task_id))


class SystemFailure(FaaSXError):
    """A task failed because part of the system died, not because of the function."""

    def __init__(self, message: str, task_id: Optional[int] = None, attempts: int = 0):
        self.task_id = task_id
        self.attempts = attempts
        super().__init__(message)

    def __reduce__(self):
        return (type(self), (self.args[0], self.task_id, self.attempts))


class WorkerLost(SystemFailure):
    """The worker process running the task died (crash, ``os._exit``, signal, OOM kill)."""


class ManagerLost(SystemFailure):
    """The manager holding the task vanished (killed, node lost, missed heartbeats, job ended)."""


class InterchangeLost(SystemFailure):
    """The interchange process died or stopped answering; pending tasks cannot complete."""


class TaskTimeout(FaaSXError):
    """The task ran longer than its ``walltime`` (resource specification, or ``Executor.options``);
    its worker's process group (children included) was killed.  A limit the user set: never retried."""

    def __init__(self, message: str, task_id: Optional[int] = None, walltime: Optional[float] = None):
        self.task_id = task_id
        self.walltime = walltime
        super().__init__(message)

    def __reduce__(self):
        return (type(self), (self.args[0], self.task_id, self.walltime))


def refuse_pickling(obj: object) -> None:
    """``__reduce__`` of the executor objects: a task that refers to its executor (to submit more work
    from inside a task) fails at submit with this, rather than on the worker."""
    raise TypeError(f"a faasx executor ({type(obj).__name__}) cannot be sent to a worker: a task cannot submit "
                    "to the executor that runs it")


class ExecutorShutdown(FaaSXError, RuntimeError):
    """The executor was shut down before the task finished, or a task was submitted after shutdown."""


class VersionMismatch(FaaSXError):
    """A manager's Python/faasx/dill/protocol versions differ from the interchange's."""

    def __init__(self, component: str, ours: dict, theirs: dict):
        self.component = component
        self.ours = ours
        self.theirs = theirs
        diffs = ", ".join(f"{k}: interchange {ours.get(k)!r} vs {component} {theirs.get(k)!r}"
                          for k in sorted(set(ours) | set(theirs)) if ours.get(k) != theirs.get(k))
        super().__init__(
            f"{component} refused: version mismatch ({diffs}). "
            "Fix: install the same Python, faasx and dill versions on the submit host and the compute nodes "
            "(for example by activating the same environment in the provider's worker_init)."
        )

    def __reduce__(self):
        return (type(self), (self.component, self.ours, self.theirs))


class FunctionExited(FaaSXError):
    """The function tried to end its worker process (``sys.exit``, ``KeyboardInterrupt``...).

    The worker caught it and stays alive; the task fails with this error instead.
    """

    def __init__(self, what: str, task_id: Optional[int] = None):
        self.what = what
        self.task_id = task_id
        where = f"task {task_id}: " if task_id is not None else ""
        super().__init__(f"{where}the function raised {what}, which would end its worker; faasx caught it. "
                         "Fix: return a value or raise an ordinary exception instead.")

    def __reduce__(self):
        return (type(self), (self.what, self.task_id))


class UnknownFunction(FaaSXError, KeyError):
    """A function id was submitted that was never registered with this executor."""

    def __init__(self, function_id: str):
        self.function_id = function_id
        super().__init__(function_id)

    def __str__(self) -> str:
        return (f"unknown function id {self.function_id!r}: register the function first with "
                "executor.register_function(fn) and submit the id it returns")

    def __reduce__(self):
        return (type(self), (self.function_id,))


class RemoteExceptionError(FaaSXError):
    """A function raised an exception that could not be sent back as itself (it was unpicklable).

    ``remote_type`` is the qualified name of the original exception type and ``remote_traceback``
    the text of its traceback on the worker.
    """

    def __init__(self, remote_type: str, message: str, remote_traceback: str):
        self.remote_type = remote_type
        self.message = message
        self.remote_traceback = remote_traceback
        super().__init__(f"{remote_type}: {message}\n\nRemote traceback:\n{remote_traceback}")

    def __reduce__(self):
        return (type(self), (self.remote_type, self.message, self.remote_traceback))




_PARSL_DERIVED = ("InvalidResourceSpecification", "ScaleOutFailed")
_CONTAINER_ERRORS = ("InvalidContainerSpec", "ContainerStartError")   # defined in faasx.containers


def __getattr__(name: str):
    if name in _PARSL_DERIVED:
        from faasx import _parsl_errors
        return getattr(_parsl_errors, name)
    if name in _CONTAINER_ERRORS:
        from faasx import containers
        return getattr(containers, name)
    raise AttributeError(f"module 'faasx.errors' has no attribute {name!r}")
