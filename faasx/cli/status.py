"""``faasx status``: what a run is doing now, or how it ended."""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Dict, List

from faasx.cli.runs import selected
from faasx.executor.control import FINAL_STATUS, query, socket_path

CLEAR = "\x1b[H\x1b[2J"


def add_parser(sub) -> None:
    p = sub.add_parser("status", help="blocks, managers, tasks and last errors of a run",
                       description="Connect to a live run's control endpoint and print its blocks, managers, "
                                   "task counts and last errors; for a finished run, its final counts.")
    p.add_argument("run_dir", nargs="?", help="run directory (default: the newest under ./runinfo)")
    p.add_argument("--watch", action="store_true", help="refresh in place until Ctrl-C")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes with --watch")
    p.add_argument("--count", type=int, default=None, help="with --watch: stop after this many refreshes")
    p.add_argument("--json", action="store_true", help="print JSON (one object per executor, in a list)")
    p.set_defaults(run=run)


def gather(logdir: str) -> Dict[str, Any]:
    """The live snapshot, else the final status file, else why there is neither."""
    path = socket_path(logdir)
    if os.path.exists(path):
        try:
            return query(path)
        except OSError as e:
            live_error = f"nothing answers at {path} ({e.strerror or e})"
        except ValueError as e:
            live_error = f"a garbled answer from {path} ({e})"
    else:
        live_error = f"no control endpoint at {path}"
    final = os.path.join(logdir, FINAL_STATUS)
    if os.path.exists(final):
        with open(final) as f:
            return json.load(f)
    return {"logdir": os.path.abspath(logdir), "live": False, "error":
            f"not live ({live_error}) and no {FINAL_STATUS}: the client process ended without shutting the "
            "executor down (killed?), or the run predates `faasx status`"}


def render(s: Dict[str, Any]) -> str:
    if "error" in s and "tasks" not in s:
        return f"{s.get('logdir', '?')}: {s['error']}\n"
    out = [_headline(s)]
    out += _table("blocks", ["BLOCK", "JOB ID", "STATE", "NODES"],
                  [[b["block_id"], b["job_id"], b["state"], ",".join(b["nodes"]) or "-"] for b in s["blocks"]])
    for b in s["blocks"]:
        if b.get("message") and b["state"] not in ("RUNNING", "PENDING"):
            out.append(f"  block {b['block_id']}: {b['message'].splitlines()[0][:200]}")
    out += _table("managers", ["HOST", "MANAGER", "BLOCK", "WORKERS", "BUSY", "TASKS", "LAST HEARD"],
                  [[m["host"], m["manager"], m["block_id"], m["workers"], m["busy"], m["tasks"],
                    f"{m['last_heard']:.1f}s ago" if m.get("last_heard") is not None else "-"]
                   for m in s["managers"]])
    t = s["tasks"]
    out.append("tasks")
    out.append(f"  queued {t.get('queued', 0)}  running {t.get('running', 0)}  prefetched {t.get('prefetched', 0)}  "
               f"done {t['done']}  failed {t['failed']}  retried {t.get('retried', 0)}  "
               f"(pending futures {t['pending']})")
    if s.get("live"):
        out.append(f"  rate {t.get('rate_per_s', 0.0):,.1f} tasks/s over the last minute")
    if s["errors"]:
        out.append("last errors")
        for e in s["errors"][-10:]:
            out.append(f"  task {e['task_id']}  {time.strftime('%H:%M:%S', time.localtime(e['time']))}  "
                       f"{e['type']}: {e['message']}")
    return "\n".join(out) + "\n"


def _headline(s: Dict[str, Any]) -> str:
    who = f"executor {s['label']} (client pid {s['pid']}, Python {s['python']})"
    if s.get("live"):
        up = time.strftime("%H:%M:%S", time.gmtime(max(0.0, s["now"] - s["started"])))
        return f"{s['logdir']}\n{who}: live, up {up}"
    ended = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s.get("finished") or 0))
    return f"{s['logdir']}\n{who}: finished at {ended}; final counts (from {FINAL_STATUS}):"


def _table(title: str, header: List[str], rows: List[list]) -> List[str]:
    if not rows:
        return [f"{title}: none"]
    cells = [header] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return [title] + ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]


def run(args) -> int:
    dirs = selected(args.run_dir)
    shown = 0
    while True:
        snaps = [gather(d) for d in dirs]
        if args.json:
            text = json.dumps(snaps, indent=1, default=str) + "\n"
        else:
            text = "\n".join(render(s) for s in snaps)
        if args.watch:
            sys.stdout.write(CLEAR + text)
        else:
            sys.stdout.write(text)
        sys.stdout.flush()
        shown += 1
        if not args.watch or (args.count is not None and shown >= args.count):
            return 0 if all(s.get("live") or "tasks" in s for s in snaps) else 1
        time.sleep(args.interval)
