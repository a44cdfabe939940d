"""Helpers shared by the multi-node test modules (the blocks' tasks live in ``test_multinode_blocks``)."""
from __future__ import annotations

import glob
import os
import time

from tests.support import wait_until

HERE = os.path.dirname(os.path.abspath(__file__))
#: job-script lines that let the blocks import the test modules (tasks are sent by reference)
WORKER_INIT = f"export PYTHONPATH={HERE}${{PYTHONPATH:+:$PYTHONPATH}}"


def managers_of(ex, block_id=None) -> list:
    return [m for m in ex.executor.connected_managers() if block_id is None or m["block_id"] == str(block_id)]


def wait_for_managers(ex, count: int, block_id=None, timeout: float = 90) -> list:
    """The connected managers (of ``block_id``) once there are ``count``; fails at once, with the job's
    output, if a block ended first."""
    def ready():
        found = managers_of(ex, block_id)
        if len(found) == count:
            return found
        ended = {b: st for b, st in ex.executor.status().items()
                 if st.terminal and (block_id is None or b == str(block_id))}
        assert not ended, f"blocks ended before {count} managers registered: {ended}\n{block_output(ex)}"
        return None
    return wait_until(ready, timeout=timeout, interval=0.1,
                    what=lambda: f"{count} managers of block {block_id} to register (have {managers_of(ex, block_id)})")


def block_output(ex) -> str:
    """The tail of every block's job stdout/stderr, for failure messages."""
    text = []
    for path in sorted(glob.glob(os.path.join(ex.executor.provider.script_dir, "*.std*"))):
        with open(path) as f:
            text.append(f"---- {path}\n" + f.read()[-2000:])
    return "\n".join(text)


def serve_every_node(ex, hosts, task, timeout: float = 60) -> list:
    """Submit ``task(0.2)`` until every one of ``hosts`` has run one (it returns ``{"host": ...}``); all
    results."""
    results = []
    deadline = time.monotonic() + timeout
    while {r["host"] for r in results} != set(hosts):
        assert time.monotonic() < deadline, f"only {sorted({r['host'] for r in results})} of {hosts} served tasks"
        results += [f.result(timeout=60) for f in [ex.submit(task, 0.2) for _ in range(2 * len(hosts))]]
    return results


def manager_logs(ex, block_id) -> dict:
    """{hostname: log text} of the block's managers (``manager_<block>_<host>_<pid>.log``)."""
    found = {}
    for path in glob.glob(os.path.join(ex.executor.logdir, f"manager_{block_id}_*.log")):
        with open(path) as f:
            found[os.path.basename(path).split("_")[2]] = f.read()
    return found
