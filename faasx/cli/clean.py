"""``faasx clean --older-than 7d``: remove old run directories."""
from __future__ import annotations

import os
import re
import shutil
import sys
import time

from faasx.cli.ps import processes
from faasx.cli.runs import DEFAULT_ROOT, runs

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def age(text: str) -> float:
    """'7d', '12h', '30m', '90s', '2w' -> seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", text)
    if not m:
        raise ValueError(f"{text!r} is not an age like 7d, 12h, 30m, 90s or 2w")
    return float(m.group(1)) * _UNITS[m.group(2)]


def add_parser(sub) -> None:
    p = sub.add_parser("clean", help="remove old run directories",
                       description="Remove run directories under ./runinfo (or --root) not modified for longer "
                                   "than --older-than.  Runs with a live faasx process are kept.")
    p.add_argument("--older-than", required=True, metavar="AGE", help="e.g. 7d, 12h, 30m")
    p.add_argument("--root", default=DEFAULT_ROOT, help="directory holding the runs (default ./runinfo)")
    p.add_argument("--dry-run", action="store_true", help="list what would be removed, remove nothing")
    p.set_defaults(run=run)


def _newest_mtime(path: str) -> float:
    newest = os.stat(path).st_mtime
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            try:
                newest = max(newest, os.lstat(os.path.join(dirpath, name)).st_mtime)
            except FileNotFoundError:
                pass
    return newest


def run(args) -> int:
    try:
        limit = age(args.older_than)
    except ValueError as e:
        print(f"faasx clean: {e}", file=sys.stderr)
        return 2
    live = [d for d in processes() if d]
    now = time.time()
    removed = kept = 0
    for run_dir in runs(args.root):
        real = os.path.abspath(run_dir)
        if any(d == real or d.startswith(real + os.sep) for d in live):
            print(f"kept {run_dir}: faasx processes of this run are still running")
            kept += 1
            continue
        if now - _newest_mtime(run_dir) <= limit:
            continue
        print(f"{'would remove' if args.dry_run else 'removed'} {run_dir}")
        if not args.dry_run:
            shutil.rmtree(run_dir)
        removed += 1
    print(f"{removed} run(s) {'to remove' if args.dry_run else 'removed'}, {kept} kept because they are live")
    return 0
