"""Which task printed what: per-task markers in a worker's captured stdout/stderr.

A worker's stdout and stderr go to ``worker_<manager>_<n>.out``.  The worker replaces
``sys.stdout`` and ``sys.stderr`` with ``MarkedStream``s that share one ``TaskOutput``; before the
first write of a task that prints, a marker line names the task::

    ==> faasx task 17 <==
    what task 17 printed

``faasx logs 17`` shows the lines after that marker up to the next one.  The cost per task is one
attribute store (``TaskOutput.tid``); a task that prints nothing writes nothing.  Output that does
not go through ``sys.stdout``/``sys.stderr`` -- a subprocess, C code writing to fd 1 -- is not
marked and shows under whichever marker came last.
"""
from __future__ import annotations

import re
from typing import Optional, TextIO

MARKER = "==> faasx task {} <==\n"
OUTSIDE = "==> faasx worker (no task) <==\n"
MARKER_RE = re.compile(r"^==> faasx (?:task (\d+)|worker \(no task\)) <==$")


class TaskOutput:
    """The task a worker is running now (``tid``; None between tasks) and the last one marked."""

    __slots__ = ("tid", "marked")

    def __init__(self) -> None:
        self.tid: Optional[int] = None
        self.marked: Optional[int] = None


class MarkedStream:
    """A text stream that writes ``TaskOutput``'s marker before the first write of each task."""

    def __init__(self, stream: TextIO, current: TaskOutput):
        self._stream = stream
        self._current = current

    def write(self, text: str) -> int:
        current = self._current
        if current.tid != current.marked and text:
            current.marked = current.tid
            self._stream.write(OUTSIDE if current.tid is None else MARKER.format(current.tid))
        return self._stream.write(text)

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str):     # flush, fileno, encoding, buffer, isatty ...
        return getattr(self._stream, name)


def install(stdout: TextIO, stderr: TextIO) -> TaskOutput:
    """Wrap both streams around one ``TaskOutput``; returns it (the worker sets ``tid`` per task)."""
    import sys
    current = TaskOutput()
    if stdout is not None:       # None: no stdout at all (pythonw-like starts); nothing to mark
        sys.stdout = MarkedStream(stdout, current)   # type: ignore[assignment]
    if stderr is not None:
        sys.stderr = MarkedStream(stderr, current)   # type: ignore[assignment]
    return current
