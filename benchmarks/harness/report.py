"""Number formats, aligned tables, machine facts and results files (parent side)."""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import re
import subprocess
import sys
from typing import Any, Sequence

BENCH_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO_ROOT = os.path.dirname(BENCH_DIR)
RESULTS_DIR = os.path.join(BENCH_DIR, "results")


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and (math.isnan(v) or math.isinf(v)))


def fmt_rate(v: float | None) -> str:
    return "-" if _missing(v) else f"{v:,.0f}/s"


def fmt_ms(v: float | None) -> str:
    return "-" if _missing(v) else f"{v * 1e3:.3f} ms"


def fmt_s(v: float | None) -> str:
    return "-" if _missing(v) else f"{v:.2f} s"


def fmt_us(v: float | None) -> str:
    return "-" if _missing(v) else f"{v:,.0f} us"


def fmt_mib(v: float | None) -> str:
    return "-" if v is None else f"{v / 2**20:,.1f} MiB"


def fmt_ratio(v: float | None) -> str:
    if _missing(v):
        return "-"
    return f"{v:.2f}x" if v >= 0.1 else f"{v:.3f}x"


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None,
                file=None) -> str:
    """Print an aligned plain-text table (first column left-aligned, the rest right-aligned)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r):
        return " | ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r)).rstrip()

    text = [title] if title else []
    text += [line(cells[0]), "-+-".join("-" * w for w in widths)]
    text += [line(r) for r in cells[1:]]
    s = "\n".join(text)
    print(s, file=file or sys.stdout, flush=True)
    return s


def busy_note(runs) -> str | None:
    """A line to print under a table when some runs started on a busy machine (else None)."""
    runs = list(runs)
    busy = [r for r in runs if (r.get("load_before") or {}).get("busy")]
    if not busy:
        return None
    worst = max(max(r["load_before"].get("cpu_percent") or 0, r.get("other_cpu_percent") or 0) for r in busy)
    return (f"NOTE: {len(busy)} of {len(runs)} run(s) shared the machine with other busy processes (up to "
            f"{worst:.0f}% of its CPU): those numbers are noisy; rerun with --wait-quiet 600 on an idle machine.")


def git_rev() -> str | None:
    try:
        out = subprocess.run(["git", "-C", REPO_ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10)
        rev = out.stdout.strip() or None
        dirty = subprocess.run(["git", "-C", REPO_ROOT, "status", "--porcelain", "--", "faasx"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return f"{rev}{'+dirty' if dirty else ''}" if rev else None
    except Exception:
        return None


def _versions() -> dict:
    """Versions of the libraries under test, read from package metadata (nothing is imported)."""
    from importlib.metadata import PackageNotFoundError, version
    out = {}
    for name in ("parsl", "pyzmq", "dill", "numpy", "ray"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    try:  # faasx from the working tree, read (not imported: the parent never imports faasx)
        with open(os.path.join(REPO_ROOT, "faasx", "version.py")) as f:
            m = re.search(r'^VERSION = "([^"]+)"', f.read(), re.M)
        out["faasx"] = m.group(1) if m else None
    except OSError:
        out["faasx"] = None
    return out


def machine_info() -> dict:
    info = {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "host": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "git": git_rev(),
        "loadavg": os.getloadavg(),
    }
    try:
        import psutil
        info["mem_total_gib"] = round(psutil.virtual_memory().total / 2**30, 1)
        info["cpus_affinity"] = len(os.sched_getaffinity(0))
    except ImportError:
        pass
    info.update(_versions())
    return info


def write_results(name: str, payload: dict) -> str:
    os.makedirs(RESULTS_DIR, exist_ok=True)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = os.path.join(RESULTS_DIR, f"{name}-{stamp}.json")
    with open(path, "w") as f:
        json.dump(payload, f, indent=2, sort_keys=True, default=str)
    return path


def finish(name: str, args, payload: dict, errors: list) -> int:
    """The end of every benchmark: print the errors, save the results unless ``--no-save`` (with the
    machine facts, the arguments and the errors), and return the exit status (non-zero on errors)."""
    for e in errors:
        print(f"ERROR: {e}")
    if not args.no_save:
        path = write_results(name, dict(payload, args=vars(args), errors=errors))
        print(f"results written to {os.path.relpath(path)}")
    return 1 if errors else 0
