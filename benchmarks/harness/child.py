"""One child process per system under test, bounded in time, with everything it starts accounted for.

Each child runs in its own session with an environment tag (``FAASX_BENCH_TAG``).  Every process it
starts (interchange, managers, workers -- also those a provider detaches with ``setpgrp``) inherits the
tag, so after the child exits the parent finds anything left behind, reports it as *stray* and kills
it.  On expiry of its wall-clock bound the child and everything carrying its tag is killed and the run
is reported as an error.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from dataclasses import dataclass
from typing import Callable, Sequence

from . import load as _load
from .report import REPO_ROOT
from .stats import now

TAG_ENV = "FAASX_BENCH_TAG"


@dataclass
class Settings:
    """Parent-side options shared by every run_child() of one benchmark (set by parse_common())."""
    wait_quiet: float = 0.0  # --wait-quiet: seconds to wait for an idle machine before each child
    keep_logs: bool = False  # --keep-logs: keep every child's directory, not just failed ones


SETTINGS = Settings()


# ---------------------------------------------------------------------------------------- command line
def add_common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="fast smoke run (a few hundred tasks)")
    p.add_argument("--no-save", action="store_true", help="do not write benchmarks/results/*.json")
    p.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                   help="before each run, wait up to SECONDS for the machine to be idle (<25%% CPU); a busy "
                        "machine is always reported")
    p.add_argument("--keep-logs", action="store_true",
                   help="keep every child's directory (run dirs, engine logs) under /tmp; failed runs are always kept")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--child-out", default=None, help=argparse.SUPPRESS)


def parse_common(args: argparse.Namespace) -> None:
    SETTINGS.wait_quiet = float(getattr(args, "wait_quiet", 0.0) or 0.0)
    SETTINGS.keep_logs = bool(getattr(args, "keep_logs", False))


# ---------------------------------------------------------------------------------------- child side
def child_main(args: argparse.Namespace, measure: Callable[[argparse.Namespace], dict]) -> None:
    """Run ``measure(args)`` in the child role and write ``{"ok", "result", "error"}`` to ``--child-out``."""
    payload: dict = {"ok": False, "result": None, "error": None}
    code = 0
    try:
        payload["result"] = measure(args)
        payload["ok"] = True
    except BaseException as e:  # noqa: BLE001 -- report everything, including KeyboardInterrupt
        payload["error"] = "".join(traceback.format_exception(type(e), e, e.__traceback__))
        payload["result"] = getattr(e, "partial_result", None)
        code = 1
    with open(args.child_out, "w") as f:
        json.dump(payload, f, default=str)
    sys.stdout.flush()
    sys.stderr.flush()
    sys.exit(code)


def child_tmpdir() -> str:
    """A scratch directory for the child (run_dir for Parsl, working dirs); removed by the parent."""
    return os.environ.get("FAASX_BENCH_TMP") or tempfile.mkdtemp(prefix="faasx-bench-child-")


# ---------------------------------------------------------------------------------------- tagged processes
def tagged_processes(tag: str) -> list:
    """Every live process (but this one) whose environment carries ``tag``."""
    import psutil
    found = []
    me = os.getpid()
    for p in psutil.process_iter(["pid"]):
        if p.pid == me:
            continue
        try:
            if p.environ().get(TAG_ENV) == tag:
                found.append(p)
        except (psutil.Error, OSError):
            continue
    return found


def _describe(p) -> str:
    try:
        cmd = " ".join(p.cmdline())[:160]
    except Exception:
        cmd = "?"
    return f"pid {p.pid}: {cmd}"


def _kill_all(procs: list, grace: float = 3.0) -> None:
    import psutil
    for p in procs:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=grace)


def reap_strays(tag: str, settle: float) -> list[str]:
    """Processes still carrying ``tag`` ``settle`` s after the child exited: described, then killed."""
    try:
        deadline = now() + settle
        left = tagged_processes(tag)
        while left and now() < deadline:
            time.sleep(0.2)
            left = tagged_processes(tag)
    except ImportError:
        return ["(psutil missing: stray check skipped)"]
    strays = [_describe(p) for p in left]
    _kill_all(left)
    return strays


# ---------------------------------------------------------------------------------------- parent side
@dataclass
class _Exit:
    """How one child ended."""
    rc: int | None
    timed_out: bool
    wall: float
    other_cpu_percent: float | None  # CPU other processes used meanwhile (percent of the machine)


def _wait_with_rusage(proc: subprocess.Popen, timeout: float):
    """Wait for ``proc`` up to ``timeout`` s; returns (returncode, rusage) or (None, None) on timeout."""
    deadline = now() + timeout
    delay = 0.005
    while True:
        try:
            pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
        except ChildProcessError:
            return proc.returncode, None
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return proc.returncode, rusage
        if now() >= deadline:
            return None, None
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def _child_env(tag: str, tmpdir: str, extra_env: dict | None) -> dict:
    env = dict(os.environ)
    env[TAG_ENV] = tag
    env["FAASX_BENCH_TMP"] = tmpdir
    # run against the working tree (no install needed), and let workers import it too
    env["PYTHONPATH"] = REPO_ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("PYTHONHASHSEED", "0")
    env.update(extra_env or {})
    return env


def _run_bounded(cmd: list, env: dict, cwd: str, log_path: str, timeout: float) -> _Exit:
    """Run ``cmd`` in its own session with output to ``log_path``; kill its process group on timeout.
    The child tree's rusage (its own and the descendants it reaped) separates our CPU from others'."""
    t0 = now()
    busy0 = _load.machine_busy_cpu_s()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, cwd=cwd, start_new_session=True)
        rc, rusage = _wait_with_rusage(proc, timeout)
        timed_out = rc is None
        if timed_out:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                pass
            rc, rusage = _wait_with_rusage(proc, 30)
    wall = now() - t0
    own = rusage.ru_utime + rusage.ru_stime if rusage is not None else None
    return _Exit(rc, timed_out, wall, _load.other_cpu_percent(busy0, _load.machine_busy_cpu_s(), own, wall))


def _read_result(out_path: str, ex: _Exit, timeout: float) -> dict:
    """The child's JSON result, made an error when the child timed out or exited non-zero."""
    result: dict = {"ok": False, "result": None, "error": None}
    if os.path.exists(out_path):
        try:
            with open(out_path) as f:
                result = json.load(f)
        except Exception as e:  # noqa: BLE001
            result = {"ok": False, "result": None, "error": f"unreadable child result: {e!r}"}
    if ex.timed_out:
        hung = " after writing its result: hung at exit/shutdown" if result.get("result") else ""
        result["ok"] = False
        result["error"] = (result.get("error") or "") + f"\ntimed out after {timeout:.0f}s (child killed){hung}"
    elif ex.rc != 0 and result.get("ok"):
        result["ok"] = False
        result["error"] = f"child exited with code {ex.rc} after writing its result"
    elif ex.rc != 0 and not result.get("error"):
        result["error"] = f"child exited with code {ex.rc} and wrote no result"
    return result


