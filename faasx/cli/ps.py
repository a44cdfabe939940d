"""``faasx ps``: faasx processes on this host, grouped by the run they belong to."""
from __future__ import annotations

import os
import time
from collections import defaultdict
from typing import Dict, List, Optional, Tuple

import psutil

ROLES = ("faasx-interchange", "faasx-manager", "faasx-worker")


def add_parser(sub) -> None:
    p = sub.add_parser("ps", help="faasx processes on this host, grouped by run",
                       description="List faasx-interchange, faasx-manager and faasx-worker processes on this "
                                   "host, grouped by the log directory of the run they belong to.")
    p.set_defaults(run=run)


def role_and_logdir(cmdline: List[str]) -> Tuple[Optional[str], Optional[str]]:
    """(role, the run's log directory) from a faasx process's command line (see processes.command)."""
    role = next((a for a in cmdline if a in ROLES), None)
    if role is None:
        return None, None
    args = cmdline[cmdline.index(role) + 1:]
    if role == "faasx-interchange":
        return role, args[0] if args else None
    if role == "faasx-manager" and "--logdir" in args:
        return role, args[args.index("--logdir") + 1]
    if role == "faasx-worker" and "--log-file" in args:
        return role, os.path.dirname(args[args.index("--log-file") + 1])
    return role, None


def processes() -> Dict[Optional[str], List[dict]]:
    """{log directory: [{pid, ppid, role, user, started, rss}]} for every faasx process visible here."""
    groups: Dict[Optional[str], List[dict]] = defaultdict(list)
    for p in psutil.process_iter(["pid", "ppid", "cmdline", "username", "create_time", "memory_info", "status"]):
        info = p.info
        if info["status"] == psutil.STATUS_ZOMBIE or not info["cmdline"]:
            continue
        role, logdir = role_and_logdir(info["cmdline"])
        if role is None:
            continue
        groups[os.path.abspath(logdir) if logdir else None].append({
            "pid": info["pid"], "ppid": info["ppid"], "role": role, "user": info["username"],
            "started": info["create_time"], "rss": info["memory_info"].rss if info["memory_info"] else 0})
    return groups


def run(args) -> int:
    groups = processes()
    if not groups:
        print("no faasx processes on this host")
        return 0
    order = {r: i for i, r in enumerate(ROLES)}
    for logdir in sorted(groups, key=lambda d: d or ""):
        procs = sorted(groups[logdir], key=lambda p: (order[p["role"]], p["pid"]))
        print(logdir or "(run unknown)")
        for p in procs:
            started = time.strftime("%H:%M:%S", time.localtime(p["started"]))
            print(f"  {p['pid']:>7}  {p['role']:<18} parent {p['ppid']:>7}  {p['user']:<10} since {started}  "
                  f"{p['rss'] / 2**20:7.1f} MiB")
    return 0
