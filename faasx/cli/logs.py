"""``faasx logs TASK_ID``: one task's path through the run's logs, and what it printed.

Every component logs to its own file in the executor's log directory (``client.log``,
``interchange.log``, ``manager_*.log``, ``worker_*.log``).  Errors always name their task; the
routine hops (queued, dispatched, sent to a worker, started, done, resolved) are logged per task
only when the executor runs with ``worker_debug=True``.  What a task printed is found in the
workers' ``.out`` files by the marker each worker writes before a task's first output
(``faasx.executor.task_output``), debug or not.
"""
from __future__ import annotations

import glob
import os
import re
from typing import Iterator, List, Tuple

from faasx.cli.runs import selected
from faasx.executor.task_output import MARKER_RE

_SINGLE = re.compile(r"\btask (\d+)\b")
_LIST = re.compile(r"\btasks?(?:\(s\))? \[([\d, ]*)\]|\[([\d, ]*)\] (?:->|to)\b")
_STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d[,.]\d+")
DEBUG_HINT = ("only errors name a task unless the executor runs with worker_debug=True; with it, every hop "
              "(queued, dispatched, started, done, resolved) is logged per task")


def add_parser(sub) -> None:
    p = sub.add_parser("logs", help="one task's path through the logs, and what it printed",
                       description="Print the log lines of every component that mention TASK_ID, in time order, "
                                   "then what the task wrote to stdout/stderr on its worker.  " + DEBUG_HINT + ".")
    p.add_argument("task_id", type=int)
    p.add_argument("run_dir", nargs="?", help="run directory (default: the newest under ./runinfo)")
    p.set_defaults(run=run)


def mentions(line: str, tid: int) -> bool:
    if any(int(m) == tid for m in _SINGLE.findall(line)):
        return True
    for groups in _LIST.findall(line):
        for ids in groups:
            if ids and tid in {int(x) for x in ids.replace(",", " ").split()}:
                return True
    return False


def component_logs(logdir: str) -> List[Tuple[str, str]]:
    """(component name, path) of every log in ``logdir``, in hop order."""
    found = []
    for pattern in ("client.log", "interchange.log", "manager_*.log", "worker_*.log"):
        for path in sorted(glob.glob(os.path.join(logdir, pattern))):
            found.append((os.path.basename(path)[:-4], path))
    return found


def trace(logdir: str, tid: int) -> List[Tuple[str, str, str]]:
    """[(timestamp, component, line)] mentioning the task, in time order."""
    lines = []
    for component, path in component_logs(logdir):
        with open(path, errors="replace") as f:
            for line in f:
                if "task" in line and mentions(line, tid):
                    m = _STAMP.match(line)
                    lines.append((m.group(0).replace(".", ",") if m else "", component, line.rstrip("\n")))
    lines.sort(key=lambda t: t[0])
    return lines


def captured_output(logdir: str, tid: int) -> Iterator[Tuple[str, List[str]]]:
    """(worker .out file, the lines task ``tid`` printed there) for each worker it printed on."""
    for path in sorted(glob.glob(os.path.join(logdir, "worker_*.out"))):
        mine: List[str] = []
        inside = False
        with open(path, errors="replace") as f:
            for line in f:
                m = MARKER_RE.match(line.rstrip("\n"))
                if m:
                    inside = m.group(1) is not None and int(m.group(1)) == tid
                elif inside:
                    mine.append(line.rstrip("\n"))
        if mine:
            yield os.path.basename(path), mine


def run(args) -> int:
    dirs = selected(args.run_dir)
    found = False
    for logdir in dirs:
        lines = trace(logdir, args.task_id)
        outputs = list(captured_output(logdir, args.task_id))
        if not lines and not outputs:
            continue
        found = True
        print(f"task {args.task_id} in {os.path.abspath(logdir)}")
        for _stamp, component, line in lines:
            print(f"  {component:<28} {line}")
        if not any(c.startswith("worker_") for _s, c, _l in lines):
            print(f"  (note: {DEBUG_HINT})")
        for name, text in outputs:
            print(f"output on {name}:")
            for line in text:
                print(f"  | {line}")
    if not found:
        print(f"task {args.task_id}: no log line and no output of it in {', '.join(dirs)} ({DEBUG_HINT})")
        return 1
    return 0