def _indent(text: str, prefix: str) -> str:
    return "\n".join(prefix + line for line in text.rstrip().splitlines())


def _anomaly(result: dict):
    inner = result.get("result")
    return inner.get("anomaly") if isinstance(inner, dict) else None


def _print_outcome(label: str, result: dict, log_text: str) -> None:
    other = result.get("other_cpu_percent")
    strays = result["strays"]
    print(f"  [{label}] {'ok' if result.get('ok') else 'ERROR'} in {result['wall']:.1f}s"
          + (f"; {len(strays)} STRAY process(es) killed" if strays else "")
          + (f"; other processes used {other:.0f}% of the machine meanwhile" if other is not None else ""),
          flush=True)
    if not result.get("ok"):
        print(_indent(str(result.get("error")), "    | "), flush=True)
        if log_text.strip():
            print("    | --- child output (tail) ---", flush=True)
            print(_indent(log_text[-2500:], "    | "), flush=True)
    for s in strays:
        print(f"    STRAY: {s}", flush=True)
    if _anomaly(result):
        print(f"  [{label}] ANOMALY: {_anomaly(result)}", flush=True)


def _read_log(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def run_child(script: str, child_args: Sequence[str], timeout: float, label: str,
              settle: float = 5.0, verbose: bool = True, extra_env: dict | None = None) -> dict:
    """Run ``python script --child ... --child-out FILE`` in a fresh process and return its result.

    Returns ``{"ok": bool, "result": ..., "error": str|None, "wall": s, "strays": [...],
    "log_tail": str, "load_before", "other_cpu_percent", "returncode"}``.  Processes left behind
    (tagged, still alive ``settle`` seconds after the child exited) are listed in ``strays`` and killed.
    A failed run, one with strays or an anomaly keeps its directory (``kept_dir``) for diagnosis.
    """
    tag = uuid.uuid4().hex
    tmpdir = tempfile.mkdtemp(prefix="faasx-bench-")
    out_path = os.path.join(tmpdir, "result.json")
    log_path = os.path.join(tmpdir, "child.log")
    cmd = [sys.executable, script, "--child-out", out_path, *child_args]
    load_before = _load.wait_for_quiet(SETTINGS.wait_quiet, label, verbose)
    if verbose:
        print(f"  [{label}] starting child: {' '.join(cmd[1:])}", flush=True)
    ex = _run_bounded(cmd, _child_env(tag, tmpdir, extra_env), tmpdir, log_path, timeout)
    strays = reap_strays(tag, 0 if ex.timed_out else settle)
    log_text = _read_log(log_path)
    result = _read_result(out_path, ex, timeout)
    if ex.other_cpu_percent is not None and ex.other_cpu_percent > _load.BUSY_CPU_PERCENT:
        load_before["busy"] = True
    result.update(wall=ex.wall, load_before=load_before, other_cpu_percent=ex.other_cpu_percent,
                  returncode=ex.rc, strays=strays, log_tail=log_text[-4000:])
    if verbose:
        _print_outcome(label, result, log_text)
    clean = result.get("ok") and not strays and not _anomaly(result)
    if clean and not SETTINGS.keep_logs:
        shutil.rmtree(tmpdir, ignore_errors=True)
    else:
        result["kept_dir"] = tmpdir
        if verbose and not clean:
            print(f"    (child's directory with its logs kept: {tmpdir})", flush=True)
    return result


def run_systems(script: str, systems: Sequence[str], child_args: Sequence[str], timeout: float,
                names: dict | None = None, reps: int = 1) -> tuple[dict, list]:
    """``run_child`` for each system, ``reps`` times, interleaved (A, B, C, A, B, C, ...) so that a
    change in the machine's load hits every system alike.  Returns ``({system: [run, ...]}, errors)``;
    a failed run, or one that left processes behind, is an error."""
    runs: dict = {s: [] for s in systems}
    errors = []
    for rep in range(reps):
        for s in systems:
            label = f"{(names or {}).get(s, s)} run {rep + 1}/{reps}"
            r = run_child(script, ["--child", s, *child_args], timeout=timeout, label=label)
            runs[s].append(r)
            if not r.get("ok") or r.get("strays"):
                errors.append(f"{label}: {(r.get('error') or 'stray processes').strip().splitlines()[-1:]}")
    return runs, errors
